//! The plugin host's settings (the gateway's `[plugins]` section) and one
//! plugin of a route's chain, as the configuration file writes them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The policy plugin host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Folder of plugin components: a route's plugin `name` is the file
    /// `<dir>/<name>.wasm`. Required when any route lists plugins.
    pub dir: Option<PathBuf>,
    /// Time between checks of the folder for replaced files (`"1s"`; a
    /// bare number is milliseconds); 0 turns hot reload off.
    #[serde(
        alias = "reload_interval_ms",
        deserialize_with = "protocol::duration::millis",
        serialize_with = "protocol::duration::serialize"
    )]
    pub reload_interval: Duration,
    /// Time one plugin may run for one request (its sandbox setup, `init`
    /// and `on-request` together; `"50ms"`, a bare number is
    /// milliseconds). Past it the request gets 503.
    #[serde(
        alias = "call_timeout_ms",
        deserialize_with = "protocol::duration::millis",
        serialize_with = "protocol::duration::serialize"
    )]
    pub call_timeout: Duration,
    /// Largest linear memory of one plugin sandbox, in bytes. Growing past
    /// it fails inside the plugin, and the request gets 500.
    pub max_memory_bytes: usize,
    /// Most elements in one plugin table.
    pub max_table_elements: usize,
    /// Most plugin sandboxes alive at once across all requests (the size of
    /// the pooling allocator). A request that finds none free gets 503.
    pub max_sandboxes: u32,
    /// Most keys in each plugin's replay set (`insert-if-absent`); when
    /// full of live keys, inserts fail closed. Keys are scoped by the host to
    /// the request's route and tunnel.
    pub max_replay_keys: usize,
    /// Fraction of `max_replay_keys` one caller organization may hold in
    /// a plugin's replay set (0 < share <= 1). An organization at its share
    /// has its own inserts refused (fail closed) while other organizations
    /// keep theirs, so one tenant flooding fresh nonces cannot deny OAuth to
    /// the others. 1 turns the per-organization bound off.
    pub replay_share_per_org: f64,
    /// Optional SHA-256 pin per plugin name (64 hex digits): a file whose
    /// digest differs is refused at load and at reload. Plugins not named
    /// here are not pinned. The running version's digest is logged at load.
    pub sha256: std::collections::BTreeMap<String, String>,
    /// Largest plugin file in bytes.
    pub max_file_bytes: u64,
    /// Requests one plugin sandbox serves, one after another, before it is
    /// replaced by a fresh one. A sandbox keeps its memory between the
    /// requests it serves (`init` runs once, when it is created); one that
    /// fails, grows its memory or reaches this count is thrown away. 1 gives
    /// every request a fresh sandbox (and runs `init` every time).
    pub max_requests_per_sandbox: u32,
}

impl PluginsSection {
    /// Fields renamed when durations became text (old name, new name):
    /// the old names are still read ([`protocol::layered`]).
    pub const RENAMED: &'static [(&'static str, &'static str)] = &[
        ("reload_interval_ms", "reload_interval"),
        ("call_timeout_ms", "call_timeout"),
    ];
}

impl Default for PluginsSection {
    fn default() -> Self {
        PluginsSection {
            dir: None,
            reload_interval: Duration::from_secs(1),
            call_timeout: Duration::from_millis(50),
            max_memory_bytes: 16 << 20,
            max_table_elements: 10_000,
            max_sandboxes: 256,
            max_replay_keys: 100_000,
            replay_share_per_org: 0.25,
            sha256: std::collections::BTreeMap::new(),
            max_file_bytes: 32 << 20,
            max_requests_per_sandbox: 10_000,
        }
    }
}

/// One plugin in a route's chain.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Plugin name: the file `<plugins.dir>/<name>.wasm`.
    pub name: String,
    /// The plugin's configuration, passed to its `init`: a string is passed
    /// as written; a table is passed as JSON text. Absent means empty text.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

impl PluginRef {
    /// The text handed to the plugin's `init`.
    pub fn config_text(&self) -> String {
        match &self.config {
            None => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    }
}
