//! What the two halves of the handshake read and write: whole text
//! messages, whatever carries them (the agent's WebSocket in production,
//! an in-memory channel in the tests).

use std::future::Future;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

/// One message received during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A text message (decoded, size limit included, by the half).
    Text(String),
    /// A binary message: never valid during the handshake.
    Binary,
    /// The peer closed (a close message, or the end of the stream).
    Closed,
}

/// A message stream the handshake runs over. Control messages the
/// transport answers by itself (WebSocket pings and pongs) are not
/// surfaced.
pub trait MessageStream: Send {
    /// A transport failure.
    type Error: Send;

    /// Sends one text message.
    fn send_text(&mut self, text: String) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Waits for the next message.
    fn recv_message(&mut self) -> impl Future<Output = Result<Received, Self::Error>> + Send;

    /// Closes the stream after a final verdict (best effort).
    fn close_quietly(&mut self) -> impl Future<Output = ()> + Send;
}

impl<S> MessageStream for WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    type Error = WsError;

    async fn send_text(&mut self, text: String) -> Result<(), WsError> {
        self.send(WsMessage::text(text)).await
    }

    async fn recv_message(&mut self) -> Result<Received, WsError> {
        loop {
            match self.next().await {
                Some(Ok(WsMessage::Text(t))) => return Ok(Received::Text(t.as_str().to_owned())),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(WsMessage::Binary(_) | WsMessage::Frame(_))) => {
                    return Ok(Received::Binary)
                }
                Some(Ok(WsMessage::Close(_))) | None => return Ok(Received::Closed),
                Some(Err(e)) => return Err(e),
            }
        }
    }

    async fn close_quietly(&mut self) {
        let _ = self.close(None).await;
    }
}
