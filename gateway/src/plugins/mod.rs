//! The policy plugin host: WebAssembly components implementing
//! `wit/policy.wit` (`tunnel:policy@0.2.0`), run by wasmtime.
//!
//! - A file is read only from a folder, and only as a file, that group and
//!   others cannot write; its SHA-256 must match `plugins.sha256` when
//!   pinned ([`file`]). Its component must say, through `identify`, that it
//!   is the plugin its file name says: `authz.wasm` copied over
//!   `org-check.wasm` is refused, at load and at reload.
//! - Each plugin file is compiled once into an [`InstancePre`]-backed
//!   `PolicyPre`. A sandbox (a [`Store`] and an instance from the pooling
//!   allocator) is initialised once with `init(config)` and then serves up
//!   to `max_requests_per_sandbox` requests of its route, one at a time.
//!   A sandbox that fails, grows its memory or reaches that count is thrown
//!   away, so a trapped or bloated instance never sees another request;
//!   idle sandboxes wait in a small pool per chain entry.
//! - `init` also runs at load, where an error refuses the file with the
//!   plugin's message.
//! - Every call is bounded: an epoch deadline (the plugin yields to the
//!   executor at every tick, so a spinning plugin does not hold a proxy
//!   thread, and is stopped at the deadline), a memory and a table limit, a
//!   fixed number of sandboxes. Any failure denies the request (fail closed).
//! - Plugins import only `tunnel:policy/host`: no WASI, no files, no network.
//! - [`Plugins::spawn_reloader`] watches the folder: a replaced file is
//!   compiled and initialised with every configuration that uses it before
//!   it replaces the running version; a file that fails keeps the previous
//!   version serving and is reported.
//! - The replay set plugins reach through `insert-if-absent` is scoped by
//!   route and tunnel and shared fairly between organizations ([`replay`]).

mod candidate;
mod checks;
mod file;
mod reconfigure;
pub mod replay;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use serde_json::json;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap, UpdateDeadline,
};

use crate::config::{GatewayConfig, PluginRef, PluginsSection};
use crate::events::emit;
use checks::{check_denial, check_edits};
pub use reconfigure::route_configs;
use reconfigure::{chain_configs, warn_cross_org};

/// Bindings generated from `wit/policy.wit`, once for the whole gateway.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        exports: { default: async },
    });
}

use bindings::tunnel::policy::host::{self as wit_host, Level};
pub use bindings::tunnel::policy::types::{
    Context as PolicyContext, Decision, Denial, Header as WitHeader, HeaderEdit,
    Request as PolicyRequest,
};
use bindings::PolicyPre;
pub use candidate::Candidate;
pub use replay::{ReplaySet, Scope};

/// The WIT package this gateway hosts (`wit/policy.wit`).
pub const WIT_PACKAGE: &str = "tunnel:policy@0.2.0";

/// Longest denial reason kept for the logs.
const MAX_REASON_CHARS: usize = 512;
/// Most `log` calls one sandbox may make; more are dropped.
const MAX_LOG_LINES: u32 = 8;
/// Longest logged plugin message.
const MAX_LOG_CHARS: usize = 1024;
/// Longest plugin name or version kept from `identify`.
const MAX_IDENTITY_CHARS: usize = 128;

/// Why a plugin could not decide. Each denies the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The plugin trapped (panic, `unreachable`, stack overflow…).
    Trap(String),
    /// The plugin ran past `plugins.call_timeout_ms`.
    Deadline(Duration),
    /// The plugin tried to grow its memory past `plugins.max_memory_bytes`.
    Memory(usize),
    /// Every sandbox slot was in use.
    Busy,
    /// `init` refused the route's configuration in a request's sandbox.
    Init(String),
    /// The plugin answered something the gateway will not apply.
    Invalid(String),
}

impl Failure {
    /// Status and body sent to the caller.
    pub fn response(&self, plugin: &str) -> (u16, String) {
        match self {
            Failure::Trap(_) => (500, format!("policy plugin `{plugin}` failed")),
            Failure::Deadline(d) => (
                503,
                format!(
                    "policy plugin `{plugin}` did not decide within {} ms",
                    d.as_millis()
                ),
            ),
            Failure::Memory(_) => (
                500,
                format!("policy plugin `{plugin}` exceeded its memory limit"),
            ),
            Failure::Busy => (503, "policy sandboxes are all busy; retry shortly".into()),
            Failure::Init(_) => (
                500,
                format!("policy plugin `{plugin}` refused its configuration"),
            ),
            Failure::Invalid(_) => (
                500,
                format!("policy plugin `{plugin}` returned an invalid decision"),
            ),
        }
    }

    /// Short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap(_) => "trap",
            Failure::Deadline(_) => "deadline",
            Failure::Memory(_) => "memory",
            Failure::Busy => "busy",
            Failure::Init(_) => "init",
            Failure::Invalid(_) => "invalid",
        }
    }
}

impl std::error::Error for Failure {}

/// `s` cut to at most `max` bytes on a character boundary.
fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Trap(t) => write!(f, "trapped: {t}"),
            Failure::Deadline(d) => write!(f, "ran past its {} ms deadline", d.as_millis()),
            Failure::Memory(m) => write!(f, "tried to grow memory past {m} bytes"),
            Failure::Busy => write!(f, "no free sandbox"),
            Failure::Init(m) => write!(f, "init refused the configuration: {m}"),
            Failure::Invalid(m) => write!(f, "invalid decision: {m}"),
        }
    }
}

/// The host state of one sandbox (one plugin instance with one route's
/// configuration), reset at the start of every request it serves.
pub struct Sandbox {
    plugin: Arc<str>,
    trace_id: String,
    replay: Arc<ReplaySet>,
    /// The request being judged, for the replay set's scope; empty route
    /// outside a request (`init`), where inserts are refused.
    scope: Scope,
    max_memory: usize,
    max_table: usize,
    memory_hit: bool,
    logs_left: u32,
    /// When the current call must end.
    deadline: Instant,
    /// Set once `init` has run: from then on, growing memory or a table
    /// retires the sandbox after its current request.
    ready: bool,
    /// Grew after `init`: do not reuse.
    grew: bool,
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_hit = true;
            return Ok(false);
        }
        self.grew |= self.ready;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grew |= self.ready;
        Ok(desired <= self.max_table)
    }
}

impl wit_host::Host for Sandbox {
    fn log(&mut self, level: Level, message: String) {
        if self.logs_left == 0 {
            return;
        }
        self.logs_left -= 1;
        let msg = clip(message, MAX_LOG_CHARS);
        // Debug formatting escapes newlines: a plugin cannot forge log lines.
        let (plugin, trace_id) = (&*self.plugin, self.trace_id.as_str());
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Info => tracing::info!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Error => tracing::error!(target: "plugin", plugin, trace_id, "{msg:?}"),
        }
    }

    fn now(&mut self) -> (u64, u32) {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        (d.as_secs(), d.subsec_nanos())
    }

    fn insert_if_absent(&mut self, key: String, ttl_secs: u32) -> bool {
        self.replay.insert_if_absent(&self.scope, &key, ttl_secs)
    }
}

impl bindings::tunnel::policy::types::Host for Sandbox {}

/// One compiled version of a plugin file.
struct Version {
    pre: PolicyPre<Sandbox>,
    sha256: String,
    /// What its `identify` said: name (the slot's) and version.
    version: String,
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
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: (u64, u64),
    len: u64,
}

pub(crate) fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        changed: (m.ctime(), m.ctime_nsec()),
        inode: (m.dev(), m.ino()),
        len: m.len(),
    })
}

/// One plugin name: its running version, replay set and counters. Survives
/// reloads.
pub struct Slot {
    name: Arc<str>,
    path: PathBuf,
    current: RwLock<Arc<Version>>,
    /// Every configuration routes give this plugin: a new version must
    /// accept them all.
    configs: Vec<String>,
    replay: Arc<ReplaySet>,
    /// The file version last looked at (loaded or rejected).
    seen: Mutex<Stamp>,
    /// This plugin's series, looked up once: the handles share the
    /// registered counters.
    counters: SlotCounters,
}

struct SlotCounters {
    seconds: prometheus_client::metrics::histogram::Histogram,
    allow: prometheus_client::metrics::counter::Counter,
    deny: prometheus_client::metrics::counter::Counter,
}

impl SlotCounters {
    fn new(plugin: &str) -> Self {
        use crate::metrics::{DecisionLabels, PluginLabels, METRICS};
        let decision = |decision| {
            METRICS
                .plugin_decisions
                .get_or_create(&DecisionLabels {
                    plugin: plugin.to_string(),
                    decision,
                })
                .clone()
        };
        SlotCounters {
            seconds: METRICS
                .plugin_seconds
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

    fn version(&self) -> Arc<Version> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One plugin in a route's chain, with the route's configuration for it
/// and its idle initialised sandboxes.
pub struct ChainEntry {
    pub slot: Arc<Slot>,
    pub config: Arc<str>,
    idle: Mutex<Vec<Warm>>,
    /// The host's count of idle sandboxes, shared by every configuration
    /// generation: an entry retired by a live reload gives its idle
    /// sandboxes (and their pool slots) back when it is dropped.
    idle_total: Arc<AtomicU32>,
}

impl Drop for ChainEntry {
    fn drop(&mut self) {
        let n = self.idle.get_mut().map_or(0, |v| v.len()) as u32;
        self.idle_total.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Most idle sandboxes kept per chain entry: calls do not wait inside a
/// plugin, so about one per proxy thread is ever in use.
const MAX_IDLE_PER_ENTRY: usize = 8;

/// An initialised sandbox between requests.
struct Warm {
    /// The plugin version it was made from: a reload retires it.
    version: Arc<Version>,
    store: Store<Sandbox>,
    policy: bindings::Policy,
    /// Requests served so far.
    served: u32,
}

/// The result of a route's chain.
pub enum Verdict {
    /// Forward, after applying these edits in order.
    Allow(Vec<HeaderEdit>),
    /// A plugin denied: answer with its denial.
    Deny { plugin: Arc<str>, denial: Denial },
    /// A plugin could not decide: answer with the failure's status.
    Fail { plugin: Arc<str>, failure: Failure },
}

/// The plugin host: engine, linker, limits and every loaded plugin.
pub struct Plugins {
    engine: Engine,
    limits: PluginsSection,
    timeout: Duration,
    slots: HashMap<String, Arc<Slot>>,
    /// Idle sandboxes across all chain entries; at most half of
    /// `max_sandboxes`, so requests always find room for fresh ones.
    /// Shared with the hosts made by [`Plugins::reconfigure`]: they draw
    /// on the same pooling allocator.
    idle: Arc<AtomicU32>,
}

/// A pooling engine with epoch interruption, async calls and the limits of
/// `cfg`.
fn engine(cfg: &PluginsSection) -> anyhow::Result<Engine> {
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
    Ok(Engine::new(&c)?)
}

/// How often the epoch ticks. A running plugin yields to the executor at
/// every tick, so this is the longest slice a spinning plugin takes from
/// the other requests of its proxy thread (measured: with 5 ms slices,
/// four spinning plugins delayed a healthy request on the same thread by
/// half a second; with 1 ms, by a few ms). A normal call (tens of µs)
/// rarely meets a tick.
const TICK: Duration = Duration::from_millis(1);

impl Plugins {
    /// Compiles and initialises every plugin the routes of `cfg` name.
    /// Any failure here stops the gateway from starting, naming the
    /// plugin, the route and the plugin's own message.
    pub fn load(cfg: &GatewayConfig) -> anyhow::Result<Arc<Self>> {
        let limits = cfg.plugins.clone();
        let timeout = Duration::from_millis(limits.call_timeout_ms);
        let engine = engine(&limits).context("starting the plugin engine")?;

        let configs = chain_configs(cfg);
        warn_cross_org(cfg);
        let mut host = Plugins {
            engine,
            limits,
            timeout,
            slots: HashMap::new(),
            idle: Arc::new(AtomicU32::new(0)),
        };
        if !configs.is_empty() {
            let dir = host
                .limits
                .dir
                .clone()
                .context("plugins.dir is required when routes list plugins")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut names: Vec<_> = configs.into_iter().collect();
            names.sort();
            for (name, configs) in names {
                let path = dir.join(format!("{name}.wasm"));
                let seen = stamp(&path)
                    .with_context(|| format!("plugin `{name}`: reading {}", path.display()))?;
                let name: Arc<str> = name.into();
                let replay = Arc::new(ReplaySet::new(
                    name.clone(),
                    host.limits.max_replay_keys,
                    host.limits.replay_share_per_org,
                ));
                let version = rt
                    .block_on(host.prepare(&name, &path, &configs, &replay))
                    .with_context(|| format!("plugin `{name}` ({})", path.display()))?;
                tracing::info!(
                    plugin = %name, version = %version.version, sha256 = %version.sha256,
                    pinned = host.limits.sha256.contains_key(&*name), "plugin loaded"
                );
                emit(json!({
                    "event": "plugin_loaded", "plugin": &*name,
                    "version": version.version, "sha256": version.sha256,
                }));
                host.slots.insert(
                    name.to_string(),
                    Arc::new(Slot {
                        counters: SlotCounters::new(&name),
                        name,
                        path,
                        current: RwLock::new(Arc::new(version)),
                        configs,
                        replay,
                        seen: Mutex::new(seen),
                    }),
                );
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
        let host = Arc::new(host);
        let engine = host.engine.clone();
        let tick = TICK;
        // The epoch clock; it stops with the process.
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(tick);
                engine.increment_epoch();
            })?;
        Ok(host)
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

    /// Reads, compiles and checks one file: it must be private and match
    /// its pin ([`file::read`]), be a component that exports `policy`,
    /// imports nothing but `tunnel:policy/host`, identifies as `name`, and
    /// whose `init` accepts every configuration in `configs`.
    async fn prepare(
        &self,
        name: &Arc<str>,
        path: &Path,
        configs: &[String],
        replay: &Arc<ReplaySet>,
    ) -> anyhow::Result<Version> {
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
    async fn prepare_bytes(
        &self,
        label: &Arc<str>,
        expect: Option<&str>,
        file: file::PluginFile,
        configs: &[String],
        replay: &Arc<ReplaySet>,
    ) -> anyhow::Result<(Identity, Version)> {
        let file::PluginFile { bytes, sha256 } = file;
        anyhow::ensure!(
            bytes.starts_with(b"\0asm"),
            "not a valid WebAssembly component: the file does not start with `\\0asm`"
        );
        anyhow::ensure!(
            bytes.get(4..8) != Some(&[1, 0, 0, 0]),
            "not a valid WebAssembly component but a core module: build the plugin for \
             wasm32-wasip2 (see plugins/README.md)"
        );
        let component = Component::new(&self.engine, &bytes)
            .map_err(anyhow::Error::from)
            .context("not a valid WebAssembly component")?;
        let mut linker: Linker<Sandbox> = Linker::new(&self.engine);
        bindings::Policy::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)?;
        let pre = match linker.instantiate_pre(&component) {
            Ok(pre) => pre,
            Err(e) => {
                let engine = &self.engine;
                let ours = component
                    .component_type()
                    .imports(engine)
                    .map(|(n, _)| n.to_string())
                    .find(|n| n.starts_with("tunnel:policy/"));
                let e = anyhow::Error::from(e);
                return Err(match ours {
                    Some(import) => e.context(format!(
                        "the component imports `{import}`: built against another version of \
                         the WIT than this gateway's {WIT_PACKAGE}; rebuild it with the \
                         current plugins/sdk"
                    )),
                    None => e.context(
                        "the component needs imports the gateway does not give plugins \
                         (only tunnel:policy/host: no WASI, no files, no network)",
                    ),
                });
            }
        };
        let pre = PolicyPre::new(pre)
            .map_err(anyhow::Error::from)
            .context(format!(
                "the component does not export the `policy` world of {WIT_PACKAGE} \
             (init, on-request, identify): built against an older WIT? Rebuild it \
             with the current plugins/sdk"
            ))?;
        let claimed = self.identify(label, &pre, replay).await?;
        // Checked before `init` runs with configurations written for
        // another plugin.
        if let Some(expect) = expect {
            anyhow::ensure!(
                claimed.name == expect,
                "the file holds the plugin {:?} (version {:?}), not {expect:?}: a file \
                 <name>.wasm must hold the plugin <name>",
                claimed.name,
                claimed.version,
            );
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
    async fn init_all(
        &self,
        name: &Arc<str>,
        version: &Version,
        configs: &[String],
        replay: &Arc<ReplaySet>,
    ) -> anyhow::Result<()> {
        for config in configs {
            let mut store = self.store(name, replay, Instant::now() + self.timeout);
            let policy = version
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| anyhow::Error::new(self.classify(e, &store)))?;
            match policy.call_init(&mut store, config).await {
                Ok(Ok(())) => {}
                Ok(Err(msg)) => anyhow::bail!(
                    "init refused its configuration: {:?}",
                    clip(msg, MAX_REASON_CHARS)
                ),
                Err(e) => return Err(anyhow::Error::new(self.classify(e, &store)).context("init")),
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
    ) -> anyhow::Result<Identity> {
        let mut store = self.store(name, replay, Instant::now() + self.timeout);
        let policy = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow::Error::new(self.classify(e, &store)))?;
        let id = policy
            .call_identify(&mut store)
            .await
            .map_err(|e| anyhow::Error::new(self.classify(e, &store)).context("identify"))?;
        Ok(Identity {
            name: clip(id.name, MAX_IDENTITY_CHARS),
            version: clip(id.version, MAX_IDENTITY_CHARS),
        })
    }

    fn store(
        &self,
        plugin: &Arc<str>,
        replay: &Arc<ReplaySet>,
        deadline: Instant,
    ) -> Store<Sandbox> {
        let mut store = Store::new(
            &self.engine,
            Sandbox {
                plugin: plugin.clone(),
                trace_id: String::new(),
                replay: replay.clone(),
                scope: Scope::default(),
                max_memory: self.limits.max_memory_bytes,
                max_table: self.limits.max_table_elements,
                memory_hit: false,
                logs_left: MAX_LOG_LINES,
                deadline,
                ready: false,
                grew: false,
            },
        );
        store.limiter(|s| s);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|cx| {
            if Instant::now() >= cx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // tokio's own yield: a task that merely wakes itself is run
                // again at once, ahead of the others, and would not yield.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store
    }

    fn classify(&self, e: wasmtime::Error, store: &Store<Sandbox>) -> Failure {
        if store.data().memory_hit {
            Failure::Memory(self.limits.max_memory_bytes)
        } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            Failure::Deadline(self.timeout)
        } else if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            Failure::Busy
        } else if let Some(t) = e.downcast_ref::<Trap>() {
            Failure::Trap(t.to_string())
        } else {
            Failure::Trap(format!("{e:#}"))
        }
    }

    /// A new sandbox of the running version, initialised with the entry's
    /// configuration, within `deadline`.
    async fn warm_up(&self, entry: &ChainEntry, deadline: Instant) -> Result<Warm, Failure> {
        let slot = &entry.slot;
        let version = slot.version();
        let mut store = self.store(&slot.name, &slot.replay, deadline);
        let policy = match version.pre.instantiate_async(&mut store).await {
            Ok(p) => p,
            Err(e) => return Err(self.classify(e, &store)),
        };
        match policy.call_init(&mut store, &entry.config).await {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err(Failure::Init(msg)),
            Err(e) => return Err(self.classify(e, &store)),
        }
        store.data_mut().ready = true;
        Ok(Warm {
            version,
            store,
            policy,
            served: 0,
        })
    }

    /// An idle sandbox of the running version, if the entry has one.
    /// Sandboxes of a replaced version are dropped on the way.
    fn take_idle(&self, entry: &ChainEntry) -> Option<Warm> {
        let current = entry.slot.version();
        let mut idle = entry.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = idle.pop() {
            self.idle.fetch_sub(1, Ordering::Relaxed);
            if Arc::ptr_eq(&w.version, &current) {
                return Some(w);
            }
        }
        None
    }

    /// Keeps `warm` for the entry's next request, unless it has served its
    /// count, grew, or the idle pools are full.
    fn put_idle(&self, entry: &ChainEntry, warm: Warm) {
        let data = warm.store.data();
        // A plugin that met the memory limit and carried on is in a state
        // of its own making (a half-built structure): not reused.
        if warm.served >= self.limits.max_requests_per_sandbox || data.grew || data.memory_hit {
            return;
        }
        let mut idle = entry.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= MAX_IDLE_PER_ENTRY {
            return;
        }
        let cap = self.limits.max_sandboxes / 2;
        if self
            .idle
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
        {
            idle.push(warm);
        }
    }

    /// Runs one plugin on one request: in an idle sandbox of the entry, or
    /// a new one. Setting up a new sandbox counts against the deadline. A
    /// sandbox that fails is dropped (and so is one whose call is
    /// abandoned midway: the future owns it).
    async fn call(
        &self,
        entry: &ChainEntry,
        ctx: &PolicyContext,
        req: &PolicyRequest,
    ) -> Result<Decision, Failure> {
        let deadline = Instant::now() + self.timeout;
        let mut warm = match self.take_idle(entry) {
            Some(w) => w,
            None => self.warm_up(entry, deadline).await?,
        };
        let data = warm.store.data_mut();
        data.deadline = deadline;
        data.trace_id.clear();
        data.trace_id.push_str(&ctx.trace_id);
        data.logs_left = MAX_LOG_LINES;
        // A limit hit in an earlier request (which the plugin survived) says
        // nothing about this one's failure.
        data.memory_hit = false;
        let scope = &mut data.scope;
        for (to, from) in [
            (&mut scope.route, &ctx.route),
            (&mut scope.tunnel_id, &ctx.tunnel_id),
            (&mut scope.caller_org, &ctx.caller_org),
        ] {
            to.clear();
            to.push_str(from);
        }
        warm.store.set_epoch_deadline(1);
        match warm.policy.call_on_request(&mut warm.store, ctx, req).await {
            Ok(d) => {
                warm.served += 1;
                self.put_idle(entry, warm);
                Ok(d)
            }
            Err(e) => Err(self.classify(e, &warm.store)),
        }
    }

    /// Runs a route's chain: plugins in order, the first deny (or failure)
    /// wins, header edits accumulate.
    ///
    /// Each call is a `policy plugin` span under `parent` naming the plugin,
    /// its decision and, for a refusal, the status and the plugin's reason;
    /// and it is counted in the plugin metrics.
    pub async fn run(
        &self,
        chain: &[ChainEntry],
        ctx: &PolicyContext,
        req: &PolicyRequest,
        parent: &tracing::Span,
    ) -> Verdict {
        use protocol::telemetry::{attr, error, SPAN_TARGET};
        let m = &crate::metrics::METRICS;
        let mut edits = Vec::new();
        for entry in chain {
            let slot = &entry.slot;
            let span = tracing::info_span!(target: SPAN_TARGET, parent: parent, "policy plugin");
            let traced = !span.is_disabled();
            if traced {
                attr(&span, "plugin.name", slot.name.to_string());
            }
            let started = Instant::now();
            let outcome = self.call(entry, ctx, req).await.and_then(|d| match d {
                Decision::Allow(e) => {
                    check_edits(&e)?;
                    Ok(Decision::Allow(e))
                }
                Decision::Deny(d) => {
                    check_denial(&d)?;
                    Ok(Decision::Deny(d))
                }
            });
            let elapsed = started.elapsed();
            let micros = elapsed.as_micros() as u64;
            slot.counters.seconds.observe(elapsed.as_secs_f64());
            match outcome {
                Ok(Decision::Allow(e)) => {
                    slot.counters.allow.inc();
                    if traced {
                        attr(&span, "policy.decision", "allow");
                    }
                    tracing::debug!(plugin = %slot.name, micros, trace_id = %ctx.trace_id, "allow");
                    edits.extend(e);
                }
                Ok(Decision::Deny(mut denial)) => {
                    denial.reason = clip(std::mem::take(&mut denial.reason), MAX_REASON_CHARS);
                    slot.counters.deny.inc();
                    if traced {
                        attr(&span, "policy.decision", "deny");
                        attr(&span, "http.response.status_code", i64::from(denial.status));
                        attr(&span, "policy.reason", denial.reason.clone());
                    }
                    tracing::info!(
                        plugin = %slot.name, micros, status = denial.status,
                        trace_id = %ctx.trace_id, route = %ctx.route,
                        "denied: {:?}", denial.reason
                    );
                    return Verdict::Deny {
                        plugin: slot.name.clone(),
                        denial,
                    };
                }
                Err(failure) => {
                    // Failures of this kind so far, this one included.
                    let n = m
                        .plugin_failures
                        .get_or_create(&crate::metrics::FailureLabels {
                            plugin: slot.name.to_string(),
                            kind: failure.kind(),
                        })
                        .inc()
                        + 1;
                    if traced {
                        attr(&span, "policy.decision", "fail");
                        attr(&span, "policy.failure", failure.kind());
                        error(&span, clip(failure.to_string(), MAX_REASON_CHARS));
                    }
                    tracing::error!(
                        plugin = %slot.name, micros, kind = failure.kind(), failures = n,
                        trace_id = %ctx.trace_id, route = %ctx.route,
                        "plugin failed, request refused: {:?}",
                        clip(failure.to_string(), MAX_REASON_CHARS)
                    );
                    return Verdict::Fail {
                        plugin: slot.name.clone(),
                        failure,
                    };
                }
            }
        }
        Verdict::Allow(edits)
    }

    /// Starts the thread that reloads replaced plugin files (when
    /// `plugins.reload_interval_ms` is not 0). It watches the plugins of
    /// the host `current` returns at each round: after a live reload of the
    /// configuration ([`Plugins::reconfigure`]), the new host's.
    pub fn spawn_reloader(
        &self,
        current: impl Fn() -> Arc<Plugins> + Send + 'static,
    ) -> std::io::Result<()> {
        if self.limits.reload_interval_ms == 0 {
            return Ok(());
        }
        let every = Duration::from_millis(self.limits.reload_interval_ms);
        std::thread::Builder::new()
            .name("plugin-reload".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("plugin reloader cannot start: {e}");
                        return;
                    }
                };
                loop {
                    std::thread::sleep(every);
                    let host = current();
                    for slot in host.slots.values() {
                        rt.block_on(host.check(slot));
                    }
                }
            })?;
        Ok(())
    }

    /// Reloads `slot` if its file changed since last looked at.
    async fn check(&self, slot: &Slot) {
        let now = match stamp(&slot.path) {
            Ok(s) => s,
            // A missing file (mid-replacement, or removed): keep serving.
            Err(_) => return,
        };
        let before = {
            let mut seen = slot.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return;
            }
            std::mem::replace(&mut *seen, now)
        };
        match self
            .prepare(&slot.name, &slot.path, &slot.configs, &slot.replay)
            .await
        {
            Ok(v) if v.sha256 == slot.version().sha256 => {}
            Ok(v) => {
                let (sha, version) = (v.sha256.clone(), v.version.clone());
                *slot.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
                crate::metrics::plugin_reloaded(&slot.name, "loaded");
                tracing::info!(
                    plugin = %slot.name, version = %version, sha256 = %sha, "plugin reloaded"
                );
                emit(json!({
                    "event": "plugin_loaded", "plugin": &*slot.name,
                    "version": version, "sha256": sha,
                }));
            }
            Err(e) => {
                // A busy pool or a slow init under load says nothing about
                // the file: look at it again next time.
                let transient = e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<Failure>(),
                        Some(Failure::Busy | Failure::Deadline(_))
                    )
                });
                if transient {
                    *slot.seen.lock().unwrap_or_else(|p| p.into_inner()) = before;
                }
                crate::metrics::plugin_reloaded(&slot.name, "rejected");
                let running = slot.version().sha256.clone();
                tracing::error!(
                    plugin = %slot.name, running = %running,
                    "replacement plugin rejected, previous version keeps serving: {e:#}"
                );
                emit(json!({
                    "event": "plugin_rejected",
                    "plugin": &*slot.name,
                    "error": format!("{e:#}"),
                    "running_sha256": running,
                }));
            }
        }
    }
}
