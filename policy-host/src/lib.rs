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
mod chain;
mod checks;
pub mod config;
mod error;
mod failure;
mod file;
pub mod history;
mod load;
pub mod metrics;
mod reconfigure;
mod reloader;
pub mod replay;
mod sandbox;

/// Bindings generated from `wit/policy.wit`, once for the whole host.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        exports: { default: async },
    });
}

pub use bindings::tunnel::policy::types::{
    Context as PolicyContext, Decision, Denial, Header as WitHeader, HeaderEdit,
    Request as PolicyRequest,
};
pub use candidate::Candidate;
pub use chain::{ChainEntry, Verdict};
pub use config::{PluginRef, PluginsSection};
pub use error::{FileError, LoadError};
pub use failure::Failure;
pub use load::{stamp, Identity, PluginView, Plugins, Slot, Stamp};
pub use replay::{ReplaySet, Scope};
pub use sandbox::Sandbox;

/// The WIT package this gateway hosts (`wit/policy.wit`).
pub const WIT_PACKAGE: &str = "tunnel:policy@0.2.0";

/// Longest denial reason kept for the logs.
pub(crate) const MAX_REASON_CHARS: usize = 512;
/// Most `log` calls one sandbox may make; more are dropped.
pub(crate) const MAX_LOG_LINES: u32 = 8;
/// Longest logged plugin message.
pub(crate) const MAX_LOG_CHARS: usize = 1024;
/// Longest plugin name or version kept from `identify`.
pub(crate) const MAX_IDENTITY_CHARS: usize = 128;

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
