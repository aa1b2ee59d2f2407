//! Loading: compiling a plugin file, checking who it is and that its
//! `init` accepts its configurations, and the host that holds the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{self, PolicyPre};
use crate::chain::ChainEntry;
use crate::{
    clip, file, Failure, FileError, LoadError, PluginRef, PluginsSection, ReplaySet, Sandbox,
    MAX_IDENTITY_CHARS, MAX_REASON_CHARS,
};

/// One compiled version of a plugin file.
pub(crate) struct Version {
    pub(crate) pre: PolicyPre<Sandbox>,
    pub(crate) sha256: String,
    /// What its `identify` said: name (the slot's) and version.
    pub(crate) version: String,
}

/// Who a plugin says it is (`identify`).
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub version: String,
}

/// What identifies a file version cheaply between polls. The inode and
/// change time catch a replacement that keeps size and modification time
/// (`cp -p`, `rsync -a`, tar): those tools cannot set the change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub(crate) modified: Option<SystemTime>,
    pub(crate) changed: (i64, i64),
    pub(crate) inode: (u64, u64),
    pub(crate) len: u64,
}

/// The stamp of the file at `path` now.
pub fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        changed: (m.ctime(), m.ctime_nsec()),
        inode: (m.dev(), m.ino()),
        len: m.len(),
    })
}

/// A loaded plugin, as [`Plugins::views`] shows it.
#[derive(Debug, Clone)]
pub struct PluginView {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub path: String,
    /// Requests it allowed and denied.
    pub allowed: u64,
    pub denied: u64,
    /// Calls that failed, by kind ([`Failure::KINDS`]).
    pub failures: Vec<(&'static str, u64)>,
}

/// One plugin name: its running version, replay set and counters. Survives
/// reloads.
pub struct Slot {
    pub(crate) name: Arc<str>,
    pub(crate) path: PathBuf,
    pub(crate) current: RwLock<Arc<Version>>,
    /// Every configuration routes give this plugin: a new version must
    /// accept them all.
    pub(crate) configs: Vec<String>,
    pub(crate) replay: Arc<ReplaySet>,
    /// The file version last looked at (loaded or rejected).
    pub(crate) seen: Mutex<Stamp>,
    /// This plugin's series, looked up once: the handles share the
    /// registered counters.
    pub(crate) counters: SlotCounters,
}

pub(crate) struct SlotCounters {
    pub(crate) seconds: prometheus_client::metrics::histogram::Histogram,
    pub(crate) allow: prometheus_client::metrics::counter::Counter,
    pub(crate) deny: prometheus_client::metrics::counter::Counter,
}

impl SlotCounters {
    pub(crate) fn new(plugin: &str) -> Self {
        use crate::metrics::{DecisionLabels, PluginLabels, METRICS};
        let decision = |decision| {
            METRICS
                .decisions
                .get_or_create(&DecisionLabels {
                    plugin: plugin.to_string(),
                    decision,
                })
                .clone()
        };
        SlotCounters {
            seconds: METRICS
                .seconds
                .get_or_create(&PluginLabels {
                    plugin: plugin.to_string(),
                })
                .clone(),
            allow: decision("allow"),
            deny: decision("deny"),
        }
    }
}

impl Slot {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn version(&self) -> Arc<Version> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The plugin host: engine, linker, limits and every loaded plugin.
pub struct Plugins {
    pub(crate) engine: Engine,
    pub(crate) limits: PluginsSection,
    pub(crate) timeout: Duration,
    pub(crate) slots: HashMap<String, Arc<Slot>>,
    /// Idle sandboxes across all chain entries; at most half of
    /// `max_sandboxes`, so requests always find room for fresh ones.
    /// Shared with the hosts made by [`Plugins::reconfigure`]: they draw
    /// on the same pooling allocator.
    pub(crate) idle: Arc<AtomicU32>,
}

/// A pooling engine with epoch interruption, async calls and the limits of
/// `cfg`.
pub(crate) fn engine(cfg: &PluginsSection) -> wasmtime::Result<Engine> {
    let n = cfg.max_sandboxes;
    let mut pool = PoolingAllocationConfig::default();
    // A component built by wasm-component-ld has its main module plus a
    // few small adapter modules (shims, fix-ups); leave room for them.
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_core_instances_per_component(8)
        .max_memories_per_component(2)
        .max_tables_per_component(8)
        .max_memory_size(cfg.max_memory_bytes)
        .table_elements(cfg.max_table_elements)
        // Reset a used sandbox by finding its dirty pages (PAGEMAP_SCAN,
        // Linux 6.7+) and rewriting just those, instead of `madvise`:
        // no page faults on reuse and no TLB-shootdown interrupts.
        .pagemap_scan(wasmtime::Enabled::Auto)
        // What plugins normally touch stays resident (their initial memory
        // is 1 MiB); beyond that, memory goes back to the system.
        .linear_memory_keep_resident(cfg.max_memory_bytes.min(2 << 20))
        .table_keep_resident(64 << 10);
    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_reservation(cfg.max_memory_bytes as u64)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0)
        .max_wasm_stack(512 << 10)
        .async_stack_size(1 << 20)
        // Plugins are small (tens of ms each to compile); a compile thread
        // pool would stay resident for nothing (about 10 MiB measured).
        .parallel_compilation(false);
    Engine::new(&c)
}

/// How often the epoch ticks. A running plugin yields to the executor at
/// every tick, so this is the longest slice a spinning plugin takes from
/// the other requests of its proxy thread (measured: with 5 ms slices,
/// four spinning plugins delayed a healthy request on the same thread by
/// half a second; with 1 ms, by a few ms). A normal call (tens of µs)
/// rarely meets a tick.
pub(crate) const TICK: Duration = Duration::from_millis(1);

impl Plugins {
    /// Compiles and initialises every plugin `configs` names (with every
    /// configuration the routes give it), from `<limits.dir>/<name>.wasm`.
    /// Any failure here stops the gateway from starting, naming the
    /// plugin, its file and the plugin's own message.
    pub fn load(
        limits: &PluginsSection,
        configs: HashMap<String, Vec<String>>,
    ) -> Result<Arc<Self>, LoadError> {
        let limits = limits.clone();
        let timeout = limits.call_timeout;
        let engine = engine(&limits).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        // The epoch clock, started before any plugin code runs: without it
        // a plugin whose `identify` or `init` never returns would hang the
        // start instead of meeting `call_timeout`. It stops with the
        // process.
        let clock = engine.clone();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                clock.increment_epoch();
            })
            .map_err(LoadError::Clock)?;
        let mut host = Plugins {
            engine,
            limits,
            timeout,
            slots: HashMap::new(),
            idle: Arc::new(AtomicU32::new(0)),
        };
        if !configs.is_empty() {
            let dir = host.limits.dir.clone().ok_or(LoadError::NoDir)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| LoadError::Engine(e.to_string()))?;
            let mut names: Vec<_> = configs.into_iter().collect();
            names.sort();
            for (name, configs) in names {
                let path = dir.join(format!("{name}.wasm"));
                let slot = rt.block_on(host.new_slot(&name, path, configs, None))?;
                let version = slot.version();
                tracing::info!(
                    plugin = %name, version = %version.version, sha256 = %version.sha256,
                    pinned = host.limits.sha256.contains_key(&name), "plugin loaded"
                );
                crate::history::loaded(&name, &version.version, &version.sha256);
                host.slots.insert(name, slot);
            }
        }
        for pinned in host.limits.sha256.keys() {
            if !host.slots.contains_key(pinned) {
                tracing::warn!(
                    plugin = %pinned,
                    "plugins.sha256 pins a plugin that no route uses"
                );
            }
        }
        Ok(Arc::new(host))
    }

    /// A slot for the plugin `name` in the file `path`: the file's stamp
    /// (what the reloader compares), the version prepared from it (compiled,
    /// checked, `init` run with each of `configs`) and `replay`, or a new
    /// replay set when `None`.
    pub(crate) async fn new_slot(
        &self,
        name: &str,
        path: PathBuf,
        configs: Vec<String>,
        replay: Option<Arc<ReplaySet>>,
    ) -> Result<Arc<Slot>, LoadError> {
        let refused = |error| LoadError::Plugin {
            name: name.to_string(),
            path: path.display().to_string(),
            error: Box::new(error),
        };
        let seen = stamp(&path).map_err(|error| {
            refused(FileError::Unreadable {
                path: path.display().to_string(),
                error,
            })
        })?;
        let name: Arc<str> = name.into();
        let replay = replay.unwrap_or_else(|| {
            Arc::new(ReplaySet::new(
                name.clone(),
                self.limits.max_replay_keys,
                self.limits.replay_share_per_org,
            ))
        });
        let version = self
            .prepare(&name, &path, &configs, &replay)
            .await
            .map_err(refused)?;
        Ok(Arc::new(Slot {
            counters: SlotCounters::new(&name),
            name,
            path,
            current: RwLock::new(Arc::new(version)),
            configs,
            replay,
            seen: Mutex::new(seen),
        }))
    }

    /// The chain for a list of plugin references (all loaded by [`load`]).
    ///
    /// [`load`]: Plugins::load
    ///
    /// # Panics
    ///
    /// On a name `load` did not load: a chain must never shrink silently.
    pub fn chain(&self, refs: &[PluginRef]) -> Arc<[ChainEntry]> {
        refs.iter()
            .map(|r| ChainEntry {
                slot: self
                    .slots
                    .get(&r.name)
                    .unwrap_or_else(|| panic!("plugin `{}` was not loaded", r.name))
                    .clone(),
                config: r.config_text().into(),
                idle: Mutex::new(Vec::new()),
                idle_total: self.idle.clone(),
            })
            .collect()
    }

    /// A loaded plugin by name.
    pub fn slot(&self, name: &str) -> Option<&Arc<Slot>> {
        self.slots.get(name)
    }

    /// Every loaded plugin as the dashboard shows it, by name: the version
    /// serving, its file and what it decided since the process started.
    pub fn views(&self) -> Vec<PluginView> {
        use crate::metrics::{FailureLabels, METRICS};
        let mut views: Vec<PluginView> = self
            .slots
            .values()
            .map(|slot| {
                let v = slot.version();
                let failures = Failure::KINDS
                    .iter()
                    .map(|&kind| {
                        let labels = FailureLabels {
                            plugin: slot.name.to_string(),
                            kind,
                        };
                        (kind, METRICS.failures.get(&labels).map_or(0, |c| c.get()))
                    })
                    .collect();
                PluginView {
                    name: slot.name.to_string(),
                    version: v.version.clone(),
                    sha256: v.sha256.clone(),
                    path: slot.path.display().to_string(),
                    allowed: slot.counters.allow.get(),
                    denied: slot.counters.deny.get(),
                    failures,
                }
            })
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// Reads, compiles and checks one file: it must be private and match
    /// its pin ([`file::read`]), be a component that exports `policy`,
    /// imports nothing but `tunnel:policy/host`, identifies as `name`, and
    /// whose `init` accepts every configuration in `configs`.
    pub(crate) async fn prepare(
        &self,
        name: &Arc<str>,
        path: &Path,
        configs: &[String],
        replay: &Arc<ReplaySet>,
    ) -> Result<Version, FileError> {
        let pin = self.limits.sha256.get(&**name).map(String::as_str);
        let file = file::read(path, self.limits.max_file_bytes, pin)?;
        let (_, version) = self
            .prepare_bytes(name, Some(name), file, configs, replay)
            .await?;
        Ok(version)
    }

    /// Compiles and checks a file's bytes: a component that exports
    /// `policy`, imports nothing but `tunnel:policy/host`, identifies as
    /// `expect` (when given), and whose `init` accepts every configuration
    /// in `configs`. Returns who the plugin says it is, with the compiled
    /// version. `label` tags the sandboxes' log lines.
    pub(crate) async fn prepare_bytes(
        &self,
        label: &Arc<str>,
        expect: Option<&str>,
        file: file::PluginFile,
        configs: &[String],
        replay: &Arc<ReplaySet>,
    ) -> Result<(Identity, Version), FileError> {
        let file::PluginFile { bytes, sha256 } = file;
        if !bytes.starts_with(b"\0asm") {
            return Err(FileError::NotWasm);
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(FileError::CoreModule);
        }
        let component = Component::new(&self.engine, &bytes)
            .map_err(|e| FileError::Invalid(format!("{e:#}")))?;
        let mut linker: Linker<Sandbox> = Linker::new(&self.engine);
        bindings::Policy::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)
            .map_err(|e| FileError::Engine(format!("{e:#}")))?;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            let detail = format!("{e:#}");
            let ours = component
                .component_type()
                .imports(&self.engine)
                .map(|(n, _)| n.to_string())
                .find(|n| n.starts_with("tunnel:policy/"));
            match ours {
                Some(import) => FileError::OtherWit { import, detail },
                None => FileError::Imports(detail),
            }
        })?;
        let pre = PolicyPre::new(pre).map_err(|e| FileError::Exports(format!("{e:#}")))?;
        let claimed = self.identify(label, &pre, replay).await?;
        // Checked before `init` runs with configurations written for
        // another plugin.
        if let Some(expect) = expect {
            if claimed.name != expect {
                return Err(FileError::OtherPlugin {
                    claimed: claimed.name,
                    version: claimed.version,
                    expected: expect.to_string(),
                });
            }
        }
        let version = Version {
            pre,
            sha256,
            version: claimed.version.clone(),
        };
        self.init_all(label, &version, configs, replay).await?;
        Ok((claimed, version))
    }

    /// Runs `init` of `version` with each of `configs`, each in a fresh
    /// sandbox within the call deadline; the first refusal is the error,
    /// with the plugin's own message.
    pub(crate) async fn init_all(
        &self,
        name: &Arc<str>,
        version: &Version,
        configs: &[String],
        replay: &Arc<ReplaySet>,
    ) -> Result<(), FileError> {
        for config in configs {
            let mut store = self.store(name, replay, Instant::now() + self.timeout);
            let policy = version
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| self.failed("instantiate", e, &store))?;
            match policy.call_init(&mut store, config).await {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => return Err(FileError::InitRefused(clip(msg, MAX_REASON_CHARS))),
                Err(e) => return Err(self.failed("init", e, &store)),
            }
        }
        Ok(())
    }

    /// Asks a compiled file who it is (name and version, clipped).
    async fn identify(
        &self,
        name: &Arc<str>,
        pre: &PolicyPre<Sandbox>,
        replay: &Arc<ReplaySet>,
    ) -> Result<Identity, FileError> {
        let mut store = self.store(name, replay, Instant::now() + self.timeout);
        let policy = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.failed("instantiate", e, &store))?;
        let id = policy
            .call_identify(&mut store)
            .await
            .map_err(|e| self.failed("identify", e, &store))?;
        Ok(Identity {
            name: clip(id.name, MAX_IDENTITY_CHARS),
            version: clip(id.version, MAX_IDENTITY_CHARS),
        })
    }

    /// A call that failed while loading, classified.
    fn failed(
        &self,
        during: &'static str,
        e: wasmtime::Error,
        store: &wasmtime::Store<Sandbox>,
    ) -> FileError {
        FileError::Failed {
            during,
            failure: self.classify(e, store),
        }
    }
}
