//! The CLI's side of the admin API: an operation sent to the running
//! gateway named by the runtime file.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

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
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
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
