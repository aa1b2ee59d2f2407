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
use super::ui::{self, Sessions};
use crate::activity::ACTIVITY;
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
    ("POST", "/v1/agents/{conn_id}/disconnect"),
    ("GET", "/v1/admin-tokens"),
    ("POST", "/v1/admin-tokens"),
    ("POST", "/v1/admin-tokens/{id}/revoke"),
    ("GET", "/v1/audit"),
    ("POST", "/v1/store/rekey"),
    ("GET", "/v1/activity"),
    ("GET", "/v1/refusals"),
    ("GET", "/v1/plugins"),
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
    /// The configuration in force: the routes and plugins the dashboard
    /// shows.
    pub live: crate::live::Current,
    /// The dashboard's browser sessions.
    pub sessions: Sessions,
    /// The listener speaks HTTPS: session cookies are `Secure`.
    pub secure_cookies: bool,
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
    let path = req.uri().path();
    let page = path == "/ui" || path.starts_with("/ui/");
    let result = if page {
        ui_answer(&state, req, peer).await
    } else {
        answer(&state, req, peer).await
    };
    match result {
        Ok(mut r) => {
            if page {
                ui::page_headers(r.headers_mut());
            }
            r
        }
        Err(r) => {
            let status = r.status;
            let mut resp = error_response(r);
            if page {
                ui::page_headers(resp.headers_mut());
            } else if status == StatusCode::UNAUTHORIZED {
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
    if method == Method::GET {
        if let Some(view) = view(state, &path, &query)? {
            return Ok(json_response(StatusCode::OK, &view));
        }
    }
    let body = read_body(req).await?;
    let op = route(&method, &path, &query, &body)?;
    let shown_tunnel = match &op {
        Op::ShowTunnel { name } => Some(name.clone()),
        _ => None,
    };
    if op.writes() && actor.scope == AdminScope::Read {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "this admin token is read-only: changes need a token with scope `write`",
        ));
    }
    let who = Actor {
        actor: actor.name,
        source: if actor.dashboard {
            format!("{peer} (dashboard)")
        } else {
            peer.to_string()
        },
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
        Ok(mut a) => {
            if let Some(name) = shown_tunnel {
                a.body["routes"] = json!(state.live.load().routes_of(&name));
            }
            Ok(json_response(
                StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
                &a.body,
            ))
        }
        Err(e) => Err(op_refusal(e)),
    }
}

/// What the gateway keeps in memory rather than in the store, for the
/// dashboard: `None` when `path` is not one of these.
fn view(state: &ApiState, path: &str, query: &str) -> Result<Option<Value>, Refusal> {
    let value = match path {
        "/v1/activity" => {
            let only = tunnel_query(query)?;
            let (now, tunnels) = ACTIVITY.tunnels(only.as_deref());
            json!({ "now": now, "seconds": crate::activity::SECONDS, "tunnels": tunnels })
        }
        "/v1/refusals" => {
            let max = crate::activity::MAX_REFUSALS;
            let limit = query_limit(query)?.unwrap_or(100) as usize;
            if limit == 0 || limit > max {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    format!("invalid limit: a number from 1 to {max}"),
                ));
            }
            json!(ACTIVITY.refusals(limit))
        }
        "/v1/plugins" => {
            no_query(query)?;
            let live = state.live.load();
            let plugins: Vec<Value> = live
                .plugins
                .views()
                .into_iter()
                .map(|p| {
                    let mut routes: Vec<&str> = live
                        .route_views
                        .iter()
                        .filter(|r| r.plugins.contains(&p.name))
                        .map(|r| r.name.as_str())
                        .collect();
                    if live
                        .wildcard
                        .as_ref()
                        .is_some_and(|(_, chain)| chain.contains(&p.name))
                    {
                        routes.push("*wildcard*");
                    }
                    let failures: serde_json::Map<String, Value> = p
                        .failures
                        .iter()
                        .map(|(kind, n)| (kind.to_string(), json!(n)))
                        .collect();
                    json!({
                        "name": p.name, "version": p.version, "sha256": p.sha256,
                        "path": p.path,
                        "decisions": { "allow": p.allowed, "deny": p.denied },
                        "failures": failures,
                        "routes": routes,
                    })
                })
                .collect();
            json!({ "plugins": plugins, "history": crate::plugins::history::history() })
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// `tunnel=NAME`, or nothing.
fn tunnel_query(query: &str) -> Result<Option<String>, Refusal> {
    if query.is_empty() {
        return Ok(None);
    }
    match query.split_once('=') {
        Some(("tunnel", name)) if crate::store::validate_tunnel_name(name).is_ok() => {
            Ok(Some(name.to_string()))
        }
        _ => Err(refuse(
            StatusCode::BAD_REQUEST,
            "the only query parameter is tunnel=<name>",
        )),
    }
}

fn no_query(query: &str) -> Result<(), Refusal> {
    if query.is_empty() {
        Ok(())
    } else {
        Err(refuse(
            StatusCode::BAD_REQUEST,
            "this path takes no query parameters",
        ))
    }
}

/// Answers the dashboard's paths: its files and its session.
async fn ui_answer(
    state: &ApiState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Refusal> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/ui" {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/ui/"));
        return Ok(r);
    }
    if path != "/ui/session" {
        if method != Method::GET && method != Method::HEAD {
            return Err(Refusal {
                allow: Some("GET, HEAD".into()),
                ..refuse(StatusCode::METHOD_NOT_ALLOWED, format!("{path} takes GET"))
            });
        }
        return ui::file(&path).ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                "no such page: the dashboard is at /ui/",
            )
        });
    }
    match method {
        Method::GET => {
            let session = session_of(state, &req)?;
            let who = hash_auth(state, &session.token_hash)
                .await?
                .ok_or_else(|| {
                    state.sessions.end(&session.id);
                    session_ended()
                })?;
            Ok(json_response(
                StatusCode::OK,
                &ui::whoami(&who.token_name, &who.name, who.scope, &session.csrf),
            ))
        }
        Method::POST => sign_in(state, req, peer).await,
        Method::DELETE => {
            let session = session_of(state, &req)?;
            if !ui::csrf_ok(req.headers(), &session.csrf) {
                return Err(csrf_refused());
            }
            state.sessions.end(&session.id);
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r.headers_mut().insert(
                header::SET_COOKIE,
                ui::set_cookie(None, state.secure_cookies),
            );
            Ok(r)
        }
        _ => Err(Refusal {
            allow: Some("GET, POST, DELETE".into()),
            ..refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "/ui/session takes GET, POST, DELETE",
            )
        }),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
}

/// `POST /ui/session`: an admin token in, a session cookie out.
async fn sign_in(
    state: &ApiState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Refusal> {
    if let Some(wait) = state.failures.exhausted(peer.ip()) {
        return Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many failed admin credentials from this address; retry in {}s",
                wait.as_secs() + 1
            ),
        ));
    }
    // A form from another site cannot send JSON without asking first
    // (CORS), which this listener never allows: no sign-in by forgery.
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next() == Some("application/json"));
    if !json {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "sign in with a JSON body: {\"token\": \"at_...\"}",
        ));
    }
    let body = read_body(req).await?;
    let SignIn { token } = parse(&body)?;
    let token = zeroize::Zeroizing::new(token);
    let who = token_auth(state, token.trim()).await?.ok_or_else(|| {
        state.failures.record(peer.ip());
        refuse(
            StatusCode::UNAUTHORIZED,
            "unknown or revoked admin token (create one with `gateway admin-token create`)",
        )
    })?;
    let (id, csrf) = state.sessions.start(crate::store::token_hash(token.trim()));
    tracing::info!(actor = %who.name, client = %peer, "dashboard sign-in");
    let mut r = json_response(
        StatusCode::OK,
        &ui::whoami(&who.token_name, &who.name, who.scope, &csrf),
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        ui::set_cookie(Some(&id), state.secure_cookies),
    );
    Ok(r)
}

/// The session a request's cookie names.
fn session_of(state: &ApiState, req: &Request<Incoming>) -> Result<ui::SessionAuth, Refusal> {
    state
        .sessions
        .find(&ui::cookies(req.headers()))
        .ok_or_else(session_ended)
}

fn session_ended() -> Refusal {
    refuse(
        StatusCode::UNAUTHORIZED,
        "not signed in, or the session ended: sign in again",
    )
}

fn csrf_refused() -> Refusal {
    refuse(
        StatusCode::FORBIDDEN,
        "a change from the dashboard needs its X-CSRF-Token, from the dashboard's own page",
    )
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
    /// Through the dashboard's session rather than a header.
    dashboard: bool,
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
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = bearer else {
        // The dashboard's session stands in for the header; a change also
        // needs the session's CSRF token.
        if req.headers().contains_key(header::AUTHORIZATION)
            || ui::cookies(req.headers()).is_empty()
        {
            return Err(unauthorized());
        }
        let session = session_of(state, req)?;
        if req.method() != Method::GET && !ui::csrf_ok(req.headers(), &session.csrf) {
            return Err(csrf_refused());
        }
        let who = hash_auth(state, &session.token_hash)
            .await?
            .ok_or_else(|| {
                state.sessions.end(&session.id);
                session_ended()
            })?;
        return Ok(Authenticated {
            name: who.name,
            scope: who.scope,
            dashboard: true,
        });
    };
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
            dashboard: false,
        });
    }
    match token_auth(state, token).await? {
        Some(who) => Ok(Authenticated {
            name: who.name,
            scope: who.scope,
            dashboard: false,
        }),
        None => Err(unauthorized()),
    }
}

/// An admin token found in the store.
struct TokenOwner {
    /// `admin-token:<id>(<name>)`, for the audit log.
    name: String,
    /// The token's own name.
    token_name: String,
    scope: AdminScope,
}

/// Looks up an admin token (not the local CLI's credential): `None` when
/// unknown or revoked.
async fn token_auth(state: &ApiState, token: &str) -> Result<Option<TokenOwner>, Refusal> {
    hash_auth(state, &crate::store::token_hash(token)).await
}

/// [`token_auth`] by the token's hash, as a dashboard session keeps it.
async fn hash_auth(state: &ApiState, hash: &[u8; 32]) -> Result<Option<TokenOwner>, Refusal> {
    match state.registry.admin_token_by_hash(hash).await {
        Ok(info) => Ok(info.map(|info| TokenOwner {
            name: format!("admin-token:{}({})", info.id, info.name),
            token_name: info.name,
            scope: info.scope,
        })),
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
            conn_id: conn_id(id)?,
        },
        ("POST", ["agents", id, "disconnect"]) => {
            let _: Empty = parse(body)?;
            Op::DisconnectAgent {
                conn_id: conn_id(id)?,
            }
        }
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

fn conn_id(id: &str) -> Result<u64, Refusal> {
    id.parse().map_err(|_| {
        refuse(
            StatusCode::NOT_FOUND,
            format!("no agent connection `{id}`: connection ids are numbers"),
        )
    })
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
            if [
                "/v1/openapi.json",
                "/v1/activity",
                "/v1/refusals",
                "/v1/plugins",
            ]
            .contains(&path.as_str())
            {
                // Served before any operation: see `view`.
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
