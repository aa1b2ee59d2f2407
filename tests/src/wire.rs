//! Bytes on the wire, for what a well-behaved client cannot send:
//! malformed and smuggling requests, exact request lines, and TLS
//! handshakes with chosen protocol versions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawReply {
    /// Everything read until the server closed or the wait ended.
    pub bytes: Vec<u8>,
    /// The server closed the connection (FIN or reset) within the wait.
    pub closed: bool,
}

impl RawReply {
    /// The status code of the first response, if one arrived.
    pub fn status(&self) -> Option<u16> {
        let line = self.bytes.split(|b| *b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?;
        let mut parts = line.split_whitespace();
        parts.next().filter(|v| v.starts_with("HTTP/1."))?;
        parts.next()?.parse().ok()
    }

    /// The body of the first response (after the blank line), as text.
    pub fn body_text(&self) -> String {
        let start = crate::upstream::find_bytes(&self.bytes, b"\r\n\r\n").map_or(0, |i| i + 4);
        String::from_utf8_lossy(&self.bytes[start..]).into_owned()
    }

    /// Everything, as text, for failure messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Writes `request` as is, then reads until the server closes the
/// connection or `wait` passes.
pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> RawReply {
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    // The server may answer and close before reading everything we send.
    let _ = tcp.write_all(request).await;
    let mut bytes = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 16 * 1024];
    let closed = loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    RawReply { bytes, closed }
}

/// A TLS handshake with the agents' listener offering only `versions`;
/// returns the negotiated version, or the error.
pub async fn tls_handshake(
    addr: SocketAddr,
    roots: rustls::RootCertStore,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<rustls::ProtocolVersion, String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to the agents' listener");
    let name = ServerName::try_from("localhost").expect("server name");
    let handshake = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?;
    let tls = handshake.map_err(|e| e.to_string())?;
    Ok(tls
        .get_ref()
        .1
        .protocol_version()
        .expect("negotiated version"))
}
