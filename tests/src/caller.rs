//! A cloud caller of the gateway's public listener: well-formed HTTP/1.1
//! through hyper, one fresh connection per request, every call bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::WebSocketStream;

use crate::body::{self, Body};
use crate::pattern::Sha256;
use crate::upstream::Echo;

/// How long a call may take, body included, unless told otherwise.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A caller holding (or not) a bearer token for the gateway.
#[derive(Clone, Debug)]
pub struct Caller {
    addr: SocketAddr,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    http2: bool,
}

impl Caller {
    /// A caller of the public listener at `addr` over plain HTTP/1.1.
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Caller {
        Caller {
            addr,
            token: token.map(str::to_string),
            tls: None,
            http2: false,
        }
    }

    /// A caller over HTTPS trusting `roots` for `localhost`, offering only
    /// HTTP/2 (ALPN `h2`) when `http2`, else only HTTP/1.1.
    pub fn https(
        addr: SocketAddr,
        token: Option<&str>,
        roots: rustls::RootCertStore,
        http2: bool,
    ) -> Caller {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![if http2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        Caller {
            tls: Some(Arc::new(config)),
            http2,
            ..Caller::new(addr, token)
        }
    }

    /// The same caller presenting another token.
    pub fn with_token(&self, token: &str) -> Caller {
        Caller {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// `GET target` with `Host: host`.
    pub fn get(&self, host: &str, target: &str) -> Call {
        self.request(Method::GET, host, target)
    }

    /// `POST target` with `Host: host` and `body`.
    pub fn post(&self, host: &str, target: &str, body: Body) -> Call {
        self.request(Method::POST, host, target).body(body)
    }

    /// Any request; the token goes in `Proxy-Authorization: Bearer`.
    pub fn request(&self, method: Method, host: &str, target: &str) -> Call {
        let mut headers = vec![("host".to_string(), host.to_string())];
        if let Some(token) = &self.token {
            headers.push(("proxy-authorization".into(), format!("Bearer {token}")));
        }
        Call {
            caller: self.clone(),
            method,
            target: target.to_string(),
            headers,
            body: body::empty(),
            timeout: CALL_TIMEOUT,
        }
    }

    /// Opens a WebSocket to `target` on `host` through the gateway.
    pub async fn websocket(&self, host: &str, target: &str) -> WebSocketStream<TcpStream> {
        let mut req = format!("ws://{host}{target}")
            .into_client_request()
            .expect("WebSocket request");
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).expect("token");
            req.headers_mut().insert("proxy-authorization", value);
        }
        let connect = async {
            let tcp = TcpStream::connect(self.addr).await?;
            tokio_tungstenite::client_async(req, tcp)
                .await
                .map(|(ws, _)| ws)
                .map_err(std::io::Error::other)
        };
        tokio::time::timeout(CALL_TIMEOUT, connect)
            .await
            .expect("WebSocket handshake within the call timeout")
            .unwrap_or_else(|e| panic!("WebSocket handshake through the gateway failed: {e}"))
    }
}

/// One HTTP/1.1 connection to the gateway, reused request after request.
pub struct KeepAlive {
    caller: Caller,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Caller {
    /// Opens a connection to send several requests on, one after another.
    pub async fn keep_alive(&self) -> KeepAlive {
        let tcp = TcpStream::connect(self.addr)
            .await
            .expect("connect to the gateway");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        KeepAlive {
            caller: self.clone(),
            sender,
        }
    }
}

impl KeepAlive {
    /// `GET target` with `Host: host` on this connection; panics if the
    /// connection was closed or no answer comes.
    pub async fn get(&mut self, host: &str, target: &str) -> Reply {
        let mut req = Request::get(target).header("host", host);
        if let Some(token) = &self.caller.token {
            req = req.header("proxy-authorization", format!("Bearer {token}"));
        }
        let req = req.body(body::empty()).expect("valid request");
        let call = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection closed: {e}"))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {CALL_TIMEOUT:?}")))
            .unwrap_or_else(|e| panic!("GET {target} on a kept-alive connection: {e}"))
    }
}

/// A request being built.
pub struct Call {
    caller: Caller,
    method: Method,
    target: String,
    headers: Vec<(String, String)>,
    body: Body,
    timeout: Duration,
}

impl Call {
    /// Adds a header (repeatable).
    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Body) -> Call {
        self.body = body;
        self
    }

    /// Allows the call this long, body included.
    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = timeout;
        self
    }

    /// Sends it and reads the whole answer; panics if no answer comes.
    pub async fn send(self) -> Reply {
        let what = format!("{} {}", self.method, self.target);
        self.try_send()
            .await
            .unwrap_or_else(|e| panic!("{what}: no HTTP answer: {e}"))
    }

    /// Sends it and reads the whole answer.
    pub async fn try_send(self) -> Result<Reply, String> {
        let timeout = self.timeout;
        let call = async {
            let (status, headers, mut incoming) = self.exchange().await?;
            let mut body = Vec::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
                if let Some(data) = frame.data_ref() {
                    body.extend_from_slice(data);
                }
            }
            Ok(Reply {
                status,
                headers,
                body: body.into(),
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no complete answer within {timeout:?}")))
    }

    /// Sends it and hashes the answer's body as it streams in, never
    /// holding it whole.
    pub async fn send_hashing(self) -> HashedReply {
        let timeout = self.timeout;
        let what = format!("{} {}", self.method, self.target);
        let call = async {
            let (status, headers, mut incoming) = self.exchange().await?;
            let mut digest = Sha256::new();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| format!("after {} bytes: {e}", digest.len()))?;
                if let Some(data) = frame.data_ref() {
                    digest.update(data);
                }
            }
            Ok::<_, String>(HashedReply {
                status,
                headers,
                len: digest.len(),
                sha256: digest.finish(),
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err(format!("no complete answer within {timeout:?}")))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends it and returns once the answer's head is in; the body is left
    /// to read (the call timeout covers the head only).
    pub async fn open(self) -> Result<http::Response<hyper::body::Incoming>, String> {
        let timeout = self.timeout;
        let head = tokio::time::timeout(timeout, self.exchange()).await;
        let (status, headers, body) =
            head.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))?;
        let mut resp = http::Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    async fn exchange(self) -> Result<(StatusCode, HeaderMap, hyper::body::Incoming), String> {
        let caller = self.caller;
        let mut req = Request::builder().method(self.method);
        if caller.http2 {
            // HTTP/2 carries the host in :authority, taken from the URI.
            let host = self
                .headers
                .iter()
                .find(|(n, _)| n == "host")
                .map(|(_, v)| v.clone());
            let host = host.unwrap_or_else(|| "localhost".into());
            req = req.uri(format!("https://{host}{}", self.target));
        } else {
            req = req.uri(&self.target);
        }
        for (name, value) in &self.headers {
            if !(caller.http2 && name == "host") {
                req = req.header(name, value);
            }
        }
        let req = req
            .body(self.body)
            .map_err(|e| format!("bad request: {e}"))?;
        let tcp = TcpStream::connect(caller.addr)
            .await
            .map_err(|e| format!("connect to the gateway: {e}"))?;
        let resp = match caller.tls {
            None => send(TokioIo::new(tcp), false, req).await?,
            Some(config) => {
                let name = ServerName::try_from("localhost").expect("server name");
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with the gateway: {e}"))?;
                send(TokioIo::new(tls), caller.http2, req).await?
            }
        };
        let (parts, incoming) = resp.into_parts();
        Ok((parts.status, parts.headers, incoming))
    }
}

/// One request on a fresh connection, HTTP/1.1 or HTTP/2.
async fn send<IO>(
    io: IO,
    http2: bool,
    req: Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    if http2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("sending the request: {e}"))
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(conn);
        sender
            .send_request(req)
            .await
            .map_err(|e| format!("sending the request: {e}"))
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first line of the body.
    pub fn first_line(&self) -> String {
        self.text().lines().next().unwrap_or("").to_string()
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The echo service's description of the request; panics (showing the
    /// answer) unless this is a 200 from the echo service.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected 200 from the echo service, got {self:?}"
        );
        let json = self.text();
        let json = json.lines().find(|l| l.starts_with('{')).unwrap_or("");
        serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("not an echo answer ({e}): {}", self.text()))
    }
}

/// An answer whose body was only hashed.
#[derive(Debug)]
pub struct HashedReply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body length.
    pub len: u64,
    /// Hex SHA-256 of the body.
    pub sha256: String,
}
