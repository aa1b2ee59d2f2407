//! Story: an operator stops, restarts and configures the two processes, and
//! each keeps what the README promises about it.
//!
//! - SIGTERM to the gateway lets a request in flight finish with its whole
//!   answer within `server.grace_period`, while new callers are turned
//!   away, and the gateway exits 0; a request that outlasts the grace is cut
//!   when it ends, and the gateway still exits soon after.
//! - SIGTERM to an agent whose request outlasts `drain.grace`: the
//!   request is cut when the grace ends (502 naming the agent), the agent
//!   exits 0, and no new request reached it meanwhile.
//! - The admin listener (`admin.listen`) of either process: `off` listens
//!   on nothing; a default port already taken costs a warning, not the
//!   start; an address that is set and cannot be bound stops the start
//!   naming `admin.listen`.
//! - `AGENT__…` environment variables override the agent's file (its name
//!   as the gateway knows it) or set what the file leaves out (JSON logs);
//!   a malformed one stops the start naming the field.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::AsyncBufReadExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use tests::agent::Prepared;
use tests::body;
use tests::setup::WikiTunnel;
use tests::upstream::{self, Counter};
use tests::{
    bin_path, eventually, Agent, AgentOptions, Caller, Gateway, GatewayOptions, Reply, PATIENCE,
};

// ---------------------------------------------------------------------
// A local service that holds `/hold` until the test says so.

/// The answer a held request gets once released: large enough that a cut
/// answer cannot pass for a whole one.
fn held_answer() -> Bytes {
    (0..1_000_000u32).map(|i| (i % 251) as u8).collect()
}

/// A local service: `/hold` waits until [`Held::release`] (forever if it
/// never comes), then answers [`held_answer`]; any other path answers
/// `ok` at once.
struct Held {
    addr: SocketAddr,
    /// `/hold` requests received.
    arrived: Arc<Counter>,
    /// Requests of any other path received.
    others: Arc<Counter>,
    release: watch::Sender<bool>,
}

impl Held {
    async fn start() -> Held {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let arrived = Arc::new(Counter::default());
        let others = Arc::new(Counter::default());
        let (release, released) = watch::channel(false);
        let (a, o) = (arrived.clone(), others.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (arrived, others, released) = (a.clone(), o.clone(), released.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (arrived, others, mut released) =
                            (arrived.clone(), others.clone(), released.clone());
                        async move {
                            if req.uri().path() != "/hold" {
                                others.add(1);
                                return Ok::<_, Infallible>(Response::new(body::full("ok")));
                            }
                            arrived.add(1);
                            if released.wait_for(|r| *r).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                            Ok(Response::new(body::full(held_answer())))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Held {
            addr,
            arrived,
            others,
            release,
        }
    }

    async fn wait_held(&self) {
        self.arrived
            .wait_at_least(1, "held requests at the local service", PATIENCE)
            .await;
    }

    fn release(&self) {
        self.release.send_replace(true);
    }
}

/// A gateway (with `gateway`'s options) routing `wiki.test` to one agent
/// (with `agent`'s) in front of `service`, and a caller.
async fn tunnel_to(service: SocketAddr, gateway: GatewayOptions, agent: AgentOptions) -> Tunnel {
    let gateway = Gateway::start(gateway.route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let agent = Agent::connect(&gateway, &tunnel, service, agent).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    Tunnel {
        gateway,
        agent,
        caller,
    }
}

struct Tunnel {
    gateway: Gateway,
    agent: Agent,
    caller: Caller,
}

/// `GET /hold` in the background; the call may last a minute.
fn hold(caller: &Caller) -> tokio::task::JoinHandle<(Result<Reply, String>, Instant)> {
    let call = caller
        .get("wiki.test", "/hold")
        .timeout(Duration::from_secs(60))
        .try_send();
    tokio::spawn(async move {
        let r = call.await;
        (r, Instant::now())
    })
}

// ---------------------------------------------------------------------
// Gateway SIGTERM.

/// The gateway, told to stop at `asked`, exits 0 within its grace plus
/// 5 s.
async fn exits_0_within_its_grace(gateway: &mut Gateway, asked: Instant, grace: u64) {
    let status = gateway.terminate().await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gateway.logs());
    assert!(
        took < Duration::from_secs(grace + 5),
        "the gateway exited {took:?} after SIGTERM (grace {grace} s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_request_in_flight_finish_turns_new_callers_away_and_exits_0() {
    let grace = 6;
    let service = Held::start().await;
    let mut t = tunnel_to(
        service.addr,
        GatewayOptions::new().grace_period(Duration::from_secs(grace)),
        AgentOptions::new(),
    )
    .await;
    assert_eq!(
        t.caller.get("wiki.test", "/before").send().await.status,
        200
    );

    let held = hold(&t.caller);
    service.wait_held().await;
    let asked = Instant::now();
    t.gateway.begin_shutdown();

    // New callers are turned away while the held request is still served.
    let probe = |i: u32| {
        t.caller
            .get("wiki.test", &format!("/after-{i}"))
            .timeout(Duration::from_secs(2))
            .try_send()
    };
    let mut i = 0;
    eventually(
        "a new request after SIGTERM gets no answer",
        Duration::from_secs(grace - 1),
        || {
            i += 1;
            let call = probe(i);
            async move {
                match call.await {
                    Err(e) => Ok(e),
                    Ok(r) => Err(format!("answered {} {}", r.status, r.first_line())),
                }
            }
        },
    )
    .await;
    let again = probe(1000).await;
    assert!(
        again.is_err(),
        "answered after being turned away: {again:?}"
    );
    assert!(
        !held.is_finished(),
        "the request in flight ended before its service answered"
    );

    // Its service answers: the caller gets the whole answer, within the grace.
    service.release();
    let (reply, at) = tokio::time::timeout(PATIENCE, held)
        .await
        .expect("the held request ends")
        .unwrap();
    let reply = reply.unwrap_or_else(|e| panic!("the request in flight failed: {e}"));
    assert_eq!(reply.status, 200, "{}", reply.first_line());
    assert!(
        reply.body == held_answer(),
        "the answer was cut: {} of {} bytes",
        reply.body.len(),
        held_answer().len()
    );
    assert!(
        at.duration_since(asked) < Duration::from_secs(grace),
        "answered only {:?} after SIGTERM",
        at.duration_since(asked)
    );

    exits_0_within_its_grace(&mut t.gateway, asked, grace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_a_request_that_outlasts_the_grace_and_the_gateway_still_exits() {
    let grace = 3;
    let service = Held::start().await; // never released
    let mut t = tunnel_to(
        service.addr,
        GatewayOptions::new().grace_period(Duration::from_secs(grace)),
        AgentOptions::new(),
    )
    .await;
    let held = hold(&t.caller);
    service.wait_held().await;
    let asked = Instant::now();
    t.gateway.begin_shutdown();

    let (reply, at) = tokio::time::timeout(Duration::from_secs(grace + 10), held)
        .await
        .expect("the held request is cut")
        .unwrap();
    let after = at.duration_since(asked);
    // No answer at all (the connection closed) is cut too.
    if let Ok(r) = &reply {
        assert!(
            r.status != 200,
            "a request whose service never answered got a 200: {r:?}"
        );
    }
    assert!(
        after >= Duration::from_secs(grace) - Duration::from_millis(250),
        "cut {after:?} after SIGTERM, before the {grace} s grace ended: {reply:?}"
    );
    assert!(
        after < Duration::from_secs(grace + 5),
        "cut only {after:?} after SIGTERM (grace {grace} s): {reply:?}"
    );

    exits_0_within_its_grace(&mut t.gateway, asked, grace).await;
}

// ---------------------------------------------------------------------
// Agent drain grace.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_cuts_a_request_outlasting_its_grace_and_exits_0() {
    let grace = 3;
    let service = Held::start().await; // never released
    let mut t = tunnel_to(
        service.addr,
        GatewayOptions::new(),
        AgentOptions::new().drain_grace(Duration::from_secs(grace)),
    )
    .await;
    let held = hold(&t.caller);
    service.wait_held().await;

    let asked = Instant::now();
    t.agent.begin_terminate();
    t.agent.wait_event("draining", PATIENCE).await;
    t.gateway
        .wait_for("agent_draining", &[("agent", t.agent.name())])
        .await;

    // Draining: a new request is not given to it (and it is the only one).
    let during = t.caller.get("wiki.test", "/during").send().await;
    assert_eq!(during.status, 503, "{during:?}");
    assert!(during.header("retry-after").is_some(), "{during:?}");
    assert!(!held.is_finished(), "the held request ended at the drain");

    // The grace ends: the held request is cut, naming the agent.
    let (reply, at) = tokio::time::timeout(Duration::from_secs(grace + 10), held)
        .await
        .expect("the held request is cut")
        .unwrap();
    let after = at.duration_since(asked);
    let reply = reply.unwrap_or_else(|e| panic!("no answer for the cut request: {e}"));
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(
        reply.text().contains(t.agent.name()),
        "the 502 names the agent: {}",
        reply.text()
    );
    assert!(
        after >= Duration::from_secs(grace) - Duration::from_millis(250),
        "cut {after:?} after SIGTERM, before the {grace} s drain grace ended"
    );
    assert!(
        after < Duration::from_secs(grace + 5),
        "cut only {after:?} after SIGTERM (drain grace {grace} s)"
    );

    let status = t.agent.wait_exit().await;
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", t.agent.logs());
    assert!(
        took < Duration::from_secs(grace + 5),
        "the agent exited {took:?} after SIGTERM (drain grace {grace} s)"
    );
    t.agent.wait_event("stopped", PATIENCE).await;
    assert!(
        t.agent
            .full_logs()
            .contains("closing with requests still in flight"),
        "the agent says it left requests behind:\n{}",
        t.agent.logs()
    );
    t.gateway
        .wait_for("agent_disconnected", &[("agent", t.agent.name())])
        .await;
    assert_eq!(
        service.others.get(),
        0,
        "a request sent during the drain reached the draining agent's service"
    );
}

// ---------------------------------------------------------------------
// The admin listener.

/// The TCP ports process `pid` listens on (its sockets in LISTEN state,
/// from /proc).
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let mut inodes = BTreeSet::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd");
    for fd in fds.flatten() {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address, remote address, state (0A: LISTEN), ..., inode.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().unwrap_or("");
                ports.insert(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports
}

/// Holds `addr` (a default admin address) for the test; `None` when some
/// other process already holds it, which leaves it just as taken.
fn take(addr: &str) -> Option<std::net::TcpListener> {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => Some(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => None,
        Err(e) => panic!("bind {addr}: {e}"),
    }
}

/// A `gateway serve` or `agent run` started by the story itself, with its
/// stdout events collected and its stderr in a file; killed when dropped.
struct Spawned {
    child: tokio::process::Child,
    events: Arc<Mutex<Vec<Value>>>,
    changed: watch::Receiver<usize>,
    stderr: PathBuf,
}

impl Spawned {
    fn start(bin: &str, args: &[&str], config: &Path, env: &[(&str, &str)]) -> Spawned {
        let stderr = config.with_extension(format!("{bin}.stderr"));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let mut child = tokio::process::Command::new(bin_path(bin))
            .args(args)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (tx, changed) = watch::channel(0);
        let stdout = child.stdout.take().expect("piped stdout");
        let log = events.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str(&line).unwrap_or(Value::String(line));
                let mut events = log.lock().unwrap();
                events.push(v);
                tx.send_replace(events.len());
            }
        });
        Spawned {
            child,
            events,
            changed,
            stderr,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The first event named `name`; panics after [`PATIENCE`] or when the
    /// process exits without printing it.
    async fn wait_event(&mut self, name: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e["event"] == name) {
                return e;
            }
            let exited = self.child.try_wait().expect("poll child");
            if exited.is_some() || tokio::time::Instant::now() >= deadline {
                panic!(
                    "no {name} event ({}); events: {:?}\nstderr:\n{}",
                    match exited {
                        Some(s) => format!("exited with {s}"),
                        None => format!("still running after {PATIENCE:?}"),
                    },
                    self.events(),
                    self.stderr()
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), self.changed.changed()).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }
}

/// The address in `event[field]`.
fn addr_of(event: &Value, field: &str) -> SocketAddr {
    event[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {field} address in {event}"))
}

/// A tunnel and a caller in a gateway's store, and that gateway's config
/// with `[admin] listen` removed (unset, so the default applies); the
/// gateway that made them has stopped, so another can run on the store.
struct StoppedGateway {
    setup: Gateway,
    tunnel: tests::Tunnel,
    token: String,
    unset_admin: PathBuf,
}

impl StoppedGateway {
    async fn new() -> StoppedGateway {
        let mut setup = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
        let tunnel = setup.create_tunnel("acme", "wiki").await;
        let token = setup.create_caller("acme").await;
        let status = setup.terminate().await;
        assert!(status.success(), "{}", setup.logs());
        let text = std::fs::read_to_string(setup.config_path()).unwrap();
        let set = "[admin]\nlisten = \"127.0.0.1:0\"\n";
        assert!(text.contains(set), "{text}");
        let unset_admin = setup.config_path().with_file_name("unset-admin.toml");
        std::fs::write(&unset_admin, text.replace(set, "[admin]\n")).unwrap();
        StoppedGateway {
            setup,
            tunnel,
            token,
            unset_admin,
        }
    }

    /// `<store.path>.admin`, through which the CLI finds the admin API.
    fn runtime_file(&self) -> PathBuf {
        self.setup.config_path().with_file_name("gateway.db.admin")
    }

    /// Starts `gateway serve` with `config` and `env`, waits for `ready`,
    /// and shows that it serves: an agent connects to it and a caller's
    /// request goes through. Returns the process and its `ready` event.
    async fn serve(&self, config: &Path, env: &[(&str, &str)]) -> (Spawned, Value, Agent, Held) {
        let mut gateway = Spawned::start("gateway", &["serve"], config, env);
        let ready = gateway.wait_event("ready").await;
        let agents = addr_of(&ready, "agents");
        let service = Held::start().await;
        let url = format!("wss://localhost:{}/_tunnel/v1", agents.port());
        let agent = Agent::start(
            &self.setup,
            &self.tunnel,
            service.addr,
            AgentOptions::new().url(&url),
        )
        .await;
        agent.wait_event("connected", PATIENCE).await;
        gateway.wait_event("agent_connected").await;
        let caller = Caller::new(addr_of(&ready, "public"), Some(&self.token));
        let reply = caller.get("wiki.test", "/served").send().await;
        assert_eq!(reply.status, 200, "{reply:?}\n{}", gateway.stderr());
        (gateway, ready, agent, service)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_admin_listener_off_listens_nowhere() {
    // As the tests run it (port 0): three listeners, the admin one included.
    let on = Gateway::start(GatewayOptions::new()).await;
    let runtime_file = on.config_path().with_file_name("gateway.db.admin");
    assert!(runtime_file.exists(), "{}", runtime_file.display());
    assert_eq!(
        listening_ports(on.pid()),
        BTreeSet::from([
            on.public_addr().port(),
            on.agents_addr().port(),
            on.admin().port()
        ])
    );
    drop(on);

    let g = StoppedGateway::new().await;
    assert!(!g.runtime_file().exists());
    let (off, ready, _agent, _service) = g
        .serve(&g.unset_admin, &[("GATEWAY__ADMIN__LISTEN", "off")])
        .await;
    assert!(ready["admin"].is_null(), "ready reports an admin: {ready}");
    assert_eq!(
        listening_ports(off.pid()),
        BTreeSet::from([
            addr_of(&ready, "public").port(),
            addr_of(&ready, "agents").port()
        ]),
        "the gateway with admin.listen = off listens on more than its two listeners"
    );
    assert!(
        !g.runtime_file().exists(),
        "a gateway without an admin listener wrote {} for the CLI",
        g.runtime_file().display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_default_admin_port_costs_the_gateway_a_warning_not_its_start() {
    let g = StoppedGateway::new().await;
    let _held = take("127.0.0.1:9464");
    let (gateway, ready, _agent, _service) = g.serve(&g.unset_admin, &[]).await;
    assert!(ready["admin"].is_null(), "ready reports an admin: {ready}");
    let stderr = gateway.stderr();
    assert!(
        stderr.contains("admin listener not started")
            && stderr.contains("127.0.0.1:9464")
            && stderr.contains("taken"),
        "no warning naming the taken default address:\n{stderr}"
    );
    assert_eq!(
        listening_ports(gateway.pid()),
        BTreeSet::from([
            addr_of(&ready, "public").port(),
            addr_of(&ready, "agents").port()
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_address_the_gateway_cannot_bind_stops_its_start_naming_the_field() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (listen, expect) in [
        (taken.as_str(), "in use"),
        // A documentation address: no interface of this host has it.
        ("192.0.2.1:9464", "assign"),
        ("nowhere", "expected ip:port or `off`"),
    ] {
        let stderr = Gateway::start_expecting_failure(
            GatewayOptions::new().env("GATEWAY__ADMIN__LISTEN", listen),
        )
        .await;
        assert!(
            stderr.contains("admin.listen") && stderr.contains(listen) && stderr.contains(expect),
            "admin.listen = {listen}: stderr should name the field, the address and {expect:?}:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_admin_listener_off_taken_by_default_or_unbindable() {
    let t = WikiTunnel::start().await;
    // As the tests run it (port 0): the admin listener is all it listens on.
    let admin = t.agent.admin().await;
    assert_eq!(
        listening_ports(t.agent.pid()),
        BTreeSet::from([admin.port()])
    );

    // Off: it serves and listens on nothing.
    let off = Agent::connect(
        &t.gateway,
        &t.tunnel,
        t.wiki.addr(),
        AgentOptions::new().env("AGENT__ADMIN__LISTEN", "off"),
    )
    .await;
    assert!(
        !off.events()
            .snapshot()
            .iter()
            .any(|e| e["event"] == "admin"),
        "an agent with admin.listen = off reported an admin listener"
    );
    assert_eq!(listening_ports(off.pid()), BTreeSet::new());

    // Unset while its default port is taken: a warning, and it serves.
    let prepared = Prepared::new(&t.gateway, &t.tunnel, t.wiki.addr(), AgentOptions::new()).await;
    let text = std::fs::read_to_string(prepared.config_path()).unwrap();
    let set = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    assert!(text.contains(set), "{text}");
    let unset = prepared.config_path().with_file_name("unset-admin.toml");
    std::fs::write(&unset, text.replace(set, "[admin]\n")).unwrap();
    let held = take("127.0.0.1:9465");
    let mut agent = Spawned::start("agent", &["run"], &unset, &[]);
    agent.wait_event("connected").await;
    t.gateway
        .wait_for("agent_connected", &[("agent", prepared.name())])
        .await;
    let stderr = agent.stderr();
    assert!(
        stderr.contains("admin listener not started")
            && stderr.contains("127.0.0.1:9465")
            && stderr.contains("taken"),
        "no warning naming the taken default address:\n{stderr}"
    );
    assert!(
        !agent.events().iter().any(|e| e["event"] == "admin"),
        "{:?}",
        agent.events()
    );
    assert_eq!(listening_ports(agent.pid()), BTreeSet::new());
    drop(agent);
    drop(held);

    // Set to what it cannot bind: the start stops, naming the field.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (listen, expect) in [
        (taken.as_str(), "in use"),
        ("192.0.2.1:9465", "assign"),
        ("nowhere", "expected ip:port or `off`"),
    ] {
        let (status, stdout, stderr) =
            run_to_exit(prepared.config_path(), &[("AGENT__ADMIN__LISTEN", listen)]).await;
        assert!(
            !status.success(),
            "admin.listen = {listen}: the agent ran ({status})"
        );
        assert!(
            stderr.contains("admin.listen") && stderr.contains(listen) && stderr.contains(expect),
            "admin.listen = {listen}: stderr should name the field, the address and {expect:?}:\n{stderr}"
        );
        assert!(!stdout.contains("\"connected\""), "{stdout}");
    }
}

/// `agent run --config path` with `env`, which must exit within
/// [`PATIENCE`]: its status, stdout and stderr.
async fn run_to_exit(config: &Path, env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let run = tokio::process::Command::new(bin_path("agent"))
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the agent exits at once")
        .expect("run agent");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------
// Environment overrides of the agent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_environment_overrides_apply_and_a_malformed_one_stops_the_start() {
    let t = WikiTunnel::start().await;
    let wiki = upstream::echo("wiki-env").await;
    // The file names it `from-file` and says nothing of the log format.
    let agent = Agent::start(
        &t.gateway,
        &t.tunnel,
        wiki.addr(),
        AgentOptions::new()
            .name("from-file")
            .env("AGENT__TUNNEL__AGENT_NAME", "from-env")
            .env("AGENT__LOG__FORMAT", "json"),
    )
    .await;
    t.gateway
        .wait_for("agent_connected", &[("agent", "from-env")])
        .await;
    assert!(
        !t.gateway
            .events()
            .snapshot()
            .iter()
            .any(|e| e["agent"] == "from-file"),
        "the gateway knows the agent by its file's name"
    );
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    assert!(config.contains("\"from-file\"") && !config.contains("[log]"));

    // Its logs are JSON lines, as only the environment asked.
    let logs = eventually("the agent's connection logged", PATIENCE, || async {
        let logs = agent.full_logs();
        if logs.contains("connected to gateway") {
            Ok(logs)
        } else {
            Err(logs)
        }
    })
    .await;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.as_ref().is_ok_and(Value::is_object),
            "not a JSON log line: {line}"
        );
    }

    // A malformed value: refused at start, naming the field and where it
    // came from.
    let (status, stdout, stderr) =
        run_to_exit(agent.config_path(), &[("AGENT__RUNTIME__THREADS", "two")]).await;
    assert!(!status.success(), "the agent ran: {status}\n{stderr}");
    assert!(
        stderr.contains("runtime.threads") && stderr.contains("environment"),
        "stderr should name runtime.threads and the environment:\n{stderr}"
    );
    assert!(!stdout.contains("\"connected\""), "{stdout}");
}
