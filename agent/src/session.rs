//! One authenticated connection: an HTTP/2 server over the WebSocket. Each
//! `CONNECT` stream gets a TCP connection to the local service, and the
//! HTTP/1.1 requests on the stream are forwarded on it one by one
//! ([`crate::forward`]; flow control from HTTP/2 on one side, TCP on the
//! other, so nothing is buffered beyond a window). The control stream
//! carries the drain notice.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protocol::{Control, WsByteStream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

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
    local: (String, u16),
    allow_remote: bool,
    local_timeout: Duration,
    control_tx: mpsc::Sender<hyper::upgrade::Upgraded>,
    streams: Arc<StreamShared>,
}

fn empty(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = status;
    r
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

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if req.method() != Method::CONNECT {
        return Ok(empty(StatusCode::BAD_REQUEST));
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    match authority.as_deref() {
        Some(a) if a == protocol::CONTROL_AUTHORITY => {
            let tx = shared.control_tx.clone();
            tokio::spawn(async move {
                if let Ok(up) = hyper::upgrade::on(req).await {
                    let _ = tx.send(up).await;
                }
            });
            Ok(empty(StatusCode::OK))
        }
        Some(a) if a == protocol::STREAM_AUTHORITY => {
            let local =
                match tokio::time::timeout(shared.local_timeout, connect_local(&shared)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        METRICS.local_connect_failures.inc();
                        tracing::warn!(
                            "local service {}:{} refused: {e}",
                            shared.local.0,
                            shared.local.1
                        );
                        return Ok(empty(StatusCode::BAD_GATEWAY));
                    }
                    Err(_) => {
                        METRICS.local_connect_failures.inc();
                        tracing::warn!(
                            "local service {}:{} did not accept in time",
                            shared.local.0,
                            shared.local.1
                        );
                        return Ok(empty(StatusCode::GATEWAY_TIMEOUT));
                    }
                };
            let streams = shared.streams.clone();
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(up) => serve_stream(up, local, streams).await,
                    Err(e) => tracing::debug!("stream upgrade failed: {e}"),
                }
            });
            Ok(empty(StatusCode::OK))
        }
        _ => Ok(empty(StatusCode::NOT_FOUND)),
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
    let (control_tx, mut control_rx) = mpsc::channel(1);
    let local = cfg.local_target().expect("validated at start");
    let shared = Arc::new(Shared {
        streams: Arc::new(StreamShared {
            tunnel: tunnel_name.to_string(),
            agent: cfg.agent_name(),
            local: format!("{}:{}", local.0, local.1),
        }),
        local,
        allow_remote: cfg.local.allow_remote,
        local_timeout: Duration::from_secs(cfg.local.connect_timeout_secs),
        control_tx,
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(cfg.heartbeat.interval_secs))
        .keep_alive_timeout(Duration::from_secs(cfg.heartbeat.timeout_secs))
        // Fixed, generous windows: BDP-adaptive windows start at 64 KiB and
        // cap a stream at 64 KiB per round trip. The connection window
        // bounds what one agent connection buffers in total.
        .initial_stream_window_size(protocol::STREAM_WINDOW)
        .initial_connection_window_size(protocol::CONNECTION_WINDOW)
        .max_frame_size(64 << 10)
        .max_send_buf_size(1 << 20)
        .max_concurrent_streams(4096)
        .serve_connection(
            TokioIo::new(WsByteStream::client(ws)),
            service_fn(move |req| handle(req, shared.clone())),
        );
    tokio::pin!(conn);
    let mut control: Option<TokioIo<hyper::upgrade::Upgraded>> = None;
    let mut drain_sent = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let grace = Duration::from_secs(cfg.drain.grace_secs);
    loop {
        if *drain.borrow() && !drain_sent {
            if let Some(c) = control.as_mut() {
                drain_sent = true;
                if let Err(e) = c.write_all(Control::Drain.as_line()).await {
                    return Ended::Lost(format!("control stream: {e}"));
                }
                let _ = c.flush().await;
            }
            drain_deadline.get_or_insert_with(|| tokio::time::Instant::now() + grace);
        }
        let deadline = drain_deadline;
        tokio::select! {
            r = conn.as_mut() => {
                return match (r, drain_deadline.is_some()) {
                    (_, true) => Ended::Drained,
                    (Ok(()), false) => Ended::Lost("gateway closed the connection".into()),
                    (Err(e), false) => Ended::Lost(format!("connection failed: {e}")),
                };
            }
            up = control_rx.recv(), if control.is_none() => {
                if let Some(up) = up {
                    control = Some(TokioIo::new(up));
                }
            }
            _ = drain.changed(), if drain_deadline.is_none() => {}
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                tracing::warn!("drain grace of {grace:?} ran out; closing with requests still in flight");
                return Ended::Drained;
            }
        }
    }
}
