//! What a request leaves behind: its span (continuing the caller's trace),
//! the access-log line and the request metrics.

use pingora_error::Error;
use pingora_proxy::Session;
use telemetry::{self, attr, TraceCtx, SPAN_TARGET};

use super::Ctx;

/// Starts the request's span, continuing the caller's trace when its
/// `traceparent` is valid.
pub(super) fn start(session: &Session, ctx: &mut Ctx, tls: bool) {
    ctx.span = request_span(session, tls);
    let req = session.req_header();
    let trace = TraceCtx::start(
        &ctx.span,
        req.headers.get("traceparent").map(|v| v.as_bytes()),
        req.headers.get("tracestate").map(|v| v.as_bytes()),
    );
    ctx.trace_id = trace.trace_id();
    ctx.trace = Some(trace);
}

/// The access-log line, the request metrics and the end of the request's
/// span; the agent is released.
pub(super) fn log_request(session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
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
    if let Some(t) = &ctx.tunnel {
        // A response cut off after its head went out counts too; pingora's
        // own text may quote the path, so the reason is ours.
        let cut = status > 0
            && e.is_some_and(|e| matches!(e.esource(), pingora_error::ErrorSource::Upstream));
        let error = if status >= 500 {
            Some(
                ctx.answered
                    .take()
                    .unwrap_or_else(|| format!("the local service answered {status}")),
            )
        } else if cut {
            Some("the response was cut off: the tunnel or the local service failed".to_string())
        } else {
            None
        };
        crate::activity::ACTIVITY.request(&t.name, status, error.as_deref());
    }
    finish_request_span(ctx, status, agent, e);
    ctx.guard = None;
    // The stream ends before the request it belongs to.
    ctx.stream_span = tracing::Span::none();
    ctx.span = tracing::Span::none();
}

/// What pingora's own error lines ("Fail to proxy: …") say about the
/// request. Its default prints the path with the query and the raw
/// Host; a query may carry `oauth_token`, `oauth_signature` or an API
/// key, so only the method, the path without query and the judged
/// host are written, escaped.
pub(super) fn summary(session: &Session, ctx: &Ctx) -> String {
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
pub(super) fn clip_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
