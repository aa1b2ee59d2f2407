//! Handshake messages and the agent's proof of key possession.
//!
//! ```text
//! agent                                   gateway
//!   ── Hello {version, tunnel_id, agent} ──▶
//!   ◀──── Challenge {nonce} | TryLater ────   TryLater: a version it does not speak
//!   ── Proof {mac} ────────────────────────▶   mac = HMAC-SHA256(key, transcript)
//!   ◀── Welcome {..} | Rejected | TryLater ─
//! ```
//!
//! `Rejected` is final (the key or the tunnel is wrong: retrying cannot
//! help); `TryLater` says the proof was good but the gateway cannot take
//! this agent now (the tunnel has its most agents, the gateway is full), so
//! the agent retries with backoff. A `Hello` of a protocol version the
//! gateway does not speak gets `TryLater` at once, naming both sides'
//! versions (an upgrade of the gateway fixes it). An agent older than
//! `TryLater` fails to decode it and also retries, never exits.
//!
//! The transcript binds the proof to the tunnel id, the agent name, the
//! gateway's fresh challenge and the TLS exporter value of this very
//! connection, so a recorded proof is worthless on any other connection.
//!
//! Both halves of the exchange live here, over any [`MessageStream`] (the
//! agent's WebSocket in production): [`client()`] for the agent,
//! [`server()`] for the gateway, which brings what only it knows (the
//! tunnel's keys, its budgets) as a [`Verifier`]. Each half runs to a
//! deadline and decodes every message with [`Message::decode`], so the
//! size limit and the `Hello` checks hold on both sides.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::TunnelKey;

pub mod client;
pub mod server;
pub mod stream;
#[cfg(test)]
mod tests_exchange;

pub use client::{client, ClientError, Identity, Welcomed};
pub use server::{
    server, version_mismatch, Accepted, Admit, Hello, KeyUsed, Keys, Rejection, ServerError,
    ServerErrorOf, ServerParams, Verifier,
};
pub use stream::{MessageStream, Received};

/// Version of the handshake and stream protocol this side speaks:
///
/// - 1: every caller connection is one `CONNECT` stream carrying HTTP/1.1;
/// - 2: every caller request is one HTTP/2 request stream
///   ([`crate::exchange`]), and only a WebSocket upgrade is a `CONNECT`
///   stream.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest version the gateway still serves: a gateway upgraded before
/// its agents keeps serving them, with the data path of their version.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Length of the gateway's challenge and of the TLS exporter value.
pub const NONCE_LEN: usize = 32;

/// Largest handshake message accepted, in bytes of JSON.
pub const MAX_HANDSHAKE_MESSAGE: usize = 4096;

/// Longest tunnel id or agent name accepted in a `Hello`.
pub const MAX_NAME_LEN: usize = 128;

/// The answer a rejected agent gets, whatever the reason (unknown tunnel,
/// wrong key, replayed proof): the agent cannot tell them apart.
pub const REJECTED_REASON: &str = "authentication failed";

const TRANSCRIPT_LABEL: &[u8] = b"app-tunnel/agent-auth/v1";

/// One handshake message (a WebSocket text message of JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Agent → gateway: who I am.
    Hello {
        version: u32,
        tunnel_id: String,
        agent: String,
        /// The agent's software version, for the gateway's agent list.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        software: Option<String>,
    },
    /// Gateway → agent: a fresh random challenge (base64).
    Challenge { nonce: String },
    /// Agent → gateway: HMAC of the transcript (base64).
    Proof { mac: String },
    /// Gateway → agent: accepted; names the tunnel for the agent's logs.
    Welcome { tunnel_name: String },
    /// Gateway → agent: refused; the connection closes after this.
    Rejected { reason: String },
    /// Gateway → agent: authenticated, but not taken now (a limit is
    /// reached); the connection closes after this and the agent retries
    /// with backoff.
    TryLater { reason: String },
}

/// A handshake message could not be decoded, or the peer broke the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("handshake message is {0} bytes, over the {MAX_HANDSHAKE_MESSAGE} byte limit")]
    TooLarge(usize),
    #[error("malformed handshake message: {0}")]
    Malformed(String),
    #[error("unsupported protocol version {0} (this side speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})")]
    Version(u32),
    #[error("{0} must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -")]
    BadName(&'static str),
    #[error("expected a {expected} message, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
}

/// Whether a tunnel id or agent name is acceptable: both are logged before
/// the agent is authenticated, so no control characters or spaces.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Message {
    /// Encodes the message as JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("handshake messages always serialize")
    }

    /// Decodes and validates a message.
    pub fn decode(text: &str) -> Result<Self, HandshakeError> {
        if text.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(HandshakeError::TooLarge(text.len()));
        }
        let msg: Message =
            serde_json::from_str(text).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
        if let Message::Hello {
            version,
            tunnel_id,
            agent,
            software,
        } = &msg
        {
            if software.as_deref().is_some_and(|s| !valid_name(s)) {
                return Err(HandshakeError::BadName("software"));
            }
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(version) {
                return Err(HandshakeError::Version(*version));
            }
            if !valid_name(tunnel_id) {
                return Err(HandshakeError::BadName("tunnel_id"));
            }
            if !valid_name(agent) {
                return Err(HandshakeError::BadName("agent"));
            }
        }
        Ok(msg)
    }

    /// The message's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Challenge { .. } => "challenge",
            Message::Proof { .. } => "proof",
            Message::Welcome { .. } => "welcome",
            Message::Rejected { .. } => "rejected",
            Message::TryLater { .. } => "try_later",
        }
    }
}

/// Draws a fresh challenge from the OS CSPRNG.
pub fn new_challenge() -> [u8; NONCE_LEN] {
    use rand::RngCore;
    let mut n = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

/// Base64 text of bytes, as carried in `Challenge` and `Proof`.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a base64 field that must be exactly `N` bytes.
pub fn unb64<const N: usize>(text: &str, field: &'static str) -> Result<[u8; N], HandshakeError> {
    let raw = STANDARD
        .decode(text.as_bytes())
        .map_err(|_| HandshakeError::Malformed(format!("{field} is not base64")))?;
    raw.try_into()
        .map_err(|_| HandshakeError::Malformed(format!("{field} is not {N} bytes")))
}

/// Computes the agent's proof: HMAC-SHA256 under the tunnel key over the
/// label, the length-prefixed tunnel id and agent name, the challenge and
/// the TLS exporter value.
pub fn compute_proof(
    key: &TunnelKey,
    tunnel_id: &str,
    agent: &str,
    challenge: &[u8; NONCE_LEN],
    exporter: &[u8; NONCE_LEN],
) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("HMAC takes any key length");
    mac.update(TRANSCRIPT_LABEL);
    for part in [tunnel_id.as_bytes(), agent.as_bytes()] {
        mac.update(&(part.len() as u16).to_be_bytes());
        mac.update(part);
    }
    mac.update(challenge);
    mac.update(exporter);
    mac.finalize().into_bytes().into()
}

/// Checks a proof in constant time.
pub fn verify_proof(
    key: &TunnelKey,
    tunnel_id: &str,
    agent: &str,
    challenge: &[u8; NONCE_LEN],
    exporter: &[u8; NONCE_LEN],
    proof: &[u8; 32],
) -> bool {
    let expected = compute_proof(key, tunnel_id, agent, challenge, exporter);
    expected.ct_eq(proof).into()
}

/// How one send or receive of either half failed.
enum Step<E> {
    Transport(E),
    Protocol(HandshakeError),
    Closed,
}

impl<E> From<HandshakeError> for Step<E> {
    fn from(e: HandshakeError) -> Self {
        Step::Protocol(e)
    }
}

/// Receives and decodes the next handshake message.
async fn recv<S: MessageStream>(stream: &mut S) -> Result<Message, Step<S::Error>> {
    match stream.recv_message().await.map_err(Step::Transport)? {
        Received::Text(text) => Ok(Message::decode(&text)?),
        Received::Binary => {
            Err(HandshakeError::Malformed("binary message during handshake".into()).into())
        }
        Received::Closed => Err(Step::Closed),
    }
}

/// Encodes and sends one handshake message.
async fn send<S: MessageStream>(stream: &mut S, m: &Message) -> Result<(), Step<S::Error>> {
    stream.send_text(m.encode()).await.map_err(Step::Transport)
}

/// Lines sent on the control stream, newline-terminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Agent → gateway: I am shutting down; send me no new streams.
    Drain,
}

impl Control {
    /// The wire form, one line.
    pub fn as_line(self) -> &'static [u8] {
        match self {
            Control::Drain => b"drain\n",
        }
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Option<Self> {
        match line {
            b"drain" => Some(Control::Drain),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                tunnel_id: "t1".into(),
                agent: "node-1".into(),
                software: Some("0.1.0".into()),
            },
            Message::Challenge {
                nonce: b64(&[7; 32]),
            },
            Message::Proof { mac: b64(&[9; 32]) },
            Message::Welcome {
                tunnel_name: "wiki".into(),
            },
            Message::Rejected {
                reason: REJECTED_REASON.into(),
            },
            Message::TryLater {
                reason: "tunnel `wiki` already has 16 agents connected".into(),
            },
        ]
    }

    #[test]
    fn try_later_has_a_stable_wire_form() {
        // Agents and gateways of different releases meet on the wire: the
        // tag and field names are the contract.
        let m = Message::TryLater {
            reason: "full".into(),
        };
        assert_eq!(m.encode(), r#"{"type":"try_later","reason":"full"}"#);
        assert_eq!(
            Message::decode(r#"{"type":"try_later","reason":"full"}"#).unwrap(),
            m
        );
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn oversized_and_malformed_messages_are_refused() {
        let big = format!("{{\"type\":\"proof\",\"mac\":\"{}\"}}", "A".repeat(5000));
        assert!(matches!(
            Message::decode(&big),
            Err(HandshakeError::TooLarge(_))
        ));
        assert!(matches!(
            Message::decode("{\"type\":\"nope\"}"),
            Err(HandshakeError::Malformed(_))
        ));
        assert!(matches!(
            Message::decode("{\"type\":\"proof\",\"mac\":\"x\",\"extra\":1}"),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn hello_is_validated() {
        // Versions 1 and 2 are spoken; any other is refused, naming it.
        for v in [0, 3] {
            let hello = format!(r#"{{"type":"hello","version":{v},"tunnel_id":"t","agent":"a"}}"#);
            assert_eq!(Message::decode(&hello), Err(HandshakeError::Version(v)));
        }
        for v in [1, 2] {
            let hello = format!(r#"{{"type":"hello","version":{v},"tunnel_id":"t","agent":"a"}}"#);
            assert!(Message::decode(&hello).is_ok(), "version {v}");
        }
        let empty = r#"{"type":"hello","version":1,"tunnel_id":"","agent":"a"}"#;
        assert_eq!(
            Message::decode(empty),
            Err(HandshakeError::BadName("tunnel_id"))
        );
        let long = format!(
            r#"{{"type":"hello","version":1,"tunnel_id":"t","agent":"{}"}}"#,
            "a".repeat(MAX_NAME_LEN + 1)
        );
        assert_eq!(
            Message::decode(&long),
            Err(HandshakeError::BadName("agent"))
        );
    }

    #[test]
    fn proof_binds_every_input() {
        let key = TunnelKey::from_bytes([1; 32]);
        let (c, e) = ([2u8; 32], [3u8; 32]);
        let p = compute_proof(&key, "t", "a", &c, &e);
        assert!(verify_proof(&key, "t", "a", &c, &e, &p));
        // A different key, tunnel, agent, challenge or TLS session fails.
        assert!(!verify_proof(
            &TunnelKey::from_bytes([9; 32]),
            "t",
            "a",
            &c,
            &e,
            &p
        ));
        assert!(!verify_proof(&key, "u", "a", &c, &e, &p));
        assert!(!verify_proof(&key, "t", "b", &c, &e, &p));
        assert!(!verify_proof(&key, "t", "a", &[4; 32], &e, &p));
        assert!(!verify_proof(&key, "t", "a", &c, &[4; 32], &p));
        // Length prefixes keep ("ta","") and ("t","a") apart.
        assert_ne!(
            compute_proof(&key, "ta", "x", &c, &e),
            compute_proof(&key, "t", "ax", &c, &e)
        );
    }

    #[test]
    fn challenges_are_fresh() {
        assert_ne!(new_challenge(), new_challenge());
    }

    #[test]
    fn unb64_checks_length() {
        assert!(unb64::<32>(&b64(&[1; 32]), "mac").is_ok());
        assert!(unb64::<32>(&b64(&[1; 31]), "mac").is_err());
        assert!(unb64::<32>("***", "mac").is_err());
    }

    #[test]
    fn control_lines_round_trip() {
        let line = Control::Drain.as_line();
        assert_eq!(
            Control::parse(&line[..line.len() - 1]),
            Some(Control::Drain)
        );
        assert_eq!(Control::parse(b"other"), None);
    }
}
