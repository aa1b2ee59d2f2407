//! The benchmark: one local origin, measured directly and through the
//! gateway and an agent (TLS 1.3 tunnel) in the same run, so the ratios
//! compare like with like on whatever machine runs it.
//!
//! `cargo run --release -p tests --bin bench [-- --json FILE --secs N]`
//!
//! Load comes from `wrk` (installed by `scripts/bench.sh`); bulk transfers
//! use an in-process hyper client. It exits non-zero only when it could
//! not measure; a missed target is reported, not fatal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tests::{Agent, AgentOptions, Gateway, GatewayOptions, Route};

const MIB: u64 = 1 << 20;
const BULK: u64 = 100 * MIB;
const CHUNK: usize = 64 << 10;

#[derive(Debug, Parser)]
#[command(about = "Direct vs tunnel benchmark")]
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
}

#[derive(Debug, Clone, serde::Serialize)]
struct Figure {
    name: &'static str,
    unit: &'static str,
    direct: f64,
    tunnel: f64,
    ratio: f64,
    target: String,
}

type BenchBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn chunk() -> Bytes {
    Bytes::from(vec![b'x'; CHUNK])
}

fn stream_body(total: u64) -> BenchBody {
    let block = chunk();
    let s = futures_util::stream::unfold(total, move |left| {
        let block = block.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64) as usize;
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
    for (k, v) in &target.headers {
        req.headers_mut()
            .insert(http::HeaderName::from_bytes(k.as_bytes())?, v.parse()?);
    }
    Ok(sender.send_request(req).await?)
}

/// MiB/s downloading `BULK` bytes.
async fn download(target: &Target) -> anyhow::Result<f64> {
    let start = Instant::now();
    let resp = send(
        target,
        Request::get(format!("/bytes/{BULK}")),
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
        }
    }
    if n != BULK {
        bail!("download got {n} bytes of {BULK}");
    }
    Ok(BULK as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

/// MiB/s uploading `BULK` bytes.
async fn upload(target: &Target) -> anyhow::Result<f64> {
    let start = Instant::now();
    let resp = send(
        target,
        Request::post("/upload").header(http::header::CONTENT_LENGTH, BULK),
        stream_body(BULK),
    )
    .await?;
    let status = resp.status();
    let got = resp.into_body().collect().await?.to_bytes();
    if status != 200 || got != BULK.to_string().as_bytes() {
        bail!(
            "upload answered {status}: {}",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(BULK as f64 / MIB as f64 / start.elapsed().as_secs_f64())
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

fn median(mut v: Vec<f64>) -> f64 {
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

/// Builds the gateway and agent in the profile this benchmark runs in, so
/// `cargo run --release -p tests --bin bench` measures release binaries.
fn build_binaries() -> anyhow::Result<()> {
    let release = std::env::current_exe()?
        .components()
        .any(|c| c.as_os_str() == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
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

async fn round_robin<F, Fut>(
    rounds: usize,
    direct: &Target,
    tunnel: &Target,
    f: F,
) -> anyhow::Result<(f64, f64)>
where
    F: Fn(Target) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let (mut d, mut t) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        d.push(f(direct.clone()).await?);
        t.push(f(tunnel.clone()).await?);
    }
    Ok((median(d), median(t)))
}

/// Installs wrk through the project's setup script when it is missing, so
/// `cargo run --release -p tests --bin bench` works on a fresh machine.
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
    let origin = start_origin().await?;
    // Two routes into the same tunnel: one without plugins, one with the
    // full chain, so the chain's cost is the difference between them.
    let mut opts = GatewayOptions::new()
        .with_route(Route::new("bench.test", "bench").max_body_bytes(1 << 40))
        .with_route(
            Route::new("policy.test", "bench")
                .plugin("org-check", "")
                .plugin("authz", r#"{"rules": [{"methods": ["GET", "HEAD"]}]}"#)
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
    let gateway = Gateway::start(opts).await;
    let tunnel = gateway.create_tunnel("bench-org", "bench").await;
    let token = gateway.create_caller("bench-org").await;
    let agent = Agent::connect(&gateway, &tunnel, origin, AgentOptions::new()).await;

    let direct = Target {
        addr: origin,
        headers: vec![],
    };
    let through = Target {
        addr: gateway.public_addr(),
        headers: vec![
            ("Host".into(), "bench.test".into()),
            ("Proxy-Authorization".into(), format!("Bearer {token}")),
        ],
    };
    let with_plugins = Target {
        addr: gateway.public_addr(),
        headers: vec![
            ("Host".into(), "policy.test".into()),
            ("Proxy-Authorization".into(), format!("Bearer {token}")),
        ],
    };
    let secs = args.secs;
    let rounds = args.rounds.max(1);
    // Warm up both paths (pools, caches, page faults).
    wrk(&direct, "/1k", 16, 1, &[])?;
    wrk(&through, "/1k", 16, 1, &[])?;
    wrk(&with_plugins, "/1k", 16, 1, &[])?;

    let mut figures = Vec::new();
    let mut add = |name, unit, direct: f64, tunnel: f64, ratio: f64, target: &str| {
        let f = Figure {
            name,
            unit,
            direct,
            tunnel,
            ratio,
            target: target.into(),
        };
        println!(
            "{:<26} {:>12.1} {:>12.1} {:<7} {:>6.2}x  (target {})",
            f.name, f.direct, f.tunnel, f.unit, f.ratio, f.target
        );
        figures.push(f);
    };
    println!(
        "{:<26} {:>12} {:>12} {:<7} {:>7}",
        "figure", "direct", "tunnel", "unit", "ratio"
    );

    let (d, t) = round_robin(rounds, &direct, &through, |tg| async move {
        parse_rps(&wrk(&tg, "/1k", 64, secs, &[])?)
    })
    .await?;
    add("rps_c64", "req/s", d, t, t / d, ">= 0.50x");

    let (d, t) = round_robin(rounds, &direct, &through, |tg| async move {
        parse_p50_us(&wrk(&tg, "/1k", 1, secs.div_ceil(2), &[])?)
    })
    .await?;
    add("latency_c1_p50_us", "us", d, t, t / d, "lower is better");
    let no_plugins_p50 = t;

    // The same two figures through the route with org-check, authz and
    // oauth1 (each in a fresh sandbox per request).
    let (d, t) = round_robin(rounds, &direct, &with_plugins, |tg| async move {
        parse_rps(&wrk(&tg, "/1k", 64, secs, &[])?)
    })
    .await?;
    add("rps_c64_plugins", "req/s", d, t, t / d, ">= 0.50x");
    let (d, t) = round_robin(rounds, &direct, &with_plugins, |tg| async move {
        parse_p50_us(&wrk(&tg, "/1k", 1, secs.div_ceil(2), &[])?)
    })
    .await?;
    add(
        "latency_c1_p50_us_plugins",
        "us",
        d,
        t,
        t / d,
        "lower is better",
    );
    add(
        "plugin_latency_added_us",
        "us",
        f64::NAN,
        t - no_plugins_p50,
        f64::NAN,
        "report",
    );
    // The chain's own time per request, as the gateway measures it around
    // the plugin calls (`policy_us` in its access log).
    let chain = policy_us_median(&work_dir.join("gateway.log"))?;
    add(
        "plugin_chain_us",
        "us",
        f64::NAN,
        chain,
        f64::NAN,
        "<= 10 us",
    );

    let (d, t) = round_robin(rounds, &direct, &through, |tg| async move {
        download(&tg).await
    })
    .await?;
    add("download_100m", "MiB/s", d, t, t / d, ">= 0.40x");

    let (d, t) = round_robin(
        rounds,
        &direct,
        &through,
        |tg| async move { upload(&tg).await },
    )
    .await?;
    add("upload_100m", "MiB/s", d, t, t / d, ">= 0.40x");

    let (d, t) = round_robin(rounds, &direct, &through, |tg| async move {
        parse_rps(&wrk(&tg, "/1k", 16, secs, &["-H", "Connection: close"])?)
    })
    .await?;
    add("new_conn_per_s", "conn/s", d, t, t / d, ">= 0.50x");

    let g = rss_kib(gateway.pid());
    let a = rss_kib(agent.pid());
    add("rss_gateway_kib", "KiB", f64::NAN, g, f64::NAN, "report");
    add("rss_agent_kib", "KiB", f64::NAN, a, f64::NAN, "report");
    drop(agent);
    drop(gateway);

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
    let (d, t) = round_robin(rounds, &direct, &traced, |tg| async move {
        parse_rps(&wrk(&tg, "/1k", 64, secs, &[])?)
    })
    .await?;
    add("rps_c64_plugins_traced", "req/s", d, t, t / d, "report");
    let m = tests::scrape::metrics(traced_gateway.admin()).await;
    let exported = m.sum("tunnel_gateway_otel_spans_exported_total", &[]);
    let dropped = m.sum("tunnel_gateway_otel_spans_dropped_total", &[]);
    add(
        "traced_spans_dropped_pct",
        "%",
        f64::NAN,
        100.0 * dropped / (exported + dropped).max(1.0),
        f64::NAN,
        "report",
    );

    if let Some(path) = args.json {
        let figs: Vec<_> = figures
            .iter()
            .map(|f| {
                let num = |x: f64| {
                    if x.is_finite() {
                        serde_json::json!(x)
                    } else {
                        serde_json::Value::Null
                    }
                };
                serde_json::json!({
                    "name": f.name, "unit": f.unit, "direct": num(f.direct),
                    "tunnel": num(f.tunnel), "ratio": num(f.ratio), "target": f.target,
                })
            })
            .collect();
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&serde_json::json!({ "figures": figs }))?,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
