//! The head sent on through the tunnel.

use http::header;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::{Ctx, TunnelProxy};
use crate::http_checks;
use crate::plugins::HeaderEdit;

impl TunnelProxy {
    /// The head sent on: hop-by-hop and caller-forbidden headers out, the
    /// plugins' header edits applied, forwarding headers in; request line,
    /// query, `Host` and `Authorization` untouched.
    pub(super) fn rewrite_head(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &Ctx,
    ) -> Result<()> {
        // A relay's fields never reach an agent, and a caller's never
        // count: the relaying instance sets its own (`relay::mark`).
        for name in crate::cluster::RELAY_HEADERS {
            upstream.remove_header(name);
        }
        // Relayed: the instance that admitted the request made the head
        // (edits, forwarding headers); only the hop's own headers go.
        if self.relayed {
            for name in http_checks::hop_headers(&upstream.headers, ctx.upgrade) {
                upstream.remove_header(&name);
            }
            return Ok(());
        }
        for name in http_checks::headers_to_strip(&upstream.headers, ctx.upgrade) {
            upstream.remove_header(&name);
        }
        // The plugins' edits, in chain order; names and values were checked
        // by the plugin host, and gateway-managed headers are refused there.
        // pingora calls this again for every retry, on a fresh copy of the
        // request: the edits must apply each time.
        for edit in &ctx.edits {
            match edit {
                HeaderEdit::Set(h) => {
                    upstream.insert_header(h.name.clone(), h.value.as_slice())?;
                }
                HeaderEdit::Append(h) => {
                    upstream.append_header(h.name.clone(), h.value.as_slice())?;
                }
                HeaderEdit::Remove(n) => {
                    upstream.remove_header(n);
                }
            }
        }
        strip_dashboard_session(upstream)?;
        if !upstream.headers.contains_key(header::HOST) {
            if let Some(a) = upstream.uri.authority().map(|a| a.as_str().to_string()) {
                upstream.insert_header(header::HOST, a)?;
            }
        }
        let proto = if self.tls { "https" } else { "http" };
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(ip) = ip {
            upstream.insert_header("x-forwarded-for", ip.to_string())?;
            let node = if ip.is_ipv6() {
                format!("\"[{ip}]\"")
            } else {
                ip.to_string()
            };
            upstream.insert_header(
                "forwarded",
                format!("for={node};proto={proto};host=\"{}\"", ctx.authority),
            )?;
        }
        upstream.insert_header("x-forwarded-proto", proto)?;
        upstream.insert_header("x-forwarded-host", ctx.authority.as_str())?;
        Ok(())
    }
}

/// The dashboard's session cookie never enters a tunnel: a service whose
/// host name is the admin listener's would otherwise receive a signed-in
/// operator's session ([`crate::admin::ui::strip_session_cookie`]).
fn strip_dashboard_session(upstream: &mut RequestHeader) -> Result<()> {
    let needle = crate::admin::ui::COOKIE.as_bytes();
    let carries = upstream
        .headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.as_bytes().windows(needle.len()).any(|w| w == needle));
    if !carries {
        return Ok(());
    }
    let kept: Vec<Vec<u8>> = upstream
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| crate::admin::ui::strip_session_cookie(v.as_bytes()))
        .collect();
    upstream.remove_header(&header::COOKIE);
    for value in kept {
        upstream.append_header(header::COOKIE, value)?;
    }
    Ok(())
}

/// The trace goes on through the tunnel: the agent's spans become children
/// of this attempt's stream span.
pub(super) fn set_traceparent(upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
    if let Some(trace) = &ctx.trace {
        let (parent, state) = trace.traceparent(&ctx.stream_span);
        upstream.insert_header("traceparent", parent)?;
        match state {
            Some(state) => upstream.insert_header("tracestate", state)?,
            None => {
                upstream.remove_header("tracestate");
            }
        }
    }
    Ok(())
}
