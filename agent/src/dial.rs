//! Dialing the gateway: TCP, TLS 1.3 with certificate and host name checks,
//! WebSocket upgrade, and the key-proof handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::handshake::{self, ClientError};
use protocol::TunnelKey;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

use crate::config::{AgentConfig, GatewayUrl};

/// The WebSocket to the gateway after a successful handshake.
pub type GatewayWs = WebSocketStream<TlsStream<TcpStream>>;

/// What the gateway granted.
#[derive(Debug)]
pub struct Welcome {
    pub tunnel_name: String,
}

/// Why dialing failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with the gateway failed: {0}")]
    Tls(std::io::Error),
    #[error("websocket upgrade failed: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("handshake: {0}")]
    Protocol(#[from] handshake::HandshakeError),
    #[error("gateway closed the connection during the handshake")]
    Closed,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// As [`DialError::Timeout`], through the named proxy.
    #[error("timed out after {0:?} (through proxy {1})")]
    TimeoutThroughProxy(Duration, String),
    /// The gateway refused the key (or the tunnel): retrying will not help.
    #[error("gateway rejected this agent: {0}")]
    Rejected(String),
    /// The key was accepted but the gateway cannot take this agent now (a
    /// limit is reached): retry with backoff.
    #[error("gateway asked this agent to retry later: {0}")]
    TryLater(String),
    /// The proxy on the way to the gateway failed or refused.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
}

impl DialError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DialError::Connect(..) => "connect",
            DialError::Tls(_) => "tls",
            DialError::Ws(_) => "websocket",
            DialError::Protocol(_) => "protocol",
            DialError::Closed => "closed",
            DialError::Timeout(_) | DialError::TimeoutThroughProxy(..) => "timeout",
            DialError::Rejected(_) => "rejected",
            DialError::TryLater(_) => "try_later",
            DialError::Proxy(e) => e.kind(),
        }
    }
}

/// Builds the TLS client configuration: TLS 1.3 only, roots from `ca_file`
/// or the system store.
pub fn tls_config(cfg: &AgentConfig) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.gateway.ca_file {
        Some(path) => {
            let certs = protocol::pem::certs(path).context("gateway.ca_file")?;
            for c in certs {
                roots
                    .add(c)
                    .context("gateway.ca_file: unusable CA certificate")?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            anyhow::ensure!(
                !roots.is_empty(),
                "no system CA certificates found; set gateway.ca_file"
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Dials and authenticates, all within the configured timeout; at `pin`
/// when given (one of the addresses the URL's host resolves to).
pub async fn dial(
    cfg: &AgentConfig,
    url: &GatewayUrl,
    pin: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    key: &TunnelKey,
) -> Result<(GatewayWs, Welcome), DialError> {
    let limit = cfg.gateway.connect_timeout;
    let proxy = cfg
        .proxy()
        .map_err(|e| crate::proxy::ProxyError::Config(e.to_string()))?;
    let deadline = Instant::now() + limit;
    let dialed = dial_inner(cfg, url, pin, tls, key, proxy.as_ref(), deadline);
    match tokio::time::timeout_at(deadline, dialed).await {
        Ok(Err(DialError::Timeout(_))) | Err(_) => Err(match &proxy {
            Some(p) => DialError::TimeoutThroughProxy(limit, p.to_string()),
            None => DialError::Timeout(limit),
        }),
        Ok(done) => done,
    }
}

async fn dial_inner(
    cfg: &AgentConfig,
    url: &GatewayUrl,
    pin: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    key: &TunnelKey,
    proxy: Option<&crate::proxy::Proxy>,
    deadline: Instant,
) -> Result<(GatewayWs, Welcome), DialError> {
    let tcp = match pin {
        Some(addr) if proxy.is_none() => {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| DialError::Connect(addr.to_string(), e))?;
            let _ = tcp.set_nodelay(true);
            tcp
        }
        _ => open_transport(url, proxy).await?,
    };
    let tls = tls_connect(url, tls, tcp).await?;
    authenticate(cfg, url, tls, key, deadline).await
}

/// A TCP connection to the gateway: direct, or a tunnel through `proxy`
/// (HTTP CONNECT) that carries the TLS untouched.
pub async fn open_transport(
    url: &GatewayUrl,
    proxy: Option<&crate::proxy::Proxy>,
) -> Result<TcpStream, DialError> {
    if let Some(proxy) = proxy {
        return Ok(proxy.connect(&url.host, url.port).await?);
    }
    let target = format!("{}:{}", url.host, url.port);
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| DialError::Connect(target, e))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TLS 1.3 over `tcp`, the certificate checked against the gateway's host
/// name (never the proxy's).
pub async fn tls_connect(
    url: &GatewayUrl,
    tls: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, DialError> {
    let name = ServerName::try_from(url.host.clone())
        .map_err(|e| DialError::Tls(std::io::Error::other(e)))?;
    // rustls verifies the chain and the host name here; on failure nothing
    // of ours has been sent beyond the ClientHello.
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(DialError::Tls)
}

/// The WebSocket upgrade and the key proof over an established TLS
/// connection, the proof's exchange over by `deadline` (a
/// [`DialError::Timeout`] of `gateway.connect_timeout_secs` otherwise).
pub async fn authenticate(
    cfg: &AgentConfig,
    url: &GatewayUrl,
    tls: TlsStream<TcpStream>,
    key: &TunnelKey,
    deadline: Instant,
) -> Result<(GatewayWs, Welcome), DialError> {
    let mut exporter = [0u8; handshake::NONCE_LEN];
    tls.get_ref()
        .1
        .export_keying_material(&mut exporter, protocol::EXPORTER_LABEL, None)
        .map_err(|e| DialError::Tls(std::io::Error::other(e)))?;
    let req = url.text.as_str().into_client_request()?;
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(req, tls, Some(protocol::ws_config())).await?;

    let agent = cfg.agent_name();
    let me = handshake::Identity {
        tunnel_id: &cfg.tunnel.id,
        agent: &agent,
        software: Some(env!("CARGO_PKG_VERSION")),
        version: cfg.gateway.protocol_version,
        key,
    };
    let welcomed = handshake::client(&mut ws, &me, &exporter, deadline)
        .await
        .map_err(|e| match e {
            ClientError::Transport(e) => DialError::Ws(e),
            ClientError::Protocol(e) => DialError::Protocol(e),
            ClientError::Closed => DialError::Closed,
            ClientError::Timeout => DialError::Timeout(cfg.gateway.connect_timeout),
            ClientError::Rejected(reason) => DialError::Rejected(reason),
            ClientError::TryLater(reason) => DialError::TryLater(reason),
        })?;
    let tunnel_name = welcomed.tunnel_name;
    Ok((ws, Welcome { tunnel_name }))
}
