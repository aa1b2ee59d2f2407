//! The public request path, as pingora `ProxyHttp` phases:
//!
//! - `request_filter`: framing checks (400), header size (431), route (404),
//!   caller credential (401), tunnel (404/503), declared body size (413),
//!   then the route's policy plugin chain (the plugin's denial, or 500/503
//!   when a plugin fails);
//! - then every request but a WebSocket upgrade is one HTTP/2 stream to
//!   the least busy agent of the tunnel ([`exchange`]), written from this
//!   phase; an upgrade goes on through pingora's proxy loop:
//! - `upstream_peer`: the least busy agent of the tunnel, reached through a
//!   [`TunnelConnector`] (a `CONNECT` stream) with the agent's connection
//!   id and the caller as pool group key;
//! - `upstream_request_filter`: hop-by-hop and caller-forbidden headers out,
//!   the plugins' header edits applied, forwarding headers in; request line, query, `Host` and `Authorization`
//!   untouched;
//! - `fail_to_proxy`: the one place where error origins become statuses;
//! - `logging`: the access-log line, the request metrics and the end of the
//!   request's span.
//!
//! Every request is a `request` span (continuing the caller's W3C
//! `traceparent`, or starting a trace) with children for each plugin call,
//! the choice of agent and the tunnel stream; the stream's context goes to
//! the agent in `traceparent`, so the agent's spans join the same trace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use telemetry::{self, attr, TraceCtx, SPAN_TARGET};

use crate::config::GatewayConfig;
use crate::connector::TunnelConnector;
use crate::http_checks;
use crate::judgement::{judge_host, judge_path, JudgedHost, PathError, PathOptions};
use crate::live::{Current, Live};
use crate::plugins::{ChainEntry, HeaderEdit, PolicyContext, PolicyRequest, Verdict, WitHeader};
use crate::registry::{AgentConn, InflightGuard, Registry};
use crate::retry::{self, Attempt, Decision, NotRetried, RetryReason};
use crate::store::{CallerInfo, TunnelInfo};

mod exchange;

/// Seconds a caller is told to wait when no agent is connected.
const RETRY_AFTER_SECS: &str = "5";

/// The upstream "address" of every tunnel stream (never a real socket).
const TUNNEL_PEER: &str = "tunnel-stream.invalid";

/// The gateway's `ProxyHttp` implementation.
pub struct TunnelProxy {
    /// Routes, plugin chains and per-request limits; each request reads
    /// the snapshot once, in `new_ctx` (see [`crate::live`]).
    live: Current,
    registry: Arc<Registry>,
    tls: bool,
    /// Failed caller credentials per source address (its budget is
    /// changed by a live reload; the counts carry over).
    failures: Arc<crate::auth_limit::FailureBudget>,
    /// Keys pooled tunnel streams by agent connection and caller, seeded
    /// per process.
    pool_keys: std::collections::hash_map::RandomState,
}

impl TunnelProxy {
    /// Builds the proxy from config; `live` is the configuration's
    /// snapshot, shared with the reloader, and `failures` the budget of
    /// failed credentials.
    pub fn new(
        cfg: &GatewayConfig,
        registry: Arc<Registry>,
        live: Current,
        failures: Arc<crate::auth_limit::FailureBudget>,
    ) -> Self {
        TunnelProxy {
            live,
            registry,
            tls: cfg.public.tls_cert.is_some(),
            pool_keys: Default::default(),
            failures,
        }
    }
}

/// Per-request state.
pub struct Ctx {
    /// The configuration this request runs on, from its start to its end.
    live: Arc<Live>,
    started: Instant,
    /// Host without port, lower-case: what routing matched.
    host: String,
    /// The judged `host[:port]`, rebuilt from validated parts: what the
    /// forwarding headers and plugins get, never the caller's raw value.
    authority: String,
    /// The judged (normalised) path: what routing matched and plugins see.
    path: String,
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
    /// W3C trace id of `span`: the caller's trace, else a new one.
    trace_id: String,
    /// Microseconds the plugin chain took (0 without plugins).
    policy_us: u64,
    /// The request's span (server kind); ends when the request is logged.
    span: tracing::Span,
    /// The current attempt's tunnel stream span (client kind), the parent
    /// of the agent's spans.
    stream_span: tracing::Span,
    /// The request's trace, exported or not: what goes on in `traceparent`.
    trace: Option<TraceCtx>,
    /// The agent connection a retry must not pick again: the request's
    /// stream to it broke or could not be opened.
    avoid_agent: Option<u64>,
    /// The agent this request was lost on after reaching it (see
    /// [`crate::retry`]), for the caller's 502.
    lost: Option<Lost>,
    /// Retries so far, by kind (see [`crate::retry`] for the bounds).
    stale_retries: u32,
    lost_retries: u32,
    /// An agent `exchange` picked that speaks protocol 1: the request goes
    /// to it through pingora's proxy loop.
    picked: Option<Arc<AgentConn>>,
    /// The final response head went to the caller (a stream of its own,
    /// [`exchange`]): no retry after that.
    response_started: bool,
}

/// A request whose tunnel stream broke after the request was written.
struct Lost {
    agent: String,
    /// Why it was not sent again; `None` when a retry was started.
    not_retried: Option<NotRetried>,
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
    if judge_host(authority.as_str())
        .ok()
        .map(|h| h.host)
        .as_deref()
        != Some(host)
    {
        return Err(Refusal::bad_request("request target and Host disagree"));
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
fn request_host(req: &RequestHeader) -> std::result::Result<JudgedHost, Refusal> {
    let raw = match req.headers.get(header::HOST) {
        Some(h) => h
            .to_str()
            .map_err(|_| Refusal::bad_request("Host is not ASCII"))?,
        None => req.uri.authority().map_or("", |a| a.as_str()),
    };
    judge_host(raw).map_err(|e| Refusal::bad_request(&e.to_string()))
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
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
    /// A plugin's own answer (headers, body) instead of `body`.
    denial: Option<Box<(Vec<WitHeader>, Vec<u8>)>>,
    /// The plugin that refused (or failed), for the request's span.
    plugin: Option<Arc<str>>,
}

impl Refusal {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Refusal {
            status,
            body: body.into(),
            close: false,
            extra: &[],
            retry_after: None,
            denial: None,
            plugin: None,
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
    /// Keys kept-alive connections by agent connection and caller: a
    /// connection never serves another agent, and never another caller.
    fn pool_key(&self, ctx: &Ctx, agent: &AgentConn) -> u64 {
        use std::hash::BuildHasher;
        let caller = ctx.caller.as_ref().map_or("", |c| c.id.as_str());
        self.pool_keys.hash_one((agent.conn_id, caller))
    }

    /// The least busy agent of the request's tunnel (not the one a retry
    /// must avoid), held in `ctx.guard` until the request is logged, with
    /// this attempt's stream span.
    fn pick_agent(&self, ctx: &mut Ctx) -> Result<Arc<AgentConn>> {
        let tunnel = ctx
            .tunnel
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no tunnel resolved"))?;
        // A retry picks again; release the previous agent first.
        ctx.guard = None;
        let select = tracing::info_span!(target: SPAN_TARGET, parent: &ctx.span, "select agent");
        let traced = !select.is_disabled();
        if traced {
            attr(&select, "tunnel.name", tunnel.name.clone());
        }
        let guard = match self.registry.pick_except(&tunnel.id, ctx.avoid_agent) {
            Ok(g) => g,
            Err(_) => {
                ctx.no_agent = true;
                telemetry::error(&select, "no agent connected");
                return Error::e_explain(ErrorType::HTTPStatus(503), "no agent connected");
            }
        };
        let agent = guard.agent().clone();
        if traced {
            attr(&select, "tunnel.agent", agent.agent_name.clone());
            attr(&select, "tunnel.agent.inflight", agent.inflight() as i64);
        }
        drop(select);
        ctx.guard = Some(guard);
        // One stream span per attempt; a retry's replaces (and ends) the last.
        let stream = tracing::info_span!(target: SPAN_TARGET, parent: &ctx.span, "tunnel stream", otel.kind = "client");
        if traced {
            attr(&stream, "tunnel.name", tunnel.name.clone());
            attr(&stream, "tunnel.agent", agent.agent_name.clone());
        }
        ctx.stream_span = stream;
        Ok(agent)
    }

    /// The head sent on: hop-by-hop and caller-forbidden headers out, the
    /// plugins' header edits applied, forwarding headers in; request line,
    /// query, `Host` and `Authorization` untouched.
    fn rewrite_head(
        &self,
        session: &Session,
        upstream: &mut RequestHeader,
        ctx: &Ctx,
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
                format!("for={node};proto={proto};host=\"{}\"", ctx.authority),
            )?;
        }
        upstream.insert_header("x-forwarded-proto", proto)?;
        upstream.insert_header("x-forwarded-host", ctx.authority.as_str())?;
        Ok(())
    }

    /// Whether a failed attempt goes again (`retry::decide`), with the
    /// request's retry counts, the agent to avoid and the loss recorded in
    /// `ctx`.
    fn judge_failure(
        &self,
        e: &Error,
        method: &http::Method,
        response_started: bool,
        body_truncated: bool,
        ctx: &mut Ctx,
    ) -> bool {
        let agent = ctx.guard.as_ref().map(|g| g.agent().clone());
        let other_agent = match (&ctx.tunnel, &agent) {
            (Some(t), Some(a)) => self.registry.has_other_agent(&t.id, a.conn_id),
            _ => false,
        };
        let decision = retry::decide(&Attempt {
            error: e,
            method,
            response_started,
            body_truncated,
            stale_retries: ctx.stale_retries,
            lost_retries: ctx.lost_retries,
            other_agent,
            same_agent_serving: agent.as_ref().is_some_and(|a| a.is_serving()),
        });
        let agent_name = agent.as_ref().map_or("?", |a| a.agent_name.as_str());
        let tunnel = ctx.tunnel.as_ref().map_or("?", |t| t.name.as_str());
        match decision {
            Decision::Retry(reason) => {
                match reason {
                    RetryReason::StreamClosed => {
                        ctx.lost_retries += 1;
                        ctx.lost = Some(Lost {
                            agent: agent_name.to_string(),
                            not_retried: None,
                        });
                    }
                    RetryReason::AgentLost => {
                        ctx.lost_retries += 1;
                        ctx.avoid_agent = agent.as_ref().map(|a| a.conn_id);
                        ctx.lost = Some(Lost {
                            agent: agent_name.to_string(),
                            not_retried: None,
                        });
                    }
                    _ => ctx.stale_retries += 1,
                }
                tracing::info!(%tunnel, agent = agent_name, reason = reason.label(), trace_id = %ctx.trace_id, "tunnel stream broke before a response; sending the request again");
                crate::metrics::request_retried(reason.label());
                true
            }
            Decision::Lost(why) => {
                tracing::warn!(%tunnel, agent = agent_name, reason = why.label(), trace_id = %ctx.trace_id, "tunnel stream broke after the request was sent; not sending it again");
                crate::metrics::request_lost(why.label());
                ctx.lost = Some(Lost {
                    agent: agent_name.to_string(),
                    not_retried: Some(why),
                });
                false
            }
            Decision::Other => false,
        }
    }

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
        let live = ctx.live.clone();
        if http_checks::header_block_size(&req.headers) > live.max_header_bytes {
            return Err(Refusal {
                close: true,
                ..Refusal::new(431, "request header fields too large")
            });
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
                .map_err(|_| Refusal::bad_request("invalid request target"))?;
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
        let bad_path = |e: PathError| Refusal::bad_request(&e.to_string());
        let judged = judge_path(req.uri.path(), loose).map_err(bad_path)?;
        let route = live
            .routes
            .resolve(&host, &judged.path)
            .ok_or_else(|| Refusal::new(404, format!("no route for host `{host}`")))?;
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
            return Err(Refusal {
                close: true,
                retry_after: Some(left.as_secs().max(1)),
                ..Refusal::new(
                    429,
                    "too many unknown caller credentials from this address; retry later",
                )
            });
        }
        let caller = match bearer(req) {
            Some(token) => self.registry.caller(token).await.map_err(|e| {
                tracing::error!("caller lookup failed: {e}");
                Refusal::store_unavailable("credential")
            })?,
            None => None,
        };
        let Some(caller) = caller else {
            if let Some(ip) = source {
                self.failures.record(ip);
            }
            return Err(Refusal {
                extra: &[("proxy-authenticate", "Bearer realm=\"tunnel-gateway\"")],
                ..Refusal::new(
                    401,
                    "missing or unknown caller credential (Proxy-Authorization: Bearer <token>)",
                )
            });
        };

        let no_tunnel = || Refusal::new(404, format!("no tunnel named `{}`", route.tunnel));
        let tunnel = self
            .registry
            .tunnel_by_name(&route.tunnel)
            .await
            .map_err(|e| {
                tracing::error!("tunnel lookup failed: {e}");
                Refusal::store_unavailable("tunnel")
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
        if foreign {
            return Err(Refusal::new(
                403,
                "this caller's organization may not use this tunnel",
            ));
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
            self.form_body(session, form_body_bytes, ctx.live.upstream_timeout)
                .await?
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
            Verdict::Deny { plugin, denial } => Err(Refusal {
                denial: Some(Box::new((denial.headers, denial.body))),
                plugin: Some(plugin),
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
                    plugin: Some(plugin),
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
        upstream_timeout: Duration,
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
        match tokio::time::timeout(upstream_timeout, read).await {
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
            live: self.live.load_full(),
            started: Instant::now(),
            host: String::new(),
            authority: String::new(),
            path: String::new(),
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
            span: tracing::Span::none(),
            stream_span: tracing::Span::none(),
            trace: None,
            avoid_agent: None,
            lost: None,
            stale_retries: 0,
            lost_retries: 0,
            response_started: false,
            picked: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.span = request_span(session, self.tls);
        let req = session.req_header();
        let trace = TraceCtx::start(
            &ctx.span,
            req.headers.get("traceparent").map(|v| v.as_bytes()),
            req.headers.get("tracestate").map(|v| v.as_bytes()),
        );
        ctx.trace_id = trace.trace_id();
        ctx.trace = Some(trace);
        match self.admit(session, ctx).await {
            // A WebSocket upgrade goes through pingora's proxy loop on a
            // `CONNECT` stream (`upstream_peer`); every other request is
            // one HTTP/2 stream of its own ([`exchange`]).
            Ok(()) if ctx.upgrade => Ok(false),
            Ok(()) => self.exchange(session, ctx).await,
            Err(mut r) => {
                // A body left unread would have to be drained before the
                // connection could serve another request: close instead.
                if !session.as_mut().is_body_done() {
                    r.close = true;
                    session.set_keepalive(None);
                }
                tracing::info!(client = ?session.client_addr(), status = r.status, trace_id = %ctx.trace_id, "refused: {:?}", r.body);
                // Which plugin refused and why: its status and its reason
                // (never the request's credentials or signatures).
                if !ctx.span.is_disabled() {
                    if let Some(p) = &r.plugin {
                        attr(&ctx.span, "policy.refused_by", p.to_string());
                    }
                    attr(&ctx.span, "refusal.reason", r.body.clone());
                }
                match r.denial {
                    Some(denial) => {
                        let (headers, body) = *denial;
                        reply_denial(session, r.status, &headers, body, r.close).await?
                    }
                    None => match r.retry_after {
                        Some(secs) => {
                            let secs = secs.to_string();
                            let extra = [("retry-after", secs.as_str())];
                            reply(session, r.status, &r.body, r.close, &extra).await?
                        }
                        None => reply(session, r.status, &r.body, r.close, r.extra).await?,
                    },
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
        // An agent of protocol 1, picked by `exchange`, takes the request
        // over a `CONNECT` stream; a retry picks again.
        let agent = match ctx.picked.take() {
            Some(agent) => agent,
            None => self.pick_agent(ctx)?,
        };
        // The address only names the peer in logs: the connector opens a
        // tunnel stream, whatever it says.
        let mut peer = HttpPeer::new_uds(TUNNEL_PEER, false, String::new())?;
        // Pool key per agent connection and caller: a pooled stream never
        // serves another agent (pingora's pool key ignores custom_l4), and
        // never another caller. A local service that ties authentication
        // to the TCP connection (NTLM, Negotiate) would otherwise answer a
        // later caller on an earlier caller's authenticated connection.
        peer.group_key = self.pool_key(ctx, &agent);
        peer.options.custom_l4 = Some(Arc::new(TunnelConnector::new(agent)));
        peer.options.read_timeout = (!ctx.upgrade).then_some(ctx.live.upstream_timeout);
        peer.options.write_timeout = Some(ctx.live.upstream_timeout);
        peer.options.idle_timeout = Some(ctx.live.pool_idle);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // The agent connection vanished before the stream opened: nothing
        // was sent, so another agent may take the request (pingora's
        // `max_retries` bounds how often).
        if *e.etype() == ErrorType::ConnectError {
            e.set_retry(true);
            ctx.avoid_agent = ctx.guard.as_ref().map(|g| g.agent().conn_id);
            crate::metrics::request_retried(RetryReason::Connect.label());
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        // Replaces pingora's default, which retries any idempotent request
        // whose reused stream closed before the response, even after the
        // agent received it. `retry::decide` holds our rules.
        let mut e = e.more_context(format!("Peer: {peer}"));
        let method = session.req_header().method.clone();
        let retry = self.judge_failure(
            &e,
            &method,
            session.response_written().is_some(),
            session.as_ref().retry_buffer_truncated(),
            ctx,
        );
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.rewrite_head(session, upstream, ctx)?;
        set_traceparent(upstream, ctx)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let tunnel = ctx.tunnel.as_ref().map_or("?", |t| t.name.as_str());
        let method = session.req_header().method.clone();
        // A request lost with its agent is 502, never the 503 of a tunnel
        // without agents, even when the retry found no agent left.
        let lost = ctx.lost.as_ref().and_then(|l| {
            let why = match (l.not_retried, e.etype()) {
                (Some(n), _) => n.explain(method.as_str()),
                (None, ErrorType::HTTPStatus(503)) if ctx.no_agent => {
                    NotRetried::NoOtherAgent.explain(method.as_str())
                }
                _ => return None,
            };
            Some(format!(
                "agent `{}` of tunnel `{tunnel}` was lost after the request reached it; {why}",
                l.agent
            ))
        });
        let (code, msg): (u16, String) = match (e.etype(), e.esource()) {
            _ if lost.is_some() => (502, lost.unwrap_or_default()),
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

    /// What pingora's own error lines ("Fail to proxy: …") say about the
    /// request. Its default prints the path with the query and the raw
    /// Host; a query may carry `oauth_token`, `oauth_signature` or an API
    /// key, so only the method, the path without query and the judged
    /// host are written, escaped.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        let path = if ctx.path.is_empty() {
            req.uri.path()
        } else {
            ctx.path.as_str()
        };
        format!(
            "{} {:?}, host: {:?}",
            req.method,
            clip_chars(path, 256),
            if ctx.authority.is_empty() {
                "-"
            } else {
                ctx.authority.as_str()
            }
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let agent = ctx.guard.as_ref().map(|g| g.agent().agent_name.as_str());
        let elapsed = ctx.started.elapsed();
        let route = ctx.route.as_deref().unwrap_or("-");
        let tunnel = ctx.tunnel.as_ref().map_or("-", |t| t.name.as_str());
        let bytes_in = session.as_downstream().body_bytes_read() as u64;
        let bytes_out = session.as_downstream().body_bytes_sent() as u64;
        tracing::info!(
            target: "access",
            method = %session.req_header().method,
            host = %ctx.host,
            route,
            tunnel,
            org = ctx.caller.as_ref().map_or("-", |c| c.org.as_str()),
            agent = agent.unwrap_or("-"),
            status,
            duration_ms = elapsed.as_millis() as u64,
            bytes_in,
            bytes_out,
            policy_us = ctx.policy_us,
            trace_id = %ctx.trace_id,
            error = e.map(|e| e.to_string()),
            "request"
        );
        let m = &crate::metrics::METRICS;
        m.requests
            .get_or_create(&crate::metrics::RequestLabels {
                route: route.to_string(),
                tunnel: tunnel.to_string(),
                status: telemetry::status_label(status),
            })
            .inc();
        let labels = crate::metrics::RouteLabels {
            route: route.to_string(),
            tunnel: tunnel.to_string(),
        };
        m.request_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        m.request_body_bytes.get_or_create(&labels).inc_by(bytes_in);
        m.response_body_bytes
            .get_or_create(&labels)
            .inc_by(bytes_out);
        finish_request_span(ctx, status, agent, e);
        ctx.guard = None;
        // The stream ends before the request it belongs to.
        ctx.stream_span = tracing::Span::none();
        ctx.span = tracing::Span::none();
    }
}

/// The trace goes on through the tunnel: the agent's spans become children
/// of this attempt's stream span.
fn set_traceparent(upstream: &mut RequestHeader, ctx: &Ctx) -> Result<()> {
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

/// The request's span, continuing the caller's `traceparent` when valid.
/// Only the path is recorded, never the query: it may carry credentials.
fn request_span(session: &Session, tls: bool) -> tracing::Span {
    let req = session.req_header();
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        otel.kind = "server",
    );
    if span.is_disabled() {
        // No collector: no span, and no attribute work either.
        return span;
    }
    attr(
        &span,
        "http.request.method",
        req.method.as_str().to_string(),
    );
    attr(&span, "url.scheme", if tls { "https" } else { "http" });
    let path = req.uri.path();
    attr(&span, "url.path", clip_chars(path, 512));
    let version = match req.version {
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    attr(&span, "network.protocol.version", version);
    if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()) {
        attr(&span, "client.address", ip.ip().to_string());
    }
    span
}

/// Records the outcome on the request's span and the last stream span.
fn finish_request_span(ctx: &Ctx, status: u16, agent: Option<&str>, e: Option<&Error>) {
    let span = &ctx.span;
    if span.is_disabled() {
        return;
    }
    if let Some(route) = ctx.route.as_deref() {
        attr(span, "http.route", route.to_string());
    }
    if !ctx.host.is_empty() {
        attr(span, "server.address", ctx.host.clone());
    }
    if let Some(t) = &ctx.tunnel {
        attr(span, "tunnel.name", t.name.clone());
        attr(span, "tunnel.org", t.org.clone());
    }
    if let Some(c) = &ctx.caller {
        attr(span, "caller.org", c.org.clone());
        attr(span, "caller.id", c.id.clone());
    }
    if let Some(a) = agent {
        attr(span, "tunnel.agent", a.to_string());
    }
    if status > 0 {
        attr(span, "http.response.status_code", i64::from(status));
    }
    let stream = &ctx.stream_span;
    if status >= 500 || (status == 0 && e.is_some()) {
        let why = e.map_or_else(|| format!("status {status}"), |e| e.to_string());
        attr(
            span,
            "error.type",
            if status > 0 {
                status.to_string()
            } else {
                "aborted".into()
            },
        );
        telemetry::error(stream, why.clone());
        telemetry::error(span, why);
    }
    if status > 0 {
        attr(stream, "http.response.status_code", i64::from(status));
    }
}

/// At most `n` characters of `s`.
fn clip_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
