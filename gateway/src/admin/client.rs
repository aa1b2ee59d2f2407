//! The CLI's side of the admin API: an operation sent to the running
//! gateway named by the runtime file.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::api::ACTOR_HEADER;
use super::ops::Op;
use super::runtime::Runtime;

/// Longest the CLI waits for the gateway's answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read.
const MAX_ANSWER: usize = 16 << 20;

/// Why a call through the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached (it may have just stopped).
    #[error("cannot reach the gateway's admin listener at {0}: {1}")]
    Unreachable(std::net::SocketAddr, String),
    /// The gateway answered with an error.
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("the gateway's answer: {0}")]
    Answer(String),
}

/// The HTTP request of an operation: method, path and JSON body.
pub fn request_of(op: &Op) -> (Method, String, Option<Value>) {
    match op {
        Op::ListTunnels => (Method::GET, "/v1/tunnels".into(), None),
        Op::CreateTunnel { org, name } => (
            Method::POST,
            "/v1/tunnels".into(),
            Some(json!({"org": org, "name": name})),
        ),
        Op::ShowTunnel { name } => (Method::GET, format!("/v1/tunnels/{name}"), None),
        Op::DeleteTunnel { name } => (Method::DELETE, format!("/v1/tunnels/{name}"), None),
        Op::RotateKey { name, overlap_secs } => (
            Method::POST,
            format!("/v1/tunnels/{name}/rotate-key"),
            Some(json!({ "overlap_secs": overlap_secs })),
        ),
        Op::ListCallers => (Method::GET, "/v1/callers".into(), None),
        Op::CreateCaller {
            org,
            name,
            expires_in_secs,
        } => (
            Method::POST,
            "/v1/callers".into(),
            Some(json!({"org": org, "name": name, "expires_in_secs": expires_in_secs})),
        ),
        Op::RevokeCaller { id } => (Method::POST, format!("/v1/callers/{id}/revoke"), None),
        Op::ListAgents => (Method::GET, "/v1/agents".into(), None),
        Op::DrainAgent { conn_id } => (Method::POST, format!("/v1/agents/{conn_id}/drain"), None),
        Op::DisconnectAgent { conn_id } => (
            Method::POST,
            format!("/v1/agents/{conn_id}/disconnect"),
            None,
        ),
        Op::ListAdminTokens => (Method::GET, "/v1/admin-tokens".into(), None),
        Op::CreateAdminToken { name, scope } => (
            Method::POST,
            "/v1/admin-tokens".into(),
            Some(json!({"name": name, "scope": scope})),
        ),
        Op::RevokeAdminToken { id } => {
            (Method::POST, format!("/v1/admin-tokens/{id}/revoke"), None)
        }
        Op::ListAudit { limit } => (
            Method::GET,
            match limit {
                Some(n) => format!("/v1/audit?limit={n}"),
                None => "/v1/audit".into(),
            },
            None,
        ),
        Op::Rekey { .. } => (Method::POST, "/v1/store/rekey".into(), Some(json!({}))),
    }
}

/// Sends `op` to the running gateway as the local CLI of `user`.
pub async fn call(rt: &Runtime, op: &Op, user: &str) -> Result<Value, ClientError> {
    tokio::time::timeout(TIMEOUT, call_inner(rt, op, user))
        .await
        .map_err(|_| ClientError::Answer(format!("no answer within {TIMEOUT:?}")))?
}

async fn call_inner(rt: &Runtime, op: &Op, user: &str) -> Result<Value, ClientError> {
    let unreachable = |e: &dyn std::fmt::Display| ClientError::Unreachable(rt.admin, e.to_string());
    let tcp = tokio::net::TcpStream::connect(rt.admin)
        .await
        .map_err(|e| unreachable(&e))?;
    let mut send = match &rt.tls_sha256 {
        None => {
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(&e))?;
            tokio::spawn(conn);
            send
        }
        Some(pin) => {
            let tls = pinned_tls(pin)
                .connect(
                    rustls::pki_types::ServerName::IpAddress(rt.admin.ip().into()),
                    tcp,
                )
                .await
                .map_err(|e| unreachable(&e))?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| unreachable(&e))?;
            tokio::spawn(conn);
            send
        }
    };
    let (method, path, body) = request_of(op);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, rt.admin.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {}", rt.token))
        .header(header::CONTENT_TYPE, "application/json")
        .header(ACTOR_HEADER, user)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Answer(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| unreachable(&e))?;
    let status = resp.status().as_u16();
    let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| ClientError::Answer(e.to_string()))?
        .to_bytes();
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Answer(e.to_string()))?;
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(ClientError::Refused {
            status,
            message: value["error"]
                .as_str()
                .unwrap_or("the gateway refused the operation")
                .to_string(),
        })
    }
}

/// A TLS 1.3 client that accepts exactly the certificate whose SHA-256 the
/// runtime file names (the gateway wrote it from `admin.tls_cert`), with
/// the handshake's signature checked against it: no CA is involved, so a
/// self-signed certificate works, and no other certificate does.
fn pinned_tls(sha256: &str) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        sha256: sha256.to_ascii_lowercase(),
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider speaks TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if hex::encode(Sha256::digest(end_entity.as_ref())) == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the admin listener's certificate is not the one the running gateway \
                 announced in its runtime file"
                    .into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
