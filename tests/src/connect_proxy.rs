//! A real HTTP forward proxy for the stories of agents whose only way out
//! is a proxy: it listens on a real port, parses each `CONNECT` request with
//! `httparse`, optionally demands Basic credentials (407 otherwise) or
//! refuses with a chosen status, and for the tunnels it opens records the
//! first bytes the client sent through them, so a story can tell TLS from
//! plaintext. Its policy can change while it runs (a proxy administrator
//! fixing the credentials, say).
//!
//! Written here rather than run as tinyproxy or squid: the stories need to
//! see exactly what crossed the proxy, and a fresh CI machine needs nothing
//! installed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bytes of a request head the proxy reads before giving up on it.
const MAX_HEAD: usize = 8 * 1024;
/// Bytes of each tunnel's first client data kept for the story.
const KEEP: usize = 64;

/// What the proxy saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The method (`CONNECT` from an agent).
    pub method: String,
    /// The request target (`host:port`).
    pub target: String,
    /// The decoded `user:password` of a `Proxy-Authorization: Basic` header.
    pub credentials: Option<String>,
    /// The status the proxy answered (0: none, it stayed silent).
    pub status: u16,
    /// The first bytes the client sent through the tunnel (empty when
    /// none was opened or nothing was sent).
    pub first_bytes: Vec<u8>,
}

#[derive(Default)]
struct Policy {
    credentials: Option<String>,
    refuse: Option<(u16, String)>,
    silent: bool,
}

#[derive(Default)]
struct State {
    policy: Mutex<Policy>,
    seen: Mutex<Vec<Seen>>,
}

/// A running proxy; stops when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ConnectProxy {
    /// An open proxy on a free loopback port: every CONNECT is tunnelled.
    pub async fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, s.clone()));
            }
        });
        ConnectProxy { addr, state, task }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or with `user:password@` when given
    /// (put there as written: percent-encode it yourself).
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// From now on only `user:password` (decoded) gets through; others get 407.
    pub fn require_credentials(&self, user_password: &str) {
        self.state.policy.lock().unwrap().credentials = Some(user_password.to_string());
    }

    /// From now on every request is answered `status reason`.
    pub fn refuse(&self, status: u16, reason: &str) {
        self.state.policy.lock().unwrap().refuse = Some((status, reason.to_string()));
    }

    /// From now on requests are read and never answered (a proxy that hangs).
    pub fn go_silent(&self) {
        self.state.policy.lock().unwrap().silent = true;
    }

    /// From now on requests are no longer refused (credentials still apply).
    pub fn stop_refusing(&self) {
        self.state.policy.lock().unwrap().refuse = None;
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn serve(mut client: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    let (method, target, credentials, head_len) = loop {
        let mut chunk = [0u8; 1024];
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let credentials = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.strip_prefix("Basic "))
                    .and_then(|b| STANDARD.decode(b.trim()).ok())
                    .map(|raw| String::from_utf8_lossy(&raw).into_owned());
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    credentials,
                    len,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => {
                let _ = client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                return;
            }
        }
    };
    let silent = state.policy.lock().unwrap().silent;
    if silent {
        state.seen.lock().unwrap().push(Seen {
            method,
            target,
            credentials,
            status: 0,
            first_bytes: Vec::new(),
        });
        // Hold the connection open, answering nothing, until the client leaves.
        let _ = client.read(&mut [0u8; 1]).await;
        return;
    }
    let refusal = {
        let policy = state.policy.lock().unwrap();
        if method != "CONNECT" {
            Some((405, "Method Not Allowed".to_string()))
        } else if policy
            .credentials
            .as_ref()
            .is_some_and(|want| credentials.as_ref() != Some(want))
        {
            Some((407, "Proxy Authentication Required".to_string()))
        } else {
            policy.refuse.clone()
        }
    };
    let mut seen = Seen {
        method,
        target,
        credentials,
        status: 200,
        first_bytes: Vec::new(),
    };
    let upstream = match refusal {
        Some(_) => None,
        None => TcpStream::connect(seen.target.as_str()).await.ok(),
    };
    let Some(mut upstream) = upstream else {
        let (status, reason) = refusal.unwrap_or((502, "Bad Gateway".into()));
        seen.status = status;
        state.seen.lock().unwrap().push(seen);
        let auth = if status == 407 {
            "Proxy-Authenticate: Basic realm=\"test proxy\"\r\n"
        } else {
            ""
        };
        let answer = format!("HTTP/1.1 {status} {reason}\r\n{auth}Content-Length: 0\r\n\r\n");
        let _ = client.write_all(answer.as_bytes()).await;
        return;
    };
    // A client speaking before the answer would be a protocol error here.
    if buf.len() > head_len {
        return;
    }
    let index = {
        let mut all = state.seen.lock().unwrap();
        all.push(seen);
        all.len() - 1
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut first = [0u8; KEEP];
    let n = match client.read(&mut first).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    state.seen.lock().unwrap()[index].first_bytes = first[..n].to_vec();
    if upstream.write_all(&first[..n]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
