//! One HTTP/2 stream of the tunnel as a byte stream (`AsyncRead` +
//! `AsyncWrite`), on the `h2` crate directly.
//!
//! hyper offers the same thing for a `CONNECT` stream (`hyper::upgrade`),
//! but its version copies every write into a fresh buffer, sends it through
//! a channel to a task of its own, and only that task writes into HTTP/2:
//! per write one allocation, one channel hop and one more task wake-up,
//! crossing threads when the caller's task runs on another worker. Here a
//! write goes into the stream's send queue from the writer's own task,
//! under HTTP/2 flow control, and reads hand out the received frames as
//! they are.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A bidirectional HTTP/2 stream (the two halves of a `CONNECT`).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What was received but not yet read.
    rbuf: Bytes,
    /// The end of our half was sent.
    shut: bool,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("stream", &self.send.stream_id())
            .field("buffered", &self.rbuf.len())
            .finish()
    }
}

impl H2Stream {
    /// The stream made of `send` (ours) and `recv` (the peer's half).
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            rbuf: Bytes::new(),
            shut: false,
        }
    }
}

/// An HTTP/2 error as an I/O error: a reset or a lost connection is the
/// stream's peer going away.
fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().expect("checked is_io");
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        while me.rbuf.is_empty() {
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    // The window reopens as soon as a frame is taken: at most
                    // one frame waits here beyond it.
                    let _ = me.recv.flow_control().release_capacity(chunk.len());
                    me.rbuf = chunk;
                }
                Some(Err(e)) => {
                    // A clean reset after the peer's end is an end of stream.
                    if e.reason() == Some(h2::Reason::NO_ERROR) {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(io_error(e)));
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = me.rbuf.len().min(buf.remaining());
        buf.put_slice(&me.rbuf[..n]);
        me.rbuf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if me.shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let cap = me.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                me.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(io_error)?;
                return Poll::Ready(Ok(n));
            }
            me.send.reserve_capacity(buf.len());
            match me.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(io_error(e))),
                Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => {
                    // Waiting for window: a reset by the peer must wake us too.
                    if let Poll::Ready(r) = me.send.poll_reset(cx) {
                        let e = match r {
                            Ok(reason) => io::Error::new(
                                io::ErrorKind::ConnectionReset,
                                format!("stream reset by peer: {reason}"),
                            ),
                            Err(e) => io_error(e),
                        };
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames are written by the connection's own task.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.shut {
            me.shut = true;
            me.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// Pings the peer every `interval` and returns the reason once a pong is
/// not back within `timeout` (a hung peer: no FIN, no crash), or once the
/// connection fails. Run beside the connection; it never returns while the
/// peer answers.
pub async fn heartbeat(
    mut ping: h2::PingPong,
    interval: std::time::Duration,
    timeout: std::time::Duration,
) -> io::Error {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return io_error(e),
            Err(_) => {
                return io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no heartbeat answer within {timeout:?}"),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client and a server on an in-memory pipe, one `CONNECT` stream
    /// between them, windows as small as HTTP/2 allows them by default.
    async fn pair() -> (H2Stream, H2Stream) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(b).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            H2Stream::new(send, req.into_body())
        });
        let (mut client, conn) = h2::client::handshake(a).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("stream.tunnel.invalid:1")
            .body(())
            .unwrap();
        let (resp, send) = client.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        let ours = H2Stream::new(send, resp.into_body());
        (ours, server.await.unwrap())
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_beyond_the_default_windows_and_end_cleanly() {
        let (mut c, mut s) = pair().await;
        // 1 MiB: sixteen times HTTP/2's default 64 KiB window, so the
        // writer must wait for the reader's window updates.
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&sent).await.unwrap();
            c.shutdown().await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data);
        s.write_all(b"pong").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"pong");
    }

    #[tokio::test]
    async fn a_peer_dropping_its_stream_is_an_error_not_an_end() {
        let (mut c, s) = pair().await;
        drop(s);
        let mut buf = [0u8; 8];
        let r = c.read(&mut buf).await;
        assert!(
            r.is_err(),
            "a reset stream must not look like a clean end: {r:?}"
        );
    }

    #[tokio::test]
    async fn writing_after_shutdown_is_refused() {
        let (mut c, _s) = pair().await;
        c.shutdown().await.unwrap();
        let e = c.write(b"late").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
