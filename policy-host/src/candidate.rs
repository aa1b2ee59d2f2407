//! `gateway plugin check`: what the gateway would say about a plugin file
//! before it is dropped into `plugins.dir`. The same steps as a load (the
//! size limit, the pin, compiling, the imports, `identify`, `init` with
//! each configuration), run on a file anywhere, with no gateway running.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use crate::load::{engine, TICK};
use crate::{file, FileError, Identity, Plugins, PluginsSection, ReplaySet};

/// What a successful check found.
#[derive(Debug)]
pub struct Candidate {
    /// Who the plugin says it is: it must be installed as `<name>.wasm`.
    pub identity: Identity,
    /// SHA-256 of the file (lower-case hex), as `plugins.sha256` pins it.
    pub sha256: String,
    /// Size of the file in bytes.
    pub bytes: usize,
    /// Whether `plugins.sha256` pins this plugin (and the file matched).
    pub pinned: bool,
    /// The configurations `init` accepted.
    pub configs: Vec<String>,
    /// What the component imports (at most `tunnel:policy/host`).
    pub imports: Vec<String>,
    /// Why this copy could not be installed as it is: the gateway refuses
    /// a plugin file that group or others may write (checked on the
    /// installed copy, so only a warning here).
    pub shared_write: Option<String>,
}

impl Plugins {
    /// Checks `path` as a load would with the limits and pins of `limits`:
    /// it must identify as `expect` when given, and its `init` must accept
    /// each configuration `configs_for` gives for the name it identifies
    /// as (an empty one, as for a route without `config`, when none).
    pub fn check_candidate(
        limits: &PluginsSection,
        path: &Path,
        expect: Option<&str>,
        configs_for: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<Candidate, FileError> {
        let host = Plugins {
            engine: engine(limits).map_err(|e| FileError::Engine(format!("{e:#}")))?,
            limits: limits.clone(),
            timeout: limits.call_timeout,
            slots: HashMap::new(),
            idle: Arc::new(AtomicU32::new(0)),
        };
        // With the name known, the pin is checked first, as a load does.
        let early_pin = expect
            .and_then(|n| limits.sha256.get(n))
            .map(String::as_str);
        let file = file::read_candidate(path, limits.max_file_bytes, early_pin)?;
        let shared_write = file::writable_by_others(path);
        let (sha256, bytes) = (file.sha256.clone(), file.bytes.len());
        let label: Arc<str> = expect.unwrap_or("plugin-check").into();
        let replay = Arc::new(ReplaySet::new(
            label.clone(),
            limits.max_replay_keys,
            limits.replay_share_per_org,
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FileError::Engine(e.to_string()))?;
        // Nothing ticks the epoch here: a deadline would never fire. A
        // thread ticks it for the length of the check.
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (engine, done) = (host.engine.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
        };
        let checked = rt.block_on(async {
            let (identity, version) = host
                .prepare_bytes(&label, expect, file, &[], &replay)
                .await?;
            let mut configs = configs_for(&identity.name);
            if configs.is_empty() {
                configs.push(String::new());
            }
            host.init_all(&label, &version, &configs, &replay).await?;
            let imports = version
                .pre
                .instance_pre()
                .component()
                .component_type()
                .imports(&host.engine)
                .map(|(name, _)| name.to_string())
                .collect::<Vec<_>>();
            Ok::<_, FileError>((identity, configs, imports))
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = ticker.join();
        let (identity, configs, imports) = checked?;
        let pin = limits.sha256.get(&identity.name);
        file::check_pin(&sha256, pin.map(String::as_str))?;
        Ok(Candidate {
            identity,
            sha256,
            bytes,
            pinned: pin.is_some(),
            configs,
            imports,
            shared_write,
        })
    }
}
