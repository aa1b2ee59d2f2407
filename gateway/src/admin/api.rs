//! The HTTP JSON admin API under `/v1/` on the admin listener.
//!
//! - Every path but `/v1/openapi.json` needs `Authorization: Bearer <admin
//!   token>`; a `read` token may only read. Missing, unknown and revoked
//!   tokens get the same 401; a source that keeps failing is slowed down
//!   like a caller (`callers.max_failures_per_minute`).
//! - The running gateway's own CLI authenticates with a per-process local
//!   credential from the runtime file ([`super::runtime`]) and names its
//!   user for the audit log.
//! - Bodies are JSON objects of at most [`MAX_BODY`] bytes; unknown fields
//!   are refused, so a typo is an error, not a silent default.
//! - [`ROUTES`] is the table the committed OpenAPI document is checked
//!   against.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::ops::{execute, Actor, Op, OpError};
use crate::auth_limit::FailureBudget;
use crate::registry::Registry;
use crate::store::AdminScope;

/// Largest request body.
pub const MAX_BODY: usize = 64 << 10;
/// The committed OpenAPI document, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");
/// Header in which the local CLI names its user (trusted only with the
/// local credential).
pub const ACTOR_HEADER: &str = "x-admin-actor";

/// Every path template and method the API serves.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/tunnels"),
    ("POST", "/v1/tunnels"),
    ("GET", "/v1/tunnels/{name}"),
    ("DELETE", "/v1/tunnels/{name}"),
    ("POST", "/v1/tunnels/{name}/rotate-key"),
    ("GET", "/v1/callers"),
    ("POST", "/v1/callers"),
    ("POST", "/v1/callers/{id}/revoke"),
    ("GET", "/v1/agents"),
    ("POST", "/v1/agents/{conn_id}/drain"),
    ("GET", "/v1/admin-tokens"),
    ("POST", "/v1/admin-tokens"),
    ("POST", "/v1/admin-tokens/{id}/revoke"),
    ("GET", "/v1/audit"),
    ("POST", "/v1/store/rekey"),
    ("GET", "/v1/openapi.json"),
];

/// What the API needs of the running gateway.
pub struct ApiState {
    pub registry: Arc<Registry>,
    /// Where the store's pool lives: operations run there.
    pub store_rt: tokio::runtime::Handle,
    /// The per-process credential of the local CLI (runtime file).
    pub local_token: String,
    pub failures: FailureBudget,
}

/// A refusal before any operation ran.
struct Refusal {
    status: StatusCode,
    message: String,
    /// The methods a 405's path takes (its `Allow` header).
    allow: Option<String>,
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
        allow: None,
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error_response(r: Refusal) -> Response<Full<Bytes>> {
    let mut resp = json_response(r.status, &json!({ "error": r.message }));
    if let Some(allow) = r.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    resp
}

/// Answers one API request.
pub async fn handle(
    state: Arc<ApiState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    match answer(&state, req, peer).await {
        Ok(r) => r,
        Err(r) => {
            let status = r.status;
            let mut resp = error_response(r);
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gateway-admin\""),
                );
            }
            resp
        }
    }
}

async fn answer(
    state: &ApiState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let path = req.uri().path().to_string();
    if path == "/v1/openapi.json" {
        if req.method() != Method::GET {
            return Err(method_not_allowed(&path));
        }
        let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    if let Some(wait) = state.failures.exhausted(peer.ip()) {
        return Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed admin credentials from this address; retry in {}s",
                wait.as_secs() + 1
            ),
        ));
    }
    let actor = authenticate(state, &req, peer).await?;
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = read_body(req).await?;
    let op = route(&method, &path, &query, &body)?;
    if op.writes() && actor.scope == AdminScope::Read {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this admin token is read-only: changes need a token with scope `write`",
        ));
    }
    let who = Actor {
        actor: actor.name,
        source: peer.to_string(),
    };
    let run = execute(
        op,
        state.registry.store().clone(),
        Some(state.registry.clone()),
        who,
    );
    let result = state.store_rt.spawn(run).await.map_err(|e| {
        refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("operation failed: {e}"),
        )
    })?;
    match result {
        Ok(a) => Ok(json_response(
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
            &a.body,
        )),
        Err(e) => Err(op_refusal(e)),
    }
}

fn op_refusal(e: OpError) -> Refusal {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!("admin operation failed: {e}");
    }
    refuse(status, e.to_string())
}

/// Who is asking, with what scope.
struct Authenticated {
    name: String,
    scope: AdminScope,
}

async fn authenticate(
    state: &ApiState,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<Authenticated, Refusal> {
    let unauthorized = || {
        state.failures.record(peer.ip());
        refuse(
            StatusCode::UNAUTHORIZED,
            "an admin token is required: `Authorization: Bearer <token>` \
             (create one with `gateway admin-token create`)",
        )
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    if bool::from(token.as_bytes().ct_eq(state.local_token.as_bytes())) {
        let user = req
            .headers()
            .get(ACTOR_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|u| {
                u.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(64)
                    .collect::<String>()
            })
            .unwrap_or_else(|| "unknown".into());
        return Ok(Authenticated {
            name: format!("cli:{user}"),
            scope: AdminScope::Write,
        });
    }
    match state.registry.admin_token(token).await {
        Ok(Some(info)) => Ok(Authenticated {
            name: format!("admin-token:{}({})", info.id, info.name),
            scope: info.scope,
        }),
        Ok(None) => Err(unauthorized()),
        Err(e) => {
            tracing::error!("admin token lookup failed: {e}");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable; retry",
            ))
        }
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Refusal> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {MAX_BODY} bytes"),
        )),
        Err(e) => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
    }
}

fn method_not_allowed(path: &str) -> Refusal {
    let allowed = allowed_methods(path).join(", ");
    Refusal {
        allow: Some(allowed.clone()),
        ..refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes {allowed}"),
        )
    }
}

/// The methods [`ROUTES`] lists for a concrete path.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|(_, t)| matches_template(t, path))
        .map(|(m, _)| *m)
        .collect()
}

fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<_> = template.split('/').collect();
    let p: Vec<_> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    // The path names the field of a wrongly typed value, which serde's
    // own message leaves out.
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." || path.is_empty() {
            format!("invalid request body: {}", e.inner())
        } else {
            format!("invalid field `{path}`: {}", e.inner())
        };
        refuse(StatusCode::BAD_REQUEST, message)
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTunnel {
    org: String,
    name: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    overlap_secs: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCaller {
    org: String,
    name: Option<String>,
    expires_in_secs: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdminToken {
    name: String,
    scope: AdminScope,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Maps a request to its operation.
fn route(method: &Method, path: &str, query: &str, body: &[u8]) -> Result<Op, Refusal> {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(no_path(path));
    };
    let seg: Vec<&str> = rest.split('/').collect();
    if seg.iter().any(|s| s.is_empty()) {
        return Err(no_path(path));
    }
    let m = method.as_str();
    let op = match (m, seg.as_slice()) {
        ("GET", ["tunnels"]) => Op::ListTunnels,
        ("POST", ["tunnels"]) => {
            let b: NewTunnel = parse(body)?;
            Op::CreateTunnel {
                org: b.org,
                name: b.name,
            }
        }
        ("GET", ["tunnels", name]) => Op::ShowTunnel {
            name: (*name).into(),
        },
        ("DELETE", ["tunnels", name]) => Op::DeleteTunnel {
            name: (*name).into(),
        },
        ("POST", ["tunnels", name, "rotate-key"]) => {
            let b: Rotate = parse(body)?;
            Op::RotateKey {
                name: (*name).into(),
                overlap_secs: b.overlap_secs,
            }
        }
        ("GET", ["callers"]) => Op::ListCallers,
        ("POST", ["callers"]) => {
            let b: NewCaller = parse(body)?;
            Op::CreateCaller {
                org: b.org,
                name: b.name,
                expires_in_secs: b.expires_in_secs,
            }
        }
        ("POST", ["callers", id, "revoke"]) => Op::RevokeCaller { id: (*id).into() },
        ("GET", ["agents"]) => Op::ListAgents,
        ("POST", ["agents", id, "drain"]) => Op::DrainAgent {
            conn_id: id.parse().map_err(|_| {
                refuse(
                    StatusCode::NOT_FOUND,
                    format!("no agent connection `{id}`: connection ids are numbers"),
                )
            })?,
        },
        ("GET", ["admin-tokens"]) => Op::ListAdminTokens,
        ("POST", ["admin-tokens"]) => {
            let b: NewAdminToken = parse(body)?;
            Op::CreateAdminToken {
                name: b.name,
                scope: b.scope,
            }
        }
        ("POST", ["admin-tokens", id, "revoke"]) => Op::RevokeAdminToken { id: (*id).into() },
        ("GET", ["audit"]) => Op::ListAudit {
            limit: query_limit(query)?,
        },
        ("POST", ["store", "rekey"]) => {
            let _: Empty = parse(body)?;
            Op::Rekey { new_kek_file: None }
        }
        _ if !allowed_methods(path).is_empty() => return Err(method_not_allowed(path)),
        _ => return Err(no_path(path)),
    };
    Ok(op)
}

fn no_path(path: &str) -> Refusal {
    let shown: String = path.chars().take(200).collect();
    refuse(
        StatusCode::NOT_FOUND,
        format!("no such API path: {shown} (see /v1/openapi.json)"),
    )
}

fn query_limit(query: &str) -> Result<Option<u32>, Refusal> {
    let mut limit = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "limit" {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown query parameter `{}`",
                    k.chars().take(64).collect::<String>()
                ),
            ));
        }
        limit = Some(v.parse().map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                "invalid limit: a number from 1 to 1000",
            )
        })?);
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_maps_to_an_operation_and_others_do_not() {
        for (m, t) in ROUTES {
            let path = t
                .replace("{name}", "wiki")
                .replace("{id}", "cal_1")
                .replace("{conn_id}", "7");
            if path == "/v1/openapi.json" {
                continue;
            }
            let body = match (*m, path.as_str()) {
                ("POST", "/v1/tunnels") => r#"{"org":"acme","name":"wiki"}"#,
                ("POST", "/v1/callers") => r#"{"org":"acme"}"#,
                ("POST", "/v1/admin-tokens") => r#"{"name":"ops","scope":"read"}"#,
                _ => "",
            };
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(
                route(&method, &path, "", body.as_bytes()).is_ok(),
                "{m} {path}"
            );
        }
        let r = route(&Method::PUT, "/v1/tunnels", "", b"").err().unwrap();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(r.message.contains("GET, POST"), "{}", r.message);
        assert_eq!(r.allow.as_deref(), Some("GET, POST"));
        let r = route(&Method::GET, "/v1/nope", "", b"").err().unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = route(&Method::GET, "/v1/tunnels/", "", b"").err().unwrap();
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn bodies_name_the_bad_field() {
        let r = route(&Method::POST, "/v1/tunnels", "", br#"{"org":"acme"}"#)
            .err()
            .unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.message.contains("missing field `name`"), "{}", r.message);
        let r = route(
            &Method::POST,
            "/v1/tunnels/wiki/rotate-key",
            "",
            br#"{"overlap":5}"#,
        )
        .err()
        .unwrap();
        assert!(
            r.message.contains("unknown field `overlap`"),
            "{}",
            r.message
        );
        let r = route(
            &Method::POST,
            "/v1/admin-tokens",
            "",
            br#"{"name":"x","scope":"admin"}"#,
        )
        .err()
        .unwrap();
        assert!(
            r.message.contains("unknown variant `admin`"),
            "{}",
            r.message
        );
        assert!(r.message.contains("`scope`"), "{}", r.message);
        let r = route(&Method::POST, "/v1/tunnels", "", br#"{"name":"x","org":5}"#)
            .err()
            .unwrap();
        assert!(r.message.contains("invalid field `org`"), "{}", r.message);
        let r = route(&Method::GET, "/v1/audit", "limit=x", b"")
            .err()
            .unwrap();
        assert!(r.message.contains("limit"), "{}", r.message);
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_served_routes() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }
}
