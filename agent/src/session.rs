//! One authenticated connection: an HTTP/2 server over the WebSocket. Each
//! request stream is one caller request, forwarded on a kept-alive
//! connection to the local service ([`crate::exchange`]). A `CONNECT`
//! stream (a WebSocket upgrade) gets a TCP connection of its own, and the
//! HTTP/1.1 on the stream is forwarded on it ([`crate::forward`]; flow
//! control from HTTP/2 on one side, TCP on the other, so nothing is
//! buffered beyond a window). The control stream carries the drain notice.
//! HTTP/2 is the `h2` crate directly.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use protocol::{Control, H2Stream, WsByteStream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::dial::GatewayWs;
use crate::forward::{serve_stream, StreamShared};
use crate::metrics::METRICS;

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The connection broke or the gateway closed it.
    Lost(String),
    /// We drained on request and the gateway released us (or grace ran out).
    Drained,
}

struct Shared {
    /// Kept-alive connections for requests sent as streams of their own.
    pool: Arc<crate::exchange::Local>,
    /// Request streams are protocol 2: an agent that announced protocol 1
    /// refuses them, as agents of that version do.
    request_streams: bool,
    local: (String, u16),
    allow_remote: bool,
    local_timeout: Duration,
    streams: Arc<StreamShared>,
}

/// Answers a stream with `status` and no body.
fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let mut r = Response::new(());
    *r.status_mut() = status;
    let _ = respond.send_response(r, true);
}

/// Accepts the stream: a `200` whose body is the byte stream.
fn accept(mut respond: SendResponse<Bytes>, body: RecvStream) -> Option<H2Stream> {
    match respond.send_response(Response::new(()), false) {
        Ok(send) => Some(H2Stream::new(send, body)),
        Err(e) => {
            tracing::debug!("stream closed before it was accepted: {e}");
            None
        }
    }
}

async fn connect_local(shared: &Shared) -> std::io::Result<TcpStream> {
    connect_to_local(&shared.local, shared.allow_remote).await
}
/// A TCP connection to the local service at `local`, refusing addresses
/// that are not loopback unless `allow_remote` (also `agent check`'s probe).
pub async fn connect_to_local(
    local: &(String, u16),
    allow_remote: bool,
) -> std::io::Result<TcpStream> {
    let (host, port) = local;
    let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), *port))
        .await?
        .collect();
    let mut last = std::io::Error::other("local.address resolved to nothing");
    for addr in addrs {
        if !allow_remote && !addr.ip().is_loopback() {
            last = std::io::Error::other(format!(
                "local.address resolved to non-loopback {addr}; set local.allow_remote"
            ));
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A data stream: connects to the local service, then answers. Runs in a
/// task of its own, so a slow local service never holds up other streams.
async fn open_data_stream(mut respond: SendResponse<Bytes>, body: RecvStream, shared: Arc<Shared>) {
    let connected = tokio::time::timeout(shared.local_timeout, connect_local(&shared)).await;
    let (status, why) = match connected {
        Ok(Ok(local)) => {
            if let Some(stream) = accept(respond, body) {
                serve_stream(stream, local, shared.streams.clone()).await;
            }
            return;
        }
        Ok(Err(e)) => (StatusCode::BAD_GATEWAY, format!("refused: {e}")),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "did not accept in time".into()),
    };
    METRICS.local_connect_failures.inc();
    tracing::warn!("local service {}:{} {why}", shared.local.0, shared.local.1);
    answer(&mut respond, status);
}

/// Sorts a new stream: a request goes to a task ([`crate::exchange`]),
/// the control stream is accepted and returned, a `CONNECT` data stream
/// (a WebSocket upgrade) goes to a task ([`open_data_stream`]), anything
/// else is refused.
fn open(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    shared: &Arc<Shared>,
) -> Option<H2Stream> {
    if req.method() != Method::CONNECT {
        if !shared.request_streams {
            answer(&mut respond, StatusCode::BAD_REQUEST);
            return None;
        }
        tokio::spawn(crate::exchange::serve(
            req,
            respond,
            shared.pool.clone(),
            shared.streams.clone(),
        ));
        return None;
    }
    match req.uri().authority().map(|a| a.as_str()) {
        Some(protocol::CONTROL_AUTHORITY) => accept(respond, req.into_body()),
        Some(protocol::STREAM_AUTHORITY) => {
            tokio::spawn(open_data_stream(respond, req.into_body(), shared.clone()));
            None
        }
        _ => {
            answer(&mut respond, StatusCode::NOT_FOUND);
            None
        }
    }
}

/// Serves one connection until it is lost, or until a drain requested
/// through `drain` completes. `drain` turning true means: tell the gateway,
/// keep serving in-flight streams, and end when the gateway closes or
/// `grace` runs out.
pub async fn serve(
    cfg: &AgentConfig,
    ws: GatewayWs,
    tunnel_name: &str,
    mut drain: watch::Receiver<bool>,
) -> Ended {
    let local = cfg.local_target().expect("validated at start");
    let local_timeout = cfg.local.connect_timeout;
    let shared = Arc::new(Shared {
        pool: Arc::new(crate::exchange::Local::new(
            local.clone(),
            cfg.local.allow_remote,
            local_timeout,
        )),
        request_streams: cfg.gateway.protocol_version >= 2,
        streams: Arc::new(StreamShared {
            tunnel: tunnel_name.to_string(),
            agent: cfg.agent_name(),
            local: format!("{}:{}", local.0, local.1),
        }),
        local,
        allow_remote: cfg.local.allow_remote,
        local_timeout,
    });
    let handshake = h2::server::Builder::new()
        // Fixed, generous windows: the default 64 KiB caps a stream at
        // 64 KiB per round trip. The connection window bounds what one
        // agent connection buffers in total.
        .initial_window_size(protocol::STREAM_WINDOW)
        .initial_connection_window_size(protocol::CONNECTION_WINDOW)
        .max_frame_size(64 << 10)
        .max_send_buffer_size(1 << 20)
        .max_concurrent_streams(4096)
        .handshake::<_, Bytes>(WsByteStream::client(ws));
    let mut conn = match Box::pin(handshake).await {
        Ok(c) => c,
        Err(e) => return Ended::Lost(format!("connection failed: {e}")),
    };
    // Both sides ping every heartbeat interval, idle or not: a hung gateway
    // (no FIN, no crash) is noticed once a pong is the timeout late.
    let ping = conn
        .ping_pong()
        .expect("taken once, right after the handshake");
    let heartbeat = protocol::h2io::heartbeat(ping, cfg.heartbeat.interval, cfg.heartbeat.timeout);
    tokio::pin!(heartbeat);
    let mut control: Option<H2Stream> = None;
    let mut drain_sent = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let grace = cfg.drain.grace;
    loop {
        if *drain.borrow() && !drain_sent {
            if let Some(c) = control.as_mut() {
                drain_sent = true;
                if let Err(e) = c.write_all(Control::Drain.as_line()).await {
                    return Ended::Lost(format!("control stream: {e}"));
                }
            }
            drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
        }
        let deadline = drain_deadline;
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    if let Some(c) = open(req, respond, &shared) {
                        control.get_or_insert(c);
                    }
                }
                end => {
                    return match (end, drain_deadline.is_some()) {
                        (_, true) => Ended::Drained,
                        (None, false) => Ended::Lost("gateway closed the connection".into()),
                        (Some(Err(e)), false) => Ended::Lost(format!("connection failed: {e}")),
                        (Some(Ok(_)), false) => unreachable!("matched above"),
                    };
                }
            },
            e = &mut heartbeat => {
                return if drain_deadline.is_some() {
                    Ended::Drained
                } else {
                    Ended::Lost(format!("connection failed: {e}"))
                };
            }
            _ = drain.changed(), if drain_deadline.is_none() => {}
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                tracing::warn!("drain grace of {grace:?} ran out; closing with requests still in flight");
                return Ended::Drained;
            }
        }
    }
}
