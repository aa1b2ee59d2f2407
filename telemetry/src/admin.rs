//! The admin listener: `GET /metrics` (Prometheus text), `GET /healthz`
//! (the process answers) and `GET /readyz` (it can serve traffic), and,
//! when the process has one, its admin API under `/v1/` and its dashboard
//! under `/ui/`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::ReadyCheck;

/// Most admin connections served at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 32;
/// Most of them from one source ([`crate::per_source`]), so one host
/// cannot starve health probes or the dashboard of the others.
const MAX_PER_SOURCE: usize = 16;
/// Longest an admin connection lives.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// An answer of the admin API.
pub type ApiFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>;
/// The admin API: every request under `/v1/` and `/ui/`, with the peer's
/// address.
pub type Api = Arc<dyn Fn(Request<Incoming>, std::net::SocketAddr) -> ApiFuture + Send + Sync>;

/// What the admin listener serves.
pub struct Admin {
    /// The process's metrics.
    pub registry: Arc<Registry>,
    /// `/readyz`: `Err(reason)` answers 503 with the reason.
    pub ready: ReadyCheck,
    /// The admin API under `/v1/`, if the process has one.
    pub api: Option<Api>,
    /// HTTPS instead of HTTP ([`tls`]).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Longest a TLS handshake on the admin listener may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The TLS 1.3 configuration of `admin.tls_cert` / `admin.tls_key`, or
/// `None` when the listener speaks plain HTTP.
pub fn tls(section: &super::AdminSection) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    let (Some(cert), Some(key)) = (&section.tls_cert, &section.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = protocol::pem::certs(cert).map_err(|e| anyhow::anyhow!("admin.tls_cert: {e}"))?;
    let key = protocol::pem::private_key(key).map_err(|e| anyhow::anyhow!("admin.tls_key: {e}"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("admin.tls_cert / admin.tls_key: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Admin {
    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match req.uri().path() {
            "/metrics" => {
                let mut body = String::with_capacity(16 << 10);
                if prometheus_client::encoding::text::encode(&mut body, &self.registry).is_err() {
                    return text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
                }
                let mut r = text(StatusCode::OK, body);
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => match (self.ready)() {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz or /readyz\n",
            ),
        }
    }

    /// Serves `listener` until the task is dropped. One request per
    /// connection; past [`MAX_CONNECTIONS`] at once, or [`MAX_PER_SOURCE`]
    /// from one source, new connections are closed at once rather than
    /// left waiting, so slow or idle clients cannot stall health probes.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let sources = crate::per_source::PerSource::new(MAX_PER_SOURCE);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("admin listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(source) = sources.try_acquire(peer.ip()) else {
                drop(stream);
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let _held = (permit, source);
                let served = async {
                    let Some(cfg) = admin.tls.clone() else {
                        return admin.serve_connection(stream, peer).await;
                    };
                    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(stream);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                        Ok(Ok(tls)) => admin.serve_connection(tls, peer).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "admin listener: TLS handshake failed: {e}")
                        }
                        Err(_) => tracing::debug!(%peer, "admin listener: TLS handshake timed out"),
                    }
                };
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
            });
        }
    }
}

impl Admin {
    /// Serves one request on `io`.
    async fn serve_connection<I>(self: Arc<Self>, io: I, peer: std::net::SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = service_fn(move |req: Request<Incoming>| {
            let admin = self.clone();
            async move {
                Ok::<_, Infallible>(match &admin.api {
                    Some(api) if api_path(req.uri().path()) => api(req, peer).await,
                    _ => admin.answer(&req),
                })
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(5))
            .keep_alive(false)
            .max_buf_size(16 << 10)
            .serve_connection(TokioIo::new(io), service)
            .await;
    }
}

/// Whether `path` is the process's API's: `/v1/…`, and the dashboard at
/// `/ui/` that uses it.
fn api_path(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/ui" || path.starts_with("/ui/")
}

/// Binds the admin listener of `section` (`default` when `listen` is
/// unset): `None` when turned off. A configured address that cannot be
/// bound is an error naming `admin.listen`; the default address being
/// taken (a second process on the host) only costs a warning, as the
/// tunnel matters more than its metrics.
pub fn bind(
    section: &super::AdminSection,
    default: &str,
) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = section.address(default)? else {
        return Ok(None);
    };
    match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            l.set_nonblocking(true)?;
            Ok(Some(l))
        }
        Err(e) if section.listen.is_none() => {
            tracing::warn!(
                "admin listener not started: the default address {addr} is taken ({e}); \
                 set admin.listen to another address (port 0 picks one) or \"off\""
            );
            Ok(None)
        }
        Err(e) => Err(anyhow::anyhow!("binding admin.listen {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// `GET /healthz` from `source`: the answer's first line, or what went
    /// wrong.
    async fn healthz(addr: std::net::SocketAddr, source: &str) -> String {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .is_err()
        {
            return "closed".into();
        }
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await {
            Ok(Ok(_)) if got.is_empty() => "closed".into(),
            Ok(Ok(_)) => String::from_utf8_lossy(&got)
                .lines()
                .next()
                .unwrap_or("")
                .into(),
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no answer".into(),
        }
    }

    #[tokio::test]
    async fn one_source_holding_its_connections_does_not_shut_out_another() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = Arc::new(Admin {
            registry: Arc::new(Registry::default()),
            ready: Arc::new(|| Ok(())),
            api: None,
            tls: None,
        });
        tokio::spawn(admin.serve(listener));
        assert_eq!(healthz(addr, "127.0.0.1").await, "HTTP/1.1 200 OK");
        // One host opens its whole share and sends nothing.
        let mut idle = Vec::new();
        for _ in 0..MAX_PER_SOURCE {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Its next connection is closed without an answer...
        let refused = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                // (the listener may not have accepted all of them yet)
                let got = healthz(addr, "127.0.0.1").await;
                if got != "HTTP/1.1 200 OK" {
                    return got;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the source's share filled");
        assert!(
            refused == "closed" || refused.starts_with("error"),
            "{refused}"
        );
        // ...while another host is served.
        assert_eq!(healthz(addr, "127.0.0.2").await, "HTTP/1.1 200 OK");
        drop(idle);
    }
}
