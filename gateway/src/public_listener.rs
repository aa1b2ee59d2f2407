//! The callers' listener in front of pingora's proxy: the budgets one
//! caller must not be able to exhaust for everyone.
//!
//! pingora's HTTP/1 server bounds each *read* of a request head (60 s) but
//! not the head as a whole, keeps an HTTP/1.1 connection idle for ever once
//! it has served a request, does a TLS handshake for up to 60 s before any
//! application code sees the connection, and counts nothing. So
//! [`PublicApp`] wraps pingora's `HttpProxy` as the listener's
//! [`ServerApp`] and, per connection:
//!
//! 1. takes a slot under `public.max_connections` and
//!    `public.max_connections_per_source` (an IPv4 address, or an IPv6 /64,
//!    since one IPv6 host holds a whole /64); with none free the connection
//!    is closed at once, before TLS: the caller sees the connection accepted
//!    then closed (EOF, or a reset if it had sent bytes);
//! 2. does the TLS handshake itself (the listener is plain TCP to pingora),
//!    within `header_read_timeout_secs` of the accept;
//! 3. for HTTP/1, reads each request head itself, against one deadline for
//!    the whole head (from the accept for the first request, from its first
//!    byte for later ones; the wait for that first byte is the idle
//!    keep-alive time, `keepalive_secs`), then hands the bytes to pingora as
//!    an already-read prefix ([`ServerSession::set_pipelined_prefix`]), so
//!    pingora parses them without reading. A late head gets 408 and the
//!    connection closes; a head over the size limit gets 431;
//! 4. sets the per-read body timeout (`read_timeout_secs`) and the
//!    per-write timeout (`write_timeout_secs`) on every session;
//! 5. for HTTP/2 (by ALPN), requires the client preface within the same
//!    deadline ([`PrefaceDeadline`]) and lets pingora close a connection
//!    idle for `keepalive_secs` (`h2_idle_timeout`).
//!
//! The slot is a guard dropped when `process_new` returns, which for both
//! HTTP versions is when the connection is done: pingora's own keep-alive
//! loop is replaced by the one here, and the HTTP/2 accept loop runs until
//! the connection closes.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_proxy::{HttpProxy, ProxyHttp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::PublicSection;
use crate::metrics::{ReasonLabels, METRICS};

/// Room for the request line on top of `max_header_bytes` (which counts
/// header fields only) before an unfinished head is refused with 431.
const REQUEST_LINE_ALLOWANCE: usize = 16 << 10;
/// Same as pingora's HTTP/1 parser, so both judge a head alike.
const MAX_HEADERS: usize = 256;
/// How long the gateway's own short answers (408, 431) may take to write:
/// a caller that does not read them is not waited for.
const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE_LEN: usize = 24;

/// The limits of [`PublicApp`], from `[public]`.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one source.
    pub max_connections_per_source: usize,
    /// Time for a whole request head (and, on a new connection, TLS).
    pub header_read_timeout: Duration,
    /// Idle time between requests on a keep-alive connection.
    pub keepalive: Duration,
    /// Time between reads of a request body or an upgraded connection.
    pub read_timeout: Duration,
    /// Time one write to the caller may take.
    pub write_timeout: Duration,
    /// Bytes of an unfinished head before it is refused with 431.
    pub max_head_bytes: usize,
}

impl Limits {
    /// The limits configured in `[public]`.
    pub fn from_config(p: &PublicSection) -> Self {
        Limits {
            max_connections: p.max_connections,
            max_connections_per_source: p.max_connections_per_source,
            header_read_timeout: Duration::from_secs(p.header_read_timeout_secs),
            keepalive: Duration::from_secs(p.keepalive_secs),
            read_timeout: Duration::from_secs(p.read_timeout_secs),
            write_timeout: Duration::from_secs(p.write_timeout_secs),
            max_head_bytes: p.max_header_bytes + REQUEST_LINE_ALLOWANCE,
        }
    }
}

/// The public listening service: pingora's proxy around `proxy`, behind
/// [`PublicApp`], listening on `addr` (plain TCP to pingora; TLS is ours).
pub fn service<SV>(
    conf: &Arc<ServerConf>,
    proxy: SV,
    public: &PublicSection,
    addr: &str,
) -> anyhow::Result<Service<PublicApp<HttpProxy<SV>>>>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    let limits = Limits::from_config(public);
    let mut http = pingora_proxy::http_proxy(conf, proxy);
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(limits.keepalive);
    http.server_options = Some(options);
    let tls = match (&public.tls_cert, &public.tls_key) {
        (Some(cert), Some(key)) => Some(Acceptor::from_server_config(tls_config(cert, key)?)),
        _ => None,
    };
    let mut service = Service::new("public".to_string(), PublicApp::new(http, tls, limits));
    let mut sock = TcpSocketOptions::default();
    sock.so_reuseport = Some(true);
    service.add_tcp_with_settings(addr, sock);
    Ok(service)
}

/// The callers' TLS: 1.2 and 1.3, HTTP/2 preferred by ALPN.
fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = crate::tls::load_certs(cert).context("public.tls_cert")?;
    let key = crate::tls::load_key(key).context("public.tls_key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("public TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("public TLS: certificate and key")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Counts a connection as closed by the gateway for `reason`.
fn closed(reason: &'static str) {
    METRICS
        .public_connections_closed
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// The caller's share of the per-source cap: an IPv4 address (IPv4-mapped
/// IPv6 included), or the /64 of an IPv6 address.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Open connections, in total and per source.
#[derive(Debug)]
pub struct Connections {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only sources with open connections: at most `max_total` entries.
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `public.max_connections` are open.
    Total,
    /// Its source has `public.max_connections_per_source` open.
    Source,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::Source => "max_connections_per_source",
        }
    }
}

/// One open connection's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Connections>,
    source: Option<IpAddr>,
}

impl Connections {
    /// Caps of `max_total` connections, `max_per_source` from one source.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Connections {
            max_total,
            max_per_source,
            state: Mutex::new(Counts::default()),
        })
    }

    /// A slot for a connection from `peer` (`None`: not an IP peer, counted
    /// in the total only).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Refused> {
        let source = peer.map(source_key);
        let mut s = self.state.lock().expect("connection counts lock");
        if s.total >= self.max_total {
            return Err(Refused::Total);
        }
        if let Some(src) = source {
            let n = s.per_source.entry(src).or_insert(0);
            if *n >= self.max_per_source {
                return Err(Refused::Source);
            }
            *n += 1;
        }
        s.total += 1;
        Ok(Slot {
            conns: self.clone(),
            source,
        })
    }

    /// Connections open now (total, and from `peer`'s source).
    pub fn open(&self, peer: Option<IpAddr>) -> (usize, usize) {
        let s = self.state.lock().expect("connection counts lock");
        let from = peer
            .and_then(|p| s.per_source.get(&source_key(p)).copied())
            .unwrap_or(0);
        (s.total, from)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.conns.state.lock().expect("connection counts lock");
        s.total -= 1;
        if let Some(src) = self.source {
            if let Some(n) = s.per_source.get_mut(&src) {
                *n -= 1;
                if *n == 0 {
                    s.per_source.remove(&src);
                }
            }
        }
    }
}

/// The public listener's application: caps, TLS and deadlines around
/// pingora's proxy `A` (an `HttpProxy`).
pub struct PublicApp<A> {
    proxy: Arc<A>,
    tls: Option<Acceptor>,
    limits: Limits,
    conns: Arc<Connections>,
}

impl<A> PublicApp<A> {
    /// Wraps `proxy`; `tls` set makes the listener HTTPS.
    pub fn new(proxy: A, tls: Option<Acceptor>, limits: Limits) -> Self {
        let conns = Connections::new(limits.max_connections, limits.max_connections_per_source);
        PublicApp {
            proxy: Arc::new(proxy),
            tls,
            limits,
            conns,
        }
    }
}

fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    match stream.get_socket_digest()?.peer_addr()? {
        PeerAddr::Inet(a) => Some(a.ip()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

#[async_trait]
impl<A> ServerApp for PublicApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let slot = match self.conns.admit(peer_ip(&stream)) {
            Ok(slot) => slot,
            Err(refused) => {
                // Closed before TLS or any read: the cheapest answer there is.
                closed(refused.reason());
                tracing::debug!(reason = refused.reason(), "caller connection refused");
                return None;
            }
        };
        let first_deadline = accepted + self.limits.header_read_timeout;
        let stream = match &self.tls {
            None => stream,
            Some(acceptor) => match tls_accept(acceptor, stream, first_deadline).await {
                Some(s) => s,
                None => return None,
            },
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let stream: Stream = Box::new(PrefaceDeadline::new(stream, first_deadline));
            // pingora's HTTP/2 accept loop runs until the connection closes.
            self.proxy.process_new(stream, shutdown).await;
        } else {
            self.serve_http1(stream, first_deadline, shutdown).await;
        }
        drop(slot);
        None
    }

    async fn cleanup(&self) {
        // pingora's proxy wakes its parked requests here on shutdown.
        ServerApp::cleanup(&*self.proxy).await;
    }
}

/// The TLS handshake, bounded by `deadline`.
async fn tls_accept(acceptor: &Acceptor, stream: Stream, deadline: Instant) -> Option<Stream> {
    let l4 = match stream
        .into_any()
        .downcast::<pingora_core::protocols::l4::stream::Stream>()
    {
        Ok(l4) => *l4,
        Err(_) => {
            tracing::error!("public listener: not a TCP stream, cannot start TLS");
            return None;
        }
    };
    match tokio::time::timeout_at(deadline, acceptor.tls_handshake(l4)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!("caller TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            closed("tls_handshake_timeout");
            tracing::debug!("caller TLS handshake not finished in time");
            None
        }
    }
}

impl<A> PublicApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// pingora's HTTP/1 keep-alive loop, with each request head read here
    /// against its deadline.
    async fn serve_http1(
        self: &Arc<Self>,
        mut stream: Stream,
        first_deadline: Instant,
        shutdown: &ShutdownWatch,
    ) {
        let l = &self.limits;
        let mut settings = None;
        let mut wait = Wait::First(first_deadline);
        loop {
            let head = match read_head(&mut stream, wait, l, shutdown).await {
                Head::Ready(buf) => buf,
                Head::Gone => return,
                Head::Late { started } => {
                    closed("header_read_timeout");
                    if !started {
                        // Nothing was asked: nothing to answer.
                        return;
                    }
                    let secs = l.header_read_timeout.as_secs();
                    answer(
                        &mut stream,
                        "408 Request Timeout",
                        &format!("request head not received within {secs}s"),
                    )
                    .await;
                    return;
                }
                Head::TooLarge => {
                    closed("header_too_large");
                    answer(
                        &mut stream,
                        "431 Request Header Fields Too Large",
                        "request header fields too large",
                    )
                    .await;
                    return;
                }
            };
            let mut session = ServerSession::new_http1(stream);
            if let Some(s) = settings.take() {
                pingora_core::apps::HttpPersistentSettings::apply_to_session(s, &mut session);
            }
            // The head is complete in the prefix, so pingora does not read
            // for it; should it disagree, each of its reads is bounded by
            // this (a silent close, as for an idle keep-alive connection).
            session.set_keepalive(Some(l.header_read_timeout.as_secs()));
            session.set_read_timeout(Some(l.read_timeout));
            session.set_write_timeout(Some(l.write_timeout));
            session.set_pipelined_prefix(head);
            match self.proxy.process_new_http(session, shutdown).await {
                Some(reused) => {
                    let (s, st) = reused.consume();
                    stream = s;
                    settings = st;
                }
                None => return,
            }
            wait = Wait::Idle(Instant::now() + l.keepalive);
        }
    }
}

/// How long to wait for a request head.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// A new connection's first request: all of it by this instant.
    First(Instant),
    /// A later request: its first byte by this instant (the keep-alive
    /// idle time), the rest within `header_read_timeout` of that byte.
    Idle(Instant),
}

/// What came of waiting for a request head.
#[derive(Debug)]
enum Head {
    /// A complete head (or one pingora will refuse as malformed), with any
    /// bytes that followed it.
    Ready(BytesMut),
    /// The caller closed, went idle past keep-alive, or the gateway is
    /// shutting down: close without a word.
    Gone,
    /// The head did not arrive whole in time (`started`: some of it did).
    Late { started: bool },
    /// The unfinished head is over the size limit.
    TooLarge,
}

/// Whether `buf` holds a whole request head, judged as pingora's parser
/// will judge it.
fn head_complete(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(_)) => true,
        Ok(httparse::Status::Partial) => false,
        // pingora escapes an illegal request target when the request line
        // looks like one and parses again: wait for the end of the header
        // section before handing such a head over. Otherwise it answers 400.
        Err(httparse::Error::Token | httparse::Error::Version) => {
            !looks_like_request_line(buf) || buf.windows(4).any(|w| w == b"\r\n\r\n")
        }
        // Malformed for good: pingora answers 400.
        Err(_) => true,
    }
}

/// Whether pingora would try to escape this request line: its pattern
/// `^\w+ (?P<uri>.+) HTTP/\d` (in `escape_illegal_request_line`), matched
/// on the first line.
fn looks_like_request_line(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let method = line
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    if method == 0 || line.get(method) != Some(&b' ') {
        return false;
    }
    let rest = &line[method + 1..];
    (1..rest.len()).any(|i| {
        rest[i..].starts_with(b" HTTP/") && rest.get(i + 6).is_some_and(u8::is_ascii_digit)
    })
}

/// Resolves when the gateway starts shutting down.
async fn shutting_down(shutdown: &ShutdownWatch) {
    let mut sd = shutdown.clone();
    if sd.wait_for(|down| *down).await.is_err() {
        // The server is gone; the connection task ends with it.
        std::future::pending::<()>().await;
    }
}

async fn read_head(stream: &mut Stream, wait: Wait, l: &Limits, shutdown: &ShutdownWatch) -> Head {
    let mut buf = BytesMut::with_capacity(4096);
    let mut deadline = match wait {
        Wait::First(d) | Wait::Idle(d) => d,
    };
    loop {
        if buf.len() > l.max_head_bytes {
            return Head::TooLarge;
        }
        if buf.capacity() == buf.len() {
            buf.reserve(4096);
        }
        let read = tokio::select! {
            biased;
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
            _ = shutting_down(shutdown), if buf.is_empty() => return Head::Gone,
        };
        let was_empty = buf.is_empty();
        match read {
            // Nothing of the next request within keep-alive: an ordinary
            // keep-alive close. Anything else late is a slow head.
            Err(_) if was_empty && matches!(wait, Wait::Idle(_)) => return Head::Gone,
            Err(_) => {
                return Head::Late {
                    started: !was_empty,
                }
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
        }
        if was_empty && matches!(wait, Wait::Idle(_)) {
            // The next request has begun: now its head has to arrive whole.
            deadline = Instant::now() + l.header_read_timeout;
        }
        if head_complete(&buf) {
            return Head::Ready(buf);
        }
    }
}

/// Writes a short final answer and closes.
async fn answer(stream: &mut Stream, status: &str, text: &str) {
    let body = format!("{text}\n");
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(ANSWER_WRITE_TIMEOUT, async {
        stream.write_all(msg.as_bytes()).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(stream).await
    })
    .await;
}

/// An HTTP/2 connection's stream that fails reads once `deadline` passes
/// before the client preface has arrived; after it, a plain pass-through.
/// pingora's HTTP/2 handshake waits for the preface without a timeout.
#[derive(Debug)]
pub struct PrefaceDeadline {
    inner: Stream,
    /// Preface bytes still expected; 0 once the deadline no longer applies.
    pending: usize,
    sleep: Pin<Box<Sleep>>,
}

impl PrefaceDeadline {
    fn new(inner: Stream, deadline: Instant) -> Self {
        PrefaceDeadline {
            inner,
            pending: H2_PREFACE_LEN,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl AsyncRead for PrefaceDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pending == 0 {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let got = buf.filled().len() - before;
                self.pending = self.pending.saturating_sub(got);
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.sleep.as_mut().poll(cx));
                closed("header_read_timeout");
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "HTTP/2 client preface not received in time",
                )))
            }
        }
    }
}

impl AsyncWrite for PrefaceDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for PrefaceDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for PrefaceDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for PrefaceDeadline {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for PrefaceDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for PrefaceDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for PrefaceDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

impl Peek for PrefaceDeadline {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_source_and_in_total_and_free_on_drop() {
        let c = Connections::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = c.admit(Some(a)).unwrap();
        let _a2 = c.admit(Some(a)).unwrap();
        assert_eq!(c.admit(Some(a)).unwrap_err(), Refused::Source);
        let _b1 = c.admit(Some(b)).unwrap();
        assert_eq!(c.admit(Some(b)).unwrap_err(), Refused::Total);
        drop(a1);
        assert_eq!(c.open(Some(a)), (2, 1));
        let _a3 = c.admit(Some(a)).unwrap();
        assert_eq!(c.open(None), (3, 0));
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
    }

    #[test]
    fn a_head_is_complete_when_pingora_would_parse_it() {
        assert!(!head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_complete(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"));
        // Leading empty lines do not end a head.
        assert!(!head_complete(b"\r\n\r\nGET / HTTP/1.1\r\n"));
        // An illegal target pingora escapes: only once the section ends.
        assert!(!head_complete(b"GET /a b HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_complete(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"));
        // Not a request line pingora would escape: handed over for its 400.
        assert!(head_complete(b"GET /\r\n"));
        assert!(head_complete(b"\x00\x01 / HTTP/1.1\r\n"));
        assert!(looks_like_request_line(b"GET /a b HTTP/1.1\r\n"));
        assert!(!looks_like_request_line(b"GET  HTTP/1.1\r\n"));
        // A malformed header is handed over at once, for pingora's 400.
        assert!(head_complete(b"GET / HTTP/1.1\r\nBad Name: x\r\n"));
    }
}
