//! The policy input: what the route's plugin chain sees of a request (the
//! judged target, the headers but the caller's credential, a small form
//! body), and its verdict.

use std::time::{Duration, Instant};

use http::header;
use pingora_error::Error;
use pingora_proxy::Session;

use super::outcome::Outcome;
use super::{Ctx, TunnelProxy};
use crate::http_checks;
use crate::plugins::{ChainEntry, PolicyContext, PolicyRequest, Verdict, WitHeader};

impl TunnelProxy {
    /// Runs the plugin chain on the request; an allow keeps its header
    /// edits in `ctx.edits`.
    pub(super) async fn run_policy(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        chain: &[ChainEntry],
        form_body_bytes: usize,
    ) -> std::result::Result<(), Outcome> {
        let body_prefix = if form_body_bytes > 0 && !ctx.upgrade {
            self.form_body(session, form_body_bytes, ctx.live.upstream_timeout)
                .await?
        } else {
            None
        };
        let req = session.req_header();
        let (tunnel, caller) = match (&ctx.tunnel, &ctx.caller) {
            (Some(t), Some(c)) => (t, c),
            _ => return Err(Outcome::Internal),
        };
        let pctx = PolicyContext {
            route: ctx.route.as_deref().unwrap_or_default().to_string(),
            tunnel_id: tunnel.id.clone(),
            tunnel_name: tunnel.name.clone(),
            tunnel_org: tunnel.org.clone(),
            caller_org: caller.org.clone(),
            caller_id: caller.id.clone(),
            client_address: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            trace_id: ctx.trace_id.clone(),
        };
        let preq = PolicyRequest {
            method: req.method.as_str().to_string(),
            scheme: if self.tls { "https" } else { "http" }.to_string(),
            authority: ctx.authority.clone(),
            // The path the gateway judged, with the query as sent.
            path_with_query: match req.uri.query() {
                Some(q) => format!("{}?{q}", ctx.path),
                None => ctx.path.clone(),
            },
            headers: req
                .headers
                .iter()
                .filter(|(n, _)| *n != header::PROXY_AUTHORIZATION)
                .map(|(n, v)| WitHeader {
                    name: n.as_str().to_string(),
                    value: v.as_bytes().to_vec(),
                })
                .collect(),
            body_prefix,
        };
        let started = Instant::now();
        let verdict = ctx.live.plugins.run(chain, &pctx, &preq, &ctx.span).await;
        ctx.policy_us = started.elapsed().as_micros() as u64;
        match verdict {
            Verdict::Allow(edits) => {
                ctx.edits = edits;
                Ok(())
            }
            Verdict::Deny { plugin, denial } => Err(Outcome::PluginDenied { plugin, denial }),
            Verdict::Fail { plugin, failure } => Err(Outcome::PluginFailed { plugin, failure }),
        }
    }

    /// Reads a form-encoded body whose `Content-Length` is within `limit`,
    /// keeping it in pingora's retry buffer so it is still forwarded.
    /// Other bodies are not read (plugins see none).
    async fn form_body(
        &self,
        session: &mut Session,
        limit: usize,
        upstream_timeout: Duration,
    ) -> std::result::Result<Option<Vec<u8>>, Outcome> {
        let headers = &session.req_header().headers;
        // Two Content-Type headers could be read differently here, by the
        // plugin and by the service: such a body is not shown.
        let is_form = headers.get_all(header::CONTENT_TYPE).iter().count() == 1
            && headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(';').next())
                .is_some_and(|v| {
                    v.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                });
        if !is_form {
            return Ok(None);
        }
        let len = match http_checks::content_length(headers) {
            Some(n) if n <= limit as u64 => n as usize,
            // No length, and known to be empty (HTTP/1.1 without length or
            // chunking, HTTP/2 ending the stream with the headers).
            None if session.as_mut().is_body_empty() => return Ok(Some(Vec::new())),
            _ => return Ok(None),
        };
        // A client waiting for `100 Continue` would wait out our timeout:
        // answer it here. The body is then read before forwarding, so the
        // service is not asked to continue again.
        let expects_continue = session
            .req_header()
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            session
                .as_mut()
                .write_continue_response()
                .await
                .map_err(|_| Outcome::bad_request("could not answer Expect: 100-continue"))?;
            session.req_header_mut().remove_header(&header::EXPECT);
        }
        session.as_mut().enable_retry_buffering();
        let mut body = Vec::with_capacity(len);
        let read = async {
            while let Some(chunk) = session.read_request_body().await? {
                body.extend_from_slice(&chunk);
                if body.len() > len {
                    break;
                }
            }
            Ok::<_, Box<Error>>(())
        };
        match tokio::time::timeout(upstream_timeout, read).await {
            Ok(Ok(())) if body.len() == len => Ok(Some(body)),
            Ok(_) => Err(Outcome::bad_request(
                "request body does not match Content-Length",
            )),
            Err(_) => Err(Outcome::BodyLate),
        }
    }
}
