//! A byte stream over a WebSocket, so that HTTP/2 can run on top of it.
//!
//! Each write becomes one binary message (at most [`MAX_WRITE_CHUNK`] bytes);
//! reads hand out the payloads of incoming binary messages in order. Pings
//! and pongs are answered by tungstenite itself; a close frame or the end of
//! the connection reads as end of stream. A text message after the handshake
//! is a protocol error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::MAX_WRITE_CHUNK;

/// Adapts a [`WebSocketStream`] into [`AsyncRead`] + [`AsyncWrite`].
pub struct WsByteStream<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<S> WsByteStream<S> {
    /// Wraps a WebSocket whose handshake phase is over.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsByteStream {
            ws,
            pending: Bytes::new(),
            eof: false,
            cancelled: None,
        }
    }

    /// Like [`new`](Self::new), but cancelling `token` fails every further
    /// read and write. The owner of a connection whose driver runs in a task
    /// it does not hold (hyper's HTTP/2 client) closes it this way.
    pub fn with_cancel(ws: WebSocketStream<S>, token: CancellationToken) -> Self {
        let mut s = Self::new(ws);
        s.cancelled = Some(Box::pin(token.cancelled_owned()));
        s
    }

    fn check_cancelled(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let cancelled = match self.cancelled.as_mut() {
            Some(c) => c.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if cancelled {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "tunnel connection closed locally",
            ));
        }
        Ok(())
    }
}

impl<S> std::fmt::Debug for WsByteStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsByteStream")
            .field("pending", &self.pending.len())
            .field("eof", &self.eof)
            .finish()
    }
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
        }
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_cancelled(cx)?;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Close(_))) | None => this.eof = true,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on a tunnel stream",
                    )))
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => this.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_cancelled(cx)?;
        let ws = &mut self.ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_WRITE_CHUNK);
        Pin::new(&mut *ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    /// HTTP/2 writes a frame as a 9-byte head plus its payload; gathering
    /// them into one message halves the WebSocket frames on the wire.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_cancelled(cx)?;
        let ws = &mut self.ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(to_io)?;
        let total: usize = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .min(MAX_WRITE_CHUNK);
        let mut msg = bytes::BytesMut::with_capacity(total);
        for b in bufs {
            let room = total - msg.len();
            if room == 0 {
                break;
            }
            msg.extend_from_slice(&b[..b.len().min(room)]);
        }
        Pin::new(&mut *ws)
            .start_send(Message::Binary(msg.freeze()))
            .map_err(to_io)?;
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        WsByteStream<tokio::io::DuplexStream>,
        WsByteStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 << 10);
        let cfg = Some(crate::ws_config());
        let a = WebSocketStream::from_raw_socket(a, Role::Client, cfg).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, cfg).await;
        (WsByteStream::new(a), WsByteStream::new(b))
    }

    #[tokio::test]
    async fn bytes_cross_in_order_with_split_reads() {
        let (mut a, mut b) = pair().await;
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
        });
        // Read in odd small pieces to exercise partial message hand-out.
        let mut got = Vec::new();
        let mut piece = [0u8; 777];
        loop {
            let n = b.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, data);
    }

    #[tokio::test]
    async fn vectored_writes_gather_into_one_message() {
        let (mut a, mut b) = pair().await;
        let parts = [io::IoSlice::new(b"head-"), io::IoSlice::new(b"payload")];
        let n = a.write_vectored(&parts).await.unwrap();
        assert_eq!(n, 12);
        a.flush().await.unwrap();
        let mut buf = [0u8; 64];
        let got = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..got], b"head-payload");
    }

    #[tokio::test]
    async fn cancelling_fails_a_pending_read() {
        let (x, y) = tokio::io::duplex(4096);
        let _a = WebSocketStream::from_raw_socket(x, Role::Client, None).await;
        let b = WebSocketStream::from_raw_socket(y, Role::Server, None).await;
        let token = CancellationToken::new();
        let mut b = WsByteStream::with_cancel(b, token.clone());
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            b.read(&mut buf).await
        });
        token.cancel();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("cancel must wake the reader")
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    }

    #[tokio::test]
    async fn text_after_handshake_is_an_error() {
        use futures_util::SinkExt;
        let (x, y) = tokio::io::duplex(4096);
        let mut raw = WebSocketStream::from_raw_socket(x, Role::Client, None).await;
        let y = WebSocketStream::from_raw_socket(y, Role::Server, None).await;
        let mut b = WsByteStream::new(y);
        raw.send(Message::text("hi")).await.unwrap();
        let mut buf = [0u8; 8];
        let err = b.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn peer_vanishing_reads_as_eof_or_error_not_hang() {
        let (a, mut b) = pair().await;
        drop(a);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), b.read(&mut buf))
            .await
            .expect("read must not hang when the peer is gone");
        assert!(matches!(r, Ok(0) | Err(_)));
    }
}
