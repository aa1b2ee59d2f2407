//! End-to-end harness: real `gateway` and `agent` processes, real TLS, real
//! local services, all on loopback.
//!
//! A tour of the modules, in the order a story uses them:
//!
//! - [`pki`]: a throw-away certificate authority and the gateway's
//!   certificate (plus impostors: an untrusted CA, a wrong hostname).
//! - [`upstream`]: the on-prem services the agent forwards to: an echo
//!   service (request description, byte streams, slow answers, uploads,
//!   WebSocket echo), a raw-TCP service that returns the request head
//!   byte-for-byte, and a fake TLS listener that plays an impostor gateway.
//! - [`gateway`]: writes a gateway config, runs `gateway serve`, follows its
//!   JSON events, creates tunnels and caller tokens through its CLI.
//! - [`agent`]: stores a tunnel key with `agent key set`, runs `agent run`,
//!   follows its events, kills or drains it.
//! - [`connect_proxy`]: a real HTTP CONNECT forward proxy (optional Basic
//!   credentials, refusals) recording what crossed it.
//! - [`caller`]: what a cloud caller does: HTTP requests and WebSockets
//!   through the public listener (hyper, tokio-tungstenite).
//! - [`wire`]: raw bytes for what a well-behaved client cannot send
//!   (smuggling attempts, exact request lines) and TLS version probes.
//! - [`body`]: the HTTP body type shared by callers and local services.
//! - [`events`]: the JSON event log both processes print on stdout, with
//!   waits that always have a deadline.
//! - [`setup`]: the opening most stories share (one tunnel, one agent).
//! - [`scrape`]: reads the admin listeners (`/metrics`, `/healthz`,
//!   `/readyz`) of either process.
//! - [`admin`]: the operator: the admin API client, the lifecycle
//!   commands of the CLI, and a request loop counting failures.
//! - [`lifecycle`]: what the lifecycle stories share (two local services,
//!   agents that must be refused, disconnect events).
//! - [`pattern`]: the deterministic byte pattern streamed in the large
//!   transfer tests, and its SHA-256.
//! - [`otlp`]: a real OTLP trace collector (gRPC and HTTP/protobuf) that
//!   keeps every span it receives, and a blackhole collector that hangs.
//! - [`browser`]: a headless Chromium driven through WebDriver.
//!
//! Every wait has a deadline and every child process is killed when its
//! handle is dropped, so a broken binary fails a test instead of hanging it.

pub mod admin;
pub mod agent;
pub mod body;
pub mod browser;
pub mod caller;
pub mod connect_proxy;
pub mod events;
mod eventually;
pub mod gateway;
pub mod lifecycle;
pub mod otlp;
mod outer_build_env;
pub mod pattern;
pub mod pg;
pub mod pki;
mod process;
pub mod scrape;
pub mod setup;
pub mod upstream;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use admin::{AdminApi, ApiReply, Operator, RequestLoop};
pub use agent::{Agent, AgentOptions};
pub use caller::{Caller, Reply};
pub use events::EventLog;
pub use eventually::eventually;
pub use gateway::{Gateway, GatewayOptions, Route, Tunnel};
pub use outer_build_env::OUTER_BUILD_ENV;
pub use pki::Pki;

/// How long a story waits for something that should happen "at once"
/// (a process becoming ready, an agent connecting) before failing.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The folder of plugin components built from `plugins/` by this crate's
/// build script (`org-check.wasm`, `authz.wasm`, `oauth1.wasm` and the
/// test-only `faulty.wasm`), or `$TUNNEL_PLUGINS_DIR` if set (as with
/// `$TUNNEL_BIN_DIR`, to run the stories on a copy that a later build
/// cannot replace underneath them).
pub fn plugins_dir() -> PathBuf {
    std::env::var_os("TUNNEL_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("PLUGINS_DIR")))
}

/// Builds the plugin crate in `dir` as the template's README says
/// (`cargo build --release --target wasm32-wasip2`, offline) into the
/// plugins' target folder of this build, which shares the dependencies
/// built there; returns the component's path. Panics with cargo's errors.
pub async fn build_plugin(dir: &Path, krate: &str) -> PathBuf {
    let dist = PathBuf::from(env!("PLUGINS_DIR"));
    let target = dist.parent().expect("plugins' target folder").to_path_buf();
    let mut cmd =
        tokio::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(dir)
        .args([
            "build",
            "--release",
            "--offline",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(&target);
    for var in OUTER_BUILD_ENV {
        cmd.env_remove(var);
    }
    let out = cmd.output().await.expect("running cargo");
    assert!(
        out.status.success(),
        "building the plugin in {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    target.join(format!(
        "wasm32-wasip2/release/{}.wasm",
        krate.replace('-', "_")
    ))
}

/// The bytes of the built plugin `name`.
pub fn plugin_wasm(name: &str) -> Vec<u8> {
    let path = plugins_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("plugin {}: {e}", path.display()))
}

/// Where the `gateway` and `agent` binaries are: `$TUNNEL_BIN_DIR` if set,
/// otherwise the cargo target dir this executable was built into.
///
/// Panics with the command to run when a binary is missing.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("TUNNEL_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("path of the running executable");
            // Test executables live in target/debug/deps, the demo in target/debug.
            let mut dir = exe.parent().expect("executable has a parent").to_path_buf();
            if dir.file_name().is_some_and(|n| n == "deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first: cargo build --workspace --bins",
        path.display()
    );
    path
}

/// Quotes a string for a TOML config file (JSON string escapes are valid TOML).
pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// A duration as a TOML string in the configuration's form (`"1m 30s"`,
/// `"500ms"`).
pub(crate) fn toml_duration(d: std::time::Duration) -> String {
    toml_str(&protocol::duration::show(d))
}

/// Seconds since the Unix epoch now (OAuth timestamps, expiries).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An OAuth 1.0a `Authorization` header for consumer `jira` with `nonce`
/// and `timestamp` and a placeholder signature: what the oauth1 plugin
/// checks without consumers (parameters, timestamp window, nonce); a
/// service would verify the signature.
pub fn oauth_header(nonce: &str, timestamp: u64) -> String {
    format!(
        "OAuth oauth_consumer_key=\"jira\", oauth_nonce=\"{nonce}\", \
         oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"{timestamp}\", \
         oauth_version=\"1.0\", oauth_signature=\"c2lnbmF0dXJl\""
    )
}
