//! One `CONNECT` tunnel stream (a caller's WebSocket upgrade): HTTP/1.1
//! from the gateway, forwarded request by request on one connection to the
//! local service. Ordinary requests come as streams of their own
//! ([`crate::exchange`]).
//!
//! hyper parses both sides (header case preserved, no `Date` added), so
//! each request gets its spans, its metrics and its access-log line, and
//! the local service receives a `traceparent` naming the agent's forward
//! span. Bodies stream in both directions with hyper's back-pressure;
//! nothing is buffered beyond a chunk. A WebSocket (any `101`) upgrade
//! hands both connections to a byte copy.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use telemetry::{self, attr, TraceCtx, SPAN_TARGET};
use tokio::net::TcpStream;

use crate::metrics::METRICS;

/// Most header fields in one request or response (hyper's default is 100).
const MAX_HEADERS: usize = 512;

/// What every stream of one gateway connection shares.
pub struct StreamShared {
    /// The tunnel's name, for logs and spans.
    pub tunnel: String,
    /// This agent's name.
    pub agent: String,
    /// `host:port` of the local service, for spans.
    pub local: String,
}

/// A body passing through, its data bytes counted. The response's also
/// carries the request's record, completed when the body ends or is
/// dropped unfinished.
struct Counted {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
    ended: bool,
    finish: Option<Finish>,
}

impl Counted {
    fn new(inner: Incoming, bytes: Arc<AtomicU64>, finish: Option<Finish>) -> Self {
        Counted {
            inner,
            bytes,
            ended: false,
            finish,
        }
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(f) = self.finish.take() {
            let complete = self.ended || self.inner.is_end_stream();
            f.complete(self.bytes.load(Ordering::Relaxed), complete);
        }
    }
}

/// The request's record, completed when its response body ends (or is
/// abandoned, or the request is dropped before an answer, e.g. when the
/// gateway gives up on a slow service): spans ended, metrics counted,
/// access line written.
pub(crate) struct Finish {
    pub(crate) span: tracing::Span,
    pub(crate) trace_id: String,
    pub(crate) response_span: tracing::Span,
    pub(crate) started: Instant,
    pub(crate) method: http::Method,
    pub(crate) status: u16,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) shared: Arc<StreamShared>,
}

impl Finish {
    pub(crate) fn complete(self, bytes_out: u64, complete: bool) {
        let elapsed = self.started.elapsed();
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let m = &*METRICS;
        m.requests
            .get_or_create(&crate::metrics::RequestLabels {
                status: telemetry::status_label(self.status),
            })
            .inc();
        m.request_seconds.observe(elapsed.as_secs_f64());
        m.request_body_bytes.inc_by(bytes_in);
        m.response_body_bytes.inc_by(bytes_out);
        if !self.span.is_disabled() {
            if !complete {
                telemetry::error(&self.response_span, "response body not completed");
            }
            attr(
                &self.response_span,
                "http.response.body.size",
                bytes_out as i64,
            );
            if self.status >= 500 || self.status == 0 {
                telemetry::error(&self.span, format!("status {}", self.status));
            }
            if self.status > 0 {
                attr(
                    &self.span,
                    "http.response.status_code",
                    i64::from(self.status),
                );
            }
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            tunnel = %self.shared.tunnel,
            agent = %self.shared.agent,
            status = self.status,
            duration_ms = elapsed.as_millis() as u64,
            bytes_in,
            bytes_out,
            complete,
            trace_id = %self.trace_id,
            "request"
        );
    }
}

type Sender = Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Counted>>>;

/// Holds a request's record until its response starts; dropped before
/// that (the gateway closed the stream, the service failed), it records
/// the request as answered with nothing (status 0).
struct Pending(Option<Finish>);

impl Pending {
    fn take(mut self) -> Finish {
        self.0.take().expect("taken once")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.complete(0, false);
        }
    }
}

/// A request's spans on the agent: the request (continuing the gateway's
/// `traceparent`) and its forward to the local service; attributes are
/// filled only when tracing is on.
pub(crate) fn request_spans(
    method: &http::Method,
    path: &str,
    headers: &http::HeaderMap,
    shared: &StreamShared,
) -> (tracing::Span, tracing::Span, TraceCtx) {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "tunnel request",
        otel.kind = "server",
    );
    let trace = TraceCtx::start(
        &span,
        headers.get("traceparent").map(|v| v.as_bytes()),
        headers.get("tracestate").map(|v| v.as_bytes()),
    );
    let traced = !span.is_disabled();
    if traced {
        attr(&span, "http.request.method", method.as_str().to_string());
        attr(
            &span,
            "url.path",
            path.chars().take(512).collect::<String>(),
        );
        attr(&span, "tunnel.name", shared.tunnel.clone());
        attr(&span, "tunnel.agent", shared.agent.clone());
    }
    let forward_span = tracing::info_span!(
        target: SPAN_TARGET,
        parent: &span,
        "forward to local service",
        otel.kind = "client",
    );
    if traced {
        attr(&forward_span, "server.address", shared.local.clone());
    }
    (span, forward_span, trace)
}

/// Forwards one request; an error closes the tunnel stream (the gateway
/// then answers 502, or retries a request that was never sent).
async fn forward(
    mut req: Request<Incoming>,
    sender: Sender,
    shared: Arc<StreamShared>,
    upgrading: Arc<AtomicBool>,
) -> Result<Response<Counted>, hyper::Error> {
    let started = Instant::now();
    let (span, forward_span, trace) =
        request_spans(req.method(), req.uri().path(), req.headers(), &shared);
    let traced = !span.is_disabled();
    // The local service continues the trace from the forward span.
    let (parent, state) = trace.traceparent(&forward_span);
    let headers = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&parent) {
        headers.insert("traceparent", v);
    }
    match state.and_then(|s| HeaderValue::from_str(&s).ok()) {
        Some(v) => {
            headers.insert("tracestate", v);
        }
        None => {
            headers.remove("tracestate");
        }
    }
    let downstream_upgrade = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    if downstream_upgrade.is_some() {
        // Set before sending: the local connection's task ends as soon as
        // a 101 arrives, possibly before this function sees the response,
        // and must not then close the tunnel stream.
        upgrading.store(true, Ordering::Release);
    }
    let bytes_in = Arc::new(AtomicU64::new(0));
    let pending = Pending(Some(Finish {
        span,
        trace_id: trace.trace_id(),
        response_span: tracing::Span::none(),
        started,
        method: req.method().clone(),
        status: 0,
        bytes_in: bytes_in.clone(),
        shared: shared.clone(),
    }));
    let req = req.map(|inner| Counted::new(inner, bytes_in.clone(), None));

    let sent = async {
        let mut sender = sender.lock().await;
        sender.ready().await?;
        sender.send_request(req).await
    }
    .await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(tunnel = %shared.tunnel, "local service failed: {e}");
            if traced {
                telemetry::error(&forward_span, e.to_string());
            }
            // `pending` records the request as unanswered.
            return Err(e);
        }
    };
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        // An upgrade the service declined: the connection goes on as
        // plain HTTP, and its closing must close the stream again.
        upgrading.store(false, Ordering::Release);
    }
    if traced {
        attr(
            &forward_span,
            "http.response.status_code",
            i64::from(status.as_u16()),
        );
    }
    drop(forward_span);

    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            let tunnel = shared.tunnel.clone();
            tokio::spawn(async move {
                // The upgraded session outlives the stream's HTTP phase.
                METRICS.streams_active.inc();
                let _active = scopeguard(|| {
                    METRICS.streams_active.dec();
                });
                match tokio::try_join!(down, up) {
                    Ok((down, up)) => {
                        let (mut a, mut b) = (TokioIo::new(down), TokioIo::new(up));
                        if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                            tracing::debug!(%tunnel, "upgraded connection ended: {e}");
                        }
                    }
                    Err(e) => tracing::debug!(%tunnel, "upgrade failed: {e}"),
                }
            });
        }
    }

    let mut finish = pending.take();
    let response_span = tracing::info_span!(target: SPAN_TARGET, parent: &finish.span, "response");
    if traced {
        attr(
            &response_span,
            "http.response.status_code",
            i64::from(status.as_u16()),
        );
    }
    finish.response_span = response_span;
    finish.status = status.as_u16();
    let bytes_out = Arc::new(AtomicU64::new(0));
    Ok(resp.map(|inner| Counted::new(inner, bytes_out, Some(finish))))
}

/// Serves one tunnel stream until either side closes it.
pub async fn serve_stream(tunnel: protocol::H2Stream, local: TcpStream, shared: Arc<StreamShared>) {
    METRICS.streams_active.inc();
    let _active = scopeguard(|| {
        METRICS.streams_active.dec();
    });
    let (sender, client) = match hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .max_headers(MAX_HEADERS)
        // Services behind a firewall are often old: accept (and normalise)
        // what a byte copy used to let through.
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_spaces_after_header_name_in_responses(true)
        .handshake::<_, Counted>(TokioIo::new(local))
        .await
    {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!("local service connection: {e}");
            return;
        }
    };
    let sender: Sender = Arc::new(tokio::sync::Mutex::new(sender));
    let upgrading = Arc::new(AtomicBool::new(false));
    let up = upgrading.clone();
    let server = hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .auto_date_header(false)
        .max_headers(MAX_HEADERS)
        .serve_connection(
            TokioIo::new(tunnel),
            service_fn(move |req| forward(req, sender.clone(), shared.clone(), up.clone())),
        )
        .with_upgrades();
    // Boxed, so it can be dropped once finished: its request channel closes
    // only then, and a request arriving afterwards fails at once instead
    // of waiting for a connection that is gone.
    let mut client = Box::pin(client.with_upgrades());
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => {
            if let Err(e) = r {
                tracing::debug!("tunnel stream ended: {e}");
            }
            return;
        }
        r = &mut client => {
            if let Err(e) = r {
                tracing::debug!("local connection ended: {e}");
            }
        }
    }
    drop(client);
    // The local service closed its connection (or handed it over to an
    // upgrade): finish what is in flight, then close the stream so the
    // gateway stops reusing it. (A request racing in meanwhile fails and
    // closes the stream; the gateway retries it on a new one.)
    if !upgrading.load(Ordering::Acquire) {
        server.as_mut().graceful_shutdown();
    }
    if let Err(e) = server.await {
        tracing::debug!("tunnel stream ended: {e}");
    }
}

/// Runs `f` when dropped.
pub(crate) fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
