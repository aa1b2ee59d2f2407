//! The agent's connections: each dials a gateway instance no other one
//! holds, serves, and on loss reconnects with exponential backoff and full
//! jitter; on a rejected key the agent stops for good; on SIGTERM/SIGINT
//! every connection drains and the agent exits.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::{AgentConfig, GatewayUrl};
use crate::dial::{dial, DialError};
use crate::metrics::{ReasonLabels, METRICS};
use crate::session::{serve, Ended};
use protocol::events::emit;

/// The connections' state, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Status {
    /// Connections to gateway instances up and serving.
    pub connections: AtomicUsize,
    /// SIGTERM received: finishing in-flight requests.
    pub draining: AtomicBool,
}

impl Status {
    /// `/readyz`: ready while connected to some instance and not draining.
    pub fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining".into())
        } else if self.connections.load(Ordering::Acquire) == 0 {
            Err("not connected to the gateway".into())
        } else {
            Ok(())
        }
    }
}

/// Exit code when the gateway rejects the key: retrying cannot help.
pub const EXIT_REJECTED: i32 = 2;

/// Exponential backoff ceiling for attempt `n` (0-based), full jitter applied by the caller.
pub fn backoff_ceiling(initial: Duration, max: Duration, attempt: u32) -> Duration {
    initial.saturating_mul(1u32 << attempt.min(30)).min(max)
}

/// Where one connection dials: a URL, and with a single URL kept several
/// times over, one of the addresses its host resolves to.
#[derive(Debug, Clone)]
struct Target {
    url: usize,
    pin: Option<SocketAddr>,
    /// What makes it another instance than the other connections'.
    label: String,
}

/// What every connection shares.
struct Shared<'a> {
    cfg: &'a AgentConfig,
    urls: Vec<GatewayUrl>,
    tls: Arc<rustls::ClientConfig>,
    key: &'a protocol::TunnelKey,
    status: Arc<Status>,
    proxy: Option<String>,
    /// The targets connections hold now (or are dialing).
    in_use: Mutex<HashSet<String>>,
    /// Connections kept at once.
    connections: usize,
}

/// A connection ended for good.
enum SlotEnd {
    /// Drained (SIGTERM): the agent stops once every connection has.
    Done,
    /// The gateway refused the key: the agent stops at once.
    Rejected,
}

/// A target held by one connection, given back when dropped.
struct Claim<'a> {
    in_use: &'a Mutex<HashSet<String>>,
    label: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.in_use.lock().expect("lock").remove(&self.label);
    }
}

impl Shared<'_> {
    /// Every target: each URL; or, for one URL kept several times over,
    /// each address its host resolves to (the URL itself through a proxy,
    /// which resolves it, or when it does not resolve: dialing says why).
    async fn targets(&self) -> Vec<Target> {
        let by_url = || {
            self.urls
                .iter()
                .enumerate()
                .map(|(i, u)| Target {
                    url: i,
                    pin: None,
                    label: u.text.clone(),
                })
                .collect()
        };
        if self.urls.len() > 1 || self.connections == 1 || self.proxy.is_some() {
            return by_url();
        }
        let u = &self.urls[0];
        match tokio::net::lookup_host((u.host.as_str(), u.port)).await {
            Ok(addrs) => {
                let mut seen = HashSet::new();
                addrs
                    .filter(|a| seen.insert(*a))
                    .map(|a| Target {
                        url: 0,
                        pin: Some(a),
                        label: a.to_string(),
                    })
                    .collect()
            }
            Err(_) => by_url(),
        }
    }

    /// A target no other connection holds, scanning from `turn`.
    async fn claim(&self, turn: usize) -> Option<(Target, Claim<'_>)> {
        let all = self.targets().await;
        let mut in_use = self.in_use.lock().expect("lock");
        let n = all.len();
        let t = (0..n)
            .map(|k| &all[(turn + k) % n])
            .find(|t| !in_use.contains(&t.label))?
            .clone();
        in_use.insert(t.label.clone());
        let claim = Claim {
            in_use: &self.in_use,
            label: t.label.clone(),
        };
        Some((t, claim))
    }
}

/// Runs until drained (exit 0) or rejected (exit 2). Returns the exit code.
///
/// Keeps `gateway.connections` connections, each to another instance
/// (another URL of `gateway.urls`, or another address of the host), and
/// replaces one that drops with a target not in use. `status` follows the
/// connections for the admin listener's `/readyz`.
pub async fn run(
    cfg: AgentConfig,
    key: protocol::TunnelKey,
    status: Arc<Status>,
) -> anyhow::Result<i32> {
    let urls = cfg.gateway_urls()?;
    let tls = crate::dial::tls_config(&cfg)?;
    // Resolved once for the log; `dial` reads the same setting each time.
    let proxy = cfg.proxy()?.map(|p| {
        tracing::info!(proxy = %p, source = %p.source, "reaching the gateway through a CONNECT proxy");
        p.to_string()
    });

    let (drain_tx, drain_rx) = watch::channel(false);
    let drain_status = status.clone();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        emit(json!({"event": "draining"}));
        let _ = drain_tx.send(true);
        drain_status.draining.store(true, Ordering::Release);
    });

    let shared = Shared {
        connections: cfg.connections(),
        cfg: &cfg,
        urls,
        tls,
        key: &key,
        status,
        proxy,
        in_use: Mutex::new(HashSet::new()),
    };
    let mut slots: Vec<_> = (0..shared.connections)
        .map(|i| Box::pin(slot(&shared, i, drain_rx.clone())))
        .collect();
    while !slots.is_empty() {
        let (ended, _, rest) = futures_util::future::select_all(slots).await;
        if let SlotEnd::Rejected = ended {
            return Ok(EXIT_REJECTED);
        }
        slots = rest;
    }
    emit(json!({"event": "stopped"}));
    Ok(0)
}

/// One connection: dial a target no other connection holds, serve, and on
/// loss dial again with exponential backoff and full jitter.
async fn slot(shared: &Shared<'_>, index: usize, drain_rx: watch::Receiver<bool>) -> SlotEnd {
    let cfg = shared.cfg;
    let agent = cfg.agent_name();
    let mut attempt: u32 = 0;
    let mut turn = index;
    loop {
        if *drain_rx.borrow() {
            return SlotEnd::Done;
        }
        let claimed = shared.claim(turn).await;
        turn = turn.wrapping_add(1);
        if let Some((target, _claim)) = claimed {
            let url = &shared.urls[target.url];
            let gateway = target.label.as_str();
            match dial(cfg, url, target.pin, shared.tls.clone(), shared.key).await {
                Ok((ws, welcome)) => {
                    tracing::info!(tunnel = %welcome.tunnel_name, %agent, %gateway, "connected to gateway");
                    emit(
                        json!({"event": "connected", "tunnel": cfg.tunnel.id, "tunnel_name": welcome.tunnel_name, "agent": agent, "proxy": shared.proxy, "gateway": gateway}),
                    );
                    let since = tokio::time::Instant::now();
                    METRICS.connects.inc();
                    let up = shared.status.connections.fetch_add(1, Ordering::AcqRel) + 1;
                    METRICS.connected.set(up as i64);
                    let ended = serve(cfg, ws, &welcome.tunnel_name, drain_rx.clone()).await;
                    let up = shared.status.connections.fetch_sub(1, Ordering::AcqRel) - 1;
                    METRICS.connected.set(up as i64);
                    METRICS.disconnects.inc();
                    match ended {
                        Ended::Drained => return SlotEnd::Done,
                        Ended::Lost(reason) => {
                            tracing::warn!(%gateway, "disconnected: {reason}");
                            emit(
                                json!({"event": "disconnected", "reason": reason, "gateway": gateway}),
                            );
                        }
                    }
                    if since.elapsed() >= cfg.reconnect.stable_after {
                        attempt = 0;
                    }
                }
                Err(DialError::Rejected(reason)) => {
                    METRICS
                        .connect_failures
                        .get_or_create(&ReasonLabels { reason: "rejected" })
                        .inc();
                    tracing::error!(
                        "the gateway rejected this agent ({reason}): check tunnel.id and the key stored with `agent key set`"
                    );
                    emit(json!({"event": "rejected", "reason": reason}));
                    return SlotEnd::Rejected;
                }
                Err(e) => {
                    METRICS
                        .connect_failures
                        .get_or_create(&ReasonLabels { reason: e.kind() })
                        .inc();
                    tracing::warn!(%gateway, "cannot connect to the gateway: {e}");
                    emit(
                        json!({"event": "connect_failed", "reason": e.to_string(), "gateway": gateway}),
                    );
                }
            }
        } else {
            // Every target is held by another connection: this one waits
            // for one to drop (or a new address to appear).
            tracing::debug!("no other gateway instance to connect to; waiting");
        }
        let ceiling = backoff_ceiling(
            cfg.reconnect.initial_backoff,
            cfg.reconnect.max_backoff,
            attempt,
        );
        attempt = attempt.saturating_add(1);
        let wait = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
        let mut d = drain_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = d.wait_for(|v| *v) => return SlotEnd::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps() {
        let ms = Duration::from_millis;
        assert_eq!(backoff_ceiling(ms(100), ms(2000), 0), ms(100));
        assert_eq!(backoff_ceiling(ms(100), ms(2000), 1), ms(200));
        assert_eq!(backoff_ceiling(ms(100), ms(2000), 4), ms(1600));
        assert_eq!(backoff_ceiling(ms(100), ms(2000), 5), ms(2000));
        assert_eq!(backoff_ceiling(ms(100), ms(2000), 200), ms(2000));
        // Fractions of a millisecond and huge values stay exact or cap.
        let us = Duration::from_micros;
        assert_eq!(backoff_ceiling(us(1500), ms(10), 1), us(3000));
        assert_eq!(
            backoff_ceiling(Duration::from_secs(u64::MAX / 2), ms(10), 30),
            ms(10)
        );
    }
}
