//! One request per tunnel stream: the gateway sends each caller request as
//! an HTTP/2 request ([`protocol::exchange`]); the agent writes it as
//! HTTP/1.1 to its local service on a kept-alive connection from a pool,
//! and answers the stream with the service's response. Bodies stream both
//! ways under HTTP/2 flow control on one side and TCP's on the other;
//! nothing is buffered beyond a chunk.
//!
//! The HTTP/1.1 client is pingora's (`pingora-core`, the same code the
//! gateway proxies with): it writes header names in the case it is given
//! and reads the service's in the case sent, so both directions keep the
//! names as written ([`protocol::exchange::NAMES_HEADER`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::protocols::l4::stream::Stream as TcpIo;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_http::RequestHeader;
use protocol::exchange::{
    cased_fields, put_fields, send_data, send_end, LOCAL_ERROR_HEADER, LOCAL_REFUSED,
    LOCAL_TIMEOUT, NAMES_HEADER, POOL_HEADER, TARGET_HEADER,
};
use telemetry::{self, attr, SPAN_TARGET};

use crate::forward::{Finish, StreamShared};
use crate::metrics::METRICS;

/// How long an idle kept-alive connection to the local service is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(60);

/// Kept-alive connections to the local service, shared by every stream of
/// one gateway connection.
pub struct Local {
    target: (String, u16),
    allow_remote: bool,
    connect_timeout: Duration,
    /// pingora's connection pool (idle connections are watched, and one the
    /// service closed is dropped) keyed by the service's address.
    pool: TransportConnector,
    /// The address the last new connection reached: where pooled
    /// connections are looked up.
    addr: Mutex<Option<SocketAddr>>,
}

/// Why no connection to the local service could be had.
enum ConnectFailure {
    Refused(std::io::Error),
    Timeout,
}

impl Local {
    /// A pool for the service at `target`.
    pub fn new(target: (String, u16), allow_remote: bool, connect_timeout: Duration) -> Self {
        Local {
            target,
            allow_remote,
            connect_timeout,
            pool: TransportConnector::new(None),
            addr: Mutex::new(None),
        }
    }

    /// The pool's key: the service's address and the caller's
    /// [`POOL_HEADER`].
    fn peer(addr: SocketAddr, caller: u64) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.group_key = caller;
        peer
    }

    fn last_addr(&self) -> Option<SocketAddr> {
        *self.addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pooled connection, else a new one.
    async fn session(
        &self,
        caller: u64,
    ) -> Result<(HttpSession, SocketAddr, bool), ConnectFailure> {
        if let Some(addr) = self.last_addr() {
            if let Some(stream) = self.pool.reused_stream(&Self::peer(addr, caller)).await {
                return Ok((HttpSession::new(stream), addr, true));
            }
        }
        let (session, addr) = self.connect().await?;
        Ok((session, addr, false))
    }

    async fn connect(&self) -> Result<(HttpSession, SocketAddr), ConnectFailure> {
        let connected = tokio::time::timeout(
            self.connect_timeout,
            crate::session::connect_to_local(&self.target, self.allow_remote),
        )
        .await;
        let tcp = match connected {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(ConnectFailure::Refused(e)),
            Err(_) => return Err(ConnectFailure::Timeout),
        };
        let addr = tcp.peer_addr().map_err(ConnectFailure::Refused)?;
        *self.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        Ok((HttpSession::new(Box::new(TcpIo::from(tcp))), addr))
    }

    /// Puts a connection whose exchange completed back into the pool.
    async fn release(&self, mut session: HttpSession, addr: SocketAddr, caller: u64) {
        session.respect_keepalive();
        if let Some(stream) = session.reuse().await {
            let key = Self::peer(addr, caller).reuse_hash();
            self.pool.release_stream(stream, key, Some(POOL_IDLE));
        }
    }
}

/// Answers a stream the agent could not forward: `status`, and why in
/// [`LOCAL_ERROR_HEADER`] when the local service could not be reached.
fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode, why: Option<&'static str>) {
    let mut r = Response::new(());
    *r.status_mut() = status;
    if let Some(why) = why {
        r.headers_mut()
            .insert(LOCAL_ERROR_HEADER, HeaderValue::from_static(why));
    }
    let _ = respond.send_response(r, true);
}

/// The HTTP/1.1 head for the local service: the target and the header
/// names as the caller wrote them.
fn local_head(
    req: &mut Request<RecvStream>,
    traceparent: &str,
    tracestate: Option<&str>,
) -> pingora_error::Result<RequestHeader> {
    let headers = req.headers_mut();
    let target = headers.remove(TARGET_HEADER);
    let names = headers.remove(NAMES_HEADER);
    let path: &[u8] = match &target {
        Some(t) => t.as_bytes(),
        None => req
            .uri()
            .path_and_query()
            .map_or(b"/", |p| p.as_str().as_bytes()),
    };
    let headers = req.headers();
    let mut head = RequestHeader::build(req.method().clone(), path, Some(headers.len() + 2))?;
    head.set_version(Version::HTTP_11);
    for (name, value) in cased_fields(headers, names.as_ref()) {
        head.append_header(Bytes::copy_from_slice(name), value.clone())?;
    }
    // HTTP/2 carries no framing headers: a body of unknown length goes to
    // the service chunked.
    if !headers.contains_key(header::CONTENT_LENGTH) && !req.body().is_end_stream() {
        head.append_header(header::TRANSFER_ENCODING, "chunked")?;
    }
    // The local service continues the trace from the forward span.
    head.insert_header("traceparent", traceparent)?;
    match tracestate {
        Some(s) => head.insert_header("tracestate", s)?,
        None => {
            head.remove_header("tracestate");
        }
    }
    Ok(head)
}

/// The service's response head as HTTP/2: connection fields dropped, the
/// names' case packed when it is not all lower-case.
fn h2_response(session: &HttpSession) -> Option<Response<()>> {
    let resp = session.resp_header()?;
    let mut out = Response::new(());
    *out.status_mut() = resp.status;
    put_fields(out.headers_mut(), resp.case_header_iter_or_lower()).ok()?;
    Some(out)
}

/// `case_header_iter` when the head kept case, else the lower-case names.
trait CaseOrLower {
    fn case_header_iter_or_lower(&self) -> Box<dyn Iterator<Item = (&[u8], &HeaderValue)> + '_>;
}

impl CaseOrLower for pingora_http::ResponseHeader {
    fn case_header_iter_or_lower(&self) -> Box<dyn Iterator<Item = (&[u8], &HeaderValue)> + '_> {
        if self.has_case() {
            Box::new(self.case_header_iter().map(|(n, v)| (n.as_slice(), v)))
        } else {
            Box::new(self.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v)))
        }
    }
}

/// Forwards one request stream to the local service and answers it.
pub async fn serve(
    mut req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    local: Arc<Local>,
    shared: Arc<StreamShared>,
) {
    let started = Instant::now();
    METRICS.streams_active.inc();
    let _active = crate::forward::scopeguard(|| {
        METRICS.streams_active.dec();
    });
    let (span, forward_span, trace) =
        crate::forward::request_spans(req.method(), req.uri().path(), req.headers(), &shared);
    let (parent, state) = trace.traceparent(&forward_span);
    let bytes_in = Arc::new(AtomicU64::new(0));
    let mut finish = Finish {
        span,
        trace_id: trace.trace_id(),
        response_span: tracing::Span::none(),
        started,
        method: req.method().clone(),
        status: 0,
        bytes_in: bytes_in.clone(),
        shared: shared.clone(),
    };
    let caller = req
        .headers_mut()
        .remove(POOL_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let head = match local_head(&mut req, &parent, state.as_deref()) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(tunnel = %shared.tunnel, "request head not accepted: {e}");
            answer(&mut respond, StatusCode::BAD_REQUEST, None);
            finish.status = 400;
            finish.complete(0, true);
            return;
        }
    };
    let (mut session, addr) = match open(&local, head, caller).await {
        Ok(s) => s,
        Err((status, why)) => {
            answer(&mut respond, status, why);
            drop(forward_span);
            finish.complete(0, false);
            return;
        }
    };
    let mut body = req.into_body();
    let outcome = exchange(
        &mut session,
        &mut body,
        &mut respond,
        &bytes_in,
        &mut finish,
    )
    .await;
    drop(forward_span);
    match outcome {
        Ok((bytes_out, reusable)) => {
            finish.complete(bytes_out, true);
            if reusable {
                local.release(session, addr, caller).await;
            }
        }
        Err((bytes_out, e)) => {
            tracing::warn!(tunnel = %shared.tunnel, "local service failed: {e}");
            if !finish.span.is_disabled() {
                telemetry::error(&finish.span, e.to_string());
            }
            // The gateway sees the stream fail: a 502 for the caller, or a
            // retry when the request may go again.
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            finish.complete(bytes_out, false);
        }
    }
}

/// A connection with the request head written: a pooled one when it takes
/// the head, else a new one (a pooled connection the service had just
/// closed fails here, before any of the request was delivered).
async fn open(
    local: &Local,
    head: RequestHeader,
    caller: u64,
) -> Result<(HttpSession, SocketAddr), (StatusCode, Option<&'static str>)> {
    let failed = |f: ConnectFailure, local: &Local| {
        METRICS.local_connect_failures.inc();
        let (host, port) = &local.target;
        match f {
            ConnectFailure::Refused(e) => {
                tracing::warn!("local service {host}:{port} refused: {e}");
                (StatusCode::BAD_GATEWAY, Some(LOCAL_REFUSED))
            }
            ConnectFailure::Timeout => {
                tracing::warn!("local service {host}:{port} did not accept in time");
                (StatusCode::GATEWAY_TIMEOUT, Some(LOCAL_TIMEOUT))
            }
        }
    };
    let (mut session, addr, reused) = local.session(caller).await.map_err(|f| failed(f, local))?;
    match session.write_request_header(Box::new(head.clone())).await {
        Ok(_) => return Ok((session, addr)),
        Err(e) if !reused => {
            tracing::warn!("local service failed: {e}");
            return Err((StatusCode::BAD_GATEWAY, None));
        }
        Err(_) => {}
    }
    let (mut session, addr) = local.connect().await.map_err(|f| failed(f, local))?;
    match session.write_request_header(Box::new(head)).await {
        Ok(_) => Ok((session, addr)),
        Err(e) => {
            tracing::warn!("local service failed: {e}");
            Err((StatusCode::BAD_GATEWAY, None))
        }
    }
}

type Failed = (u64, Box<dyn std::error::Error + Send + Sync>);

/// Streams the request body to the service while waiting for its answer,
/// then streams the answer back. Returns the response body's size and
/// whether the connection may serve another request.
async fn exchange(
    session: &mut HttpSession,
    body: &mut RecvStream,
    respond: &mut SendResponse<Bytes>,
    bytes_in: &AtomicU64,
    finish: &mut Finish,
) -> Result<(u64, bool), Failed> {
    let mut req_done = body.is_end_stream();
    // The response head (past any 1xx), while the request body goes out.
    loop {
        tokio::select! {
            read = session.read_response() => {
                read.map_err(|e| (0, e.into()))?;
                let status = session.get_status().map_or(0, |s| s.as_u16());
                if (100..200).contains(&status) {
                    if status == 101 {
                        return Err((0, "the local service switched protocols without an upgrade request".into()));
                    }
                    continue;
                }
                break;
            }
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
                return Err((0, "the gateway gave up on the request".into()));
            }
            chunk = body.data(), if !req_done => match chunk {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                    session.write_body(&data).await.map_err(|e| (0, e.into()))?;
                }
                Some(Err(e)) => return Err((0, e.into())),
                None => {
                    req_done = true;
                    session.finish_body().await.map_err(|e| (0, e.into()))?;
                }
            },
        }
    }
    let resp = h2_response(session).ok_or((0, "invalid response head".into()))?;
    let status = resp.status().as_u16();
    let response_span = tracing::info_span!(target: SPAN_TARGET, parent: &finish.span, "response");
    if !finish.span.is_disabled() {
        attr(
            &response_span,
            "http.response.status_code",
            i64::from(status),
        );
    }
    finish.response_span = response_span;
    finish.status = status;
    let empty = session.is_body_done();
    let mut send = respond
        .send_response(resp, empty)
        .map_err(|e| (0, e.into()))?;
    let mut bytes_out = 0u64;
    if !empty {
        loop {
            let read = tokio::select! {
                read = session.read_body_bytes() => read,
                _ = std::future::poll_fn(|cx| send.poll_reset(cx)) => {
                    return Err((bytes_out, "the gateway gave up on the response".into()));
                }
            };
            match read {
                Ok(Some(data)) => {
                    bytes_out += data.len() as u64;
                    send_data(&mut send, data, false)
                        .await
                        .map_err(|e| (bytes_out, e.into()))?;
                }
                Ok(None) => break,
                Err(e) => return Err((bytes_out, e.into())),
            }
        }
        send_end(&mut send).map_err(|e| (bytes_out, e.into()))?;
    }
    // A connection is only reused once the whole request went out.
    Ok((bytes_out, req_done))
}
