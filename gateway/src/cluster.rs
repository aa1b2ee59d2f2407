//! Several gateway instances on one store (`[cluster]`): presence and the
//! relay's client side.
//!
//! - **Presence.** Every third of `cluster.lease`, and at once when a
//!   tunnel gains its first agent here or loses its last, the instance
//!   rewrites its rows of the store's `presence` table (the tunnels it
//!   holds agents of, valid for one lease) and reads the other instances'
//!   rows still valid. A change of what it holds is announced (NOTIFY), so
//!   the others read presence again at once. An instance that dies stops renewing: the others
//!   stop relaying to it within one lease. A clean stop removes its rows.
//! - **Relay.** A request for a tunnel with no agent here goes to an
//!   instance holding one ([`Cluster::relay_target`]) as an ordinary
//!   pingora upstream: TLS 1.3, this instance's certificate shown, the
//!   other's checked against `cluster.tls_ca` and `cluster.server_name`.
//!   The relayed head says who the caller is and which tunnel and route
//!   the policy chain admitted ([`RELAY_HEADERS`]); the instance relayed
//!   to trusts it only on its relay listener, from a peer whose
//!   certificate the cluster's CA signed, and never relays further.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use rand::RngCore;

use crate::config::ClusterSection;
use crate::registry::Registry;

/// The relay head's fields, set by the relaying instance (any value a
/// caller sent is replaced) and read only on the relay listener.
pub const RELAY_TUNNEL: &str = "tunnel-relay-tunnel";
pub const RELAY_CALLER: &str = "tunnel-relay-caller";
pub const RELAY_ORG: &str = "tunnel-relay-org";
pub const RELAY_ROUTE: &str = "tunnel-relay-route";
pub const RELAY_BODY_LIMIT: &str = "tunnel-relay-body-limit";
pub const RELAY_FROM: &str = "tunnel-relay-from";
/// Every relay field: removed from what a caller sends and from what
/// reaches an agent.
pub const RELAY_HEADERS: [&str; 6] = [
    RELAY_TUNNEL,
    RELAY_CALLER,
    RELAY_ORG,
    RELAY_ROUTE,
    RELAY_BODY_LIMIT,
    RELAY_FROM,
];

/// This instance in the cluster.
pub struct Cluster {
    /// `gw_` and 12 random hex digits, new at every start.
    pub instance: String,
    /// Where the others relay to this instance.
    pub advertised: SocketAddr,
    lease: Duration,
    /// Tunnel id to the relay addresses of the other instances holding
    /// its agents, as last read.
    holders: ArcSwap<HashMap<String, Vec<SocketAddr>>>,
    turn: AtomicU64,
    /// Instances a relay could not reach lately, until when: skipped while
    /// another holder is there (their rows stay until their lease ends).
    suspects: std::sync::Mutex<HashMap<SocketAddr, std::time::Instant>>,
    /// What this instance shows and checks when it relays.
    pub client_cert: Arc<CertKey>,
    pub ca: Arc<[WrappedX509]>,
    pub server_name: String,
}

impl Cluster {
    /// Reads the instance's certificate, key and CA (errors name the
    /// field).
    pub fn new(cfg: &ClusterSection, advertised: SocketAddr) -> anyhow::Result<Self> {
        let certs = crate::tls::load_certs(&cfg.tls_cert).context("cluster.tls_cert")?;
        let key = crate::tls::load_key(&cfg.tls_key).context("cluster.tls_key")?;
        let cas = crate::tls::load_certs(&cfg.tls_ca).context("cluster.tls_ca")?;
        let client_cert = Arc::new(CertKey::new(
            certs.iter().map(|c| c.as_ref().to_vec()).collect(),
            key.secret_der().to_vec(),
        ));
        let ca: Arc<[WrappedX509]> = cas
            .iter()
            .map(|c| WrappedX509::new(c.as_ref().to_vec(), parse_x509))
            .collect();
        Ok(Cluster {
            instance: new_instance_id(),
            advertised,
            lease: cfg.lease,
            holders: ArcSwap::default(),
            turn: AtomicU64::new(0),
            suspects: Default::default(),
            client_cert,
            ca,
            server_name: cfg.server_name.clone(),
        })
    }

    /// Another instance holding an agent of the tunnel, taken in turn when
    /// there are several, an instance lately unreachable only when no
    /// other holds one; `None` when no other instance holds one.
    pub fn relay_target(&self, tunnel_id: &str) -> Option<SocketAddr> {
        self.relay_target_except(tunnel_id, None)
    }

    /// As [`Cluster::relay_target`], never `except`.
    pub fn relay_target_except(
        &self,
        tunnel_id: &str,
        except: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let holders = self.holders.load();
        let list: Vec<SocketAddr> = holders
            .get(tunnel_id)?
            .iter()
            .copied()
            .filter(|a| Some(*a) != except)
            .collect();
        if list.is_empty() {
            return None;
        }
        let now = std::time::Instant::now();
        let healthy: Vec<SocketAddr> = {
            let mut suspects = self.suspects.lock().expect("lock");
            suspects.retain(|_, until| *until > now);
            list.iter()
                .copied()
                .filter(|a| !suspects.contains_key(a))
                .collect()
        };
        let pool = if healthy.is_empty() { &list } else { &healthy };
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
        Some(pool[turn % pool.len()])
    }

    /// A relay to `addr` failed: other holders are preferred to it for one
    /// lease (by then a dead instance's rows are gone).
    pub fn suspect(&self, addr: SocketAddr) {
        self.suspects
            .lock()
            .expect("lock")
            .insert(addr, std::time::Instant::now() + self.lease);
    }

    /// Renews this instance's presence and reads the others', every third
    /// of the lease and whenever `registry` says a tunnel was gained or
    /// lost, until `stop`; then removes this instance's rows. A failure is
    /// logged and the last rows read keep serving until the next turn.
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let every = self.lease / 3;
        let mut announced: Option<Vec<String>> = None;
        loop {
            let mut held = registry.held_tunnels();
            held.sort();
            let announce = announced.as_ref() != Some(&held);
            match self.renew(&registry, held.clone(), announce).await {
                Ok(()) => announced = Some(held),
                Err(e) => {
                    tracing::warn!("could not renew this instance's presence in the store: {e}")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = registry.held_changed.notified() => {}
                _ = registry.store().presence_changed() => {}
                _ = stop.changed() => break,
            }
        }
        let me = self.instance.clone();
        if let Err(e) = registry
            .with_store(move |s| async move { s.presence_forget(&me).await })
            .await
        {
            tracing::warn!("could not remove this instance's presence from the store: {e}");
        }
    }

    async fn renew(
        &self,
        registry: &Registry,
        held: Vec<String>,
        announce: bool,
    ) -> Result<(), crate::store::StoreError> {
        let (me, addr) = (self.instance.clone(), self.advertised.to_string());
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX / 2);
        let others = registry
            .with_store(move |s| async move {
                let now = s.presence_now().await?;
                s.presence_renew(&me, &addr, &held, now + lease_ms, announce)
                    .await?;
                s.presence_others(&me, now).await
            })
            .await?;
        let mut holders: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        for h in others {
            match h.relay_addr.parse() {
                Ok(a) => holders.entry(h.tunnel_id).or_default().push(a),
                Err(_) => tracing::warn!(
                    "instance {} recorded an unreadable relay address; not relaying to it",
                    h.instance
                ),
            }
        }
        self.holders.store(Arc::new(holders));
        Ok(())
    }
}

/// A new instance id: `gw_` and 12 random hex digits.
pub fn new_instance_id() -> String {
    let mut id = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut id);
    format!("gw_{}", hex::encode(id))
}

/// The relay listener's TLS: 1.3 only, this instance's certificate, and a
/// client certificate signed by the cluster's CA required.
pub fn relay_server_config(cfg: &ClusterSection) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = crate::tls::load_certs(&cfg.tls_cert).context("cluster.tls_cert")?;
    let key = crate::tls::load_key(&cfg.tls_key).context("cluster.tls_key")?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in crate::tls::load_certs(&cfg.tls_ca).context("cluster.tls_ca")? {
        roots.add(ca).context("cluster.tls_ca")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("cluster.tls_ca")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("relay TLS")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("cluster.tls_cert / cluster.tls_key")?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}
