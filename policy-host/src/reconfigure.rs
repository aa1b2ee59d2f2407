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
use std::time::SystemTime;

use crate::load::{Slot, SlotCounters};
use crate::{LoadError, Plugins, PluginsSection, Stamp};

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
    /// A host for new settings `limits` and plugin configurations
    /// `configs` (already validated), built beside this one; see
    /// the module documentation. Settings the engine fixes
    /// (`plugins.max_memory_bytes`, `max_table_elements`, `max_sandboxes`),
    /// the replay sets' bounds and the reload interval are this host's:
    /// the caller refuses a configuration that changes them.
    pub async fn reconfigure(
        &self,
        limits: &PluginsSection,
        configs: HashMap<String, Vec<String>>,
    ) -> Result<Arc<Plugins>, LoadError> {
        let limits = limits.clone();
        let mut host = Plugins {
            engine: self.engine.clone(),
            timeout: limits.call_timeout,
            limits,
            slots: HashMap::new(),
            idle: self.idle.clone(),
        };
        let mut names: Vec<_> = configs.into_iter().collect();
        names.sort();
        let mut loaded = Vec::new();
        for (name, configs) in names {
            let dir = host.limits.dir.clone().ok_or(LoadError::NoDir)?;
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
                        .map_err(|error| LoadError::NewConfig {
                            name: name.clone(),
                            path: path.display().to_string(),
                            error: Box::new(error),
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
                    let replay = old.map(|o| o.replay.clone());
                    let slot = host.new_slot(&name, path, configs, replay).await?;
                    let version = slot.version();
                    loaded.push((
                        name.clone(),
                        version.version.clone(),
                        version.sha256.clone(),
                    ));
                    slot
                }
            };
            host.slots.insert(slot.name.to_string(), slot);
        }
        // Reported only once the whole host is ready: a reload refused
        // later loads nothing.
        for (name, version, sha256) in loaded {
            tracing::info!(plugin = %name, version = %version, sha256 = %sha256, "plugin loaded");
            crate::history::loaded(&name, &version, &sha256);
        }
        Ok(Arc::new(host))
    }
}
