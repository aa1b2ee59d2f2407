//! Who is connected: tunnels known to the store (cached), caller tokens
//! (cached), and the live agent connections of each tunnel with their
//! in-flight counts, from which requests pick the least busy agent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use tokio::sync::Notify;

use crate::store::{token_hash, CallerInfo, Store, StoreError, TunnelInfo};

/// One connected agent.
pub struct AgentConn {
    /// Unique per connection for the life of the process; also the pool
    /// group key, so pooled streams never cross agents.
    pub conn_id: u64,
    pub tunnel: TunnelInfo,
    pub agent_name: String,
    sender: SendRequest<Empty<Bytes>>,
    inflight: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("conn_id", &self.conn_id)
            .field("tunnel", &self.tunnel.name)
            .field("agent", &self.agent_name)
            .field("inflight", &self.inflight())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl AgentConn {
    /// Requests currently assigned to this agent.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Whether the agent announced it is leaving.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the agent as leaving: it gets no new requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.idle.notify_waiters();
    }

    /// Resolves when the agent has no request in flight.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// A sender for opening a new stream on this agent's connection.
    pub fn sender(&self) -> SendRequest<Empty<Bytes>> {
        self.sender.clone()
    }
}

/// Counts a request against an agent for as long as it lives.
#[derive(Debug)]
pub struct InflightGuard(Arc<AgentConn>);

impl InflightGuard {
    fn new(agent: Arc<AgentConn>) -> Self {
        agent.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(agent)
    }

    /// The agent this request is assigned to.
    pub fn agent(&self) -> &Arc<AgentConn> {
        &self.0
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Why no agent could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum PickError {
    /// No agent is connected (or all are draining).
    NoAgent,
}

/// Shared state of the gateway.
pub struct Registry {
    store: Store,
    store_rt: tokio::runtime::Handle,
    tunnels_by_name: RwLock<HashMap<String, TunnelInfo>>,
    callers: RwLock<HashMap<[u8; 32], CallerInfo>>,
    /// Token hashes the store did not know, so random tokens from
    /// unauthenticated callers do not each cost a store query.
    unknown_callers: RwLock<std::collections::HashSet<[u8; 32]>>,
    agents: RwLock<HashMap<String, Vec<Arc<AgentConn>>>>,
    next_conn: AtomicU64,
}

/// Most cached caller tokens; past it the cache is cleared (the store stays
/// the source of truth).
const MAX_CACHED_CALLERS: usize = 100_000;

impl Registry {
    /// A registry over `store`, whose queries run on `store_rt` (the store's
    /// pool lives on that runtime, whatever runtime the caller is on).
    pub fn new(store: Store, store_rt: tokio::runtime::Handle) -> Self {
        Registry {
            store,
            store_rt,
            tunnels_by_name: RwLock::default(),
            callers: RwLock::default(),
            unknown_callers: RwLock::default(),
            agents: RwLock::default(),
            next_conn: AtomicU64::new(1),
        }
    }

    async fn on_store<T, F>(&self, f: impl FnOnce(Store) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.store.clone());
        self.store_rt
            .spawn(fut)
            .await
            .map_err(|e| StoreError::Kek(format!("store task failed: {e}")))?
    }

    /// The organization of a caller token, if the token is known.
    pub async fn caller(&self, token: &str) -> Result<Option<CallerInfo>, StoreError> {
        let hash = token_hash(token);
        if let Some(c) = self.callers.read().expect("lock").get(&hash) {
            return Ok(Some(c.clone()));
        }
        let found = self
            .on_store(move |s| async move { s.caller_by_hash(&hash).await })
            .await?;
        if let Some(c) = &found {
            let mut map = self.callers.write().expect("lock");
            if map.len() >= MAX_CACHED_CALLERS {
                map.clear();
            }
            map.insert(hash, c.clone());
        }
        Ok(found)
    }

    /// A tunnel by name.
    pub async fn tunnel_by_name(&self, name: &str) -> Result<Option<TunnelInfo>, StoreError> {
        if let Some(t) = self.tunnels_by_name.read().expect("lock").get(name) {
            return Ok(Some(t.clone()));
        }
        let n = name.to_string();
        let found = self
            .on_store(move |s| async move { s.tunnel_by_name(&n).await })
            .await?;
        if let Some(t) = &found {
            self.tunnels_by_name
                .write()
                .expect("lock")
                .insert(t.name.clone(), t.clone());
        }
        Ok(found)
    }

    /// A tunnel and its key by id, for the agent handshake.
    pub async fn tunnel_with_key(
        &self,
        id: &str,
    ) -> Result<Option<(TunnelInfo, protocol::TunnelKey)>, StoreError> {
        let id = id.to_string();
        self.on_store(move |s| async move { s.tunnel_with_key(&id).await })
            .await
    }

    /// Forgets cached tunnels and callers, so that changes in the store
    /// (a revoked caller, a renamed tunnel) apply from the next request.
    pub fn clear_caches(&self) {
        self.callers.write().expect("lock").clear();
        self.unknown_callers.write().expect("lock").clear();
        self.tunnels_by_name.write().expect("lock").clear();
    }

    /// Adds a freshly authenticated agent connection.
    pub fn add_agent(
        &self,
        tunnel: TunnelInfo,
        agent_name: String,
        sender: SendRequest<Empty<Bytes>>,
    ) -> Arc<AgentConn> {
        let conn = Arc::new(AgentConn {
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            tunnel,
            agent_name,
            sender,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            idle: Notify::new(),
        });
        let mut map = self.agents.write().expect("lock");
        let list = map.entry(conn.tunnel.id.clone()).or_default();
        list.push(conn.clone());
        let m = &crate::metrics::METRICS;
        if list.len() == 1 {
            m.tunnels_connected.inc();
        }
        m.agents_connected.inc();
        m.agent_connects
            .get_or_create(&crate::metrics::TunnelLabels {
                tunnel: conn.tunnel.name.clone(),
            })
            .inc();
        conn
    }

    /// Removes an agent connection (it closed or drained).
    pub fn remove_agent(&self, conn: &AgentConn) {
        let mut map = self.agents.write().expect("lock");
        let Some(list) = map.get_mut(&conn.tunnel.id) else {
            return;
        };
        let before = list.len();
        list.retain(|a| a.conn_id != conn.conn_id);
        if list.len() == before {
            return;
        }
        let m = &crate::metrics::METRICS;
        m.agents_connected.dec();
        m.agent_disconnects
            .get_or_create(&crate::metrics::TunnelLabels {
                tunnel: conn.tunnel.name.clone(),
            })
            .inc();
        if list.is_empty() {
            map.remove(&conn.tunnel.id);
            m.tunnels_connected.dec();
        }
    }

    /// Picks the serving agent of a tunnel with the fewest requests in
    /// flight, skipping draining ones, and counts the request against it.
    pub fn pick(&self, tunnel_id: &str) -> Result<InflightGuard, PickError> {
        let map = self.agents.read().expect("lock");
        let best = map
            .get(tunnel_id)
            .into_iter()
            .flatten()
            .filter(|a| !a.is_draining() && !a.sender.is_closed())
            .min_by_key(|a| a.inflight())
            .cloned();
        drop(map);
        best.map(InflightGuard::new).ok_or(PickError::NoAgent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    async fn registry() -> (Registry, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("gwreg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&crate::config::StoreSection {
            path: dir.join("g.db"),
            kek_file: Some(dir.join("kek")),
            kek_env: None,
            refresh_secs: 5,
        })
        .await
        .unwrap();
        (Registry::new(store, tokio::runtime::Handle::current()), dir)
    }

    /// A sender on a live (if silent) HTTP/2 connection.
    async fn sender() -> SendRequest<Empty<Bytes>> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (tx, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _server = server;
            let _ = conn.await;
        });
        tx
    }

    fn tunnel() -> TunnelInfo {
        TunnelInfo {
            id: "tun_1".into(),
            name: "wiki".into(),
            org: "acme".into(),
        }
    }

    #[tokio::test]
    async fn picks_the_least_busy_serving_agent() {
        let (reg, dir) = registry().await;
        assert_eq!(reg.pick("tun_1").unwrap_err(), PickError::NoAgent);
        let a = reg.add_agent(tunnel(), "a".into(), sender().await);
        let b = reg.add_agent(tunnel(), "b".into(), sender().await);
        assert_ne!(a.conn_id, b.conn_id);

        let g1 = reg.pick("tun_1").unwrap();
        let g2 = reg.pick("tun_1").unwrap();
        // Two requests in flight land on two different agents.
        assert_ne!(g1.agent().conn_id, g2.agent().conn_id);
        assert_eq!(a.inflight() + b.inflight(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(a.inflight() + b.inflight(), 0);

        // A draining agent gets nothing new; it is idle once its last request ends.
        let held = reg.pick("tun_1").unwrap();
        let holder = held.agent().clone();
        holder.start_draining();
        for _ in 0..5 {
            let g = reg.pick("tun_1").unwrap();
            assert_ne!(g.agent().conn_id, holder.conn_id);
        }
        let idle = tokio::spawn({
            let h = holder.clone();
            async move { h.wait_idle().await }
        });
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), idle)
            .await
            .expect("draining agent becomes idle when its request ends")
            .unwrap();

        // With every agent draining or removed, there is no agent.
        let other = if holder.conn_id == a.conn_id { &b } else { &a };
        reg.remove_agent(other);
        assert_eq!(reg.pick("tun_1").unwrap_err(), PickError::NoAgent);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
