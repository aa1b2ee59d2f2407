//! The public request path, as pingora `ProxyHttp` phases:
//!
//! - `request_filter`: framing checks (400), header size (431), route (404),
//!   caller credential (401), tunnel (404/503), declared body size (413),
//!   then the route's policy plugin chain (the plugin's denial, or 500/503
//!   when a plugin fails);
//! - `upstream_peer`: the least busy agent of the tunnel, reached through a
//!   [`TunnelConnector`] with the agent's connection id as pool group key;
//! - `upstream_request_filter`: hop-by-hop and caller-forbidden headers out,
//!   the plugins' header edits applied, forwarding headers in; request line, query, `Host` and `Authorization`
//!   untouched;
//! - `fail_to_proxy`: the one place where error origins become statuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::bridge::Bridge;
use crate::config::GatewayConfig;
use crate::connector::TunnelConnector;
use crate::http_checks;
use crate::plugins::{
    ChainEntry, HeaderEdit, Plugins, PolicyContext, PolicyRequest, Verdict, WitHeader,
};
use crate::registry::{InflightGuard, Registry};
use crate::routes::{normalize_host, Routes};
use crate::store::{CallerInfo, TunnelInfo};

/// Seconds a caller is told to wait when no agent is connected.
const RETRY_AFTER_SECS: &str = "5";

/// The gateway's `ProxyHttp` implementation.
pub struct TunnelProxy {
    routes: Routes,
    plugins: Arc<Plugins>,
    /// The plugin chain of each configured route, by index.
    chains: Vec<Arc<[ChainEntry]>>,
    /// The plugin chain of wildcard (`<tunnel>.<base_domain>`) requests.
    wildcard_chain: Arc<[ChainEntry]>,
    registry: Arc<Registry>,
    bridge: Arc<Bridge>,
    max_header_bytes: usize,
    upstream_timeout: Duration,
    pool_idle: Duration,
    tls: bool,
}

impl TunnelProxy {
    /// Builds the proxy from config.
    pub fn new(
        cfg: &GatewayConfig,
        registry: Arc<Registry>,
        bridge: Arc<Bridge>,
        plugins: Arc<Plugins>,
    ) -> Self {
        TunnelProxy {
            routes: Routes::new(cfg),
            chains: cfg
                .routes
                .iter()
                .map(|r| plugins.chain(&r.plugins))
                .collect(),
            wildcard_chain: plugins.chain(&cfg.routing.plugins),
            plugins,
            registry,
            bridge,
            max_header_bytes: cfg.public.max_header_bytes,
            upstream_timeout: Duration::from_secs(cfg.public.upstream_timeout_secs),
            pool_idle: Duration::from_secs(cfg.public.keepalive_secs),
            tls: cfg.public.tls_cert.is_some(),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    /// Host without port, lower-case: what routing matched.
    host: String,
    /// Host as the caller sent it (port included), for X-Forwarded-Host.
    host_header: String,
    route: Option<Arc<str>>,
    tunnel: Option<TunnelInfo>,
    caller: Option<CallerInfo>,
    body_limit: u64,
    body_seen: u64,
    upgrade: bool,
    no_agent: bool,
    guard: Option<InflightGuard>,
    /// Header edits of the plugin chain, applied before forwarding.
    edits: Vec<HeaderEdit>,
    /// W3C trace id: the caller's `traceparent`, else a new one.
    trace_id: String,
    /// Microseconds the plugin chain took (0 without plugins).
    policy_us: u64,
}

/// Writes a complete short response from the gateway itself.
async fn reply(
    session: &mut Session,
    status: u16,
    body: &str,
    close: bool,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let body = Bytes::from(format!("{body}\n"));
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    for (k, v) in extra {
        resp.insert_header(*k, *v)?;
    }
    if close {
        resp.insert_header(header::CONNECTION, "close")?;
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Checks a request target: `None` for origin-form, the origin-form to
/// forward for an absolute-form target naming `host`, a 400 otherwise.
fn origin_form(raw: &[u8], host: &str) -> std::result::Result<Option<String>, Refusal> {
    if !raw.is_ascii() {
        return Err(Refusal::bad_request("request target is not ASCII"));
    }
    if raw.first() == Some(&b'/') {
        return Ok(None);
    }
    let lower = raw.to_ascii_lowercase();
    if !(lower.starts_with(b"http://") || lower.starts_with(b"https://")) {
        return Err(Refusal::bad_request(
            "request target must be a path or an http(s) URL",
        ));
    }
    let uri: http::Uri = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Refusal::bad_request("invalid request target"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| Refusal::bad_request("invalid request target"))?;
    if normalize_host(authority.as_str()).as_deref() != Some(host) {
        return Err(Refusal::bad_request("request target and Host disagree"));
    }
    Ok(Some(uri.path_and_query().map_or_else(
        || "/".to_string(),
        |p| p.as_str().to_string(),
    )))
}

/// The trace id of a valid W3C `traceparent` (version 00), else a new
/// random one.
fn trace_id(req: &RequestHeader) -> String {
    let parsed = req
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let mut parts = v.trim().split('-');
            let (ver, id) = (parts.next()?, parts.next()?);
            let ok = ver == "00"
                && id.len() == 32
                && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                && id.bytes().any(|b| b != b'0');
            ok.then(|| id.to_string())
        });
    parsed.unwrap_or_else(|| hex::encode(rand::random::<[u8; 16]>()))
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

/// The Host as sent (HTTP/1 `Host`, else the HTTP/2 authority) and its
/// normalized form for routing.
fn request_host(req: &RequestHeader) -> Option<(String, String)> {
    let raw = match req.headers.get(header::HOST) {
        Some(h) => h.to_str().ok()?.trim().to_string(),
        None => req.uri.authority()?.as_str().to_string(),
    };
    let host = normalize_host(&raw)?;
    Some((raw, host))
}

/// Writes a plugin's denial: its status, headers and body.
async fn reply_denial(
    session: &mut Session,
    status: u16,
    headers: &[WitHeader],
    body: Vec<u8>,
    close: bool,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + headers.len()))?;
    if close {
        resp.insert_header(header::CONNECTION, "close")?;
    }
    for h in headers {
        // Names and values were checked by the plugin host.
        resp.append_header(h.name.clone(), h.value.as_slice())?;
    }
    if !headers.iter().any(|h| h.name == "content-type") && !body.is_empty() {
        resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// Why the gateway answers a request itself instead of forwarding it.
struct Refusal {
    status: u16,
    body: String,
    /// Close the connection after answering (framing could not be trusted).
    close: bool,
    extra: &'static [(&'static str, &'static str)],
    /// A plugin's own answer (headers, body) instead of `body`.
    denial: Option<(Vec<WitHeader>, Vec<u8>)>,
}

impl Refusal {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Refusal {
            status,
            body: body.into(),
            close: false,
            extra: &[],
            denial: None,
        }
    }

    /// A 400 that closes the connection: after a framing or target problem
    /// nothing more on this connection can be trusted.
    fn bad_request(why: &str) -> Self {
        Refusal {
            close: true,
            ..Refusal::new(400, format!("bad request: {why}"))
        }
    }

    fn store_unavailable(what: &str) -> Self {
        Refusal {
            extra: &[("retry-after", RETRY_AFTER_SECS)],
            ..Refusal::new(503, format!("{what} store unavailable"))
        }
    }
}

impl TunnelProxy {
    /// Every check before a request may enter a tunnel, in order: framing
    /// (400), header size (431), Host and target (400), route (404), caller
    /// (401), tunnel (404), declared body size (413), then the route's
    /// plugin chain (or, for a route without plugins, organization: 403).
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), Refusal> {
        let req = session.req_header();
        http_checks::check_framing(&req.headers).map_err(Refusal::bad_request)?;
        if req.headers.contains_key(header::TRANSFER_ENCODING) {
            // pingora drops Content-Length when Transfer-Encoding is present;
            // the raw header block still shows whether the caller sent both.
            if let Some(h1) = session.as_downstream().as_http1() {
                if http_checks::raw_header_count(&h1.get_headers_raw_bytes(), "content-length") > 0
                {
                    return Err(Refusal::bad_request(
                        "both Content-Length and Transfer-Encoding",
                    ));
                }
            }
        }
        if http_checks::header_block_size(&req.headers) > self.max_header_bytes {
            return Err(Refusal {
                close: true,
                ..Refusal::new(431, "request header fields too large")
            });
        }
        let (host_header, host) =
            request_host(req).ok_or_else(|| Refusal::bad_request("missing or invalid Host"))?;
        // Routing, the checks and the plugins must judge the very target
        // that is forwarded: only origin-form (`/path?query`) goes through.
        // An absolute-form target (`http://host/path`) must name the host
        // routed by, and is forwarded in origin-form; anything else (`*`,
        // `x:/admin`, raw non-ASCII bytes) is refused.
        if let Some(origin_form) = origin_form(req.raw_path(), &host)? {
            session
                .req_header_mut()
                .set_raw_path(origin_form.as_bytes())
                .map_err(|_| Refusal::bad_request("invalid request target"))?;
        }
        let req = session.req_header();
        http_checks::check_path(req.uri.path()).map_err(Refusal::bad_request)?;
        let route = self
            .routes
            .resolve(&host, req.uri.path())
            .ok_or_else(|| Refusal::new(404, format!("no route for host `{host}`")))?;
        ctx.host = host;
        ctx.host_header = host_header;
        ctx.route = Some(route.route.clone());
        ctx.upgrade = http_checks::is_websocket_upgrade(&req.headers);

        let caller = match bearer(req) {
            Some(token) => self.registry.caller(token).await.map_err(|e| {
                tracing::error!("caller lookup failed: {e}");
                Refusal::store_unavailable("credential")
            })?,
            None => None,
        };
        let caller = caller.ok_or_else(|| Refusal {
            extra: &[("proxy-authenticate", "Bearer realm=\"tunnel-gateway\"")],
            ..Refusal::new(
                401,
                "missing or unknown caller credential (Proxy-Authorization: Bearer <token>)",
            )
        })?;

        let tunnel = self
            .registry
            .tunnel_by_name(&route.tunnel)
            .await
            .map_err(|e| {
                tracing::error!("tunnel lookup failed: {e}");
                Refusal::store_unavailable("tunnel")
            })?
            .ok_or_else(|| Refusal::new(404, format!("no tunnel named `{}`", route.tunnel)))?;
        let chain = match route.index {
            Some(i) => self.chains[i].clone(),
            None => self.wildcard_chain.clone(),
        };
        // A route without plugins (allowed only when the config says so)
        // still keeps one organization away from another's tunnel. With
        // plugins, the chain decides (the `org-check` plugin does this).
        if chain.is_empty() && caller.org != tunnel.org {
            return Err(Refusal::new(
                403,
                "this caller's organization may not use this tunnel",
            ));
        }
        ctx.caller = Some(caller);
        ctx.tunnel = Some(tunnel);

        ctx.body_limit = route.max_body_bytes;
        if let Some(len) = http_checks::content_length(&req.headers) {
            if len > ctx.body_limit {
                return Err(Refusal {
                    close: true,
                    ..Refusal::new(
                        413,
                        format!(
                            "request body of {len} bytes exceeds this route's limit of {} bytes",
                            ctx.body_limit
                        ),
                    )
                });
            }
        }
        if !chain.is_empty() {
            self.judge(session, ctx, &chain, route.form_body_bytes)
                .await?;
        }
        Ok(())
    }

    /// Runs the plugin chain on the request.
    async fn judge(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        chain: &[ChainEntry],
        form_body_bytes: usize,
    ) -> std::result::Result<(), Refusal> {
        let body_prefix = if form_body_bytes > 0 && !ctx.upgrade {
            self.form_body(session, form_body_bytes).await?
        } else {
            None
        };
        let req = session.req_header();
        let (tunnel, caller) = match (&ctx.tunnel, &ctx.caller) {
            (Some(t), Some(c)) => (t, c),
            _ => return Err(Refusal::new(500, "internal gateway error")),
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
            authority: ctx.host_header.clone(),
            path_with_query: req
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
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
        let verdict = self.plugins.run(chain, &pctx, &preq).await;
        ctx.policy_us = started.elapsed().as_micros() as u64;
        match verdict {
            Verdict::Allow(edits) => {
                ctx.edits = edits;
                Ok(())
            }
            Verdict::Deny { denial, .. } => Err(Refusal {
                denial: Some((denial.headers, denial.body)),
                ..Refusal::new(denial.status, denial.reason)
            }),
            Verdict::Fail { plugin, failure } => {
                let (status, body) = failure.response(&plugin);
                Err(Refusal {
                    extra: if failure == crate::plugins::Failure::Busy {
                        &[("retry-after", "1")]
                    } else {
                        &[]
                    },
                    ..Refusal::new(status, body)
                })
            }
        }
    }

    /// Reads a form-encoded body whose `Content-Length` is within `limit`,
    /// keeping it in pingora's retry buffer so it is still forwarded.
    /// Other bodies are not read (plugins see none).
    async fn form_body(
        &self,
        session: &mut Session,
        limit: usize,
    ) -> std::result::Result<Option<Vec<u8>>, Refusal> {
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
                .map_err(|_| Refusal::bad_request("could not answer Expect: 100-continue"))?;
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
        match tokio::time::timeout(self.upstream_timeout, read).await {
            Ok(Ok(())) if body.len() == len => Ok(Some(body)),
            Ok(_) => Err(Refusal::bad_request(
                "request body does not match Content-Length",
            )),
            Err(_) => Err(Refusal {
                close: true,
                ..Refusal::new(408, "request body not received in time")
            }),
        }
    }
}

#[async_trait]
impl ProxyHttp for TunnelProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            host: String::new(),
            host_header: String::new(),
            route: None,
            tunnel: None,
            caller: None,
            body_limit: 0,
            body_seen: 0,
            upgrade: false,
            no_agent: false,
            guard: None,
            edits: Vec::new(),
            trace_id: String::new(),
            policy_us: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.trace_id = trace_id(session.req_header());
        match self.admit(session, ctx).await {
            Ok(()) => Ok(false),
            Err(mut r) => {
                // A body left unread would have to be drained before the
                // connection could serve another request: close instead.
                if !session.as_mut().is_body_done() {
                    r.close = true;
                    session.set_keepalive(None);
                }
                tracing::info!(client = ?session.client_addr(), status = r.status, trace_id = %ctx.trace_id, "refused: {:?}", r.body);
                match r.denial {
                    Some((headers, body)) => {
                        reply_denial(session, r.status, &headers, body, r.close).await?
                    }
                    None => reply(session, r.status, &r.body, r.close, r.extra).await?,
                }
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // After a WebSocket upgrade the "body" is the caller's frames: a
        // long-lived session, not an upload, so the body limit does not apply.
        if session.was_upgraded() {
            return Ok(());
        }
        if let Some(b) = body {
            ctx.body_seen += b.len() as u64;
            if ctx.body_seen > ctx.body_limit {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body exceeds the route's limit",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let tunnel = ctx
            .tunnel
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no tunnel resolved"))?;
        // A retry picks again; release the previous agent first.
        ctx.guard = None;
        let guard = match self.registry.pick(&tunnel.id) {
            Ok(g) => g,
            Err(_) => {
                ctx.no_agent = true;
                return Error::e_explain(ErrorType::HTTPStatus(503), "no agent connected");
            }
        };
        let agent = guard.agent().clone();
        ctx.guard = Some(guard);
        let mut peer =
            HttpPeer::new_uds(&self.bridge.path().to_string_lossy(), false, String::new())?;
        // Pool key per agent connection: a pooled stream never serves
        // another agent (pingora's pool key ignores custom_l4).
        peer.group_key = agent.conn_id;
        peer.options.custom_l4 = Some(Arc::new(TunnelConnector::new(agent, self.bridge.clone())));
        peer.options.read_timeout = (!ctx.upgrade).then_some(self.upstream_timeout);
        peer.options.write_timeout = Some(self.upstream_timeout);
        peer.options.idle_timeout = Some(self.pool_idle);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The agent connection vanished before the stream opened: nothing
        // was sent, so another agent may take the request.
        if *e.etype() == ErrorType::ConnectError {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
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
                format!("for={node};proto={proto};host=\"{}\"", ctx.host_header),
            )?;
        }
        upstream.insert_header("x-forwarded-proto", proto)?;
        upstream.insert_header("x-forwarded-host", ctx.host_header.as_str())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let tunnel = ctx.tunnel.as_ref().map_or("?", |t| t.name.as_str());
        let (code, msg): (u16, String) = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(503), _) if ctx.no_agent => (
                503,
                format!("no agent is connected for tunnel `{tunnel}`; retry shortly"),
            ),
            (ErrorType::HTTPStatus(413), _) => {
                (413, "request body exceeds this route's limit".into())
            }
            (ErrorType::HTTPStatus(c), _) => (*c, "request failed".into()),
            (ErrorType::ReadTimedout | ErrorType::WriteTimedout, ErrorSource::Upstream) => (
                504,
                format!("the local service behind tunnel `{tunnel}` did not answer in time"),
            ),
            (ErrorType::ConnectTimedout, _) => (
                504,
                format!("the local service behind tunnel `{tunnel}` did not accept in time"),
            ),
            (ErrorType::ConnectRefused, _) => (
                502,
                format!("the agent of tunnel `{tunnel}` could not reach its local service"),
            ),
            (_, ErrorSource::Upstream) => (
                502,
                format!("tunnel `{tunnel}` failed while the request was in flight"),
            ),
            (
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => (0, String::new()),
            (_, ErrorSource::Downstream) => (400, "bad request".into()),
            _ => (500, "internal gateway error".into()),
        };
        if code > 0 && session.response_written().is_none() {
            let extra: &[(&'static str, &str)] = if code == 503 {
                &[("retry-after", RETRY_AFTER_SECS)]
            } else {
                &[]
            };
            if let Err(err) = reply(session, code, &msg, true, extra).await {
                tracing::debug!("could not send error response: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let agent = ctx.guard.as_ref().map(|g| g.agent().agent_name.as_str());
        tracing::info!(
            target: "access",
            method = %session.req_header().method,
            host = %ctx.host,
            route = ctx.route.as_deref().unwrap_or("-"),
            tunnel = ctx.tunnel.as_ref().map_or("-", |t| t.name.as_str()),
            org = ctx.caller.as_ref().map_or("-", |c| c.org.as_str()),
            agent = agent.unwrap_or("-"),
            status,
            duration_ms = ctx.started.elapsed().as_millis() as u64,
            policy_us = ctx.policy_us,
            trace_id = %ctx.trace_id,
            error = e.map(|e| e.to_string()),
            "request"
        );
        ctx.guard = None;
    }
}
