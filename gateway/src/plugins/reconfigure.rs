//! A plugin host for a new configuration, made while the running one
//! serves (a live reload of the gateway's configuration, see
//! [`crate::reload`]).
//!
//! The new host shares the running one's engine (so its pooling allocator
//! and epoch clock), and each plugin's replay set, so nonces seen before
//! the reload are still refused after it. A plugin whose file, pin and
//! configurations are unchanged keeps its slot as it is. One whose
//! configurations changed keeps its running version, which must accept
//! every new configuration (`init`, as at start). A plugin new to the
//! configuration, or whose folder or pin changed, is read, compiled and
//! checked from its file exactly as at start. Any refusal fails the whole
//! reconfiguration, naming the plugin and carrying its own message, and
//! the running host is untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::json;

use super::{stamp, Plugins, ReplaySet, Slot, SlotCounters, Stamp};
use crate::config::GatewayConfig;
use crate::events::emit;

/// Every configuration text each plugin is given, by plugin name.
pub(super) fn chain_configs(cfg: &GatewayConfig) -> HashMap<String, Vec<String>> {
    let mut configs: HashMap<String, Vec<String>> = HashMap::new();
    let chains = cfg
        .routes
        .iter()
        .map(|r| &r.plugins)
        .chain(std::iter::once(&cfg.routing.plugins));
    for chain in chains {
        for p in chain {
            let list = configs.entry(p.name.clone()).or_default();
            let text = p.config_text();
            if !list.contains(&text) {
                list.push(text);
            }
        }
    }
    configs
}

/// The configurations the routes of `cfg` give plugin `name` (each once).
pub fn route_configs(cfg: &GatewayConfig, name: &str) -> Vec<String> {
    chain_configs(cfg).remove(name).unwrap_or_default()
}

/// The host keeps organizations apart itself; only an explicit opt-out
/// leaves that to the chain, which is worth a warning.
pub(super) fn warn_cross_org(cfg: &GatewayConfig) {
    let opted_out = cfg
        .routes
        .iter()
        .filter(|r| r.cross_org)
        .map(|r| (r.name.as_str(), &r.plugins))
        .chain(
            cfg.routing
                .cross_org
                .then_some(("*wildcard*", &cfg.routing.plugins)),
        );
    for (route, chain) in opted_out {
        tracing::warn!(
            route,
            org_check = chain.iter().any(|p| p.name == "org-check"),
            "cross_org = true: callers of any organization reach this route's tunnel \
             unless its plugin chain refuses them"
        );
    }
}

/// A stamp no file has: the file reloader looks at a slot marked with it
/// again on its next round (and swaps nothing when the file is the
/// running version).
const UNSEEN: Stamp = Stamp {
    modified: Some(SystemTime::UNIX_EPOCH),
    changed: (i64::MIN, 0),
    inode: (0, 0),
    len: u64::MAX,
};

impl Plugins {
    /// A host for `cfg` (already validated), built beside this one; see
    /// the module documentation. Settings the engine fixes
    /// (`plugins.max_memory_bytes`, `max_table_elements`, `max_sandboxes`),
    /// the replay sets' bounds and the reload interval are this host's:
    /// the caller refuses a configuration that changes them.
    pub async fn reconfigure(&self, cfg: &GatewayConfig) -> anyhow::Result<Arc<Plugins>> {
        let limits = cfg.plugins.clone();
        let mut host = Plugins {
            engine: self.engine.clone(),
            timeout: Duration::from_millis(limits.call_timeout_ms),
            limits,
            slots: HashMap::new(),
            idle: self.idle.clone(),
        };
        let mut names: Vec<_> = chain_configs(cfg).into_iter().collect();
        names.sort();
        let mut loaded = Vec::new();
        for (name, configs) in names {
            let dir = host
                .limits
                .dir
                .clone()
                .context("plugins.dir is required when routes list plugins")?;
            let path = dir.join(format!("{name}.wasm"));
            let old = self.slots.get(&name);
            let same_file = old.is_some_and(|o| {
                o.path == path && self.limits.sha256.get(&name) == host.limits.sha256.get(&name)
            });
            let slot = match old {
                Some(old) if same_file && old.configs == configs => old.clone(),
                Some(old) if same_file => {
                    let version = old.version();
                    host.init_all(&old.name, &version, &configs, &old.replay)
                        .await
                        .with_context(|| {
                            format!(
                                "plugin `{name}` ({}) with its new configuration",
                                path.display()
                            )
                        })?;
                    Arc::new(Slot {
                        name: old.name.clone(),
                        path,
                        current: RwLock::new(version),
                        configs,
                        replay: old.replay.clone(),
                        seen: Mutex::new(UNSEEN),
                        counters: SlotCounters::new(&name),
                    })
                }
                _ => {
                    let seen = stamp(&path)
                        .with_context(|| format!("plugin `{name}`: reading {}", path.display()))?;
                    let name: Arc<str> = name.into();
                    let replay = old.map_or_else(
                        || {
                            Arc::new(ReplaySet::new(
                                name.clone(),
                                host.limits.max_replay_keys,
                                host.limits.replay_share_per_org,
                            ))
                        },
                        |o| o.replay.clone(),
                    );
                    let version = host
                        .prepare(&name, &path, &configs, &replay)
                        .await
                        .with_context(|| format!("plugin `{name}` ({})", path.display()))?;
                    loaded.push((
                        name.clone(),
                        version.version.clone(),
                        version.sha256.clone(),
                    ));
                    Arc::new(Slot {
                        counters: SlotCounters::new(&name),
                        name,
                        path,
                        current: RwLock::new(Arc::new(version)),
                        configs,
                        replay,
                        seen: Mutex::new(seen),
                    })
                }
            };
            host.slots.insert(slot.name.to_string(), slot);
        }
        // Reported only once the whole host is ready: a reload refused
        // later loads nothing.
        for (name, version, sha256) in loaded {
            tracing::info!(plugin = %name, version = %version, sha256 = %sha256, "plugin loaded");
            emit(json!({
                "event": "plugin_loaded", "plugin": &*name,
                "version": version, "sha256": sha256,
            }));
        }
        warn_cross_org(cfg);
        Ok(Arc::new(host))
    }
}
