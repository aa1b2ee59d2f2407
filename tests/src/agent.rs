//! The on-prem agent as a user runs it: `agent key set` with the tunnel key
//! on stdin, then `agent run`, following its JSON events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use crate::events::{current_start, kind, EventLog};
use crate::gateway::{Gateway, Tunnel};
use crate::process::{Proc, Signal};
use crate::{bin_path, toml_duration, toml_str, PATIENCE};

/// How to configure an agent; unset fields keep the defaults of the
/// contract (loopback only, AES-256-GCM, short reconnect backoff).
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    name: Option<String>,
    cipher: Option<String>,
    allow_remote: bool,
    url: Option<String>,
    urls: Vec<String>,
    ca_file: Option<PathBuf>,
    heartbeat: Option<(Duration, Duration)>,
    drain_grace: Option<Duration>,
    extra_config: String,
    gateway_extra: String,
    env: Vec<(String, String)>,
}

impl AgentOptions {
    /// Defaults: a unique `node-N` name, the gateway's CA and URL.
    pub fn new() -> Self {
        Self::default()
    }

    /// The agent (node) name the gateway reports.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// The AEAD protecting the stored key: `aes-256-gcm` or `chacha20-poly1305`.
    pub fn cipher(mut self, cipher: &str) -> Self {
        self.cipher = Some(cipher.to_string());
        self
    }

    /// Dials this URL instead of the gateway's (an impostor, say).
    pub fn url(mut self, url: &str) -> Self {
        self.url = Some(url.to_string());
        self
    }

    /// Dials these gateway instances (`gateway.urls`) instead of the
    /// gateway's URL.
    pub fn urls(mut self, urls: &[String]) -> Self {
        self.urls = urls.to_vec();
        self
    }

    /// `gateway.connections`: how many instances to stay connected to.
    pub fn connections(mut self, n: usize) -> Self {
        self.gateway_extra.push_str(&format!("connections = {n}\n"));
        self
    }

    /// Trusts this CA file instead of the gateway's CA.
    pub fn ca_file(mut self, path: &std::path::Path) -> Self {
        self.ca_file = Some(path.to_path_buf());
        self
    }

    /// Heartbeat interval and dead-peer timeout.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat = Some((interval, timeout));
        self
    }

    /// How long in-flight requests may run after SIGTERM.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = Some(grace);
        self
    }

    /// Appends raw TOML to the config (e.g. a `[telemetry]` section).
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config.push_str(toml);
        self.extra_config.push('\n');
        self
    }

    /// Sets `gateway.proxy` (a proxy URL, or `none`).
    pub fn proxy(mut self, url: &str) -> Self {
        self.gateway_extra
            .push_str(&format!("proxy = {}\n", toml_str(url)));
        self
    }

    /// Sets `gateway.connect_timeout` (TCP, proxy, TLS and handshake together).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.gateway_extra
            .push_str(&format!("connect_timeout = {}\n", toml_duration(timeout)));
        self
    }

    /// Sets an environment variable of the agent process. The proxy
    /// variables of the test's own environment never reach the agent; this
    /// is how a story gives it some.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Accepts a non-loopback local address.
    pub fn allow_remote(mut self) -> Self {
        self.allow_remote = true;
        self
    }
}

/// A running `agent run`, killed when dropped.
pub struct Agent {
    name: String,
    opts: AgentOptions,
    config: PathBuf,
    events: EventLog,
    gateway_events: EventLog,
    proc: Proc,
    _dir: tempfile::TempDir,
}

static NEXT_NODE: AtomicUsize = AtomicUsize::new(1);

impl Agent {
    /// Stores `tunnel`'s key and starts an agent serving `local` through
    /// `gateway`; does not wait for it to connect.
    pub async fn start(
        gateway: &Gateway,
        tunnel: &Tunnel,
        local: SocketAddr,
        opts: AgentOptions,
    ) -> Agent {
        let Prepared {
            name,
            opts,
            config,
            dir,
        } = Prepared::new(gateway, tunnel, local, opts).await;
        let events = EventLog::new(&format!("agent {name}"));
        let mut command = Command::new(bin_path("agent"));
        command.arg("run").arg("--config").arg(&config);
        opts.apply_env(&mut command);
        let proc = Proc::spawn(
            &format!("agent {name}"),
            command,
            &events,
            &dir.path().join("agent.log"),
        );
        Agent {
            name,
            opts,
            config,
            events,
            gateway_events: gateway.events().clone(),
            proc,
            _dir: dir,
        }
    }

    /// Starts an agent and waits until the gateway has it as connected.
    pub async fn connect(
        gateway: &Gateway,
        tunnel: &Tunnel,
        local: SocketAddr,
        opts: AgentOptions,
    ) -> Agent {
        let agent = Agent::start(gateway, tunnel, local, opts).await;
        agent.wait_connected().await;
        agent
    }

    /// The agent's admin listener (`/metrics`, `/healthz`, `/readyz`), once
    /// it reported it.
    pub async fn admin(&self) -> SocketAddr {
        let e = self
            .events
            .wait("admin", |e| e["event"] == "admin", PATIENCE)
            .await;
        e["admin"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("admin event without an address: {e}"))
    }

    /// The agent (node) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent's config file (in a temp dir that lives as long as `self`).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything the agent reported on stdout.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// Waits until the agent says `connected` as its latest state and the
    /// gateway's current process lists it as connected.
    pub async fn wait_connected(&self) {
        self.events
            .wait_until(
                "connected",
                |events| {
                    let last = events.iter().rev().map(kind).find(|k| {
                        [
                            "connected",
                            "disconnected",
                            "connect_failed",
                            "rejected",
                            "stopped",
                        ]
                        .contains(k)
                    });
                    (last == Some("connected")).then_some(())
                },
                PATIENCE,
            )
            .await;
        let name = self.name.clone();
        self.gateway_events
            .wait_until(
                &format!("agent_connected for {name}"),
                |events| {
                    let last = events[current_start(events)..]
                        .iter()
                        .rev()
                        .filter(|e| e["agent"] == name.as_str())
                        .map(kind)
                        .find(|k| ["agent_connected", "agent_disconnected"].contains(k));
                    (last == Some("agent_connected")).then_some(())
                },
                PATIENCE,
            )
            .await;
    }

    /// Waits for an agent event named `name` logged at `mark` or later.
    pub async fn wait_event_after(&self, mark: usize, name: &str, timeout: Duration) -> Value {
        self.events
            .wait_after(mark, name, |e| kind(e) == name, timeout)
            .await
    }

    /// Waits for the first agent event named `name`.
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> Value {
        self.wait_event_after(0, name, timeout).await
    }

    /// SIGSTOP: the node hangs, its connection stays open but silent.
    pub fn freeze(&self) {
        self.proc.signal(Signal::SIGSTOP);
    }

    /// SIGCONT after [`Agent::freeze`].
    pub fn thaw(&self) {
        self.proc.signal(Signal::SIGCONT);
    }

    /// SIGKILL: the node dies without a word; returns once it is reaped.
    pub fn kill(&mut self) -> ExitStatus {
        self.proc.kill()
    }

    /// SIGTERM without waiting: the agent starts draining.
    pub fn begin_terminate(&self) {
        self.proc.signal_terminate();
    }

    /// SIGTERM and waits for the exit (drain grace + 10 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.begin_terminate();
        self.wait_exit().await
    }

    /// Waits for the agent to exit on its own (drain grace + 10 s).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let grace = self.opts.drain_grace.unwrap_or(Duration::from_secs(10));
        self.proc.wait_exit(grace + Duration::from_secs(10)).await
    }

    /// The last lines of the agent's logs.
    pub fn logs(&self) -> String {
        self.proc.stderr_tail()
    }

    /// The whole of the agent's logs, not just their tail: what a check
    /// for secrets must read.
    pub fn full_logs(&self) -> String {
        self.proc.log_text()
    }
}

/// `agent key set --config FILE` with the key on stdin; must succeed.
async fn set_key(config: &std::path::Path, key: &str) {
    let out = key_set(config, key, &[]).await;
    assert!(
        out.status.success(),
        "agent key set failed with {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `agent key set --config FILE` with `key` on stdin and the extra
/// environment `env`; what it printed and how it exited.
pub async fn key_set(
    config: &std::path::Path,
    key: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut child = tokio::process::Command::new(bin_path("agent"))
        .args(["key", "set", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agent key set");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(key.as_bytes()).await.expect("write key");
    stdin.write_all(b"\n").await.expect("write key");
    drop(stdin);
    tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("agent key set finishes")
        .expect("agent key set runs")
}

impl AgentOptions {
    /// The agent's environment: the proxy variables of the test's own
    /// environment removed (a CI machine behind a proxy must not change
    /// the stories), then the story's own.
    fn apply_env(&self, command: &mut Command) {
        for var in PROXY_ENV {
            command.env_remove(var);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
    }
}

/// The variables an agent reads to find a proxy.
const PROXY_ENV: [&str; 6] = [
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// An agent's config written and its key stored, not running: what
/// `agent check` reads, or what [`Agent::start`] runs.
pub struct Prepared {
    name: String,
    opts: AgentOptions,
    config: PathBuf,
    dir: tempfile::TempDir,
}

/// What `agent check` printed and how it exited.
#[derive(Debug)]
pub struct CheckOutput {
    /// The exit code.
    pub code: Option<i32>,
    /// Its stdout: one `OK`/`FAIL`/`SKIP` line per step.
    pub stdout: String,
    /// Its stderr (logs).
    pub stderr: String,
}

impl CheckOutput {
    /// The line about `what` (the first that mentions it); panics with the
    /// whole output when there is none.
    pub fn line(&self, what: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line about {what:?}:\n{self}"))
    }
}

impl std::fmt::Display for CheckOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Prepared {
    /// Writes the config of an agent serving `local` through `gateway`
    /// and stores `tunnel`'s key with `agent key set`.
    pub async fn new(
        gateway: &Gateway,
        tunnel: &Tunnel,
        local: SocketAddr,
        opts: AgentOptions,
    ) -> Prepared {
        let name = opts.name.clone().unwrap_or_else(|| {
            format!(
                "node-{}-{}",
                std::process::id(),
                NEXT_NODE.fetch_add(1, Ordering::Relaxed)
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("tunnel-agent-")
            .tempdir()
            .expect("agent temp dir");
        let config = dir.path().join("agent.toml");
        let path = |p: PathBuf| toml_str(&p.to_string_lossy());
        let url = opts.url.clone().unwrap_or_else(|| gateway.agents_url());
        let url_line = if opts.urls.is_empty() {
            format!("url = {}", toml_str(&url))
        } else {
            let list: Vec<String> = opts.urls.iter().map(|u| toml_str(u)).collect();
            format!("urls = [{}]", list.join(", "))
        };
        let ca = opts
            .ca_file
            .clone()
            .unwrap_or_else(|| gateway.pki().ca_file.clone());
        let (interval, timeout) = opts
            .heartbeat
            .unwrap_or((Duration::from_secs(5), Duration::from_secs(15)));
        let text = format!(
            "[gateway]\n{}\nca_file = {}\n{}\n\
             [tunnel]\nid = {}\nagent_name = {}\nkey_file = {}\nkek_file = {}\ncipher = {}\n\n\
             [local]\naddress = {}\nallow_remote = {}\n\n\
             [heartbeat]\ninterval = {}\ntimeout = {}\n\n\
             [reconnect]\ninitial_backoff = \"100ms\"\nmax_backoff = \"2s\"\nstable_after = \"30s\"\n\n\
             [drain]\ngrace = {}\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
            url_line,
            path(ca),
            opts.gateway_extra,
            toml_str(&tunnel.id),
            toml_str(&name),
            path(dir.path().join("agent.key")),
            path(dir.path().join("agent.kek")),
            toml_str(opts.cipher.as_deref().unwrap_or("aes-256-gcm")),
            toml_str(&local.to_string()),
            opts.allow_remote,
            toml_duration(interval),
            toml_duration(timeout),
            toml_duration(opts.drain_grace.unwrap_or(Duration::from_secs(10))),
            opts.extra_config,
        );
        std::fs::write(&config, text).expect("write agent config");
        set_key(&config, &tunnel.key).await;
        Prepared {
            name,
            opts,
            config,
            dir,
        }
    }

    /// The config file.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// The agent (node) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `agent check --config …` to its end.
    pub async fn check(&self) -> CheckOutput {
        check(&self.config, &self.opts).await
    }
}

/// Runs `agent check --config FILE` with `opts`' environment to its end.
pub async fn check(config: &std::path::Path, opts: &AgentOptions) -> CheckOutput {
    let mut command = Command::new(bin_path("agent"));
    command.arg("check").arg("--config").arg(config);
    opts.apply_env(&mut command);
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true).stdin(Stdio::null());
    let out = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("agent check finishes")
        .expect("agent check runs");
    CheckOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
