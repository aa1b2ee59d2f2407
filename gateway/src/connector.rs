//! The seam between pingora and the tunnel for WebSocket upgrades: a
//! custom L4 connector whose "connection" is a new HTTP/2 `CONNECT` stream
//! inside an agent's tunnel, handed to pingora as a virtual socket. pingora
//! then speaks HTTP/1.1 over it exactly as over a TCP socket, so its proxy
//! loop and upgrade handling apply unchanged. (Every other request is an
//! HTTP/2 request stream of its own: `crate::proxy`'s `exchange`.)
//!
//! pingora 0.9 never reuses a pooled virtual socket; the vendored
//! pingora-core carries the patch that lets it (`third_party/README.md`),
//! so a caller's keep-alive connection keeps one tunnel stream and one
//! connection to the local service, with no socket in between.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use h2::client::SendRequest;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as L4SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType};
use protocol::H2Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::registry::AgentConn;

/// How long opening a stream may take: the agent answers a `CONNECT`
/// once its local service accepted the connection (or refused it).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream could not be opened in a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("tunnel connection is gone: {0}")]
    Tunnel(#[from] h2::Error),
    #[error("agent could not reach its local service (status {0})")]
    Refused(http::StatusCode),
    #[error("timed out opening a tunnel stream")]
    Timeout,
}

/// Opens a `CONNECT` stream to `authority` on an agent connection.
pub async fn open_stream(
    sender: SendRequest<Bytes>,
    authority: &str,
) -> Result<H2Stream, OpenError> {
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(())
        .expect("static CONNECT request is valid");
    // `ready` waits while the agent's concurrent-stream limit is reached.
    let mut sender = sender.ready().await?;
    let (resp, send) = sender.send_request(req, false)?;
    let resp = resp.await?;
    if resp.status() != http::StatusCode::OK {
        return Err(OpenError::Refused(resp.status()));
    }
    Ok(H2Stream::new(send, resp.into_body()))
}

/// One tunnel stream as pingora's virtual socket. h2's stream halves are
/// `Send` but not `Sync`, which a virtual socket must be; the mutex is
/// never locked (every poll has `&mut self`, so `get_mut` suffices).
#[derive(Debug)]
struct TunnelSocket(Mutex<H2Stream>);

impl TunnelSocket {
    fn io(self: Pin<&mut Self>) -> Pin<&mut H2Stream> {
        let io = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Pin::new(io)
    }
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

impl VirtualSocket for TunnelSocket {
    /// Nagle and TCP keep-alive have no meaning for a stream inside the
    /// tunnel (the tunnel's own socket has `TCP_NODELAY`, and HTTP/2 PINGs
    /// watch it).
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

/// Connector bound to one agent connection.
#[derive(Debug)]
pub struct TunnelConnector {
    agent: Arc<AgentConn>,
}

impl TunnelConnector {
    /// A connector opening streams on `agent`.
    pub fn new(agent: Arc<AgentConn>) -> Self {
        TunnelConnector { agent }
    }

    fn error(&self, etype: ErrorType, why: &str) -> Box<Error> {
        Error::explain(
            etype,
            format!(
                "tunnel `{}` agent `{}`: {why}",
                self.agent.tunnel.name, self.agent.agent_name
            ),
        )
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, _addr: &L4SocketAddr) -> pingora_error::Result<Stream> {
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            open_stream(self.agent.sender(), protocol::STREAM_AUTHORITY),
        )
        .await;
        match opened {
            Ok(Ok(up)) => {
                let socket = TunnelSocket(Mutex::new(up));
                Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
            }
            // The agent answers 504 when its local service did not accept
            // the connection in time, and 502 when it refused it.
            Ok(Err(OpenError::Refused(status))) if status == http::StatusCode::GATEWAY_TIMEOUT => {
                Err(self.error(
                    ErrorType::ConnectTimedout,
                    "timed out opening a tunnel stream",
                ))
            }
            Ok(Err(OpenError::Refused(_))) => Err(self.error(
                ErrorType::ConnectRefused,
                "agent could not reach its local service",
            )),
            // The agent connection failed or did not answer: the tunnel is
            // unusable (502, and another agent may take the request), not
            // the local service slow (504).
            Ok(Err(_)) | Err(_) => {
                Err(self.error(ErrorType::ConnectError, "tunnel connection is gone"))
            }
        }
    }
}
