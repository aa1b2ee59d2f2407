//! Live configuration: the gateway reads its configuration file again on
//! SIGHUP and when the file changes, and applies it without a restart.
//!
//! A reload is all or nothing:
//!
//! 1. the file is loaded and validated exactly as at start
//!    ([`GatewayConfig::load`], `GATEWAY__…` environment overrides
//!    included); an invalid file is refused with the error naming the
//!    field;
//! 2. it is compared with the running configuration ([`diff`]); a change
//!    to a setting bound at start (listener addresses and certificates,
//!    threads, store, agents' listener, admin listener, trace export and
//!    log format, the public listener's address, TLS and keep-alive time,
//!    the plugin engine's sizes:
//!    everything not in [`diff::LIVE_FIELDS`]) refuses the whole reload,
//!    naming each such field: nothing is applied, rather than applying
//!    part of what the operator wrote and silently ignoring the rest;
//! 3. the plugin host is rebuilt for it ([`Plugins::reconfigure`]): every
//!    plugin must accept every configuration routes now give it, as at
//!    start; a refusal names the plugin and carries its message;
//! 4. a new `log.level` replaces the log filter (unless `RUST_LOG` is
//!    set, which keeps deciding as at start);
//! 5. the new routes, chains and limits are swapped in as one snapshot
//!    ([`crate::live`]). Requests already running keep the snapshot they
//!    started with; tunnels and agents are not touched.
//!
//! Each outcome is an event line (`config_reloaded` with what changed,
//! `config_reload_failed` with the error), a log line and a count in
//! `config_reloads_total{result}`. A refused reload keeps the running
//! configuration; the next SIGHUP or file change tries again.
//!
//! pingora's server handles SIGTERM, SIGINT and SIGQUIT but not SIGHUP,
//! whose default action ends the process: the handler is installed before
//! the gateway reports `ready`.
//!
//! [`Plugins::reconfigure`]: crate::plugins::Plugins::reconfigure

pub mod diff;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::auth_limit::FailureBudget;
use crate::config::{ConfigError, GatewayConfig};
use crate::live::{Current, Live};
use crate::plugins::{stamp, Stamp};
use crate::public_listener::LiveLimits;
use protocol::events::emit;

/// How often the file's metadata is looked at.
const POLL: Duration = Duration::from_secs(1);
/// How long the file must stay unchanged before it is read: an editor
/// or a tool writing it in several steps is done by then.
const SETTLE: Duration = Duration::from_millis(200);
/// Longest wait for the file to settle; then it is read as it is (and a
/// later change is picked up by the next poll).
const MAX_SETTLE: Duration = Duration::from_secs(3);

/// Why a reload was refused. The running configuration is kept.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or does not validate.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// Settings that only a restart applies were changed.
    #[error(
        "these settings cannot change while the gateway runs (restart it to apply them): {}; \
         nothing was applied",
        .0.join(", ")
    )]
    NeedsRestart(Vec<String>),
    /// A plugin refused its new configuration, or could not be loaded.
    #[error("{0}")]
    Plugins(crate::plugins::LoadError),
    /// The log filter could not be replaced.
    #[error("log.level: {0:#}")]
    Telemetry(anyhow::Error),
}

impl ReloadError {
    /// The configuration fields at fault, when known.
    pub fn fields(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(ConfigError::Invalid { field, .. }) => vec![field.clone()],
            ReloadError::NeedsRestart(fields) => fields.clone(),
            _ => Vec::new(),
        }
    }
}

/// Keeps the reloader running; dropping it stops it.
pub struct Handle {
    _runtime: tokio::runtime::Runtime,
}

/// Applies new configurations to the running gateway.
pub struct Reloader {
    path: PathBuf,
    running: GatewayConfig,
    live: Current,
    failures: Arc<FailureBudget>,
    listener: LiveLimits,
    /// On a shared store: this instance's id and the registry whose store
    /// announces reloads to the other instances and hears theirs.
    shared: Option<(String, Arc<crate::registry::Registry>)>,
}

impl Reloader {
    /// A reloader of `running` (loaded from `running.source`), swapping
    /// snapshots into `live`, the budget of failed credentials and the
    /// public listener's budgets and deadlines.
    pub fn new(
        running: GatewayConfig,
        live: Current,
        failures: Arc<FailureBudget>,
        listener: LiveLimits,
    ) -> Option<Self> {
        Some(Reloader {
            path: running.source.clone()?,
            running,
            live,
            failures,
            listener,
            shared: None,
        })
    }

    /// On a shared store (`store.url`): a reload here is announced to the
    /// other instances, which read their own files again at once; one
    /// they announce is read here. `instance` names this one.
    pub fn shared(mut self, instance: String, registry: Arc<crate::registry::Registry>) -> Self {
        if self.running.store.url.is_some() {
            self.shared = Some((instance, registry));
        }
        self
    }

    /// What identifies the routes in force: a SHA-256 (hex, 16 digits) of
    /// `routes` and `routing` as serialized.
    pub fn routes_digest(&self) -> String {
        use sha2::Digest;
        let text =
            serde_json::to_vec(&(&self.running.routes, &self.running.routing)).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(&text)[..8])
    }

    /// Reads the file again and applies it, or refuses it whole.
    pub async fn reload(&mut self) -> Result<diff::Diff, ReloadError> {
        let new = GatewayConfig::load(&self.path)?;
        let d = diff::diff(&self.running, &new);
        let fixed = d.fixed();
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(
                fixed.into_iter().map(String::from).collect(),
            ));
        }
        if d.is_empty() {
            return Ok(d);
        }
        // The running host, held as an `Arc` (not an `ArcSwap` guard)
        // across the plugins' checks.
        let running = self.live.load_full().plugins.clone();
        let plugins = crate::plugins::reconfigure(&running, &new)
            .await
            .map_err(ReloadError::Plugins)?;
        if new.log.level != self.running.log.level {
            // Validated by the load; what can fail is the process having
            // no swappable filter, which refuses the reload whole.
            let change =
                telemetry::set_log_level(&new.log.level).map_err(ReloadError::Telemetry)?;
            if change == telemetry::LogLevelChange::OverriddenByRustLog {
                tracing::warn!("log.level changed, but RUST_LOG is set and keeps deciding");
            }
        }
        self.listener.set(&new.public);
        self.live.store(Arc::new(Live::new(&new, plugins)));
        self.failures
            .set_per_minute(new.callers.max_failures_per_minute);
        self.running = new;
        Ok(d)
    }

    /// [`Reloader::reload`], reported: event line, log line and metric.
    /// Whether something changed.
    pub async fn reload_and_report(&mut self, trigger: &str) -> bool {
        let outcome = self.reload().await;
        let changed = outcome.as_ref().is_ok_and(|d| !d.is_empty());
        let result = if outcome.is_ok() { "ok" } else { "failed" };
        crate::metrics::CONFIG_RELOADS
            .get_or_create(&crate::metrics::ResultLabels { result })
            .inc();
        match outcome {
            Ok(d) => {
                tracing::info!(
                    trigger,
                    changed = ?d.fields,
                    routes_added = ?d.routes_added,
                    routes_removed = ?d.routes_removed,
                    routes_changed = ?d.routes_changed,
                    "configuration reloaded"
                );
                emit(json!({
                    "event": "config_reloaded",
                    "trigger": trigger,
                    "path": self.path.display().to_string(),
                    "changed": d.fields,
                    "routes": {
                        "added": d.routes_added,
                        "removed": d.routes_removed,
                        "changed": d.routes_changed,
                    },
                }));
            }
            Err(e) => {
                tracing::error!(
                    trigger,
                    path = %self.path.display(),
                    "configuration reload refused, the running configuration is kept: {e}"
                );
                emit(json!({
                    "event": "config_reload_failed",
                    "trigger": trigger,
                    "path": self.path.display().to_string(),
                    "error": e.to_string(),
                    "fields": e.fields(),
                }));
            }
        }
        changed
    }

    /// After a reload here: the other instances are told.
    async fn announce(&self) {
        let Some((me, registry)) = &self.shared else {
            return;
        };
        let (me, digest) = (me.clone(), self.routes_digest());
        if let Err(e) = registry
            .with_store(move |s| async move { s.announce_reload(&me, &digest).await })
            .await
        {
            tracing::warn!("could not announce this reload to the other instances: {e}");
        }
    }

    /// After reading the file again because `other` announced a reload of
    /// routes with `digest`: says so when this instance's routes differ.
    fn compare(&self, other: &str, digest: &str) {
        let here = self.routes_digest();
        if here != digest {
            tracing::warn!(
                instance = other,
                "instance {other} reloaded routes that differ from this instance's file \
                 (digest {digest}, here {here}): give every instance the same routes"
            );
            emit(json!({
                "event": "config_differs",
                "instance": other,
                "announced": digest,
                "here": here,
            }));
        }
    }
}

/// Starts reloading on SIGHUP and on changes of the configuration file,
/// on a small runtime of its own. `None` when the configuration was not
/// read from a file.
pub fn start(reloader: Option<Reloader>) -> anyhow::Result<Option<Handle>> {
    let Some(reloader) = reloader else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("config-reload")
        .enable_all()
        .build()?;
    // Installed here, before the server starts: from now on a SIGHUP
    // reloads instead of ending the process.
    let hup = runtime.block_on(async { signal(SignalKind::hangup()) })?;
    let seen = stamp(&reloader.path).ok();
    runtime.spawn(run(reloader, hup, seen));
    Ok(Some(Handle { _runtime: runtime }))
}

async fn run(mut reloader: Reloader, mut hup: Signal, mut seen: Option<Stamp>) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let registry = reloader.shared.as_ref().map(|(_, r)| r.clone());
    let announced = || async {
        match &registry {
            Some(r) => r.store().reload_announced().await,
            None => std::future::pending().await,
        }
    };
    loop {
        let (trigger, from) = tokio::select! {
            _ = hup.recv() => ("sighup".to_string(), None),
            (who, digest) = announced() => {
                let me = reloader.shared.as_ref().map(|(me, _)| me.as_str());
                if me == Some(who.as_str()) {
                    continue;
                }
                (format!("announced by {who}"), Some((who, digest)))
            }
            _ = poll.tick() => {
                match stamp(&reloader.path) {
                    // Changed (in place, or replaced by a rename: a new
                    // inode). A missing file is mid-replacement or gone:
                    // the running configuration stays.
                    Ok(now) if Some(now) != seen => {
                        settle(&reloader.path, now).await;
                        ("file".to_string(), None)
                    }
                    _ => continue,
                }
            }
        };
        seen = stamp(&reloader.path).ok();
        let changed = reloader.reload_and_report(&trigger).await;
        match from {
            Some((who, digest)) => reloader.compare(&who, &digest),
            None if changed => reloader.announce().await,
            None => {}
        }
    }
}

/// Waits until `path` has not changed for [`SETTLE`] (at most
/// [`MAX_SETTLE`]).
async fn settle(path: &Path, mut last: Stamp) {
    let deadline = tokio::time::Instant::now() + MAX_SETTLE;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SETTLE).await;
        match stamp(path) {
            Ok(now) if now == last => return,
            Ok(now) => last = now,
            Err(_) => {}
        }
    }
}
