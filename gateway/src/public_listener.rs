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
//!    within `header_read_timeout` of the accept;
//! 3. for HTTP/1, reads each request head itself, against one deadline for
//!    the whole head (from the accept for the first request, from its first
//!    byte for later ones; the wait for that first byte is the idle
//!    keep-alive time, `keepalive`), then hands the bytes to pingora as
//!    an already-read prefix ([`ServerSession::set_pipelined_prefix`]), so
//!    pingora parses them without reading. A late head gets 408 and the
//!    connection closes; a head over the size limit gets 431;
//! 4. sets the per-read body timeout (`read_timeout`) and the
//!    per-write timeout (`write_timeout`) on every session;
//! 5. for HTTP/2 (by ALPN), requires the client preface within the same
//!    deadline ([`PrefaceDeadline`]) and lets pingora close a connection
//!    idle for `keepalive` (`h2_idle_timeout`).
//!
//! The slot is a guard dropped when `process_new` returns, which for both
//! HTTP versions is when the connection is done: pingora's own keep-alive
//! loop is replaced by the one here, and the HTTP/2 accept loop runs until
//! the connection closes.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::listeners::TcpSocketOptions;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_proxy::{HttpProxy, ProxyHttp};
use tokio::time::Instant;

use crate::config::PublicSection;
use crate::metrics::{ReasonLabels, METRICS};

mod caps;
mod head;
mod preface;

pub use caps::{Connections, Refused, Slot};
use head::{answer, read_head, Head, Wait};
pub use preface::PrefaceDeadline;

/// Room for the request line on top of `max_header_bytes` (which counts
/// header fields only) before an unfinished head is refused with 431.
const REQUEST_LINE_ALLOWANCE: usize = 16 << 10;

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
            header_read_timeout: p.header_read_timeout,
            keepalive: p.keepalive,
            read_timeout: p.read_timeout,
            write_timeout: p.write_timeout,
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
) -> anyhow::Result<(Service<PublicApp<HttpProxy<SV>>>, LiveLimits)>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    let tls = match (&public.tls_cert, &public.tls_key) {
        (Some(cert), Some(key)) => Some(Acceptor::from_server_config(tls_config(cert, key)?)),
        _ => None,
    };
    Ok(build("public", conf, proxy, public, addr, tls))
}

/// The relay listener of a cluster (see [`crate::cluster`]): the same
/// caps, deadlines and pingora proxy as the public listener, with `tls`
/// (which requires an instance's client certificate).
pub fn relay_service<SV>(
    conf: &Arc<ServerConf>,
    proxy: SV,
    public: &PublicSection,
    addr: &str,
    tls: Arc<rustls::ServerConfig>,
) -> (Service<PublicApp<HttpProxy<SV>>>, LiveLimits)
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    let tls = Some(Acceptor::from_server_config(tls));
    build("relay", conf, proxy, public, addr, tls)
}

fn build<SV>(
    name: &str,
    conf: &Arc<ServerConf>,
    proxy: SV,
    public: &PublicSection,
    addr: &str,
    tls: Option<Acceptor>,
) -> (Service<PublicApp<HttpProxy<SV>>>, LiveLimits)
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    let limits = Limits::from_config(public);
    let mut http = pingora_proxy::http_proxy(conf, proxy);
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(limits.keepalive);
    http.server_options = Some(options);
    let app = PublicApp::new(http, tls, limits);
    let live = app.live_limits();
    let mut service = Service::new(name.to_string(), app);
    let mut sock = TcpSocketOptions::default();
    sock.so_reuseport = Some(true);
    service.add_tcp_with_settings(addr, sock);
    (service, live)
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

/// The public listener's application: caps, TLS and deadlines around
/// pingora's proxy `A` (an `HttpProxy`).
pub struct PublicApp<A> {
    proxy: Arc<A>,
    tls: Option<Acceptor>,
    /// Read at each accept and each request head: a live reload changes
    /// them for what comes next ([`LiveLimits`]).
    limits: Arc<ArcSwap<Limits>>,
    conns: Arc<Connections>,
}

impl<A> PublicApp<A> {
    /// Wraps `proxy`; `tls` set makes the listener HTTPS.
    pub fn new(proxy: A, tls: Option<Acceptor>, limits: Limits) -> Self {
        let conns = Connections::new(limits.max_connections, limits.max_connections_per_source);
        PublicApp {
            proxy: Arc::new(proxy),
            tls,
            limits: Arc::new(ArcSwap::from_pointee(limits)),
            conns,
        }
    }

    /// What a live reload changes of this listener.
    pub fn live_limits(&self) -> LiveLimits {
        LiveLimits {
            limits: self.limits.clone(),
            conns: self.conns.clone(),
            also: None,
        }
    }
}

/// The budgets and deadlines of a running public listener. Connections
/// accepted, and request heads begun, after [`LiveLimits::set`] get the new
/// values; the idle keep-alive time stays as at start (pingora's HTTP/2
/// idle timeout is fixed when the listener is built).
#[derive(Clone)]
pub struct LiveLimits {
    limits: Arc<ArcSwap<Limits>>,
    conns: Arc<Connections>,
    /// Another listener under the same `[public]` settings (the relay).
    also: Option<Box<LiveLimits>>,
}

impl LiveLimits {
    /// Applies `[public]`'s budgets and deadlines.
    pub fn set(&self, public: &PublicSection) {
        let limits = Limits::from_config(public);
        self.conns
            .set_caps(limits.max_connections, limits.max_connections_per_source);
        self.limits.store(Arc::new(limits));
        if let Some(other) = &self.also {
            other.set(public);
        }
    }

    /// These limits and, when given, `other`'s: a reload sets both.
    pub fn also(mut self, other: Option<LiveLimits>) -> Self {
        self.also = other.map(Box::new);
        self
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
        let first_deadline = accepted + self.limits.load().header_read_timeout;
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
        let mut settings = None;
        let mut wait = Wait::First(first_deadline);
        loop {
            let l = self.limits.load_full();
            let l = &*l;
            let head = match read_head(&mut stream, wait, l, shutdown).await {
                Head::Ready(buf) => buf,
                Head::Gone => return,
                Head::Late { started } => {
                    closed("header_read_timeout");
                    if !started {
                        // Nothing was asked: nothing to answer.
                        return;
                    }
                    let within = protocol::duration::show(l.header_read_timeout);
                    answer(
                        &mut stream,
                        "408 Request Timeout",
                        &format!("request head not received within {within}"),
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
            // (pingora counts it in whole seconds: rounded up.)
            let head_secs = l.header_read_timeout.as_secs_f64().ceil() as u64;
            session.set_keepalive(Some(head_secs));
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
