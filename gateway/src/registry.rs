//! Who is connected: the store's tunnels and caller tokens, held whole in
//! memory, and the live agent connections of each tunnel with their
//! in-flight counts, from which requests pick the least busy agent.
//!
//! The tables are in memory so that a flood of random caller tokens costs
//! a hash lookup each, never a store query: a miss only rereads the store
//! when its files changed since the last read (another process, the CLI,
//! wrote to it), and concurrent misses share that one reread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

use crate::store::{
    now_secs, token_hash, AdminTokenInfo, CallerInfo, Store, StoreError, StoreStamp, TunnelInfo,
    TunnelKeys,
};

/// What the agent listener knows of an agent it has just authenticated.
#[derive(Debug)]
pub struct NewAgent {
    pub tunnel: TunnelInfo,
    pub agent_name: String,
    /// The generation of the key the agent proved it holds.
    pub key_generation: i64,
    pub remote: std::net::SocketAddr,
    /// The agent's software version, as it said.
    pub software: Option<String>,
    /// The protocol version it speaks (`protocol::PROTOCOL_VERSION`).
    pub protocol: u32,
    /// Bytes received from and sent to the agent on its connection.
    pub bytes: Arc<ByteCounts>,
}

/// Bytes through one agent connection, counted as they pass, and whether
/// its transport has ended.
#[derive(Debug, Default)]
pub struct ByteCounts {
    pub from_agent: AtomicU64,
    pub to_agent: AtomicU64,
    /// Set when a read met the end of the connection or an error, before
    /// HTTP/2 hears of it: a stream that breaks because its agent died
    /// then never finds that agent still "serving" (tunnel streams reach
    /// pingora directly, possibly before the registry drops the agent).
    /// Also set when the HTTP/2 connection ends for any other reason (a
    /// protocol error, a missed heartbeat).
    pub transport_ended: AtomicBool,
}

/// One connected agent.
pub struct AgentConn {
    /// Unique per connection for the life of the process; also the pool
    /// group key, so pooled streams never cross agents.
    pub conn_id: u64,
    pub tunnel: TunnelInfo,
    pub agent_name: String,
    pub key_generation: i64,
    pub remote: std::net::SocketAddr,
    pub software: Option<String>,
    /// The protocol version it speaks: below 2, every request goes through
    /// a `CONNECT` stream (`crate::proxy`).
    pub protocol: u32,
    /// Unix seconds.
    pub connected_at: i64,
    pub bytes: Arc<ByteCounts>,
    sender: SendRequest<Bytes>,
    inflight: AtomicUsize,
    draining: AtomicBool,
    /// Authenticated with the previous key of a rotated tunnel: served
    /// only when no agent on the current key is.
    stale: AtomicBool,
    idle: Notify,
    /// Cancelled to disconnect the agent from the gateway side.
    kick: CancellationToken,
    kick_reason: Mutex<Option<String>>,
    /// Cancelled when an operator drains the agent.
    drain: CancellationToken,
}

/// An agent as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentView {
    pub conn_id: u64,
    pub tunnel: String,
    pub tunnel_id: String,
    pub agent: String,
    pub version: Option<String>,
    /// The protocol version it speaks (1: every request a `CONNECT`
    /// stream; 2: a stream per request).
    pub protocol: u32,
    pub remote_addr: String,
    pub connected_at: i64,
    pub inflight: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub draining: bool,
    /// `current` or `previous` (of a rotated tunnel, during the overlap).
    pub key: &'static str,
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

    /// Whether new requests may go to this agent: not draining, and its
    /// connection still up.
    pub fn is_serving(&self) -> bool {
        !self.is_draining() && !self.bytes.transport_ended.load(Ordering::Acquire)
    }

    /// A sender for opening a new stream on this agent's connection.
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.sender.clone()
    }

    /// Whether the agent holds only the previous key of its tunnel.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// Disconnects the agent; `reason` is what its disconnect event says.
    pub fn kick(&self, reason: &str) {
        let mut r = self.kick_reason.lock().expect("lock");
        if r.is_none() {
            *r = Some(reason.to_string());
        }
        drop(r);
        self.kick.cancel();
    }

    /// Resolves with the reason once the agent is kicked.
    pub async fn kicked(&self) -> String {
        self.kick.cancelled().await;
        self.kick_reason
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| "disconnected by the gateway".into())
    }

    /// Asks the agent's connection to drain (an operator's request).
    pub fn request_drain(&self) {
        self.drain.cancel();
    }

    /// Resolves once an operator asked the agent to drain.
    pub async fn drain_requested(&self) {
        self.drain.cancelled().await;
    }

    /// What the admin API shows of this agent.
    pub fn view(&self) -> AgentView {
        AgentView {
            conn_id: self.conn_id,
            tunnel: self.tunnel.name.clone(),
            tunnel_id: self.tunnel.id.clone(),
            agent: self.agent_name.clone(),
            version: self.software.clone(),
            protocol: self.protocol,
            remote_addr: self.remote.to_string(),
            connected_at: self.connected_at,
            inflight: self.inflight(),
            bytes_in: self.bytes.from_agent.load(Ordering::Relaxed),
            bytes_out: self.bytes.to_agent.load(Ordering::Relaxed),
            draining: self.is_draining(),
            key: if self.is_stale() {
                "previous"
            } else {
                "current"
            },
        }
    }
}

/// One agent connection counted against its tunnel's
/// `agents.max_agents_per_tunnel`, released when dropped.
#[derive(Debug)]
pub struct AgentSlot {
    slots: Arc<Mutex<HashMap<String, usize>>>,
    tunnel_id: String,
}

impl Drop for AgentSlot {
    fn drop(&mut self) {
        let mut slots = self.slots.lock().expect("lock");
        if let Some(n) = slots.get_mut(&self.tunnel_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                slots.remove(&self.tunnel_id);
            }
        }
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
    tables: RwLock<Arc<Tables>>,
    /// Held while the tables are reread, so that misses share one reread.
    reread: tokio::sync::Mutex<()>,
    /// Rereads of the store so far.
    rereads: AtomicU64,
    agents: RwLock<HashMap<String, Vec<Arc<AgentConn>>>>,
    /// Agent connections per tunnel id, counted from the handshake's
    /// verdict (before `agents` knows them) to their end.
    agent_slots: Arc<Mutex<HashMap<String, usize>>>,
    next_conn: AtomicU64,
    /// Woken when a tunnel gains its first agent or loses its last: the
    /// cluster's presence is renewed at once ([`crate::cluster`]).
    pub held_changed: Notify,
    /// Turns of agent choice: where the scan for the least busy agent
    /// starts, so ties (every agent idle, as for a sequential caller) go
    /// round the agents instead of always to the first.
    pick_turn: AtomicU64,
}

/// The store's callers, admin tokens and tunnels as last read.
#[derive(Default)]
struct Tables {
    /// Callers not revoked, with their expiry (unix seconds).
    callers: HashMap<[u8; 32], (CallerInfo, Option<i64>)>,
    admins: HashMap<[u8; 32], AdminTokenInfo>,
    tunnels: HashMap<String, TunnelInfo>,
    /// Tunnel id to name (what a relayed request names).
    names: HashMap<String, String>,
    /// By tunnel id: the current key's generation, and until when the
    /// previous one is accepted.
    keys: HashMap<String, (i64, Option<i64>)>,
    /// The store's files when they were read; `None` before the first read.
    stamp: Option<StoreStamp>,
}

impl Registry {
    /// A registry over `store`, whose queries run on `store_rt` (the store's
    /// pool lives on that runtime, whatever runtime the caller is on).
    pub fn new(store: Store, store_rt: tokio::runtime::Handle) -> Self {
        Registry {
            store,
            store_rt,
            tables: RwLock::default(),
            reread: tokio::sync::Mutex::new(()),
            rereads: AtomicU64::new(0),
            agents: RwLock::default(),
            agent_slots: Arc::default(),
            next_conn: AtomicU64::new(1),
            pick_turn: AtomicU64::new(0),
            held_changed: Notify::new(),
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

    fn tables(&self) -> Arc<Tables> {
        self.tables.read().expect("lock").clone()
    }

    /// The caller of a token, if the token is known, not revoked and not
    /// expired.
    pub async fn caller(&self, token: &str) -> Result<Option<CallerInfo>, StoreError> {
        let hash = token_hash(token);
        let live = |t: &Tables| {
            t.callers
                .get(&hash)
                .filter(|(_, exp)| exp.is_none_or(|e| e > now_secs()))
                .map(|(c, _)| c.clone())
        };
        // A known token is answered from memory, expired or not.
        if self.tables().callers.contains_key(&hash) {
            return Ok(live(&self.tables()));
        }
        self.reread_if_changed().await?;
        Ok(live(&self.tables()))
    }

    /// The admin token's record, if it is known and not revoked.
    pub async fn admin_token(&self, token: &str) -> Result<Option<AdminTokenInfo>, StoreError> {
        self.admin_token_by_hash(&token_hash(token)).await
    }

    /// The admin token whose hash is `hash` (what a dashboard session
    /// keeps instead of the token), if it is still valid.
    pub async fn admin_token_by_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<AdminTokenInfo>, StoreError> {
        if let Some(a) = self.tables().admins.get(hash) {
            return Ok(Some(a.clone()));
        }
        self.reread_if_changed().await?;
        Ok(self.tables().admins.get(hash).cloned())
    }

    /// The store, for the admin operations.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `f` on the store's runtime (where its pool lives).
    pub async fn with_store<T, F>(&self, f: impl FnOnce(Store) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        self.on_store(f).await
    }

    /// A tunnel by name.
    pub async fn tunnel_by_name(&self, name: &str) -> Result<Option<TunnelInfo>, StoreError> {
        if let Some(t) = self.tables().tunnels.get(name) {
            return Ok(Some(t.clone()));
        }
        self.reread_if_changed().await?;
        Ok(self.tables().tunnels.get(name).cloned())
    }

    /// A tunnel by id (what a relayed request names).
    pub async fn tunnel_by_id(&self, id: &str) -> Result<Option<TunnelInfo>, StoreError> {
        let find = |t: &Tables| t.names.get(id).and_then(|n| t.tunnels.get(n)).cloned();
        if let Some(t) = find(&self.tables()) {
            return Ok(Some(t));
        }
        self.reread_if_changed().await?;
        Ok(find(&self.tables()))
    }

    /// Rereads the tables if the store's files changed since they were
    /// read. Costs two `stat` calls when nothing changed.
    pub async fn reread_if_changed(&self) -> Result<(), StoreError> {
        if self.tables().stamp == Some(self.store.stamp()) {
            return Ok(());
        }
        let _one = self.reread.lock().await;
        // Another miss may have reread while this one waited.
        if self.tables().stamp == Some(self.store.stamp()) {
            return Ok(());
        }
        self.reread_now().await
    }

    /// Rereads every caller and tunnel from the store and swaps the tables
    /// in whole: revoked or renamed entries are gone from then on.
    pub async fn reread_now(&self) -> Result<(), StoreError> {
        // The stamp is taken first: a write during the reads makes the
        // next miss read again.
        let stamp = self.store.stamp();
        self.rereads.fetch_add(1, Ordering::Relaxed);
        let (callers, admins, tunnels) = self
            .on_store(|s| async move {
                Ok((
                    s.active_callers().await?,
                    s.active_admin_tokens().await?,
                    s.tunnel_records().await?,
                ))
            })
            .await?;
        let tables = Tables {
            callers: callers
                .into_iter()
                .map(|c| (c.hash, (c.info, c.expires_at)))
                .collect(),
            admins: admins.into_iter().collect(),
            keys: tunnels
                .iter()
                .map(|t| {
                    (
                        t.info.id.clone(),
                        (t.key_generation, t.previous_key_valid_until),
                    )
                })
                .collect(),
            names: tunnels
                .iter()
                .map(|t| (t.info.id.clone(), t.info.name.clone()))
                .collect(),
            tunnels: tunnels
                .into_iter()
                .map(|t| (t.info.name.clone(), t.info))
                .collect(),
            stamp: Some(stamp),
        };
        *self.tables.write().expect("lock") = Arc::new(tables);
        Ok(())
    }

    /// A tunnel and its keys by id, for the agent handshake.
    pub async fn tunnel_with_key(&self, id: &str) -> Result<Option<TunnelKeys>, StoreError> {
        let id = id.to_string();
        self.on_store(move |s| async move { s.tunnel_with_key(&id).await })
            .await
    }

    /// Rereads the tables (the periodic refresh), logging a failure: the
    /// last tables keep serving until the store answers again.
    pub async fn refresh(&self) {
        if let Err(e) = self.reread_now().await {
            tracing::warn!("could not reread callers and tunnels from the store: {e}");
        }
    }

    /// Disconnects every agent whose tunnel is gone or whose key is no
    /// longer accepted, and marks those on a previous key still in its
    /// overlap as stale. Runs after every change and once a second, so an
    /// overlap's end takes effect within a second. Returns the tunnel ids
    /// of the agents disconnected.
    pub fn enforce(&self) -> Vec<String> {
        let tables = self.tables();
        if tables.stamp.is_none() {
            return Vec::new();
        }
        let now = now_secs();
        let mut kicked = Vec::new();
        for agent in self.agents.read().expect("lock").values().flatten() {
            let verdict = match tables.keys.get(&agent.tunnel.id) {
                None => Some("tunnel deleted"),
                Some((current, _)) if agent.key_generation >= *current => {
                    agent.stale.store(false, Ordering::Release);
                    None
                }
                Some((current, Some(until)))
                    if agent.key_generation == current - 1 && *until > now =>
                {
                    agent.stale.store(true, Ordering::Release);
                    None
                }
                Some(_) => Some("key rotated: this agent's key is no longer accepted"),
            };
            if let Some(reason) = verdict {
                if !agent.kick.is_cancelled() {
                    agent.kick(reason);
                    kicked.push(agent.tunnel.id.clone());
                }
            }
        }
        kicked
    }

    /// Every connected agent, by tunnel name then connection.
    pub fn agent_views(&self) -> Vec<AgentView> {
        let mut v: Vec<AgentView> = self
            .agents
            .read()
            .expect("lock")
            .values()
            .flatten()
            .map(|a| a.view())
            .collect();
        v.sort_by(|a, b| (&a.tunnel, a.conn_id).cmp(&(&b.tunnel, b.conn_id)));
        v
    }

    /// A connected agent by connection id.
    pub fn agent(&self, conn_id: u64) -> Option<Arc<AgentConn>> {
        self.agents
            .read()
            .expect("lock")
            .values()
            .flatten()
            .find(|a| a.conn_id == conn_id)
            .cloned()
    }

    /// Adds a freshly authenticated agent connection.
    pub fn add_agent(&self, new: NewAgent, sender: SendRequest<Bytes>) -> Arc<AgentConn> {
        let conn = Arc::new(AgentConn {
            conn_id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            tunnel: new.tunnel,
            agent_name: new.agent_name,
            key_generation: new.key_generation,
            remote: new.remote,
            software: new.software,
            protocol: new.protocol,
            connected_at: now_secs(),
            bytes: new.bytes,
            sender,
            inflight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            idle: Notify::new(),
            kick: CancellationToken::new(),
            kick_reason: Mutex::new(None),
            drain: CancellationToken::new(),
        });
        let mut map = self.agents.write().expect("lock");
        let list = map.entry(conn.tunnel.id.clone()).or_default();
        list.push(conn.clone());
        let m = &crate::metrics::METRICS;
        if list.len() == 1 {
            m.tunnels_connected.inc();
            self.held_changed.notify_one();
        }
        m.agents_connected.inc();
        m.agent_connects
            .get_or_create(&crate::metrics::TunnelLabels {
                tunnel: conn.tunnel.name.clone(),
            })
            .inc();
        drop(map);
        // Rotated or deleted while it shook hands? Marked or kicked now.
        self.enforce();
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
            self.held_changed.notify_one();
        }
    }

    /// The ids of the tunnels with at least one agent here that serves
    /// (connected, not draining): what the cluster's presence says.
    pub fn held_tunnels(&self) -> Vec<String> {
        self.agents
            .read()
            .expect("lock")
            .iter()
            .filter(|(_, list)| list.iter().any(|a| !a.draining.load(Ordering::Acquire)))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Whether an agent of the tunnel is connected here and not draining.
    pub fn serves(&self, tunnel_id: &str) -> bool {
        self.agents
            .read()
            .expect("lock")
            .get(tunnel_id)
            .is_some_and(|list| list.iter().any(|a| !a.draining.load(Ordering::Acquire)))
    }

    /// Picks the serving agent of a tunnel with the fewest requests in
    /// flight, skipping draining ones, and counts the request against it.
    pub fn pick(&self, tunnel_id: &str) -> Result<InflightGuard, PickError> {
        self.pick_except(tunnel_id, None)
    }

    /// Like [`Registry::pick`], never choosing the connection `except` (the
    /// agent a retried request was lost on).
    pub fn pick_except(
        &self,
        tunnel_id: &str,
        except: Option<u64>,
    ) -> Result<InflightGuard, PickError> {
        let map = self.agents.read().expect("lock");
        let list = map.get(tunnel_id).map_or(&[][..], Vec::as_slice);
        // `min_by_key` keeps the first of equals: starting the scan one
        // agent further each time spreads ties over every agent.
        let start = match list.len() {
            0 | 1 => 0,
            n => (self.pick_turn.fetch_add(1, Ordering::Relaxed) % n as u64) as usize,
        };
        let best = list[start..]
            .iter()
            .chain(&list[..start])
            .filter(|a| Some(a.conn_id) != except && a.is_serving())
            .min_by_key(|a| (a.is_stale(), a.inflight()))
            .cloned();
        drop(map);
        best.map(InflightGuard::new).ok_or(PickError::NoAgent)
    }

    /// Whether a tunnel has a serving agent other than the connection
    /// `except`: a lost request is retried only when one is there to take it.
    pub fn has_other_agent(&self, tunnel_id: &str, except: u64) -> bool {
        self.agents
            .read()
            .expect("lock")
            .get(tunnel_id)
            .is_some_and(|list| list.iter().any(|a| a.conn_id != except && a.is_serving()))
    }

    /// Counts one more agent connection of `tunnel_id`, unless it already
    /// has `max`. The count lasts as long as the returned slot.
    pub fn reserve_agent_slot(&self, tunnel_id: &str, max: usize) -> Option<AgentSlot> {
        let mut slots = self.agent_slots.lock().expect("lock");
        let n = slots.entry(tunnel_id.to_string()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AgentSlot {
            slots: self.agent_slots.clone(),
            tunnel_id: tunnel_id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn registry() -> (Registry, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("gwreg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&crate::config::StoreSection {
            path: dir.join("g.db"),
            kek_file: Some(dir.join("kek")),
            kek_env: None,
            url: None,
            refresh: std::time::Duration::from_secs(5),
        })
        .await
        .unwrap();
        (Registry::new(store, tokio::runtime::Handle::current()), dir)
    }

    /// A sender on a live (if silent) HTTP/2 connection.
    async fn sender() -> SendRequest<Bytes> {
        let (client, server) = tokio::io::duplex(1 << 16);
        let accept = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server).await.unwrap();
            while conn.accept().await.is_some() {}
        });
        let (tx, conn) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(async move {
            let _accept = accept;
            let _ = conn.await;
        });
        tx
    }

    fn new_agent(name: &str) -> NewAgent {
        NewAgent {
            tunnel: TunnelInfo {
                id: "tun_1".into(),
                name: "wiki".into(),
                org: "acme".into(),
            },
            agent_name: name.into(),
            key_generation: 0,
            remote: "127.0.0.1:1".parse().unwrap(),
            software: None,
            protocol: protocol::PROTOCOL_VERSION,
            bytes: Arc::default(),
        }
    }

    #[tokio::test]
    async fn unknown_tokens_cost_no_store_query_and_new_callers_are_seen_at_once() {
        let (reg, dir) = registry().await;
        let (known, token) = reg.store.create_caller("acme").await.unwrap();
        assert_eq!(reg.caller(&token).await.unwrap(), Some(known));
        // A caller added behind the registry's back (as the CLI does) is
        // found on its first request: the store's files changed.
        let (later, later_token) = reg.store.create_caller("globex").await.unwrap();
        assert_eq!(reg.caller(&later_token).await.unwrap(), Some(later));
        // Random tokens are answered (unknown) from memory: no reread.
        let before = reg.rereads.load(Ordering::Relaxed);
        for i in 0..1000 {
            assert_eq!(reg.caller(&format!("ct_random{i}")).await.unwrap(), None);
        }
        assert_eq!(reg.rereads.load(Ordering::Relaxed), before);
        assert!(reg.caller(&token).await.unwrap().is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn picks_the_least_busy_serving_agent() {
        let (reg, dir) = registry().await;
        assert_eq!(reg.pick("tun_1").unwrap_err(), PickError::NoAgent);
        let a = reg.add_agent(new_agent("a"), sender().await);
        let b = reg.add_agent(new_agent("b"), sender().await);
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

    #[tokio::test]
    async fn sequential_requests_go_round_every_idle_agent() {
        let (reg, dir) = registry().await;
        let a = reg.add_agent(new_agent("a"), sender().await);
        let b = reg.add_agent(new_agent("b"), sender().await);
        let c = reg.add_agent(new_agent("c"), sender().await);
        // One request at a time: every agent is idle at each choice, and
        // each serves a third of them.
        let mut served = HashMap::new();
        for _ in 0..30 {
            let g = reg.pick("tun_1").unwrap();
            *served.entry(g.agent().conn_id).or_insert(0) += 1;
        }
        for agent in [&a, &b, &c] {
            assert_eq!(served.get(&agent.conn_id), Some(&10), "{served:?}");
        }
        // Ties only: a busy agent still loses to an idle one.
        let _busy = reg.pick("tun_1").unwrap();
        let _busy2 = reg.pick("tun_1").unwrap();
        let idle = reg.pick("tun_1").unwrap();
        assert_eq!(idle.agent().inflight(), 1);
        assert_eq!(a.inflight() + b.inflight() + c.inflight(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_retry_never_picks_the_agent_it_was_lost_on() {
        let (reg, dir) = registry().await;
        let a = reg.add_agent(new_agent("a"), sender().await);
        assert!(!reg.has_other_agent("tun_1", a.conn_id));
        assert_eq!(
            reg.pick_except("tun_1", Some(a.conn_id)).unwrap_err(),
            PickError::NoAgent
        );
        let b = reg.add_agent(new_agent("b"), sender().await);
        assert!(reg.has_other_agent("tun_1", a.conn_id));
        // `a` is idle and `b` busy, yet the retry goes to `b`.
        let _busy = reg.pick_except("tun_1", Some(a.conn_id)).unwrap();
        let g = reg.pick_except("tun_1", Some(a.conn_id)).unwrap();
        assert_eq!(g.agent().conn_id, b.conn_id);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn agent_slots_cap_each_tunnel_apart() {
        let (reg, dir) = registry().await;
        let first = reg.reserve_agent_slot("tun_1", 2).unwrap();
        let _second = reg.reserve_agent_slot("tun_1", 2).unwrap();
        assert!(reg.reserve_agent_slot("tun_1", 2).is_none());
        // Another tunnel has its own count.
        let _other = reg.reserve_agent_slot("tun_2", 2).unwrap();
        // A connection that ends frees its slot.
        drop(first);
        assert!(reg.reserve_agent_slot("tun_1", 2).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn rotation_prefers_new_key_agents_then_drops_old_ones_and_deletion_drops_all() {
        let (reg, dir) = registry().await;
        let (info, _) = reg.store.create_tunnel("acme", "wiki").await.unwrap();
        reg.reread_now().await.unwrap();
        let on = |name: &str, key_generation| NewAgent {
            tunnel: info.clone(),
            key_generation,
            ..new_agent(name)
        };
        let old = reg.add_agent(on("old", 0), sender().await);
        assert!(!old.is_stale());

        // During the overlap the old-key agent stays, but only serves when
        // no agent on the new key does.
        let overlap = std::time::Duration::from_secs(3600);
        reg.store.rotate_key("wiki", overlap).await.unwrap();
        reg.reread_now().await.unwrap();
        assert!(reg.enforce().is_empty());
        assert!(old.is_stale());
        assert_eq!(old.view().key, "previous");
        let new = reg.add_agent(on("new", 1), sender().await);
        let _busy = [reg.pick(&info.id).unwrap(), reg.pick(&info.id).unwrap()];
        assert_eq!(new.inflight(), 2, "the new-key agent takes every request");
        assert_eq!(old.inflight(), 0);

        // A rotation without overlap: both older keys end at once, so both
        // agents are disconnected.
        reg.store
            .rotate_key("wiki", std::time::Duration::ZERO)
            .await
            .unwrap();
        reg.reread_now().await.unwrap();
        assert_eq!(reg.enforce(), vec![info.id.clone(), info.id.clone()]);
        let reason = tokio::time::timeout(std::time::Duration::from_secs(1), old.kicked())
            .await
            .unwrap();
        assert!(reason.starts_with("key rotated"), "{reason}");

        // Deleting the tunnel disconnects whoever is left.
        let last = reg.add_agent(on("last", 2), sender().await);
        reg.store.delete_tunnel("wiki").await.unwrap();
        reg.reread_now().await.unwrap();
        assert_eq!(reg.enforce(), vec![info.id.clone()]);
        assert_eq!(last.kicked().await, "tunnel deleted");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_revoked_or_expired_caller_is_refused_once_the_tables_are_reread() {
        let (reg, dir) = registry().await;
        let (rec, token) = reg
            .store
            .create_caller_with("acme", None, None)
            .await
            .unwrap();
        let (_, short) = reg
            .store
            // Three seconds: long enough that a busy machine still finds it
            // valid right after creating it (one second was not).
            .create_caller_with("acme", None, Some(now_secs() + 3))
            .await
            .unwrap();
        assert!(reg.caller(&token).await.unwrap().is_some());
        assert!(reg.caller(&short).await.unwrap().is_some());
        reg.store.revoke_caller(&rec.id).await.unwrap();
        reg.reread_now().await.unwrap();
        assert!(reg.caller(&token).await.unwrap().is_none());
        // Expiry needs no reread: it is checked on every lookup.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reg.caller(&short).await.unwrap().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "expired token still accepted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
