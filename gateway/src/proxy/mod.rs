//! The public request path, as pingora `ProxyHttp` phases, each short and
//! handing off to the module that owns the step:
//!
//! - `request_filter`: the request's span and trace ([`observe`]), then
//!   every check before a request may enter a tunnel ([`admission`]:
//!   framing, header size, Host and target, route, caller, tunnel, declared
//!   body size), then the route's plugin chain ([`policy`]);
//! - then every request but a WebSocket upgrade is one HTTP/2 stream to
//!   the least busy agent of the tunnel ([`agents`] picks it, [`exchange`]
//!   writes it from this phase, [`rewrite`] makes its head); an upgrade goes
//!   on through pingora's proxy loop:
//! - `upstream_peer`: the agent, reached through a [`TunnelConnector`] (a
//!   `CONNECT` stream) with the agent's connection id and the caller as
//!   pool group key;
//! - `upstream_request_filter`: the same head rewrite ([`rewrite`]);
//! - `fail_to_connect`, `error_while_proxy`: whether a failed attempt goes
//!   again ([`agents`], by [`crate::retry`]'s rules);
//! - `fail_to_proxy`: the failure as an [`Outcome`];
//! - `logging`: the access-log line, the request metrics and the end of the
//!   request's span ([`observe`]).
//!
//! Whatever the gateway answers itself, refused or failed, is an
//! [`Outcome`], and its status is decided in one place:
//! [`Outcome::respond`], the README's table "What a caller is answered".
//!
//! Every request is a `request` span (continuing the caller's W3C
//! `traceparent`, or starting a trace) with children for each plugin call,
//! the choice of agent and the tunnel stream; the stream's context goes to
//! the agent in `traceparent`, so the agent's spans join the same trace.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use telemetry::TraceCtx;

use crate::cluster::Cluster;
use crate::config::GatewayConfig;
use crate::connector::TunnelConnector;
use crate::live::{Current, Live};
use crate::plugins::HeaderEdit;
use crate::registry::{AgentConn, InflightGuard, Registry};
use crate::retry::{NotRetried, RetryReason};
use crate::store::{CallerInfo, TunnelInfo};
use outcome::Outcome;
use rewrite::set_traceparent;

mod admission;
mod agents;
mod exchange;
mod observe;
mod outcome;
mod policy;
mod relay;
mod rewrite;

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
    /// With `[cluster]`: the instances a request can be relayed to.
    cluster: Option<Arc<Cluster>>,
    /// This proxy serves the relay listener: requests come admitted by
    /// another instance ([`relay`]), and are never relayed again.
    relayed: bool,
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
            cluster: None,
            relayed: false,
        }
    }

    /// Relays requests for tunnels without an agent here to the instance
    /// `cluster` says holds one.
    pub fn with_cluster(mut self, cluster: Arc<Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The relay listener's proxy: requests another instance admitted.
    pub fn relay_side(mut self) -> Self {
        self.relayed = true;
        self
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
    /// What the gateway answered itself, in its own words (a refusal or a
    /// failure): the tunnel's last error on the dashboard.
    answered: Option<String>,
    /// The instance this request is relayed to (no agent of its tunnel
    /// here): it goes there through pingora's proxy loop.
    relay_to: Option<std::net::SocketAddr>,
    /// Instances tried after the first for this request.
    relay_retries: u32,
}

/// A request whose tunnel stream broke after the request was written.
struct Lost {
    agent: String,
    /// Why it was not sent again; `None` when a retry was started.
    not_retried: Option<NotRetried>,
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
            answered: None,
            relay_to: None,
            relay_retries: 0,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        observe::start(session, ctx, self.tls);
        let admitted = if self.relayed {
            self.admit_relayed(session, ctx).await
        } else {
            self.admit(session, ctx).await
        };
        match admitted {
            // No agent of the tunnel here, one at another instance: the
            // request goes there through pingora's proxy loop.
            Ok(()) if self.relay_needed(ctx) => Ok(false),
            // A WebSocket upgrade goes through pingora's proxy loop on a
            // `CONNECT` stream (`upstream_peer`); every other request is
            // one HTTP/2 stream of its own ([`exchange`]).
            Ok(()) if ctx.upgrade => Ok(false),
            Ok(()) => self.exchange(session, ctx).await,
            Err(refusal) => {
                refusal.refuse(session, ctx).await?;
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
        if let (Some(to), Some(cluster)) = (ctx.relay_to, &self.cluster) {
            return Ok(relay::peer(cluster, to, ctx));
        }
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
        if ctx.relay_to.is_some() {
            // The instance relayed to could not be reached: nothing was
            // sent, so the next turn's instance may take it.
            e.set_retry(self.relay_again(ctx));
            return e;
        }
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
        client_reused: bool,
    ) -> Box<Error> {
        // Replaces pingora's default, which retries any idempotent request
        // whose reused stream closed before the response, even after the
        // agent received it. `retry::decide` holds our rules.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if ctx.relay_to.is_some() {
            // Only a failure of the hop counts (not the caller's body over
            // its limit, nor the caller gone). A pooled connection the
            // other side had closed took nothing: any method goes again,
            // on a new connection to the same instance. The instance gone
            // mid-request: a safe request with no answer begun goes to
            // another instance holding the tunnel.
            if *e.esource() != pingora_error::ErrorSource::Upstream
                || session.response_written().is_some()
                || session.as_ref().retry_buffer_truncated()
            {
                e.set_retry(false);
                return e;
            }
            if client_reused && crate::retry::is_stale(&e) {
                e.set_retry(true);
                return e;
            }
            let safe = matches!(
                session.req_header().method,
                http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
            );
            e.set_retry(safe && self.relay_again(ctx));
            return e;
        }
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
        set_traceparent(upstream, ctx)?;
        if ctx.relay_to.is_some() {
            relay::mark(upstream, ctx, self.cluster.as_deref())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let method = session.req_header().method.clone();
        let answer = Outcome::of_error(e, ctx, method.as_str()).respond();
        let error_code = answer.as_ref().map_or(0, |a| a.status);
        if let Some(answer) = answer {
            ctx.answered = Some(answer.reason.clone());
            if session.response_written().is_none() {
                if let Err(err) = answer.write(session).await {
                    tracing::debug!("could not send error response: {err}");
                }
            }
        }
        FailToProxy {
            error_code,
            can_reuse_downstream: false,
        }
    }

    /// What pingora's own error lines ("Fail to proxy: …") say about the
    /// request: never the query or the raw Host (see [`observe::summary`]).
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        observe::summary(session, ctx)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        observe::log_request(session, e, ctx);
    }
}
