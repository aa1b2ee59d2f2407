//! The agent's one actor: dial, serve, and on loss reconnect with
//! exponential backoff and full jitter; on a rejected key stop for good;
//! on SIGTERM/SIGINT drain and exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::AgentConfig;
use crate::dial::{dial, DialError};
use crate::metrics::{ReasonLabels, METRICS};
use crate::session::{serve, Ended};
use protocol::events::emit;

/// The connection's state, as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Status {
    /// Connected to the gateway and serving.
    pub connected: AtomicBool,
    /// SIGTERM received: finishing in-flight requests.
    pub draining: AtomicBool,
}

impl Status {
    /// `/readyz`: ready while connected and not draining.
    pub fn check(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining".into())
        } else if !self.connected.load(Ordering::Acquire) {
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

/// Runs until drained (exit 0) or rejected (exit 2). Returns the exit code.
///
/// `status` follows the connection for the admin listener's `/readyz`.
pub async fn run(
    cfg: AgentConfig,
    key: protocol::TunnelKey,
    status: Arc<Status>,
) -> anyhow::Result<i32> {
    let url = cfg.gateway_url()?;
    let tls = crate::dial::tls_config(&cfg)?;
    let agent = cfg.agent_name();
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

    let mut attempt: u32 = 0;
    loop {
        if *drain_rx.borrow() {
            break;
        }
        match dial(&cfg, &url, tls.clone(), &key).await {
            Ok((ws, welcome)) => {
                tracing::info!(tunnel = %welcome.tunnel_name, %agent, "connected to gateway");
                emit(
                    json!({"event": "connected", "tunnel": cfg.tunnel.id, "tunnel_name": welcome.tunnel_name, "agent": agent, "proxy": proxy}),
                );
                let since = tokio::time::Instant::now();
                METRICS.connects.inc();
                METRICS.connected.set(1);
                status.connected.store(true, Ordering::Release);
                let ended = serve(&cfg, ws, &welcome.tunnel_name, drain_rx.clone()).await;
                status.connected.store(false, Ordering::Release);
                METRICS.connected.set(0);
                METRICS.disconnects.inc();
                match ended {
                    Ended::Drained => break,
                    Ended::Lost(reason) => {
                        tracing::warn!("disconnected: {reason}");
                        emit(json!({"event": "disconnected", "reason": reason}));
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
                return Ok(EXIT_REJECTED);
            }
            Err(e) => {
                METRICS
                    .connect_failures
                    .get_or_create(&ReasonLabels { reason: e.kind() })
                    .inc();
                tracing::warn!("cannot connect to the gateway: {e}");
                emit(json!({"event": "connect_failed", "reason": e.to_string()}));
            }
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
            _ = d.wait_for(|v| *v) => break,
        }
    }
    emit(json!({"event": "stopped"}));
    Ok(0)
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
