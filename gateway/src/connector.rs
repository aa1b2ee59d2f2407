//! The seam between pingora and the tunnel: a custom L4 connector whose
//! "connection" is a new HTTP/2 `CONNECT` stream inside an agent's tunnel,
//! handed to pingora as a bridged Unix socket (see [`crate::bridge`] for
//! why not a virtual socket). pingora then speaks HTTP/1.1 over it exactly
//! as over a TCP socket, so its proxy loop, pooling (keyed by agent through
//! `group_key`) and upgrade handling all apply unchanged.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as L4SocketAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_error::{Error, ErrorType};

use crate::bridge::{Bridge, BridgeStatus};

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

/// Connector bound to one agent connection.
#[derive(Debug)]
pub struct TunnelConnector {
    agent: Arc<AgentConn>,
    bridge: Arc<Bridge>,
}

impl TunnelConnector {
    /// A connector opening streams on `agent` through `bridge`.
    pub fn new(agent: Arc<AgentConn>, bridge: Arc<Bridge>) -> Self {
        TunnelConnector { agent, bridge }
    }
}

#[async_trait]
impl L4Connect for TunnelConnector {
    async fn connect(&self, _addr: &L4SocketAddr) -> pingora_error::Result<Stream> {
        match self.bridge.connect(self.agent.clone()).await {
            Ok(s) => Ok(Stream::from(s)),
            Err(status) => {
                let (etype, why) = match status {
                    BridgeStatus::Refused => (
                        ErrorType::ConnectRefused,
                        "agent could not reach its local service",
                    ),
                    BridgeStatus::Timeout => (
                        ErrorType::ConnectTimedout,
                        "timed out opening a tunnel stream",
                    ),
                    _ => (ErrorType::ConnectError, "tunnel connection is gone"),
                };
                Err(Error::explain(
                    etype,
                    format!(
                        "tunnel `{}` agent `{}`: {why}",
                        self.agent.tunnel.name, self.agent.agent_name
                    ),
                ))
            }
        }
    }
}
