//! The agent's half of the handshake: hello, the proof for the gateway's
//! challenge, then the verdict.

use tokio::time::Instant;

use super::stream::MessageStream;
use super::{b64, compute_proof, recv, send, unb64, HandshakeError, Message, Step, NONCE_LEN};
use crate::TunnelKey;

/// Who the agent is, as it says in its `Hello`, and the key it proves.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub tunnel_id: &'a str,
    pub agent: &'a str,
    /// The agent's software version, for the gateway's agent list.
    pub software: Option<&'a str>,
    /// The protocol version offered; the gateway takes it or closes.
    pub version: u32,
    pub key: &'a TunnelKey,
}

/// What the gateway granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcomed {
    /// The tunnel's name, for the agent's logs.
    pub tunnel_name: String,
    /// The protocol version both sides now speak: the one offered, which
    /// the gateway accepted by welcoming the agent.
    pub version: u32,
}

/// Why the agent's half did not end in a welcome.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientError<E> {
    /// The transport failed.
    #[error("{0}")]
    Transport(E),
    /// The gateway broke the protocol (or sent an oversized message).
    #[error("{0}")]
    Protocol(#[from] HandshakeError),
    /// The gateway closed without a verdict.
    #[error("gateway closed the connection during the handshake")]
    Closed,
    /// The deadline passed.
    #[error("handshake deadline passed")]
    Timeout,
    /// `Rejected`, with the gateway's reason: final.
    #[error("gateway rejected this agent: {0}")]
    Rejected(String),
    /// `TryLater`, with the gateway's reason: retry with backoff.
    #[error("gateway asked this agent to retry later: {0}")]
    TryLater(String),
}

impl<E> From<Step<E>> for ClientError<E> {
    fn from(s: Step<E>) -> Self {
        match s {
            Step::Transport(e) => ClientError::Transport(e),
            Step::Protocol(e) => ClientError::Protocol(e),
            Step::Closed => ClientError::Closed,
        }
    }
}

/// Runs the agent's half over `stream`, on the TLS session whose exporter
/// value is `exporter`, all before `deadline`. The stream is left open
/// after a welcome (it then carries the tunnel).
pub async fn client<S: MessageStream>(
    stream: &mut S,
    me: &Identity<'_>,
    exporter: &[u8; NONCE_LEN],
    deadline: Instant,
) -> Result<Welcomed, ClientError<S::Error>> {
    tokio::time::timeout_at(deadline, exchange(stream, me, exporter))
        .await
        .unwrap_or(Err(ClientError::Timeout))
}

async fn exchange<S: MessageStream>(
    stream: &mut S,
    me: &Identity<'_>,
    exporter: &[u8; NONCE_LEN],
) -> Result<Welcomed, ClientError<S::Error>> {
    let hello = Message::Hello {
        version: me.version,
        tunnel_id: me.tunnel_id.to_owned(),
        agent: me.agent.to_owned(),
        software: me.software.map(str::to_owned),
    };
    send(stream, &hello).await?;
    let challenge = match recv(stream).await? {
        Message::Challenge { nonce } => unb64::<NONCE_LEN>(&nonce, "nonce")?,
        Message::Rejected { reason } => return Err(ClientError::Rejected(reason)),
        // A gateway that does not speak this agent's version says so
        // before any challenge; it may speak it after an upgrade.
        Message::TryLater { reason } => return Err(ClientError::TryLater(reason)),
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "challenge",
                got: other.kind(),
            }
            .into())
        }
    };
    let mac = compute_proof(me.key, me.tunnel_id, me.agent, &challenge, exporter);
    send(stream, &Message::Proof { mac: b64(&mac) }).await?;
    match recv(stream).await? {
        Message::Welcome { tunnel_name } => Ok(Welcomed {
            tunnel_name,
            version: me.version,
        }),
        Message::Rejected { reason } => Err(ClientError::Rejected(reason)),
        Message::TryLater { reason } => Err(ClientError::TryLater(reason)),
        other => Err(HandshakeError::Unexpected {
            expected: "welcome",
            got: other.kind(),
        }
        .into()),
    }
}
