//! A byte stream over a WebSocket, so that HTTP/2 can run on top of it.
//!
//! tungstenite does the HTTP upgrade and the handshake's text messages;
//! then this module takes the raw (TLS) stream back and frames bytes
//! itself, still RFC 6455 on the wire, because the general-purpose library
//! pays for every message twice: it copies a write into a message, then
//! into its output buffer, and zero-fills a read buffer per connection.
//! Here:
//!
//! - a write becomes one binary frame (at most [`MAX_WRITE_CHUNK`] bytes).
//!   The server side (the gateway, which must not mask) hands the frame
//!   head and the caller's slices to TLS in one vectored write, copying
//!   nothing itself; the client side (the agent, which must mask) copies
//!   and masks in one pass into its output buffer;
//! - reads hand out data frames' payloads as they arrive (unmasking in the
//!   same copy), without waiting for a whole frame;
//! - both buffers are allocated only while there is something in them, so
//!   an idle connection holds none (an idle agent costs the gateway its TLS
//!   state and HTTP/2 session, not WebSocket buffers).
//!
//! Pings are answered with pongs, a close frame or the end of the
//! connection reads as end of stream. A text frame after the handshake, a
//! frame masked the wrong way, reserved bits or opcodes, or a frame larger
//! than [`MAX_WS_MESSAGE`] is a protocol error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::{MAX_WRITE_CHUNK, MAX_WS_MESSAGE};

/// Bytes asked of the transport per read (TLS hands over what it has
/// decrypted, up to this).
const READ_CHUNK: usize = 32 << 10;

/// Output buffered before a write waits for the transport.
const HIGH_WATER: usize = 512 << 10;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Which end of the WebSocket this is: clients mask what they send,
/// servers require it (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed (the agent).
    Client,
    /// The side that accepted (the gateway).
    Server,
}

/// A control frame read whole before it is acted on.
#[derive(Debug)]
enum Control {
    Close,
    Ping(Vec<u8>),
    Pong,
}

/// Where the reader is within the incoming frames.
#[derive(Debug)]
enum ReadState {
    /// Between frames: the next bytes are a frame head.
    Head,
    /// Inside a data frame: `left` payload bytes to hand out.
    Data {
        left: u64,
        mask: Option<[u8; 4]>,
        pos: usize,
    },
    /// Inside a control frame, collecting its (small) payload.
    Control {
        kind: u8,
        len: usize,
        mask: Option<[u8; 4]>,
    },
}

/// Adapts a WebSocket whose handshake phase is over into [`AsyncRead`] +
/// [`AsyncWrite`].
pub struct WsByteStream<S> {
    io: S,
    role: Role,
    rbuf: BytesMut,
    state: ReadState,
    /// Inside a binary message whose last frame has not come yet.
    fragmented: bool,
    eof: bool,
    wbuf: BytesMut,
    close_queued: bool,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<S> WsByteStream<S> {
    /// Takes over a WebSocket on the client (masking) side. Everything the
    /// WebSocket had to send must have been flushed (`SinkExt::send` does).
    pub fn client(ws: WebSocketStream<S>) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Self::from_io(ws.into_inner(), Role::Client)
    }

    /// Takes over a WebSocket on the server side.
    pub fn server(ws: WebSocketStream<S>) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        Self::from_io(ws.into_inner(), Role::Server)
    }

    /// Frames bytes on a transport whose WebSocket upgrade is done.
    pub fn from_io(io: S, role: Role) -> Self {
        WsByteStream {
            io,
            role,
            rbuf: BytesMut::new(),
            state: ReadState::Head,
            fragmented: false,
            eof: false,
            wbuf: BytesMut::new(),
            close_queued: false,
            cancelled: None,
        }
    }

    /// Cancelling `token` fails every further read and write. The owner of
    /// a connection whose driver runs in a task it does not hold (hyper's
    /// HTTP/2 client) closes it this way.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancelled = Some(Box::pin(token.cancelled_owned()));
        self
    }

    /// Bytes held in this stream's buffers (for tests and accounting).
    pub fn buffered_capacity(&self) -> usize {
        self.rbuf.capacity() + self.wbuf.capacity()
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
            .field("role", &self.role)
            .field("state", &self.state)
            .field("read_buffered", &self.rbuf.len())
            .field("write_buffered", &self.wbuf.len())
            .field("eof", &self.eof)
            .finish()
    }
}

fn protocol_error(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("websocket protocol error: {why}"),
    )
}

/// XORs `data` with `mask`, the first byte being at offset `pos` of the
/// frame's payload.
fn apply_mask(data: &mut [u8], mask: [u8; 4], pos: usize) {
    let rotated = u32::from_ne_bytes(mask).rotate_right(8 * (pos % 4) as u32);
    let key = u64::from(rotated) | (u64::from(rotated) << 32);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes(c.try_into().expect("8 bytes")) ^ key;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let key = rotated.to_ne_bytes();
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends a frame head for a final frame of `opcode` with `len` payload
/// bytes, masked with `mask` when set.
fn put_head(out: &mut BytesMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.put_u8(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_u8(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(m | 126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(m | 127);
        out.put_u64(len as u64);
    }
    if let Some(k) = mask {
        out.put_slice(&k);
    }
}

/// A parsed frame head: (fin, opcode, payload length, mask, head length).
type Head = (bool, u8, u64, Option<[u8; 4]>, usize);

/// Parses a frame head at the start of `b`; `None` until it is whole.
fn parse_head(b: &[u8]) -> io::Result<Option<Head>> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[0] & 0x70 != 0 {
        return Err(protocol_error(
            "reserved bits set (no extension was agreed)",
        ));
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0F;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if b.len() < at + 4 {
            return Ok(None);
        }
        let k: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        at += 4;
        Some(k)
    } else {
        None
    };
    Ok(Some((fin, opcode, len, mask, at)))
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsByteStream<S> {
    /// Writes buffered output to the transport until it is empty or the
    /// transport would block.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        // Idle connections keep no output buffer.
        self.wbuf = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    fn queue_control(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.outgoing_mask();
        put_head(&mut self.wbuf, opcode, payload.len(), mask);
        let body = self.wbuf.len();
        self.wbuf.put_slice(payload);
        if let Some(k) = mask {
            apply_mask(&mut self.wbuf[body..], k, 0);
        }
    }

    fn outgoing_mask(&self) -> Option<[u8; 4]> {
        (self.role == Role::Client).then(rand::random::<[u8; 4]>)
    }

    /// Waits until the peer has sent something, without consuming it.
    ///
    /// tungstenite reads the handshake's last message and may read further
    /// into its own buffer, which [`WebSocketStream::into_inner`] drops. So
    /// the side that sent the last handshake message (the gateway's
    /// `Welcome`) waits for the peer to speak first (the agent's HTTP/2
    /// server opens with its SETTINGS) before writing anything.
    pub async fn peer_spoke(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            if !self.rbuf.is_empty() {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.poll_fill(cx))? {
                0 => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed before sending anything",
                ))),
                _ => Poll::Ready(Ok(())),
            }
        })
        .await
    }

    /// Reads more bytes from the transport into the read buffer; `Ok(0)`
    /// is the transport's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Pending => {
                // Idle connections keep no read buffer.
                if self.rbuf.is_empty() {
                    self.rbuf = BytesMut::new();
                }
                Poll::Pending
            }
            other => other,
        }
    }

    /// Acts on the next frame head in the read buffer; `false` when more
    /// bytes are needed.
    fn take_head(&mut self) -> io::Result<bool> {
        let Some((fin, opcode, len, mask, at)) = parse_head(&self.rbuf)? else {
            return Ok(false);
        };
        match (self.role, mask.is_some()) {
            (Role::Server, false) => return Err(protocol_error("unmasked frame from a client")),
            (Role::Client, true) => return Err(protocol_error("masked frame from a server")),
            _ => {}
        }
        self.rbuf.advance(at);
        match opcode {
            OP_BINARY | OP_CONTINUATION => {
                if (opcode == OP_CONTINUATION) != self.fragmented {
                    return Err(protocol_error("continuation frame out of place"));
                }
                if len > MAX_WS_MESSAGE as u64 {
                    return Err(protocol_error("frame larger than the limit"));
                }
                self.fragmented = !fin;
                self.state = ReadState::Data {
                    left: len,
                    mask,
                    pos: 0,
                };
            }
            OP_TEXT => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "text message on a tunnel stream",
                ))
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return Err(protocol_error("fragmented or long control frame"));
                }
                self.state = ReadState::Control {
                    kind: opcode,
                    len: len as usize,
                    mask,
                };
            }
            _ => return Err(protocol_error("reserved opcode")),
        }
        Ok(true)
    }

    /// Takes a whole control frame's payload from the read buffer.
    fn take_control(&mut self, kind: u8, len: usize, mask: Option<[u8; 4]>) -> Option<Control> {
        if self.rbuf.len() < len {
            return None;
        }
        let mut payload = self.rbuf.split_to(len).to_vec();
        if let Some(k) = mask {
            apply_mask(&mut payload, k, 0);
        }
        self.state = ReadState::Head;
        Some(match kind {
            OP_CLOSE => Control::Close,
            OP_PING => Control::Ping(payload),
            _ => Control::Pong,
        })
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
        // Pongs and the close reply go out even when nothing else writes;
        // a blocked transport is retried on the next read or write. A peer
        // that pings without reading the pongs is not read from until they
        // are out, so what it makes us buffer stays bounded.
        if !this.wbuf.is_empty() {
            match this.poll_drain(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if this.wbuf.len() >= HIGH_WATER => return Poll::Pending,
                _ => {}
            }
        }
        loop {
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match this.state {
                ReadState::Data {
                    ref mut left,
                    mask,
                    ref mut pos,
                } => {
                    if *left == 0 {
                        this.state = ReadState::Head;
                        continue;
                    }
                    if !this.rbuf.is_empty() && buf.remaining() > 0 {
                        let n = (*left)
                            .min(this.rbuf.len() as u64)
                            .min(buf.remaining() as u64) as usize;
                        let start = buf.filled().len();
                        buf.put_slice(&this.rbuf[..n]);
                        if let Some(k) = mask {
                            apply_mask(&mut buf.filled_mut()[start..], k, *pos);
                        }
                        this.rbuf.advance(n);
                        *left -= n as u64;
                        *pos += n;
                        return Poll::Ready(Ok(()));
                    }
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                ReadState::Head => {
                    if this.take_head()? {
                        continue;
                    }
                }
                ReadState::Control { kind, len, mask } => {
                    match this.take_control(kind, len, mask) {
                        Some(Control::Close) => {
                            this.eof = true;
                            if !this.close_queued {
                                this.close_queued = true;
                                this.queue_control(OP_CLOSE, &[]);
                                let _ = this.poll_drain(cx);
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Some(Control::Ping(payload)) => {
                            this.queue_control(OP_PONG, &payload);
                            match this.poll_drain(cx) {
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                                Poll::Pending if this.wbuf.len() >= HIGH_WATER => {
                                    return Poll::Pending
                                }
                                _ => {}
                            }
                            continue;
                        }
                        Some(Control::Pong) => continue,
                        None => {}
                    }
                }
            }
            // More bytes are needed.
            if ready!(this.poll_fill(cx))? == 0 {
                this.eof = true;
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsByteStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// HTTP/2 writes a frame as a 9-byte head plus its payload; they go
    /// out as one WebSocket frame.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check_cancelled(cx)?;
        if this.close_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "websocket closed",
            )));
        }
        if this.wbuf.len() >= HIGH_WATER {
            ready!(this.poll_drain(cx))?;
        }
        let total = bufs
            .iter()
            .map(|b| b.len())
            .sum::<usize>()
            .min(MAX_WRITE_CHUNK);
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let mask = this.outgoing_mask();
        let mut head = BytesMut::with_capacity(14);
        put_head(&mut head, OP_BINARY, total, mask);

        let mut written = 0;
        if mask.is_none() && this.wbuf.is_empty() {
            // Server side, nothing queued: head and payload straight to
            // TLS in one vectored write; only what it does not take is
            // copied.
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(io::IoSlice::new(&head));
            let mut room = total;
            for b in bufs {
                if room == 0 {
                    break;
                }
                let take = b.len().min(room);
                slices.push(io::IoSlice::new(&b[..take]));
                room -= take;
            }
            match Pin::new(&mut this.io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(n)) => written = n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        // Queue whatever of head and payload the transport did not take.
        let frame_len = head.len() + total;
        this.wbuf.reserve(frame_len - written);
        let mut skip = written;
        let mut put = |wbuf: &mut BytesMut, part: &[u8]| {
            let s = skip.min(part.len());
            skip -= s;
            wbuf.put_slice(&part[s..]);
        };
        put(&mut this.wbuf, &head);
        let body_start = this.wbuf.len();
        let mut room = total;
        for b in bufs {
            if room == 0 {
                break;
            }
            let take = b.len().min(room);
            put(&mut this.wbuf, &b[..take]);
            room -= take;
        }
        if let Some(k) = mask {
            // Client side: copied once above, masked in place here.
            apply_mask(&mut this.wbuf[body_start..], k, 0);
        }
        if !this.wbuf.is_empty() {
            // Start sending; what blocks goes out on flush.
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_cancelled(cx)?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_queued {
            this.close_queued = true;
            // A normal closure (1000).
            this.queue_control(OP_CLOSE, &1000u16.to_be_bytes());
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
    use tokio_tungstenite::tungstenite::Message;

    type Duplex = tokio::io::DuplexStream;

    /// Polls a future once.
    async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }

    fn pair() -> (WsByteStream<Duplex>, WsByteStream<Duplex>) {
        let (a, b) = tokio::io::duplex(64 << 10);
        (
            WsByteStream::from_io(a, Role::Client),
            WsByteStream::from_io(b, Role::Server),
        )
    }

    /// Our client against tungstenite's server, and the reverse: the wire
    /// format is plain RFC 6455.
    async fn against_tungstenite(ours: Role) -> (WsByteStream<Duplex>, WebSocketStream<Duplex>) {
        let (a, b) = tokio::io::duplex(64 << 10);
        let theirs = match ours {
            Role::Client => WsRole::Server,
            Role::Server => WsRole::Client,
        };
        let cfg = Some(crate::ws_config());
        (
            WsByteStream::from_io(a, ours),
            WebSocketStream::from_raw_socket(b, theirs, cfg).await,
        )
    }

    #[test]
    fn masking_at_any_offset_matches_bytewise_xor() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let data: Vec<u8> = (0..100u8).collect();
        for pos in 0..8 {
            for split in [0, 1, 3, 9, 17, 100] {
                let mut got = data.clone();
                apply_mask(&mut got[..split], mask, pos);
                apply_mask(&mut got[split..], mask, pos + split);
                let want: Vec<u8> = data
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[(pos + i) % 4])
                    .collect();
                assert_eq!(got, want, "pos {pos} split {split}");
            }
        }
    }

    #[tokio::test]
    async fn bytes_cross_in_order_with_split_reads_both_ways() {
        let (mut a, mut b) = pair();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(70_001) {
                a.write_all(chunk).await.unwrap();
            }
            a.shutdown().await.unwrap();
        });
        // Odd small pieces exercise partial hand-out of frames.
        let mut got = Vec::new();
        let mut piece = [0u8; 777];
        loop {
            let n = b.read(&mut piece).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&piece[..n]);
        }
        assert_eq!(got, data);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn our_client_talks_to_a_tungstenite_server() {
        let (mut ours, mut theirs) = against_tungstenite(Role::Client).await;
        let parts = [io::IoSlice::new(b"head-"), io::IoSlice::new(b"payload")];
        assert_eq!(ours.write_vectored(&parts).await.unwrap(), 12);
        ours.flush().await.unwrap();
        match theirs.next().await.unwrap().unwrap() {
            Message::Binary(b) => assert_eq!(&b[..], b"head-payload"),
            other => panic!("expected one binary message, got {other:?}"),
        }
        let big = vec![7u8; 200_000];
        let mut got = vec![0u8; big.len()];
        let (sent, read) = tokio::join!(
            theirs.send(Message::binary(big.clone())),
            ours.read_exact(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        assert_eq!(got, big);
    }

    #[tokio::test]
    async fn our_server_talks_to_a_tungstenite_client_and_answers_pings() {
        let (mut ours, mut theirs) = against_tungstenite(Role::Server).await;
        theirs
            .send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        theirs
            .send(Message::binary(b"after the ping".to_vec()))
            .await
            .unwrap();
        let mut got = [0u8; 14];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"after the ping");
        ours.write_all(b"reply").await.unwrap();
        ours.flush().await.unwrap();
        let mut saw_pong = false;
        loop {
            match theirs.next().await.unwrap().unwrap() {
                Message::Pong(p) => {
                    assert_eq!(&p[..], b"are you there");
                    saw_pong = true;
                }
                Message::Binary(b) => {
                    assert_eq!(&b[..], b"reply");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(saw_pong, "a ping must be answered with its payload");
        // A close from the peer reads as the end of the stream.
        theirs.close(None).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(ours.read_to_end(&mut rest).await.unwrap(), 0);
    }

    /// Masked frame bytes as a client sends them.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut f = vec![first, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        let mut p = payload.to_vec();
        apply_mask(&mut p, mask, 0);
        f.extend_from_slice(&p);
        f
    }

    #[tokio::test]
    async fn fragmented_binary_messages_read_as_one_stream() {
        let (mut raw, io) = tokio::io::duplex(4096);
        let mut ours = WsByteStream::from_io(io, Role::Server);
        let mut wire = client_frame(0x02, b"ab"); // binary, not final
        wire.extend(client_frame(0x89, b"")); // a ping between fragments
        wire.extend(client_frame(0x80, b"cd")); // final continuation
        raw.write_all(&wire).await.unwrap();
        let mut got = [0u8; 4];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd");
        // The ping was answered (an unmasked pong from the server).
        let mut pong = [0u8; 2];
        raw.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x8A, 0x00]);
    }

    #[tokio::test]
    async fn text_after_handshake_is_an_error() {
        let (mut ours, mut theirs) = against_tungstenite(Role::Server).await;
        theirs.send(Message::text("hi")).await.unwrap();
        let mut buf = [0u8; 8];
        let err = ours.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("text message"), "{err}");
    }

    #[tokio::test]
    async fn a_server_refuses_unmasked_frames_and_oversized_ones() {
        for (frame, why) in [
            (vec![0x82, 0x02, b'h', b'i'], "unmasked frame"),
            (
                {
                    let mut f = vec![0x82, 0xFF];
                    f.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
                    f.extend_from_slice(&[1, 2, 3, 4]);
                    f
                },
                "larger than the limit",
            ),
            (vec![0xC2, 0x80, 0, 0, 0, 0], "reserved bits"),
            (vec![0x83, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (
                vec![0x80, 0x80, 0, 0, 0, 0],
                "continuation frame out of place",
            ),
        ] {
            let (mut raw, io) = tokio::io::duplex(4096);
            let mut ours = WsByteStream::from_io(io, Role::Server);
            raw.write_all(&frame).await.unwrap();
            let mut buf = [0u8; 8];
            let err = ours.read(&mut buf).await.unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[tokio::test]
    async fn a_client_refuses_masked_frames() {
        let (mut raw, io) = tokio::io::duplex(4096);
        let mut ours = WsByteStream::from_io(io, Role::Client);
        raw.write_all(&[0x82, 0x82, 1, 2, 3, 4, 0, 0])
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        let err = ours.read(&mut buf).await.unwrap_err();
        assert!(err.to_string().contains("masked frame"), "{err}");
    }

    #[tokio::test]
    async fn a_peer_that_pings_without_reading_cannot_grow_our_buffers() {
        let (raw, io) = tokio::io::duplex(4096);
        let (mut raw_rd, mut raw_wr) = tokio::io::split(raw);
        let mut ours = WsByteStream::from_io(io, Role::Server);
        // 4 MiB of pings with full payloads; the flooder never reads.
        let flood = tokio::spawn(async move {
            let ping = client_frame(0x89, &[b'p'; 125]);
            for _ in 0..32_000 {
                if raw_wr.write_all(&ping).await.is_err() {
                    break;
                }
            }
        });
        let mut buf = [0u8; 64];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(500), ours.read(&mut buf)).await;
        assert!(read.is_err(), "no data frame was sent, the read must wait");
        assert!(
            ours.buffered_capacity() < 2 * HIGH_WATER + 2 * READ_CHUNK,
            "pongs buffered without bound: {} bytes",
            ours.buffered_capacity()
        );
        assert!(
            !flood.is_finished(),
            "reading must stop while pongs are stuck"
        );
        // Once the flooder reads its pongs, we read on.
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 << 10];
            while raw_rd.read(&mut sink).await.unwrap_or(0) > 0 {}
        });
        flood.abort();
        drain.abort();
    }

    #[tokio::test]
    async fn cancelling_fails_a_pending_read() {
        let (_a, y) = tokio::io::duplex(4096);
        let token = CancellationToken::new();
        let mut b = WsByteStream::from_io(y, Role::Server).with_cancel(token.clone());
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
    async fn waiting_for_the_peer_consumes_nothing() {
        let (x, y) = tokio::io::duplex(4096);
        let mut server = WsByteStream::from_io(x, Role::Server);
        let mut client = WsByteStream::from_io(y, Role::Client);
        let mut wait = Box::pin(server.peer_spoke());
        assert!(poll_once(wait.as_mut()).await.is_pending());
        drop(wait);
        client.write_all(b"settings").await.unwrap();
        client.flush().await.unwrap();
        server.peer_spoke().await.unwrap();
        let mut got = [0u8; 8];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"settings");
        // A peer that closes without a word is an error, not a hang.
        let (x, y) = tokio::io::duplex(4096);
        drop(y);
        let mut server = WsByteStream::from_io(x, Role::Server);
        let err = server.peer_spoke().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn an_idle_stream_keeps_no_buffers() {
        let (mut a, mut b) = pair();
        let mut got = vec![0u8; 100_000];
        let (sent, read) = tokio::join!(
            async {
                a.write_all(&[1u8; 100_000]).await?;
                a.flush().await
            },
            b.read_exact(&mut got)
        );
        sent.unwrap();
        read.unwrap();
        // The next read finds nothing and waits: the buffers are gone.
        let mut one = [0u8; 1];
        let mut read = Box::pin(b.read(&mut one));
        assert!(poll_once(read.as_mut()).await.is_pending());
        drop(read);
        assert_eq!(b.buffered_capacity(), 0);
        assert_eq!(a.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn peer_vanishing_reads_as_eof_not_hang() {
        let (a, mut b) = pair();
        drop(a);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), b.read(&mut buf))
            .await
            .expect("read must not hang when the peer is gone");
        assert!(matches!(r, Ok(0) | Err(_)));
    }
}
