//! The wire protocol both the gateway and the agent speak.
//!
//! An agent connection is one TLS 1.3 WebSocket on [`AGENT_PATH`]. It goes
//! through two phases:
//!
//! 1. **Handshake** ([`handshake`]): a few JSON text messages. The agent names
//!    its tunnel and itself, the gateway answers with a random challenge, the
//!    agent proves it holds the tunnel key with an HMAC bound to the challenge
//!    and to the TLS session (an RFC 5705 exporter value), and the gateway
//!    welcomes or rejects it. The key never crosses the wire. Both halves of
//!    the exchange are here ([`handshake::client()`] for the agent,
//!    [`handshake::server()`] for the gateway).
//! 2. **Streams**: the WebSocket then carries a byte stream ([`wsio`]) on which
//!    the gateway runs an HTTP/2 client and the agent an HTTP/2 server. Every
//!    caller request is one HTTP/2 request stream ([`exchange`]); a WebSocket
//!    upgrade is one `CONNECT` stream ([`STREAM_AUTHORITY`]) carrying the
//!    caller's connection. Multiplexing, per-stream flow control, PING
//!    heartbeats and GOAWAY come from the maintained `h2` crate rather than
//!    our own code. One extra long-lived stream ([`CONTROL_AUTHORITY`])
//!    carries [`Control`] lines such as the agent's drain notice.

pub mod duration;
pub mod events;
pub mod exchange;
pub mod h2io;
pub mod handshake;
pub mod layered;
pub mod pem;
pub mod secret;
pub mod wsio;

pub use h2io::H2Stream;
pub use handshake::{Control, HandshakeError, Message, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use secret::TunnelKey;
pub use wsio::WsByteStream;

/// HTTP path of the agent listener's WebSocket endpoint.
pub const AGENT_PATH: &str = "/_tunnel/v1";

/// TLS exporter label binding an agent's proof to its TLS session.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-app-tunnel-agent-auth-v1";

/// `CONNECT` authority of a stream that carries one caller connection (a
/// WebSocket upgrade) to the agent's local service; also the authority of
/// every request stream.
pub const STREAM_AUTHORITY: &str = "stream.tunnel.invalid:0";

/// `CONNECT` authority of the control stream (one per agent connection).
pub const CONTROL_AUTHORITY: &str = "control.tunnel.invalid:0";

/// Largest WebSocket message or frame either side accepts. Stream data is
/// written in chunks of at most [`MAX_WRITE_CHUNK`], so this leaves headroom
/// while keeping a hostile peer from making us buffer large messages.
pub const MAX_WS_MESSAGE: usize = 1 << 20;

/// Largest chunk of stream bytes put in one WebSocket message.
pub const MAX_WRITE_CHUNK: usize = 256 << 10;

/// HTTP/2 flow-control window of one tunnel stream, in bytes.
pub const STREAM_WINDOW: u32 = 2 << 20;

/// HTTP/2 flow-control window of a whole agent connection, in bytes.
pub const CONNECTION_WINDOW: u32 = 16 << 20;

/// Bytes tungstenite reads from TLS at a time during the handshake's
/// messages (it zero-fills this much per connection up front; its default,
/// 128 KiB, made an idle agent cost the gateway about 200 KiB). After the
/// handshake [`wsio`] frames the bytes itself, with no standing buffer.
pub const READ_BUFFER: usize = 16 << 10;

/// Builds the WebSocket configuration both sides use for the handshake:
/// explicit, small limits instead of the library's 64 MiB defaults.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE))
        .max_frame_size(Some(MAX_WS_MESSAGE))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(128 << 10)
        .max_write_buffer_size(4 << 20)
}
