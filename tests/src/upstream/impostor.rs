//! A TLS listener posing as the gateway with a certificate the agent must
//! refuse. It counts connection attempts, completed handshakes and
//! application bytes: an agent that checks certificates sends none.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::Counter;
use crate::pki::CertFiles;

/// What the impostor saw.
#[derive(Debug, Default)]
pub struct ImpostorStats {
    /// TCP connections accepted.
    pub connections: Counter,
    /// TLS handshakes that completed (the client accepted the certificate).
    pub handshakes: Counter,
    /// Application bytes read after a handshake.
    pub app_bytes: Counter,
}

/// A running impostor; stops when dropped.
pub struct Impostor {
    addr: SocketAddr,
    stats: Arc<ImpostorStats>,
    accept: JoinHandle<()>,
}

/// Starts a TLS 1.2/1.3 listener on 127.0.0.1:0 presenting `cert`.
pub async fn impostor(cert: &CertFiles) -> Impostor {
    let (chain, key) = cert.load();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("impostor certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind impostor");
    let addr = listener.local_addr().expect("impostor address");
    let stats = Arc::new(ImpostorStats::default());
    let shared = stats.clone();
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            shared.connections.add(1);
            let acceptor = acceptor.clone();
            let stats = shared.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                stats.handshakes.add(1);
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    stats.app_bytes.add(n as u64);
                }
            });
        }
    });
    Impostor {
        addr,
        stats,
        accept,
    }
}

impl Impostor {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL an agent would dial to reach it as `localhost`.
    pub fn url(&self) -> String {
        format!("wss://localhost:{}/_tunnel/v1", self.addr.port())
    }

    /// What it saw.
    pub fn stats(&self) -> &ImpostorStats {
        &self.stats
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
