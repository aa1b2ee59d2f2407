//! The seam between pingora and the tunnel: a custom L4 connector whose
//! "connection" is a new HTTP/2 `CONNECT` stream inside an agent's tunnel.
//! pingora then speaks HTTP/1.1 over it exactly as over a TCP socket, so
//! its proxy loop, pooling (keyed by agent through `group_key`) and
//! upgrade handling all apply unchanged.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as L4SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType};
use sync_wrapper::SyncWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::registry::AgentConn;

/// Why a stream could not be opened in a tunnel.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("tunnel connection is gone: {0}")]
    Tunnel(#[from] hyper::Error),
    #[error("agent could not reach its local service (status {0})")]
    Refused(http::StatusCode),
    #[error("timed out opening a tunnel stream")]
    Timeout,
}

/// Opens a `CONNECT` stream to `authority` on an agent connection.
pub async fn open_stream(
    sender: &mut SendRequest<Empty<Bytes>>,
    authority: &str,
) -> Result<Upgraded, OpenError> {
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(authority)
        .body(Empty::new())
        .expect("static CONNECT request is valid");
    let resp = sender.send_request(req).await?;
    if resp.status() != http::StatusCode::OK {
        return Err(OpenError::Refused(resp.status()));
    }
    Ok(hyper::upgrade::on(resp).await?)
}

/// pingora's view of one tunnel stream.
struct TunnelSocket(SyncWrapper<TokioIo<Upgraded>>);

impl std::fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelSocket")
    }
}

impl AsyncRead for TunnelSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().0.get_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.get_mut().0.get_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().0.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.get_mut().0.get_mut()).poll_shutdown(cx)
    }
}

impl VirtualSocket for TunnelSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        // The tunnel's own TCP socket has NODELAY set once for all streams.
        Ok(())
    }
}

/// Connector bound to one agent connection.
#[derive(Debug)]
pub struct TunnelConnector {
    agent: Arc<AgentConn>,
    timeout: Duration,
}

impl TunnelConnector {
    /// A connector opening streams on `agent`, each within `timeout`.
    pub fn new(agent: Arc<AgentConn>, timeout: Duration) -> Self {
        TunnelConnector { agent, timeout }
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, _addr: &L4SocketAddr) -> pingora_error::Result<Stream> {
        let mut sender = self.agent.sender();
        let opened = tokio::time::timeout(
            self.timeout,
            open_stream(&mut sender, protocol::STREAM_AUTHORITY),
        )
        .await
        .unwrap_or(Err(OpenError::Timeout));
        match opened {
            Ok(up) => Ok(Stream::from(VirtualSocketStream::new(Box::new(
                TunnelSocket(SyncWrapper::new(TokioIo::new(up))),
            )))),
            Err(e) => {
                let etype = match e {
                    OpenError::Refused(_) => ErrorType::ConnectRefused,
                    OpenError::Timeout => ErrorType::ConnectTimedout,
                    OpenError::Tunnel(_) => ErrorType::ConnectError,
                };
                Err(Error::because(
                    etype,
                    format!(
                        "tunnel `{}` agent `{}`",
                        self.agent.tunnel.name, self.agent.agent_name
                    ),
                    e,
                ))
            }
        }
    }
}
