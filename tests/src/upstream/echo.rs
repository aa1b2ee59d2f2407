//! The echo service: tells the caller what request reached it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::{Stats, Upstream};
use crate::body::{self, Body};
use crate::pattern::Sha256;

/// Starts an echo service that reports itself as `name`.
///
/// - `/bytes/N`: N bytes of the [`crate::pattern`], streamed, with a length;
/// - `/slow/MS`: waits MS milliseconds, then echoes;
/// - `/hello`: a greeting line, then the echo;
/// - `/ws`: WebSocket echo of every text and binary message;
/// - anything else (`/upload` included): reads the body as a stream and
///   answers with the JSON [`super::Echo`] (its length and SHA-256).
pub async fn echo(name: &str) -> Upstream {
    let server = name.to_string();
    Upstream::spawn(name, move |stream, stats| {
        let server = server.clone();
        async move {
            let service = service_fn(move |req| handle(req, server.clone(), stats.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        }
    })
    .await
}

/// Keeps `in_flight` right even when the connection drops mid-answer.
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.sub(1);
    }
}

async fn handle(
    req: Request<Incoming>,
    server: String,
    stats: Arc<Stats>,
) -> Result<Response<Body>, Infallible> {
    stats.in_flight.add(1);
    stats.requests.add(1);
    let _guard = InFlight(stats.clone());
    let path = req.uri().path().to_string();
    let status_ok = |body: Body| {
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::OK;
        resp
    };
    if path == "/ws" {
        return Ok(websocket(req));
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let mut resp = status_ok(body::pattern(n));
        resp.headers_mut().insert("content-length", n.into());
        resp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(resp);
    }
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let greeting = if path == "/hello" {
        format!("Hello from {server}, behind the tunnel!\n")
    } else {
        String::new()
    };
    let description = describe(req, &server).await;
    let mut resp = status_ok(body::full(format!("{greeting}{description}\n")));
    let content_type = if greeting.is_empty() {
        "application/json"
    } else {
        "text/plain"
    };
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static(content_type));
    Ok(resp)
}

/// Reads the body chunk by chunk and describes the request as JSON.
async fn describe(req: Request<Incoming>, server: &str) -> String {
    let (parts, mut incoming) = req.into_parts();
    let mut digest = Sha256::new();
    let mut error = None;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    digest.update(data);
                }
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    serde_json::json!({
        "server": server,
        "method": parts.method.as_str(),
        "target": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": digest.len(),
        "body_sha256": digest.finish(),
        "body_error": error,
    })
    .to_string()
}

/// Accepts the upgrade and echoes messages until the peer closes.
fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let mut resp = Response::new(body::full("not a WebSocket handshake\n"));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return resp;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(body::empty())
        .expect("valid 101 response")
}
