//! Why a plugin file, or a whole host, was refused. Each message is
//! complete on its own (it names the file, the limit or the plugin's own
//! words), so callers print it as it is.

use crate::{Failure, WIT_PACKAGE};

/// Why one plugin file was refused: at start, at reload, by a live
/// reconfiguration or by `gateway plugin check`.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}: {error}")]
    Unreadable { path: String, error: std::io::Error },
    #[error("the plugin {what} is not private: {error}")]
    NotPrivate {
        /// "folder" or "file".
        what: &'static str,
        error: keyfile::WritableByOthers,
    },
    #[error("file is over plugins.max_file_bytes ({max} bytes)")]
    TooLarge { max: u64 },
    #[error("its SHA-256 is {sha256}, not the {pinned} pinned in plugins.sha256")]
    PinMismatch { sha256: String, pinned: String },
    #[error("not a valid WebAssembly component: the file does not start with `\\0asm`")]
    NotWasm,
    #[error(
        "not a valid WebAssembly component but a core module: build the plugin for \
         wasm32-wasip2 (see plugins/README.md)"
    )]
    CoreModule,
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error(
        "the component imports `{import}`: built against another version of the WIT than \
         this gateway's {WIT_PACKAGE}; rebuild it with the current plugins/sdk: {detail}"
    )]
    OtherWit { import: String, detail: String },
    #[error(
        "the component needs imports the gateway does not give plugins (only \
         tunnel:policy/host: no WASI, no files, no network): {0}"
    )]
    Imports(String),
    #[error(
        "the component does not export the `policy` world of {WIT_PACKAGE} (init, \
         on-request, identify): built against an older WIT? Rebuild it with the current \
         plugins/sdk: {0}"
    )]
    Exports(String),
    #[error(
        "the file holds the plugin {claimed:?} (version {version:?}), not {expected:?}: a \
         file <name>.wasm must hold the plugin <name>"
    )]
    OtherPlugin {
        claimed: String,
        version: String,
        expected: String,
    },
    #[error("init refused its configuration: {0:?}")]
    InitRefused(String),
    #[error("{during}: {failure}")]
    Failed {
        /// "instantiate", "identify" or "init".
        during: &'static str,
        failure: Failure,
    },
    #[error("the plugin engine: {0}")]
    Engine(String),
}

impl FileError {
    /// A busy sandbox pool or a slow call under load says nothing about
    /// the file: the reloader looks at it again next round.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            FileError::Failed {
                failure: Failure::Busy | Failure::Deadline(_),
                ..
            }
        )
    }
}

/// Why a plugin host could not be built (the gateway does not start, or
/// a live reload is refused with the running host untouched).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("starting the plugin engine: {0}")]
    Engine(String),
    #[error("starting the plugin epoch clock: {0}")]
    Clock(std::io::Error),
    #[error("plugins.dir is required when routes list plugins")]
    NoDir,
    #[error("plugin `{name}` ({path}): {error}")]
    Plugin {
        name: String,
        path: String,
        error: Box<FileError>,
    },
    #[error("plugin `{name}` ({path}) with its new configuration: {error}")]
    NewConfig {
        name: String,
        path: String,
        error: Box<FileError>,
    },
}
