//! The benchmark: one local origin, measured directly, through the
//! gateway and an agent (TLS 1.3 tunnel), and through two peers (nginx as
//! a reverse proxy, rathole over WebSocket+TLS: [`peers`]) in the same run,
//! so the ratios compare like with like on whatever machine runs it.
//!
//! `cargo run --release -p bench --bin bench [-- --json FILE --secs N --no-peers --profile]`
//!
//! Load comes from `wrk` (installed by `scripts/bench.sh`); bulk transfers
//! use an in-process hyper client. It exits non-zero only when it could
//! not measure; a missed target, or a figure where a peer is ahead, is
//! reported, not fatal. [`report`] prints the table, [`profile`] counts
//! system calls per request with strace.

mod peers;
mod profile;
mod report;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use report::{Figure, Goal, NA};
use tests::{Agent, AgentOptions, Gateway, GatewayOptions, Route};

const MIB: u64 = 1 << 20;
const BULK: u64 = 100 * MIB;
const CHUNK: usize = 64 << 10;

#[derive(Debug, Parser)]
#[command(about = "Direct vs tunnel vs peers (nginx, rathole over WebSocket+TLS) benchmark")]
struct Args {
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 8)]
    secs: u64,
    /// Rounds of each figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Gateway worker threads (`server.threads`); the config default if unset.
    #[arg(long)]
    gateway_threads: Option<usize>,
    /// Keep the gateway's config, store and log (one access line per
    /// request, with `policy_us`) in this folder.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
    /// Measure only these groups (comma-separated): rps, latency,
    /// no-plugins, bulk, new-conn, rss-4g, idle-agents, traced, relay,
    /// profile. All but profile when unset.
    #[arg(long, value_delimiter = ',', value_parser = [
        "rps", "latency", "no-plugins", "bulk", "new-conn", "rss-4g", "idle-agents", "traced",
        "relay", "profile",
    ])]
    only: Vec<String>,
    /// Skip the peers (nginx, rathole): only direct and the tunnel.
    #[arg(long)]
    no_peers: bool,
    /// Also count system calls per request of every process on each path
    /// (strace; skipped with a note when strace cannot attach).
    #[arg(long)]
    profile: bool,
}

impl Args {
    /// Whether group `g` runs: those `--only` names (every one but the
    /// profile when unset), plus the profile with `--profile`.
    fn wants(&self, g: &str) -> bool {
        let listed = if self.only.is_empty() {
            g != "profile"
        } else {
            self.only.iter().any(|o| o == g)
        };
        listed || (g == "profile" && self.profile)
    }
}

type BenchBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn chunk() -> Bytes {
    Bytes::from(vec![b'x'; CHUNK])
}

fn stream_body(total: u64) -> BenchBody {
    counted_body(total, Arc::new(AtomicU64::new(0)))
}

/// `total` bytes in 64 KiB frames, adding each frame's length to `sent`
/// as it is handed over.
fn counted_body(total: u64, sent: Arc<AtomicU64>) -> BenchBody {
    let block = chunk();
    let s = futures_util::stream::unfold(total, move |left| {
        let block = block.clone();
        let sent = sent.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64) as usize;
            sent.fetch_add(n as u64, Ordering::Relaxed);
            Some((
                Ok::<_, Infallible>(Frame::data(block.slice(..n))),
                left - n as u64,
            ))
        }
    });
    BodyExt::boxed(StreamBody::new(s))
}

/// The origin: `/1k` (1 KiB), `/bytes/N` (N bytes, streamed), `/upload`
/// (drains the body, answers its length).
async fn origin_handle(req: Request<Incoming>) -> Result<Response<BenchBody>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/1k" {
        return Ok(Response::new(
            Full::new(Bytes::from(vec![b'k'; 1024])).boxed(),
        ));
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        let mut r = Response::new(stream_body(n));
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, n.into());
        return Ok(r);
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(Ok(f)) = body.frame().await {
            if let Some(d) = f.data_ref() {
                n += d.len() as u64;
            }
        }
        return Ok(Response::new(Full::new(Bytes::from(n.to_string())).boxed()));
    }
    let mut r = Response::new(Full::new(Bytes::from_static(b"not found")).boxed());
    *r.status_mut() = http::StatusCode::NOT_FOUND;
    Ok(r)
}

async fn start_origin() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), hyper::service::service_fn(origin_handle))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Where a request goes: the origin directly, or the gateway with the
/// route's Host and a caller token.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    headers: Vec<(String, String)>,
}

impl Target {
    fn wrk_args(&self) -> Vec<String> {
        self.headers
            .iter()
            .flat_map(|(k, v)| ["-H".to_string(), format!("{k}: {v}")])
            .collect()
    }
}

fn wrk(
    target: &Target,
    path: &str,
    conns: u32,
    secs: u64,
    extra: &[&str],
) -> anyhow::Result<String> {
    let threads = conns.min(2);
    let out = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .args(target.wrk_args())
        .args(extra)
        .arg(format!("http://{}{path}", target.addr))
        .output()
        .context("running wrk (install it: apt-get install wrk, or run scripts/bench.sh)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx or 3xx responses") {
        bail!("wrk saw error responses:\n{text}");
    }
    Ok(text)
}

fn parse_rps(text: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

fn parse_p50_us(text: &str) -> anyhow::Result<f64> {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("50%"))
        .map(str::trim)
        .with_context(|| format!("no 50% latency in wrk output:\n{text}"))?;
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1_000_000.0)
    } else {
        bail!("unknown latency unit in {v}")
    };
    Ok(num.parse::<f64>()? * mult)
}

async fn send(
    target: &Target,
    req: http::request::Builder,
    body: BenchBody,
) -> anyhow::Result<Response<Incoming>> {
    let tcp = tokio::net::TcpStream::connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = req.body(body)?;
    // HTTP/1.1 requires a Host (nginx answers 400 without one); the
    // target's own headers may name another.
    req.headers_mut()
        .insert(http::header::HOST, target.addr.to_string().parse()?);
    for (k, v) in &target.headers {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    Ok(sender.send_request(req).await?)
}

/// MiB/s downloading `total` bytes, counting them into `done` as they
/// arrive.
async fn download_counted(
    target: &Target,
    total: u64,
    done: Arc<AtomicU64>,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let resp = send(
        target,
        Request::get(format!("/bytes/{total}")),
        Full::new(Bytes::new()).boxed(),
    )
    .await?;
    if resp.status() != 200 {
        bail!("download answered {}", resp.status());
    }
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Some(d) = f?.data_ref() {
            n += d.len() as u64;
            done.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
    }
    if n != total {
        bail!("download got {n} bytes of {total}");
    }
    Ok(total as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

/// MiB/s uploading `total` bytes, counting them into `done` as they are
/// handed to the connection.
async fn upload_counted(target: &Target, total: u64, done: Arc<AtomicU64>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let resp = send(
        target,
        Request::post("/upload").header(http::header::CONTENT_LENGTH, total),
        counted_body(total, done),
    )
    .await?;
    let status = resp.status();
    let got = resp.into_body().collect().await?.to_bytes();
    if status != 200 || got != total.to_string().as_bytes() {
        bail!(
            "upload answered {status}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(total as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

async fn download(target: &Target) -> anyhow::Result<f64> {
    download_counted(target, BULK, Arc::new(AtomicU64::new(0))).await
}

async fn upload(target: &Target) -> anyhow::Result<f64> {
    upload_counted(target, BULK, Arc::new(AtomicU64::new(0))).await
}

/// Moves `total` bytes through `target` (down or up) while sampling the
/// summed RSS of `pids` every 20 ms, and returns how far RSS rose with the
/// size of the transfer, in MiB: the median of the samples over the last
/// quarter of the bytes minus the median over the second quarter (buffers
/// and pools are warm by then). The allocator returns and takes pages in
/// steps of a few MiB either way; a leak or a buffer growing with the
/// transfer shows as a rise between the two.
async fn transfer_rss_growth(
    target: &Target,
    pids: &[u32],
    total: u64,
    up: bool,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let (t, d) = (target.clone(), done.clone());
    let transfer = tokio::spawn(async move {
        if up {
            upload_counted(&t, total, d).await
        } else {
            download_counted(&t, total, d).await
        }
    });
    let rss = || pids.iter().map(|p| rss_kib(*p)).sum::<f64>();
    let (mut second, mut last) = (Vec::new(), Vec::new());
    while !transfer.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = rss();
        let at = done.load(Ordering::Relaxed);
        if std::env::var_os("BENCH_RSS_TRACE").is_some() {
            eprintln!(
                "rss {:>6} MiB at {:>5} MiB",
                (now / 1024.0) as u64,
                at >> 20
            );
        }
        if (total / 4..total / 2).contains(&at) {
            second.push(now);
        } else if at >= total / 4 * 3 {
            last.push(now);
        }
    }
    transfer.await??;
    if second.is_empty() || last.is_empty() {
        bail!("the transfer was too quick to sample RSS along it");
    }
    Ok((median(last) - median(second)) / 1024.0)
}

/// CPU time (user + system) of `pid` so far, in seconds.
fn cpu_secs(pid: u32, ticks_per_sec: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name (which may hold spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13
    // after the state field that follows the name.
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / ticks_per_sec)
}

fn clock_ticks() -> anyhow::Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn parse_requests(text: &str) -> anyhow::Result<f64> {
    text.lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .with_context(|| format!("no request count in wrk output:\n{text}"))
}

/// Connects `n` more agents (the agent's own dial and session code, in
/// this process, under names `idle-N`) to the tunnel of the agent whose
/// config is `agent_cfg`, and returns the gateway's RSS growth per agent
/// in KiB once all are connected and idle. They disconnect when dropped.
async fn idle_agents(
    gateway: &Gateway,
    agent_cfg: &std::path::Path,
    n: usize,
) -> anyhow::Result<(f64, tokio::task::JoinSet<()>)> {
    let base = agent::config::AgentConfig::load(agent_cfg)?;
    let key = Arc::new(agent::keystore::load_key(&base.tunnel)?);
    let url = Arc::new(base.gateway_url()?);
    let tls = agent::dial::tls_config(&base)?;
    let connected = || async {
        tests::scrape::metrics(gateway.admin())
            .await
            .sum("tunnel_gateway_agents_connected", &[])
    };
    let start_count = connected().await;
    let before = rss_kib(gateway.pid());
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    // The gateway limits handshakes in progress; stay well under it.
    let permits = Arc::new(tokio::sync::Semaphore::new(32));
    let failed = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut cfg = base.clone();
        cfg.tunnel.agent_name = Some(format!("idle-{i}"));
        let (key, url, tls, permits, drain, failed) = (
            key.clone(),
            url.clone(),
            tls.clone(),
            permits.clone(),
            drain_rx.clone(),
            failed.clone(),
        );
        set.spawn(async move {
            let permit = permits.acquire_owned().await;
            let (ws, welcome) = match agent::dial::dial(&cfg, &url, None, tls, &key).await {
                Ok(c) => c,
                Err(e) => {
                    *failed.lock().unwrap() = Some(e.to_string());
                    return;
                }
            };
            drop(permit);
            agent::session::serve(&cfg, ws, &welcome.tunnel_name, drain).await;
        });
    }
    // Keep the drain sender with the agents: dropping it is no drain.
    set.spawn(async move {
        std::future::pending::<()>().await;
        drop(drain_tx);
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = connected().await;
        if now >= start_count + n as f64 {
            break;
        }
        if let Some(e) = failed.lock().unwrap().clone() {
            bail!("an idle agent could not connect: {e}");
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} idle agents connected", now - start_count);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle for a few heartbeats' worth of time; the highest RSS counts.
    let mut after = rss_kib(gateway.pid());
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = after.max(rss_kib(gateway.pid()));
    }
    Ok(((after - before) / n as f64, set))
}

/// Median `policy_us` of the access lines of requests that ran plugins.
fn policy_us_median(log: &std::path::Path) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(log).context("reading the gateway log")?;
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            l.split_once("policy_us=")?
                .1
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .filter(|v: &f64| *v > 0.0)
        .collect();
    if values.is_empty() {
        bail!("no request with plugins in {}", log.display());
    }
    Ok(median(values))
}

/// The median; not measured (NaN) for no values.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return NA;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Cargo, without the variables `cargo run` gives the bench about its own
/// package (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `OUT_DIR`, ...): build
/// scripts such as ring's rerun when those change, so a cargo started with
/// them rebuilt ring and everything above it (pingora, the gateway), and
/// the next `cargo build` outside rebuilt it all again.
fn cargo_command() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || matches!(
                k,
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
            )
        {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Builds the gateway and agent in the profile this benchmark runs in, so
/// `cargo run --release -p bench --bin bench` measures release binaries.
fn build_binaries() -> anyhow::Result<()> {
    let release = std::env::current_exe()?
        .components()
        .any(|c| c.as_os_str() == "release");
    let mut cmd = cargo_command();
    cmd.args(["build", "-q", "-p", "gateway", "-p", "agent", "--bins"]);
    if release {
        cmd.arg("--release");
    } else {
        eprintln!("note: debug build; run with --release for meaningful figures");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building gateway and agent failed");
    }
    Ok(())
}

/// Runs `f` on each target in turn, `rounds` times over, so host noise
/// hits every path alike, and returns each target's median in order.
async fn alternating<F, Fut>(rounds: usize, targets: &[Target], f: F) -> anyhow::Result<Vec<f64>>
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut values = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (v, t) in values.iter_mut().zip(targets) {
            v.push(f(t.clone()).await?);
        }
    }
    Ok(values.into_iter().map(median).collect())
}

/// Direct, ours, nginx, rathole: NaN for a path not measured.
fn four(values: Vec<f64>) -> [f64; 4] {
    let mut out = [NA; 4];
    for (o, v) in out.iter_mut().zip(values) {
        *o = v;
    }
    out
}

/// A path to the origin and the processes that carry it (none direct).
#[derive(Clone)]
struct Subject {
    target: Target,
    pids: Vec<u32>,
}

/// CPU time (user + system) of all `pids` so far, in seconds.
fn cpu_of(pids: &[u32], ticks: f64) -> anyhow::Result<f64> {
    pids.iter().map(|p| cpu_secs(*p, ticks)).sum()
}

/// The bench's own folder for the peers' binaries: `<target>/bench-tools`
/// (the bench runs from `<target>/<profile>/bench`).
fn tools_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .context("the bench runs from <target>/<profile>/")?;
    Ok(target.join("bench-tools"))
}

/// Installs wrk through the project's setup script when it is missing, so
/// `cargo run --release -p bench --bin bench` works on a fresh machine.
fn ensure_wrk() -> anyhow::Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    let setup = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/setup.sh");
    eprintln!("wrk is missing; installing it with {}", setup.display());
    let status = Command::new("bash").arg(&setup).arg("wrk").status()?;
    if !status.success() {
        bail!("could not install wrk (apt-get install wrk)");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure_wrk()?;
    build_binaries()?;
    // The peers' binaries before anything runs: rathole is built once
    // (minutes), and a peer that cannot be had stops the run here.
    let peer_bins = if args.no_peers {
        None
    } else {
        Some((
            peers::nginx_binary()?,
            peers::rathole_binary(&tools_dir()?)?,
        ))
    };
    let origin = start_origin().await?;
    let ticks = clock_ticks()?;
    // Two routes into the same tunnel: the measured one with org-check,
    // authz and oauth1, and one without plugins for comparison.
    let mut opts = GatewayOptions::new()
        .with_route(Route::new("bench.test", "bench").max_body_bytes(1 << 40))
        .with_route(
            Route::new("policy.test", "bench")
                .max_body_bytes(1 << 40)
                .plugin("org-check", "")
                .plugin(
                    "authz",
                    r#"{"rules": [{"methods": ["GET", "HEAD", "POST"]}]}"#,
                )
                .plugin("oauth1", r#"{"allow_unsigned": true}"#),
        );
    // The gateway's folder: its access log gives the chain's own time.
    let scratch = tempfile::tempdir()?;
    let work_dir = args
        .keep_dir
        .clone()
        .unwrap_or_else(|| scratch.path().to_path_buf());
    opts = opts.work_dir(&work_dir);
    if let Some(n) = args.gateway_threads {
        opts = opts.env("GATEWAY__SERVER__THREADS", &n.to_string());
    }
    // The idle-agents group connects a thousand agents of one tunnel from
    // one address, 32 handshakes at a time: above both default budgets.
    opts = opts
        .agents_setting("max_agents_per_tunnel", "2000")
        .agents_setting("max_pending_handshakes_per_source", "64");
    let gateway = Gateway::start(opts).await;
    let tunnel = gateway.create_tunnel("bench-org", "bench").await;
    let token = gateway.create_caller("bench-org").await;
    let agent = Agent::connect(&gateway, &tunnel, origin, AgentOptions::new()).await;
    let pids = [gateway.pid(), agent.pid()];
    // nginx gets one worker per proxy thread of the gateway (its
    // `server.threads`, half the cores by default): the same share of the
    // machine for callers' requests. rathole runs as shipped (tokio's
    // default runtime: a thread per core).
    let gateway_threads = args.gateway_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    });
    let peers = match &peer_bins {
        Some((nginx, rathole)) => Some((
            peers::Nginx::start(nginx, origin, gateway_threads).await?,
            peers::Rathole::start(rathole, origin).await?,
        )),
        None => None,
    };

    let direct = Target {
        addr: origin,
        headers: vec![],
    };
    let bare = Target {
        addr: gateway.public_addr(),
        headers: vec![
            ("Host".into(), "bench.test".into()),
            ("Proxy-Authorization".into(), format!("Bearer {token}")),
        ],
    };
    let through = Target {
        addr: gateway.public_addr(),
        headers: vec![
            ("Host".into(), "policy.test".into()),
            ("Proxy-Authorization".into(), format!("Bearer {token}")),
        ],
    };
    // Every path to the origin, in the order each round visits them:
    // direct, ours, then nginx and rathole.
    let mut subjects = vec![
        Subject {
            target: direct.clone(),
            pids: vec![],
        },
        Subject {
            target: through.clone(),
            pids: pids.to_vec(),
        },
    ];
    if let Some((nginx, rathole)) = &peers {
        for (addr, pids) in [(nginx.addr, nginx.pids()), (rathole.addr, rathole.pids())] {
            subjects.push(Subject {
                target: Target {
                    addr,
                    headers: vec![],
                },
                pids,
            });
        }
    }
    let targets: Vec<Target> = subjects.iter().map(|s| s.target.clone()).collect();
    let secs = args.secs;
    let rounds = args.rounds.max(1);
    // Warm up every path (pools, caches, page faults).
    for t in targets.iter().chain([&bare]) {
        wrk(t, "/1k", 16, 1, &[])?;
    }
    // Idle memory of each process once every path has served: the server
    // side (gateway; nginx master and workers; rathole's server) and the
    // client side (agent; rathole's client).
    let mut idle_rss = vec![
        ("gateway".to_string(), rss_kib(gateway.pid())),
        ("agent".to_string(), rss_kib(agent.pid())),
    ];
    let (mut idle_nginx, mut idle_rathole) = ((NA, NA), (NA, NA));
    if let Some((nginx, rathole)) = &peers {
        let named = nginx.named_pids().into_iter().chain(rathole.named_pids());
        idle_rss.extend(named.map(|(name, pid)| (name, rss_kib(pid))));
        idle_nginx = (nginx.pids().iter().map(|p| rss_kib(*p)).sum(), NA);
        idle_rathole = (rss_kib(rathole.server_pid()), rss_kib(rathole.client_pid()));
    }

    let mut figures = Vec::new();
    let mut add = |f: Figure| {
        eprintln!(
            "  {:<30} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {}",
            f.name, f.direct, f.tunnel, f.nginx, f.rathole, f.unit
        );
        figures.push(f);
    };

    let want = |g: &str| args.wants(g);
    let (mut cpu_us_per_req, mut plugin_chain_us, mut rss_growth_4g_mib, mut idle_agent_kib) =
        (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    let mut plugins_p50 = f64::NAN;
    if want("rps") {
        // Requests per second at 64 connections, with the CPU time per
        // request of each path's processes over the same runs.
        let mut rps = vec![Vec::new(); subjects.len()];
        let mut cpu = vec![Vec::new(); subjects.len()];
        for _ in 0..rounds {
            for (i, s) in subjects.iter().enumerate() {
                let before = cpu_of(&s.pids, ticks)?;
                let out = wrk(&s.target, "/1k", 64, secs, &[])?;
                let after = cpu_of(&s.pids, ticks)?;
                rps[i].push(parse_rps(&out)?);
                if !s.pids.is_empty() {
                    cpu[i].push((after - before) * 1e6 / parse_requests(&out)?);
                }
            }
        }
        let [d, t, n, r] = four(rps.into_iter().map(median).collect());
        let [_, ct, cn, cr] = four(cpu.into_iter().map(median).collect());
        cpu_us_per_req = ct;
        add(Figure::new("rps_c64", "req/s", d, t, Goal::Ratio(0.5)).peers(n, r));
        add(Figure::new("cpu_us_per_req", "us", NA, ct, Goal::AtMost(25.0)).peers(cn, cr));
    }
    if want("latency") {
        let v = alternating(rounds, &targets, |tg| async move {
            parse_p50_us(&wrk(&tg, "/1k", 1, secs.div_ceil(2), &[])?)
        })
        .await?;
        let [d, t, n, r] = four(v);
        add(Figure::new("latency_c1_p50_us", "us", d, t, Goal::Report).peers(n, r));
        plugins_p50 = t;
    }
    if want("no-plugins") {
        // The same two through the route without plugins.
        let pair = [direct.clone(), bare.clone()];
        let [d, t, ..] = four(
            alternating(rounds, &pair, |tg| async move {
                parse_rps(&wrk(&tg, "/1k", 64, secs, &[])?)
            })
            .await?,
        );
        add(Figure::new(
            "rps_c64_no_plugins",
            "req/s",
            d,
            t,
            Goal::Report,
        ));
        let [d, t, ..] = four(
            alternating(rounds, &pair, |tg| async move {
                parse_p50_us(&wrk(&tg, "/1k", 1, secs.div_ceil(2), &[])?)
            })
            .await?,
        );
        add(Figure::new(
            "latency_c1_p50_us_no_plugins",
            "us",
            d,
            t,
            Goal::Report,
        ));
        add(Figure::new(
            "plugin_latency_added_us",
            "us",
            NA,
            plugins_p50 - t,
            Goal::Report,
        ));
    }
    // The chain's own time per request, as the gateway measures it around
    // the plugin calls (`policy_us` in its access log of the runs above).
    if want("rps") || want("latency") {
        // Access lines turned off (`RUST_LOG=...,access=off`) leave nothing
        // to read: reported as not measured.
        plugin_chain_us = policy_us_median(&work_dir.join("gateway.log")).unwrap_or_else(|e| {
            eprintln!("plugin_chain_us not measured: {e:#}");
            f64::NAN
        });
        add(Figure::new(
            "plugin_chain_us",
            "us",
            NA,
            plugin_chain_us,
            Goal::AtMost(10.0),
        ));
    }

    if want("bulk") {
        let v = alternating(rounds, &targets, |tg| async move { download(&tg).await }).await?;
        let [d, t, n, r] = four(v);
        add(Figure::new("download_100m", "MiB/s", d, t, Goal::Ratio(0.4)).peers(n, r));
        let v = alternating(rounds, &targets, |tg| async move { upload(&tg).await }).await?;
        let [d, t, n, r] = four(v);
        add(Figure::new("upload_100m", "MiB/s", d, t, Goal::Ratio(0.4)).peers(n, r));
    }
    if want("new-conn") {
        let v = alternating(rounds, &targets, |tg| async move {
            parse_rps(&wrk(&tg, "/1k", 16, secs, &["-H", "Connection: close"])?)
        })
        .await?;
        let [d, t, n, r] = four(v);
        add(Figure::new("new_conn_per_s", "conn/s", d, t, Goal::Ratio(0.5)).peers(n, r));
    }
    if want("rss-4g") {
        // 4 GiB each way: the gateway's and agent's RSS must not grow with
        // the size of a transfer.
        let down = transfer_rss_growth(&through, &pids, 4 << 30, false).await?;
        let up = transfer_rss_growth(&through, &pids, 4 << 30, true).await?;
        rss_growth_4g_mib = down.max(up);
        add(Figure::new(
            "rss_growth_4g_mib",
            "MiB",
            NA,
            rss_growth_4g_mib,
            Goal::AtMost(4.0),
        ));
    }
    add(Figure::new(
        "rss_idle_server_kib",
        "KiB",
        NA,
        idle_rss[0].1,
        Goal::Report,
    )
    .peers(idle_nginx.0, idle_rathole.0));
    add(Figure::new(
        "rss_idle_client_kib",
        "KiB",
        NA,
        idle_rss[1].1,
        Goal::Report,
    )
    .peers(idle_nginx.1, idle_rathole.1));
    let g = rss_kib(gateway.pid());
    let a = rss_kib(agent.pid());
    add(Figure::new("rss_gateway_kib", "KiB", NA, g, Goal::Report));
    add(Figure::new("rss_agent_kib", "KiB", NA, a, Goal::Report));

    let mut profile_lines = Vec::new();
    if want("profile") {
        // Before the idle agents, so the gateway holds only the one agent.
        let mut paths = vec![(
            "tunnel",
            through.clone(),
            vec![
                ("gateway".to_string(), gateway.pid()),
                ("agent".to_string(), agent.pid()),
            ],
        )];
        if let Some((nginx, rathole)) = &peers {
            paths.push(("nginx", subjects[2].target.clone(), nginx.named_pids()));
            paths.push(("rathole", subjects[3].target.clone(), rathole.named_pids()));
        }
        match profile::run(&paths, secs)? {
            Ok(lines) => profile_lines = lines,
            Err(why) => eprintln!("profile skipped: {why}"),
        }
    }

    if want("idle-agents") {
        // 1,000 more agents on the tunnel, connected and idle.
        let (kib, idle) = idle_agents(&gateway, agent.config_path(), 1000).await?;
        idle_agent_kib = kib;
        add(Figure::new(
            "idle_agent_kib",
            "KiB",
            NA,
            idle_agent_kib,
            Goal::AtMost(16.0),
        ));
        drop(idle);
    }
    drop(peers);
    drop(agent);
    drop(gateway);

    if want("traced") {
        // Tracing on: a second gateway and agent exporting every span (sampling
        // 1.0) to an OTLP receiver in this process, through the plugin route.
        let collector = tests::otlp::Collector::start().await;
        let export = |endpoint: String, protocol: &str| {
            format!("[telemetry]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n")
        };
        let traced_gateway = Gateway::start(
            GatewayOptions::new()
                .with_route(
                    Route::new("policy.test", "bench")
                        .plugin("org-check", "")
                        .plugin("authz", r#"{"rules": [{"methods": ["GET", "HEAD"]}]}"#)
                        .plugin("oauth1", r#"{"allow_unsigned": true}"#),
                )
                .extra_config(&export(collector.grpc_endpoint(), "grpc")),
        )
        .await;
        let tunnel = traced_gateway.create_tunnel("bench-org", "bench").await;
        let token = traced_gateway.create_caller("bench-org").await;
        let _traced_agent = Agent::connect(
            &traced_gateway,
            &tunnel,
            origin,
            AgentOptions::new().extra_config(&export(collector.http_endpoint(), "http/protobuf")),
        )
        .await;
        let traced = Target {
            addr: traced_gateway.public_addr(),
            headers: vec![
                ("Host".into(), "policy.test".into()),
                ("Proxy-Authorization".into(), format!("Bearer {token}")),
            ],
        };
        wrk(&traced, "/1k", 16, 1, &[])?;
        let [d, t, ..] = four(
            alternating(rounds, &[direct.clone(), traced], |tg| async move {
                parse_rps(&wrk(&tg, "/1k", 64, secs, &[])?)
            })
            .await?,
        );
        add(Figure::new("rps_c64_traced", "req/s", d, t, Goal::Report));
        let m = tests::scrape::metrics(traced_gateway.admin()).await;
        let exported = m.sum("tunnel_gateway_otel_spans_exported_total", &[]);
        let dropped = m.sum("tunnel_gateway_otel_spans_dropped_total", &[]);
        add(Figure::new(
            "traced_spans_dropped_pct",
            "%",
            NA,
            100.0 * dropped / (exported + dropped).max(1.0),
            Goal::Report,
        ));
    }
    if want("relay") {
        // Two gateway instances on a throwaway PostgreSQL, the agent on the
        // first: the same route (no plugins) reached at the first (local)
        // and at the second (relayed one hop over mutual TLS), with the
        // CPU time of every process on each path.
        let pg = tests::pg::OwnCluster::start().await;
        let shared = tempfile::tempdir()?;
        let kek = shared.path().join("kek");
        let pki = tests::pki::Pki::generate();
        let instance = |i: usize| {
            let mut o = GatewayOptions::new()
                .pki(pki.clone())
                .store_url(&pg.url)
                .kek_file(&kek)
                .with_route(Route::new("bench.test", "bench").max_body_bytes(1 << 40))
                .cluster(&pki, &format!("bench-{i}"), Duration::from_secs(6));
            if let Some(n) = args.gateway_threads {
                o = o.env("GATEWAY__SERVER__THREADS", &n.to_string());
            }
            o
        };
        let first = Gateway::start(instance(0)).await;
        let second = Gateway::start(instance(1)).await;
        let t = first.create_tunnel("bench-org", "bench").await;
        let tok = first.create_caller("bench-org").await;
        let near = Agent::connect(&first, &t, origin, AgentOptions::new()).await;
        let at = |g: &Gateway| Target {
            addr: g.public_addr(),
            headers: vec![
                ("Host".into(), "bench.test".into()),
                ("Proxy-Authorization".into(), format!("Bearer {tok}")),
            ],
        };
        let (local, relayed) = (at(&first), at(&second));
        // The second instance relays once it has read the first's presence.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let req = Request::get("/1k");
            let empty = Full::new(Bytes::new()).map_err(|e| match e {}).boxed();
            if send(&relayed, req, empty).await?.status() == 200 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the second instance did not relay within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let paths = [
            (direct.clone(), vec![]),
            (local.clone(), vec![first.pid(), near.pid()]),
            (relayed.clone(), vec![first.pid(), second.pid(), near.pid()]),
        ];
        for (t, _) in &paths {
            wrk(t, "/1k", 16, 1, &[])?;
        }
        let mut rps = vec![Vec::new(); 3];
        let mut cpu = vec![Vec::new(); 3];
        for _ in 0..rounds {
            for (i, (t, pids)) in paths.iter().enumerate() {
                let before = cpu_of(pids, ticks)?;
                let out = wrk(t, "/1k", 64, secs, &[])?;
                anyhow::ensure!(
                    !out.contains("Non-2xx"),
                    "relay group: failed requests\n{out}"
                );
                let after = cpu_of(pids, ticks)?;
                rps[i].push(parse_rps(&out)?);
                cpu[i].push((after - before) * 1e6 / parse_requests(&out)?);
            }
        }
        let m: Vec<f64> = rps.into_iter().map(median).collect();
        let c: Vec<f64> = cpu.into_iter().map(median).collect();
        add(Figure::new(
            "relay_local_rps_c64",
            "req/s",
            m[0],
            m[1],
            Goal::Report,
        ));
        add(Figure::new(
            "relay_relayed_rps_c64",
            "req/s",
            m[0],
            m[2],
            Goal::Report,
        ));
        add(Figure::new(
            "relay_local_cpu_us_per_req",
            "us",
            NA,
            c[1],
            Goal::Report,
        ));
        add(Figure::new(
            "relay_relayed_cpu_us_per_req",
            "us",
            NA,
            c[2],
            Goal::Report,
        ));
        add(Figure::new(
            "relay_rps_relayed_over_local",
            "x",
            NA,
            m[2] / m[1],
            Goal::Report,
        ));
        add(Figure::new(
            "relay_cpu_relayed_over_local",
            "x",
            NA,
            c[2] / c[1],
            Goal::Report,
        ));
        drop((near, second, first));
    }
    print!("{}", report::table(&figures, peer_bins.is_some()));
    if !profile_lines.is_empty() {
        let how = format!("wrk {secs} s on 16 connections per path");
        print!("\n{}", profile::table(&how, &profile_lines));
    }

    if let Some(path) = args.json {
        let num = report::num;
        let figs: Vec<_> = figures.iter().map(report::json).collect();
        let rss: serde_json::Map<_, _> = idle_rss
            .iter()
            .map(|(name, kib)| (name.clone(), num(*kib)))
            .collect();
        let peers_json = peer_bins.as_ref().map(|_| {
            serde_json::json!({
                "nginx": {"workers": gateway_threads, "upstream_keepalive": true,
                          "access_log": "buffered 64k, flushed every second"},
                "rathole": {"version": peers::RATHOLE_VERSION, "features": peers::RATHOLE_FEATURES,
                            "transport": "websocket, tls = true (native-tls: OpenSSL)"},
            })
        });
        let profile_json: Vec<_> = profile_lines.iter().map(profile::Line::json).collect();
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::json!({
                "cpu_us_per_req": num(cpu_us_per_req),
                "idle_agent_kib": num(idle_agent_kib),
                "rss_growth_4g_mib": num(rss_growth_4g_mib),
                "plugin_chain_us": num(plugin_chain_us),
                "rss_idle_kib": rss,
                "peers": peers_json,
                "figures": figs,
                "profile": profile_json,
            }))?,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod checks {
    use super::*;

    const WRK: &str = "Running 8s test @ http://127.0.0.1:4000/1k
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.21ms    1.02ms  20.11ms   80.00%
  Latency Distribution
     50%  187.00us
     75%    4.50ms
     90%    5.01ms
     99%    1.20s
  131520 requests in 8.00s, 150.20MB read
Requests/sec:  16439.87
Transfer/sec:     18.77MB
";

    #[test]
    fn wrk_output_is_read_for_rate_count_and_median() {
        assert_eq!(parse_rps(WRK).unwrap(), 16439.87);
        assert_eq!(parse_requests(WRK).unwrap(), 131520.0);
        assert_eq!(parse_p50_us(WRK).unwrap(), 187.0);
        let ms = WRK.replace("50%  187.00us", "50%    4.50ms");
        assert_eq!(parse_p50_us(&ms).unwrap(), 4500.0);
        // Missing figures are errors that show the output, not zeros.
        let e = parse_requests("garbage").unwrap_err().to_string();
        assert!(e.contains("garbage"), "{e}");
        assert!(parse_rps("garbage").is_err());
        assert!(parse_p50_us("     50%  3.0xs").is_err());
    }

    #[test]
    fn cpu_time_of_a_process_is_read_from_proc() {
        use nix::time::{clock_gettime, ClockId};

        let ticks = clock_ticks().unwrap();
        let tick = 1.0 / ticks;
        // The kernel's own count of this thread's CPU time, by another road
        // than /proc: what the reading is checked against.
        let thread_cpu = || {
            let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
            t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
        };
        // A thread of its own: /proc/TID/stat is that thread alone, so the
        // tests running beside this one add nothing to what it reads (the
        // process's figure, /proc/PID/stat, includes them).
        let (tid, burnt, read, spun) = std::thread::spawn(move || {
            let tid = nix::unistd::gettid().as_raw() as u32;
            assert_ne!(tid, std::process::id());
            let before = cpu_secs(tid, ticks).unwrap();
            let from = thread_cpu();
            // Spin until 100 ms of CPU is counted to this thread, however
            // long a loaded machine makes that take; the wall deadline only
            // stops a hang.
            let started = Instant::now();
            let mut x = 0u64;
            while thread_cpu() - from < 0.1 && started.elapsed() < Duration::from_secs(10) {
                for _ in 0..100_000 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            let burnt = thread_cpu() - from;
            let read = cpu_secs(tid, ticks).unwrap() - before;
            (tid, burnt, read, started.elapsed())
        })
        .join()
        .unwrap();
        assert!(
            burnt >= 0.1,
            "only {burnt} s of CPU in {spun:?} of spinning"
        );
        // /proc counts whole clock ticks for user and system time each, so
        // a difference of two readings is off by less than two ticks either
        // way; a wrong field or tick rate is off by far more.
        assert!(
            read >= burnt - 2.0 * tick && read <= burnt * 1.2 + 2.0 * tick,
            "burnt {burnt} s of CPU on thread {tid}, /proc read {read} s"
        );
        // The process's figure holds that thread's time.
        assert!(cpu_secs(std::process::id(), ticks).unwrap() >= burnt - 2.0 * tick);
        assert!(cpu_secs(u32::MAX, ticks).is_err());
    }

    #[test]
    fn only_takes_known_groups() {
        let a = Args::try_parse_from(["bench", "--only", "rps,idle-agents"]).unwrap();
        assert_eq!(a.only, ["rps", "idle-agents"]);
        let e = Args::try_parse_from(["bench", "--only", "rsp"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rsp") && e.contains("idle-agents"), "{e}");
    }

    #[test]
    fn the_profile_runs_only_when_asked_for() {
        let args = |a: &[&str]| Args::try_parse_from([&["bench"], a].concat()).unwrap();
        let all = args(&[]);
        assert!(all.wants("rps") && all.wants("traced") && !all.wants("profile"));
        assert!(!all.no_peers);
        let plus = args(&["--profile"]);
        assert!(plus.wants("rps") && plus.wants("profile"));
        let alone = args(&["--only", "profile"]);
        assert!(alone.wants("profile") && !alone.wants("rps"));
        let some = args(&["--only", "rps", "--profile", "--no-peers"]);
        assert!(some.wants("rps") && some.wants("profile") && !some.wants("bulk"));
        assert!(some.no_peers);
    }
}
