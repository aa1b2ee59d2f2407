//! Local services on 127.0.0.1:0, the kind an agent forwards to.
//!
//! - [`echo`]: HTTP/1.1 (hyper) answering with a JSON description of the
//!   request, plus `/bytes/N`, `/slow/MS`, `/upload`, `/hello` and a
//!   WebSocket echo on `/ws`.
//! - [`raw`]: plain TCP that answers each request with its raw head, to
//!   check what reached the service byte for byte.
//! - [`impostor`]: a TLS listener posing as the gateway, counting what an
//!   agent sends it.

mod echo;
mod impostor;
pub mod oauthlib;
mod raw;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use echo::echo;
pub use impostor::{impostor, Impostor};
pub(crate) use raw::find as find_bytes;
pub use raw::raw;

/// A count that can be waited on.
#[derive(Debug)]
pub struct Counter {
    value: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            value: AtomicU64::new(0),
            changed: watch::channel(0).0,
        }
    }
}

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        let v = self.value.fetch_add(n, Ordering::SeqCst) + n;
        self.changed.send_replace(v);
    }

    /// Subtracts `n`.
    pub fn sub(&self, n: u64) {
        let v = self.value.fetch_sub(n, Ordering::SeqCst) - n;
        self.changed.send_replace(v);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::SeqCst)
    }

    /// Waits until the value is at least `n`; panics after `timeout`.
    pub async fn wait_at_least(&self, n: u64, what: &str, timeout: Duration) {
        let mut rx = self.changed.subscribe();
        let wait = rx.wait_for(|_| self.get() >= n);
        if tokio::time::timeout(timeout, wait).await.is_err() {
            panic!(
                "{what}: wanted at least {n}, still {} after {timeout:?}",
                self.get()
            );
        }
    }
}

/// What a local service has seen.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received (counted when the head arrives).
    pub requests: Counter,
    /// Requests whose answer is not finished yet.
    pub in_flight: Counter,
    /// Raw request heads (raw service only).
    pub heads: Mutex<Vec<Vec<u8>>>,
}

/// A running local service; stops accepting when dropped.
pub struct Upstream {
    name: String,
    addr: SocketAddr,
    stats: Arc<Stats>,
    accept: JoinHandle<()>,
}

impl Upstream {
    /// Binds 127.0.0.1:0 and serves each connection with `serve`.
    async fn spawn<F, Fut>(name: &str, serve: F) -> Upstream
    where
        F: Fn(tokio::net::TcpStream, Arc<Stats>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind local service");
        let addr = listener.local_addr().expect("local service address");
        let stats = Arc::new(Stats::default());
        let shared = stats.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            stats,
            accept,
        }
    }

    /// The address the agent forwards to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name it reports in its answers (`"server"` field).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many requests it has received.
    pub fn requests(&self) -> u64 {
        self.stats.requests.get()
    }

    /// What it has seen.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Waits until it has received at least `n` requests.
    pub async fn wait_requests(&self, n: u64, timeout: Duration) {
        let what = format!("requests received by local service {}", self.name);
        self.stats.requests.wait_at_least(n, &what, timeout).await;
    }

    /// The raw heads of the requests received so far (raw service only).
    pub fn raw_heads(&self) -> Vec<Vec<u8>> {
        self.stats.heads.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// An address where nothing listens: a local service that is down.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address")
}

/// The JSON the echo service answers with: the request as it arrived.
#[derive(Clone, Debug, Deserialize)]
pub struct Echo {
    /// Name of the local service that answered.
    pub server: String,
    /// Request method.
    pub method: String,
    /// The request target as received (path and query).
    pub target: String,
    /// Headers in the order received, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Request body length.
    pub body_len: u64,
    /// Hex SHA-256 of the request body.
    pub body_sha256: String,
}

impl Echo {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Every value of header `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}
