//! The gateway's half of the handshake: the hello, a fresh challenge, the
//! proof checked against the tunnel's keys, then `Welcome`, `Rejected` or
//! `TryLater`.
//!
//! What only the gateway knows comes in through a [`Verifier`]: where the
//! tunnel's keys are, and whether an authenticated agent can be taken now.
//! Logging, metrics and budgets stay with the caller.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::stream::MessageStream;
use super::{
    new_challenge, recv, send, unb64, verify_proof, HandshakeError, Message, Step,
    MIN_PROTOCOL_VERSION, NONCE_LEN, PROTOCOL_VERSION, REJECTED_REASON,
};
use crate::TunnelKey;

/// The agent's `Hello`, decoded and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the agent speaks (one this side supports).
    pub version: u32,
    pub tunnel_id: String,
    pub agent: String,
    pub software: Option<String>,
}

/// A known tunnel's keys, and what the verifier wants back on admission.
pub struct Keys<T> {
    pub current: TunnelKey,
    /// The previous key, accepted too during a rotation's overlap.
    pub previous: Option<TunnelKey>,
    pub tunnel: T,
}

/// Which of the tunnel's keys the proof was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    Current,
    Previous,
}

/// The verifier's decision on an authenticated agent.
pub enum Admit<A, R> {
    /// Taken: the agent is welcomed, the tunnel named for its logs.
    Welcome { tunnel_name: String, admitted: A },
    /// Not taken now (a limit is reached): the agent is told `reason` and
    /// retries later.
    TryLater { reason: String, refused: R },
}

/// What the gateway knows that the handshake does not.
pub trait Verifier: Send {
    /// What a lookup finds besides the keys, handed back to [`Self::admit`].
    type Tunnel: Send;
    /// What an admitted agent holds (its places in the budgets).
    type Admitted: Send;
    /// Why an authenticated agent was not taken.
    type Refused: Send;
    /// The keys cannot be looked up now (says nothing about the agent's).
    type Error: Send;

    /// The keys of the tunnel the hello names, `None` for an unknown one.
    /// Called once the proof is in.
    fn lookup(
        &mut self,
        hello: &Hello,
    ) -> impl Future<Output = Result<Option<Keys<Self::Tunnel>>, Self::Error>> + Send;

    /// Takes an agent whose proof is good, or says why not now. Only called
    /// after a good proof, so its answer tells nothing to whoever does not
    /// hold the key.
    fn admit(
        &mut self,
        hello: &Hello,
        tunnel: Self::Tunnel,
        key: KeyUsed,
    ) -> Admit<Self::Admitted, Self::Refused>;
}

/// The gateway side's parameters.
#[derive(Debug, Clone, Copy)]
pub struct ServerParams {
    /// The TLS exporter value of this connection.
    pub exporter: [u8; NONCE_LEN],
    /// When the whole exchange must be over.
    pub deadline: Instant,
    /// Least time between the proof and the verdict, so that the lookup
    /// (and key decryption, for a known tunnel only) does not show in the
    /// verdict's timing.
    pub verdict_floor: Duration,
}

/// An agent that passed the handshake and was welcomed.
#[derive(Debug)]
pub struct Accepted<A> {
    pub hello: Hello,
    pub key: KeyUsed,
    pub admitted: A,
}

/// Why a proof was refused (never told to the agent: it gets
/// [`REJECTED_REASON`] whatever the cause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    UnknownTunnel,
    BadProof,
}

/// Why the gateway's half did not welcome the agent.
#[derive(Debug, thiserror::Error)]
pub enum ServerError<E, L, R> {
    /// The transport failed.
    #[error("websocket: {0}")]
    Transport(E),
    /// The agent broke the protocol (or sent an oversized message); the
    /// stream is left without a verdict.
    #[error("protocol: {0}")]
    Protocol(HandshakeError),
    /// The agent closed before the verdict.
    #[error("peer closed during handshake")]
    Closed,
    /// The deadline passed.
    #[error("handshake deadline passed")]
    Timeout,
    /// The lookup failed; the stream was closed without a verdict, so the
    /// agent retries.
    #[error("tunnel store unavailable")]
    Lookup(L),
    /// The agent was told `Rejected` and the stream closed.
    #[error("rejected agent `{}` for tunnel `{}`", hello.agent, hello.tunnel_id)]
    Rejected { hello: Hello, why: Rejection },
    /// The agent authenticated but was told `TryLater` (with `reason`)
    /// and the stream closed.
    #[error("agent `{}` of tunnel `{}` told to retry later: {reason}", hello.agent, hello.tunnel_id)]
    TryLater {
        hello: Hello,
        reason: String,
        refused: R,
    },
}

impl<E, L, R> From<Step<E>> for ServerError<E, L, R> {
    fn from(s: Step<E>) -> Self {
        match s {
            Step::Transport(e) => ServerError::Transport(e),
            Step::Protocol(e) => ServerError::Protocol(e),
            Step::Closed => ServerError::Closed,
        }
    }
}

impl<E, L, R> From<HandshakeError> for ServerError<E, L, R> {
    fn from(e: HandshakeError) -> Self {
        ServerError::Protocol(e)
    }
}

/// The error of [`server`] for a stream `S` and a verifier `V`.
pub type ServerErrorOf<S, V> =
    ServerError<<S as MessageStream>::Error, <V as Verifier>::Error, <V as Verifier>::Refused>;

/// Runs the gateway's half over `stream`. The stream is left open after a
/// welcome (it then carries the tunnel), closed after `Rejected` or
/// `TryLater` or a failed lookup, closed after telling an agent of another
/// protocol version to try later ([`version_mismatch`]), and left as is after any
/// other protocol breach, a transport failure or the deadline.
pub async fn server<S: MessageStream, V: Verifier>(
    stream: &mut S,
    verifier: &mut V,
    params: &ServerParams,
) -> Result<Accepted<V::Admitted>, ServerErrorOf<S, V>> {
    tokio::time::timeout_at(params.deadline, exchange(stream, verifier, params))
        .await
        .unwrap_or(Err(ServerError::Timeout))
}

/// What an agent speaking `version` is told: both sides' versions.
pub fn version_mismatch(version: u32) -> String {
    format!(
        "the agent speaks protocol version {version}; this gateway speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
    )
}

async fn exchange<S: MessageStream, V: Verifier>(
    stream: &mut S,
    verifier: &mut V,
    params: &ServerParams,
) -> Result<Accepted<V::Admitted>, ServerErrorOf<S, V>> {
    let first = match recv(stream).await {
        // A version this side does not speak is no secret: the agent is
        // told, with both sides' versions, to try later (an upgrade of
        // this gateway fixes it; a rejection would make it stop for good).
        Err(Step::Protocol(HandshakeError::Version(version))) => {
            let reason = version_mismatch(version);
            let _ = send(stream, &Message::TryLater { reason }).await;
            stream.close_quietly().await;
            return Err(ServerError::Protocol(HandshakeError::Version(version)));
        }
        other => other?,
    };
    let hello = match first {
        Message::Hello {
            version,
            tunnel_id,
            agent,
            software,
        } => Hello {
            version,
            tunnel_id,
            agent,
            software,
        },
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "hello",
                got: other.kind(),
            }
            .into())
        }
    };
    let challenge = new_challenge();
    send(
        stream,
        &Message::Challenge {
            nonce: super::b64(&challenge),
        },
    )
    .await?;
    let mac = match recv(stream).await? {
        Message::Proof { mac } => unb64::<32>(&mac, "mac")?,
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "proof",
                got: other.kind(),
            }
            .into())
        }
    };
    // Unknown tunnel, undecryptable key and wrong proof take the same path:
    // a MAC is always computed and compared, and the answer is identical.
    // The verdict also waits for a fixed floor, so the lookup and key
    // decryption (present only for a known tunnel) do not show in timing.
    let verdict_at = Instant::now() + params.verdict_floor;
    let (current, previous, tunnel) = match verifier.lookup(&hello).await {
        Ok(Some(k)) => {
            // During a rotation's overlap the previous key is accepted
            // too; otherwise a random one stands in so the work is the same.
            let previous = k.previous.unwrap_or_else(TunnelKey::generate);
            (k.current, previous, Some(k.tunnel))
        }
        Ok(None) => (TunnelKey::generate(), TunnelKey::generate(), None),
        Err(e) => {
            // Says nothing about the agent's key: close without `Rejected`
            // so the agent retries instead of giving up for good.
            stream.close_quietly().await;
            return Err(ServerError::Lookup(e));
        }
    };
    let (id, agent, exporter) = (&hello.tunnel_id, &hello.agent, &params.exporter);
    let on_current = verify_proof(&current, id, agent, &challenge, exporter, &mac);
    let on_previous = verify_proof(&previous, id, agent, &challenge, exporter, &mac);
    tokio::time::sleep_until(verdict_at).await;
    let why = match (tunnel, on_current || on_previous) {
        (Some(tunnel), true) => {
            let key = if on_current {
                KeyUsed::Current
            } else {
                KeyUsed::Previous
            };
            return match verifier.admit(&hello, tunnel, key) {
                Admit::Welcome {
                    tunnel_name,
                    admitted,
                } => {
                    send(stream, &Message::Welcome { tunnel_name }).await?;
                    Ok(Accepted {
                        hello,
                        key,
                        admitted,
                    })
                }
                Admit::TryLater { reason, refused } => {
                    let told = Message::TryLater {
                        reason: reason.clone(),
                    };
                    let _ = send(stream, &told).await;
                    stream.close_quietly().await;
                    Err(ServerError::TryLater {
                        hello,
                        reason,
                        refused,
                    })
                }
            };
        }
        (Some(_), false) => Rejection::BadProof,
        (None, _) => Rejection::UnknownTunnel,
    };
    let rejected = Message::Rejected {
        reason: REJECTED_REASON.into(),
    };
    let _ = send(stream, &rejected).await;
    stream.close_quietly().await;
    Err(ServerError::Rejected { hello, why })
}
