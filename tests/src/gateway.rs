//! The cloud gateway as a user runs it: a TOML config, `gateway serve`, and
//! the `gateway tunnel` / `gateway caller` commands of its CLI.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::caller::Caller;
use crate::events::{kind, EventLog};
use crate::pki::{CertFiles, Pki};
use crate::process::{Proc, Signal};
use crate::{bin_path, toml_duration, toml_str, PATIENCE};

/// A route of the gateway config: requests for `host` (and `path_prefix`)
/// go to the tunnel named `tunnel`.
#[derive(Clone, Debug)]
pub struct Route {
    /// The `Host` header it matches (port ignored).
    pub host: String,
    /// Only paths under this prefix; `/` when unset.
    pub path_prefix: Option<String>,
    /// The tunnel NAME.
    pub tunnel: String,
    /// Per-route body limit overriding `public.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// The plugin chain: (plugin name, config text). Empty means
    /// `allow_without_plugins = true`.
    pub plugins: Vec<(String, String)>,
    /// `form_body_bytes` of the route.
    pub form_body_bytes: Option<usize>,
    /// `allow_path_params = true`.
    pub allow_path_params: bool,
    /// `cross_org = true`.
    pub cross_org: bool,
    /// `allow_encoded_slash = true`.
    pub allow_encoded_slash: bool,
}

impl Route {
    /// Requests for `host` go to the tunnel named `tunnel`.
    pub fn new(host: &str, tunnel: &str) -> Route {
        Route {
            host: host.to_string(),
            path_prefix: None,
            tunnel: tunnel.to_string(),
            max_body_bytes: None,
            plugins: Vec::new(),
            form_body_bytes: None,
            allow_path_params: false,
            cross_org: false,
            allow_encoded_slash: false,
        }
    }

    /// `%2F` in path segments is let through.
    pub fn allow_encoded_slash(mut self) -> Route {
        self.allow_encoded_slash = true;
        self
    }

    /// `;params` in path segments are let through.
    pub fn allow_path_params(mut self) -> Route {
        self.allow_path_params = true;
        self
    }

    /// Callers of other organizations may use the tunnel.
    pub fn cross_org(mut self) -> Route {
        self.cross_org = true;
        self
    }

    /// Appends the plugin `name` (a `.wasm` built from `plugins/`, see
    /// [`crate::plugin_wasm`]) to the route's chain with this config text.
    pub fn plugin(mut self, name: &str, config: &str) -> Route {
        self.plugins.push((name.to_string(), config.to_string()));
        self
    }

    /// Plugins see form bodies up to `bytes`.
    pub fn form_body_bytes(mut self, bytes: usize) -> Route {
        self.form_body_bytes = Some(bytes);
        self
    }

    /// Only paths starting with `prefix` match.
    pub fn path_prefix(mut self, prefix: &str) -> Route {
        self.path_prefix = Some(prefix.to_string());
        self
    }

    /// Bodies up to `bytes` are accepted on this route.
    pub fn max_body_bytes(mut self, bytes: u64) -> Route {
        self.max_body_bytes = Some(bytes);
        self
    }
}

/// How to configure the gateway; unset fields keep the gateway's defaults.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    routes: Vec<Route>,
    base_domain: Option<String>,
    max_header_bytes: Option<u64>,
    max_body_bytes: Option<u64>,
    upstream_timeout: Option<Duration>,
    heartbeat: Option<(Duration, Duration)>,
    grace_period: Option<Duration>,
    pki: Option<Arc<Pki>>,
    agents_cert: Option<CertFiles>,
    public_tls: bool,
    work_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    extra_config: String,
    plugin_settings: Vec<(String, String)>,
    admin_settings: Vec<(String, String)>,
    plugin_files: Vec<(String, Vec<u8>)>,
    agents_settings: Vec<(String, String)>,
    store_url: Option<String>,
    kek_file: Option<PathBuf>,
}

impl GatewayOptions {
    /// No routes, a fresh PKI, a temp work dir.
    pub fn new() -> Self {
        Self::default()
    }

    /// `store.url`: the store is this PostgreSQL database instead of a
    /// SQLite file in the work dir.
    pub fn store_url(mut self, url: &str) -> Self {
        self.store_url = Some(url.into());
        self
    }

    /// `[cluster]`: a relay listener on `127.0.0.1:0`, an instance
    /// certificate from `pki` named `gateway-relay` (written as
    /// `<instance>-cert.pem`), and presence leases of `lease`. Needs
    /// [`GatewayOptions::store_url`].
    pub fn cluster(self, pki: &Pki, instance: &str, lease: Duration) -> Self {
        let cert = pki.issue(instance, &["gateway-relay"]);
        let path_str = |p: &Path| toml_str(&p.to_string_lossy());
        let toml = format!(
            "[cluster]\nrelay_listen = \"127.0.0.1:0\"\ntls_cert = {}\ntls_key = {}\n\
             tls_ca = {}\nlease = {}\n",
            path_str(&cert.cert),
            path_str(&cert.key),
            path_str(&pki.ca_file),
            toml_duration(lease)
        );
        self.extra_config(&toml)
    }

    /// `store.kek_file`: the key-encryption key (several instances on one
    /// store share it); a file in the work dir by default.
    pub fn kek_file(mut self, path: &Path) -> Self {
        self.kek_file = Some(path.into());
        self
    }

    /// Adds a route from `host` to the tunnel named `tunnel`.
    pub fn route(self, host: &str, tunnel: &str) -> Self {
        self.with_route(Route::new(host, tunnel))
    }

    /// Adds a fully described route.
    pub fn with_route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// `<tunnel-name>.<domain>` reaches that tunnel without a route.
    pub fn base_domain(mut self, domain: &str) -> Self {
        self.base_domain = Some(domain.to_string());
        self
    }

    /// A larger header block is answered 431.
    pub fn max_header_bytes(mut self, bytes: u64) -> Self {
        self.max_header_bytes = Some(bytes);
        self
    }

    /// Default body limit of every route (413 above it).
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = Some(bytes);
        self
    }

    /// A local service slower than this is answered 504.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = Some(timeout);
        self
    }

    /// Heartbeat interval and dead-peer timeout on the agents' listener.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat = Some((interval, timeout));
        self
    }

    /// Uses this PKI (its CA is what agents trust) instead of a fresh one.
    pub fn pki(mut self, pki: Arc<Pki>) -> Self {
        self.pki = Some(pki);
        self
    }

    /// The agents' listener presents this certificate instead of the PKI's.
    pub fn agents_cert(mut self, cert: CertFiles) -> Self {
        self.agents_cert = Some(cert);
        self
    }

    /// The callers' listener speaks HTTPS (HTTP/2 via ALPN) with the PKI's
    /// `localhost` certificate.
    pub fn public_tls(mut self) -> Self {
        self.public_tls = true;
        self
    }

    /// Keeps config, store and logs in `dir` instead of a temp dir.
    pub fn work_dir(mut self, dir: &Path) -> Self {
        self.work_dir = Some(dir.to_path_buf());
        self
    }

    /// Sets `key = value` (TOML) in the `[plugins]` section.
    pub fn plugin_setting(mut self, key: &str, value: &str) -> Self {
        self.plugin_settings
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Sets `key = value` (TOML) in the `[admin]` section.
    pub fn admin_setting(mut self, key: &str, value: &str) -> Self {
        self.admin_settings
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Sets `key = value` (TOML) in the `[agents]` section.
    pub fn agents_setting(mut self, key: &str, value: &str) -> Self {
        self.agents_settings
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Installs `bytes` as the plugin file `name.wasm` instead of the
    /// built plugin of that name.
    pub fn plugin_file(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.plugin_files.push((name.to_string(), bytes));
        self
    }

    /// Sets an environment variable of the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Time in-flight requests get after SIGTERM, whole seconds (default 1s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace_period = Some(grace);
        self
    }

    /// Appends raw TOML to the config (e.g. a `[telemetry]` or `[log]`
    /// section).
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }
}

/// A tunnel as `gateway tunnel create` printed it; `key` is shown only once.
#[derive(Clone, Debug, Deserialize)]
pub struct Tunnel {
    /// The tunnel id agents name in their config.
    pub id: String,
    /// The name routes refer to.
    pub name: String,
    /// The organization owning it.
    pub org: String,
    /// The security key (base64url), for `agent key set`.
    pub key: String,
}

/// A running `gateway serve`, killed when dropped.
pub struct Gateway {
    opts: GatewayOptions,
    pki: Arc<Pki>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    config: PathBuf,
    events: EventLog,
    proc: Proc,
    public: SocketAddr,
    agents: SocketAddr,
    admin: SocketAddr,
}

impl Gateway {
    /// Writes the config, starts `gateway serve` and waits for `ready`.
    pub async fn start(opts: GatewayOptions) -> Gateway {
        let pki = opts.pki.clone().unwrap_or_else(Pki::generate);
        let (dir, temp) = match &opts.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).expect("create gateway work dir");
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("tunnel-gateway-")
                    .tempdir()
                    .expect("gateway temp dir");
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let config = dir.join("gateway.toml");
        install_plugins(&opts, &dir);
        let events = EventLog::new("gateway");
        write_config(&config, &opts, &pki, &dir, "127.0.0.1:0");
        let proc = spawn_serve(&opts, &config, &events, &dir);
        let (public, agents, admin) = wait_ready(&events, 0).await;
        Gateway {
            opts,
            pki,
            dir,
            _temp: temp,
            config,
            events,
            proc,
            public,
            agents,
            admin,
        }
    }

    /// Runs `gateway serve` with a config that must be refused: waits for
    /// the process to exit (within [`PATIENCE`]), asserts it failed, and
    /// returns what it printed on stderr.
    pub async fn start_expecting_failure(opts: GatewayOptions) -> String {
        let pki = opts.pki.clone().unwrap_or_else(Pki::generate);
        let temp = tempfile::Builder::new()
            .prefix("tunnel-gateway-")
            .tempdir()
            .expect("gateway temp dir");
        let dir = temp.path();
        let config = dir.join("gateway.toml");
        install_plugins(&opts, dir);
        write_config(&config, &opts, &pki, dir, "127.0.0.1:0");
        let mut command = tokio::process::Command::new(bin_path("gateway"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .envs(opts.env.iter().cloned())
            .kill_on_drop(true);
        let out = tokio::time::timeout(PATIENCE, command.output())
            .await
            .unwrap_or_else(|_| panic!("gateway serve did not exit within {PATIENCE:?}"))
            .expect("run gateway serve");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "gateway serve should have refused this config; stderr:\n{stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("\"ready\""),
            "gateway reported ready with a config it should refuse"
        );
        stderr
    }

    /// The relay listener (`[cluster]`), from the `ready` line.
    pub fn relay_addr(&self) -> SocketAddr {
        let ready = self
            .events
            .snapshot()
            .into_iter()
            .rev()
            .find(|e| e["event"] == "ready")
            .expect("a ready event");
        ready["relay"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("ready names no relay listener: {ready}"))
    }

    /// The callers' listener.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The agents' listener.
    pub fn agents_addr(&self) -> SocketAddr {
        self.agents
    }

    /// The URL agents dial: the certificate is for `localhost`.
    pub fn agents_url(&self) -> String {
        format!("wss://localhost:{}/_tunnel/v1", self.agents.port())
    }

    /// The PKI whose CA signed the agents' listener certificate.
    pub fn pki(&self) -> &Arc<Pki> {
        &self.pki
    }

    /// The config file, for the CLI.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Everything the gateway reported on stdout, across restarts.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits for an event of the current process matching `pred`.
    pub async fn wait_event(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        let started = self.events.current_start();
        self.events
            .wait_after(started, "the expected event", pred, timeout)
            .await
    }

    /// Waits for the event named `name` whose fields include `fields`.
    pub async fn wait_for(&self, name: &str, fields: &[(&str, &str)]) -> Value {
        let started = self.events.current_start();
        let what = format!("{name} {fields:?}");
        self.events
            .wait_after(
                started,
                &what,
                |e| kind(e) == name && fields.iter().all(|(k, v)| e[*k] == *v),
                PATIENCE,
            )
            .await
    }

    /// Waits for the event named `name` with `fields`, logged after
    /// `mark` (from [`EventLog::mark`]).
    pub async fn wait_for_since(&self, mark: usize, name: &str, fields: &[(&str, &str)]) -> Value {
        let what = format!("{name} {fields:?} after event #{mark}");
        self.events
            .wait_after(
                mark,
                &what,
                |e| kind(e) == name && fields.iter().all(|(k, v)| e[*k] == *v),
                PATIENCE,
            )
            .await
    }

    /// `gateway tunnel create`: a new tunnel and its key.
    pub async fn create_tunnel(&self, org: &str, name: &str) -> Tunnel {
        let out = self
            .cli(&["tunnel", "create", "--org", org, "--name", name, "--json"])
            .await;
        let tunnel: Tunnel = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("tunnel create printed {out:?}: {e}"));
        assert_eq!((tunnel.name.as_str(), tunnel.org.as_str()), (name, org));
        assert!(!tunnel.key.is_empty(), "tunnel create printed no key");
        tunnel
    }

    /// `gateway tunnel list`: every tunnel as JSON.
    pub async fn list_tunnels(&self) -> Vec<Value> {
        let out = self.cli(&["tunnel", "list", "--json"]).await;
        serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("tunnel list printed {out:?}: {e}"))
    }

    /// `gateway caller create`: a bearer token for callers of `org`.
    pub async fn create_caller(&self, org: &str) -> String {
        self.create_caller_with_id(org).await.1
    }

    /// `gateway caller create`: the caller's id (what authz rules name)
    /// and its bearer token.
    pub async fn create_caller_with_id(&self, org: &str) -> (String, String) {
        let out = self
            .cli(&["caller", "create", "--org", org, "--json"])
            .await;
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("caller create printed {out:?}: {e}"));
        assert_eq!(v["org"], org);
        (
            v["id"].as_str().expect("caller id").to_string(),
            v["token"].as_str().expect("caller token").to_string(),
        )
    }

    /// A caller of the public listener using `token`.
    pub fn caller(&self, token: &str) -> Caller {
        Caller::new(self.public, Some(token))
    }

    /// A caller over HTTPS (see [`GatewayOptions::public_tls`]), using
    /// HTTP/2 when `http2`, else HTTP/1.1.
    pub fn https_caller(&self, token: &str, http2: bool) -> Caller {
        Caller::https(self.public, Some(token), self.pki.root_store(), http2)
    }

    /// A caller of the public listener without any credential.
    pub fn anonymous_caller(&self) -> Caller {
        Caller::new(self.public, None)
    }

    /// Runs a CLI subcommand against this gateway's config; panics unless
    /// it succeeds, and returns its stdout.
    pub async fn cli(&self, args: &[&str]) -> String {
        let mut command = tokio::process::Command::new(bin_path("gateway"));
        command
            .args(&args[..2])
            .arg("--config")
            .arg(&self.config)
            .args(&args[2..]);
        command
            .envs(self.opts.env.iter().cloned())
            .kill_on_drop(true);
        let out = tokio::time::timeout(PATIENCE, command.output())
            .await
            .unwrap_or_else(|_| panic!("gateway {args:?} did not finish within {PATIENCE:?}"))
            .expect("run gateway CLI");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "gateway {args:?} failed with {}:\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// SIGSTOP: the gateway hangs, its connections stay open but silent.
    pub fn freeze(&self) {
        self.proc.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`Gateway::freeze`].
    pub fn thaw(&self) {
        self.proc.signal(Signal::SIGCONT);
    }

    /// SIGKILL: the gateway vanishes without saying goodbye.
    pub fn kill(&mut self) -> ExitStatus {
        self.proc.kill()
    }

    /// SIGTERM, then waits for the graceful exit (grace period + 5 s).
    /// Sends SIGTERM and returns at once (the graceful shutdown begins).
    pub fn begin_shutdown(&self) {
        self.proc.signal_terminate();
    }

    pub async fn terminate(&mut self) -> ExitStatus {
        self.proc.signal_terminate();
        let grace = self.opts.grace_period.unwrap_or(Duration::from_secs(1));
        self.proc.wait_exit(grace + Duration::from_secs(5)).await
    }

    /// Starts the gateway again with the same config, store and agents'
    /// port (agents reconnect to where they were), killing it first if it
    /// still runs. The public port may change.
    pub async fn restart(&mut self) {
        self.proc.kill();
        let mark = self.events.mark();
        let agents_listen = self.agents.to_string();
        write_config(
            &self.config,
            &self.opts,
            &self.pki,
            &self.dir,
            &agents_listen,
        );
        self.proc = spawn_serve(&self.opts, &self.config, &self.events, &self.dir);
        let (public, agents, admin) = wait_ready(&self.events, mark).await;
        assert_eq!(agents, self.agents, "agents' listener moved on restart");
        self.public = public;
        self.admin = admin;
    }

    /// Edits the config file the way most editors and deployment tools
    /// save: the new text goes to a temporary file renamed over the old
    /// one (a new inode). The running gateway notices within about a
    /// second and reloads (see [`Gateway::wait_reload`]).
    pub fn rewrite_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("read gateway config");
        let tmp = self.dir.join(".gateway.toml.tmp");
        std::fs::write(&tmp, edit(text)).expect("write new gateway config");
        std::fs::rename(&tmp, &self.config).expect("rename gateway config");
    }

    /// Edits the config file in place (same inode), as `echo >>` or an
    /// editor that truncates and writes does.
    pub fn edit_config_in_place(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("read gateway config");
        std::fs::write(&self.config, edit(text)).expect("write gateway config");
    }

    /// SIGHUP: the gateway reads its config file again.
    pub fn sighup(&self) {
        self.proc.signal(Signal::SIGHUP);
    }

    /// Waits for the outcome of the next config reload after `mark` (from
    /// [`EventLog::mark`]): a `config_reloaded` or `config_reload_failed`
    /// event.
    pub async fn wait_reload(&self, mark: usize) -> Value {
        self.events
            .wait_after(
                mark,
                "a config reload outcome",
                |e| matches!(kind(e), "config_reloaded" | "config_reload_failed"),
                PATIENCE,
            )
            .await
    }

    /// The folder the gateway loads plugins from.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.join("plugins")
    }

    /// Replaces the plugin file `name.wasm` with `bytes` the way an admin
    /// would: write a temporary file, then rename it over the old one.
    pub fn replace_plugin(&self, name: &str, bytes: &[u8]) {
        let dir = self.plugins_dir();
        let tmp = dir.join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, bytes).expect("write replacement plugin");
        set_mode(&tmp, 0o644);
        std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename plugin");
    }

    /// The last lines of the gateway's logs.
    pub fn logs(&self) -> String {
        self.proc.stderr_tail()
    }

    /// The whole of the gateway's logs, not just their tail: what a check
    /// for secrets must read.
    pub fn full_logs(&self) -> String {
        self.proc.log_text()
    }

    /// Waits until the gateway's logs contain `needle` (log lines are
    /// written by a background thread, after the event lines on stdout);
    /// panics with the logs after [`PATIENCE`].
    pub async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !self.proc.stderr_tail().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                panic!("no log line with {needle:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Copies every plugin the routes name from the built plugins into the
/// gateway's plugin folder (a test may then replace them).
fn install_plugins(opts: &GatewayOptions, dir: &Path) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("create plugin folder");
    // The gateway refuses plugins that group or others may write: explicit
    // modes, whatever the umask of the test run.
    set_mode(&plugins, 0o755);
    for (name, bytes) in &opts.plugin_files {
        let to = plugins.join(format!("{name}.wasm"));
        std::fs::write(&to, bytes).expect("install plugin");
        set_mode(&to, 0o644);
    }
    for (name, _) in opts.routes.iter().flat_map(|r| &r.plugins) {
        let to = plugins.join(format!("{name}.wasm"));
        if !to.exists() {
            std::fs::write(&to, crate::plugin_wasm(name)).expect("install plugin");
            set_mode(&to, 0o644);
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn spawn_serve(opts: &GatewayOptions, config: &Path, events: &EventLog, dir: &Path) -> Proc {
    let mut command = Command::new(bin_path("gateway"));
    command.arg("serve").arg("--config").arg(config);
    command.envs(opts.env.iter().cloned());
    Proc::spawn("gateway", command, events, &dir.join("gateway.log"))
}

async fn wait_ready(events: &EventLog, mark: usize) -> (SocketAddr, SocketAddr, SocketAddr) {
    let ready = events
        .wait_after(mark, "ready", |e| kind(e) == "ready", PATIENCE)
        .await;
    let addr = |field: &str| -> SocketAddr {
        ready[field]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("ready event has no {field} address: {ready}"))
    };
    (addr("public"), addr("agents"), addr("admin"))
}

fn write_config(path: &Path, opts: &GatewayOptions, pki: &Pki, dir: &Path, agents_listen: &str) {
    let agents_cert = opts.agents_cert.as_ref().unwrap_or(&pki.gateway);
    let path_str = |p: &Path| toml_str(&p.to_string_lossy());
    let mut c = String::new();
    // Durations in the current form ("10s"); `agent_config` and the
    // unit tests keep the old `_secs`/`_ms` names exercised.
    let grace = opts.grace_period.unwrap_or(Duration::from_secs(1));
    c += &format!(
        "[server]\nthreads = 2\ngrace_period = {}\n\n",
        toml_duration(grace)
    );
    c += "[public]\nlisten = \"127.0.0.1:0\"\n";
    if opts.public_tls {
        c += &format!(
            "tls_cert = {}\ntls_key = {}\n",
            path_str(&pki.gateway.cert),
            path_str(&pki.gateway.key)
        );
    }
    for (key, value) in [
        ("max_header_bytes", opts.max_header_bytes),
        ("max_body_bytes", opts.max_body_bytes),
    ] {
        if let Some(value) = value {
            c += &format!("{key} = {value}\n");
        }
    }
    if let Some(timeout) = opts.upstream_timeout {
        c += &format!("upstream_timeout = {}\n", toml_duration(timeout));
    }
    c += &format!(
        "\n[agents]\nlisten = {}\ntls_cert = {}\ntls_key = {}\nhandshake_timeout = \"10s\"\n",
        toml_str(agents_listen),
        path_str(&agents_cert.cert),
        path_str(&agents_cert.key)
    );
    let (interval, timeout) = opts
        .heartbeat
        .unwrap_or((Duration::from_secs(5), Duration::from_secs(15)));
    c += &format!(
        "heartbeat_interval = {}\nheartbeat_timeout = {}\n",
        toml_duration(interval),
        toml_duration(timeout)
    );
    for (key, value) in &opts.agents_settings {
        c += &format!("{key} = {value}\n");
    }
    c += &format!(
        "\n[store]\npath = {}\nkek_file = {}\n",
        path_str(&dir.join("gateway.db")),
        path_str(opts.kek_file.as_deref().unwrap_or(&dir.join("kek")))
    );
    if let Some(url) = &opts.store_url {
        c += &format!("url = {}\n", toml_str(url));
    }
    c += "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    for (key, value) in &opts.admin_settings {
        c += &format!("{key} = {value}\n");
    }
    c += &format!("\n[plugins]\ndir = {}\n", path_str(&dir.join("plugins")));
    for (key, value) in &opts.plugin_settings {
        c += &format!("{key} = {value}\n");
    }
    if let Some(domain) = &opts.base_domain {
        c += &format!(
            "\n[routing]\nbase_domain = {}\nallow_without_plugins = true\n",
            toml_str(domain)
        );
    }
    for (i, route) in opts.routes.iter().enumerate() {
        c += &format!(
            "\n[[routes]]\nname = {}\nhost = {}\ntunnel = {}\n",
            toml_str(&format!("route-{i}")),
            toml_str(&route.host),
            toml_str(&route.tunnel)
        );
        if let Some(prefix) = &route.path_prefix {
            c += &format!("path_prefix = {}\n", toml_str(prefix));
        }
        if let Some(limit) = route.max_body_bytes {
            c += &format!("max_body_bytes = {limit}\n");
        }
        if let Some(bytes) = route.form_body_bytes {
            c += &format!("form_body_bytes = {bytes}\n");
        }
        if route.allow_path_params {
            c += "allow_path_params = true\n";
        }
        if route.cross_org {
            c += "cross_org = true\n";
        }
        if route.allow_encoded_slash {
            c += "allow_encoded_slash = true\n";
        }
        if route.plugins.is_empty() {
            c += "allow_without_plugins = true\n";
        }
        for (name, config) in &route.plugins {
            c += &format!(
                "[[routes.plugins]]\nname = {}\nconfig = {}\n",
                toml_str(name),
                toml_str(config)
            );
        }
    }
    c += "\n";
    c += &opts.extra_config;
    std::fs::write(path, c).expect("write gateway config");
}
