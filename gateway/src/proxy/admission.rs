//! Admission: every check before a request may enter a tunnel, in order
//! (see [`TunnelProxy::admit`]). A refusal is an [`Outcome`]; its status
//! is decided in `outcome.rs`.

use http::header;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::outcome::Outcome;
use super::{Ctx, TunnelProxy};
use crate::http_checks;
use crate::judgement::{judge_host, judge_path, JudgedHost, PathError, PathOptions};

impl TunnelProxy {
    /// Every check before a request may enter a tunnel, in order: framing
    /// (400), header size (431), Host and target (400), route (404), caller
    /// (401), tunnel (404), declared body size (413), then the route's
    /// plugin chain (or, for a route without plugins, organization: 403).
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), Outcome> {
        let req = session.req_header();
        http_checks::check_framing(&req.headers).map_err(Outcome::bad_request)?;
        if req.headers.contains_key(header::TRANSFER_ENCODING) {
            // pingora drops Content-Length when Transfer-Encoding is present;
            // the raw header block still shows whether the caller sent both.
            if let Some(h1) = session.as_downstream().as_http1() {
                if http_checks::raw_header_count(&h1.get_headers_raw_bytes(), "content-length") > 0
                {
                    return Err(Outcome::bad_request(
                        "both Content-Length and Transfer-Encoding",
                    ));
                }
            }
        }
        let live = ctx.live.clone();
        if http_checks::header_block_size(&req.headers) > live.max_header_bytes {
            return Err(Outcome::HeadersTooLarge);
        }
        let judged_host = request_host(req)?;
        let host = judged_host.host.clone();
        // Routing, the checks and the plugins must judge the very target
        // that is forwarded: only origin-form (`/path?query`) goes through.
        // An absolute-form target (`http://host/path`) must name the host
        // routed by, and is forwarded in origin-form; anything else (`*`,
        // `x:/admin`, raw non-ASCII bytes) is refused.
        if let Some(origin_form) = origin_form(req.raw_path(), &host)? {
            session
                .req_header_mut()
                .set_raw_path(origin_form.as_bytes())
                .map_err(|_| Outcome::bad_request("invalid request target"))?;
        }
        let req = session.req_header();
        // One judgement of the path for routing, the checks and plugins.
        // The route is found on the path judged with every opt-in allowed
        // (parameters removed), then the path is judged by the route's own
        // rules: what it does not allow is refused.
        let loose = PathOptions {
            allow_params: true,
            allow_encoded_slash: true,
        };
        let bad_path = |e: PathError| Outcome::bad_request(&e.to_string());
        let judged = judge_path(req.uri.path(), loose).map_err(bad_path)?;
        let route = live
            .routes
            .resolve(&host, &judged.path)
            .ok_or_else(|| Outcome::NoRoute { host: host.clone() })?;
        let strict = PathOptions {
            allow_params: route.allow_path_params,
            allow_encoded_slash: route.allow_encoded_slash,
        };
        if strict != loose {
            judge_path(req.uri.path(), strict).map_err(bad_path)?;
        }
        ctx.host = host;
        ctx.authority = judged_host.authority();
        ctx.path = judged.path;
        ctx.route = Some(route.route.clone());
        ctx.upgrade = http_checks::is_websocket_upgrade(&req.headers);

        let source = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if let Some(left) = source.and_then(|ip| self.failures.exhausted(ip)) {
            return Err(Outcome::TooManyFailures { retry_after: left });
        }
        let caller = match bearer(req) {
            Some(token) => self.registry.caller(token).await.map_err(|e| {
                tracing::error!("caller lookup failed: {e}");
                Outcome::StoreUnavailable("credential")
            })?,
            None => None,
        };
        let Some(caller) = caller else {
            if let Some(ip) = source {
                self.failures.record(ip);
            }
            return Err(Outcome::NoCredential);
        };

        let no_tunnel = || Outcome::NoTunnel {
            name: route.tunnel.to_string(),
        };
        let tunnel = self
            .registry
            .tunnel_by_name(&route.tunnel)
            .await
            .map_err(|e| {
                tracing::error!("tunnel lookup failed: {e}");
                Outcome::StoreUnavailable("tunnel")
            })?
            .ok_or_else(no_tunnel)?;
        // The host keeps organizations apart on every request, whatever
        // the chain holds (a chain without `org-check`, or a plugin file
        // replaced by another), unless the route opts out. On the
        // wildcard a foreign tunnel answers exactly like a missing one, so
        // tunnel names of other organizations cannot be probed; an
        // explicit route's host is public anyway, and its chain gets to
        // explain the refusal first (see `judge`).
        let foreign = caller.org != tunnel.org && !route.cross_org;
        if foreign && route.index.is_none() {
            return Err(no_tunnel());
        }
        let chain = match route.index {
            Some(i) => live.chains[i].clone(),
            None => live.wildcard_chain.clone(),
        };
        ctx.caller = Some(caller);
        ctx.tunnel = Some(tunnel);

        ctx.body_limit = route.max_body_bytes;
        if let Some(len) = http_checks::content_length(&req.headers) {
            if len > ctx.body_limit {
                return Err(Outcome::BodyTooLarge {
                    declared: Some(len),
                    limit: ctx.body_limit,
                });
            }
        }
        if !chain.is_empty() {
            self.run_policy(session, ctx, &chain, route.form_body_bytes)
                .await?;
        }
        if foreign {
            return Err(Outcome::OtherOrganization);
        }
        Ok(())
    }
}

/// Checks a request target: `None` for origin-form, the origin-form to
/// forward for an absolute-form target naming `host`, a 400 otherwise.
fn origin_form(raw: &[u8], host: &str) -> std::result::Result<Option<String>, Outcome> {
    if !raw.is_ascii() {
        return Err(Outcome::bad_request("request target is not ASCII"));
    }
    if raw.first() == Some(&b'/') {
        return Ok(None);
    }
    let lower = raw.to_ascii_lowercase();
    if !(lower.starts_with(b"http://") || lower.starts_with(b"https://")) {
        return Err(Outcome::bad_request(
            "request target must be a path or an http(s) URL",
        ));
    }
    let uri: http::Uri = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Outcome::bad_request("invalid request target"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| Outcome::bad_request("invalid request target"))?;
    if judge_host(authority.as_str())
        .ok()
        .map(|h| h.host)
        .as_deref()
        != Some(host)
    {
        return Err(Outcome::bad_request("request target and Host disagree"));
    }
    Ok(Some(uri.path_and_query().map_or_else(
        || "/".to_string(),
        |p| p.as_str().to_string(),
    )))
}

fn bearer(req: &RequestHeader) -> Option<&str> {
    let v = req
        .headers
        .get(header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty() && t.len() <= 256)
}

/// The judged Host: HTTP/1 `Host`, else the HTTP/2 authority.
fn request_host(req: &RequestHeader) -> std::result::Result<JudgedHost, Outcome> {
    let raw = match req.headers.get(header::HOST) {
        Some(h) => h
            .to_str()
            .map_err(|_| Outcome::bad_request("Host is not ASCII"))?,
        None => req.uri.authority().map_or("", |a| a.as_str()),
    };
    judge_host(raw).map_err(|e| Outcome::bad_request(&e.to_string()))
}
