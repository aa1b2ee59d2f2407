//! Multiplexer micro-benchmark: the tunnel's HTTP/2 `CONNECT` streams (hyper,
//! the builder settings of `gateway::agent_listener::run_tunnel` and
//! `agent::session::serve`) against the `yamux` crate, both running over the
//! same [`protocol::WsByteStream`] on a loopback TCP connection (no TLS: its
//! cost is the same for both).
//!
//! `cargo build --release -p bench --bin muxbench && ./target/release/muxbench [--json FILE]`
//!
//! Both ends live in this process on a two-worker tokio runtime. The agent is
//! the WebSocket client (it dials, so it masks its frames) and the server of
//! the multiplexer; the gateway is the WebSocket server and opens the
//! streams. The agent side echoes or sources bytes itself instead of
//! copying to a local service, so only the multiplexer differs.
//!
//! Figures (each the median of `--rounds` rounds, a fresh connection per
//! multiplexer and round):
//!
//! * `open_rtt_us`: open a stream, write 16 bytes, read them echoed, close
//!   our side (p50 of sequential iterations). Waiting for the agent's close
//!   is not timed: a caller does not wait for it either. A yamux stream
//!   opens lazily (its SYN rides on the first data frame), an HTTP/2
//!   `CONNECT` waits for the agent's response first.
//! * `open_confirmed_us`: the same, but yamux first waits for a status byte
//!   from the agent, the equivalent of the `CONNECT` response the gateway
//!   needs to report an unreachable local service (HTTP/2 does exactly what
//!   it does for `open_rtt_us`).
//! * `pingpong_us`: 1 KiB request, 1 KiB response on one open stream (p50).
//! * `streams_c64_rps`: 64 streams doing the same in a loop at once;
//!   exchanges per second over all of them.
//! * `bulk_mib_s`: one stream carrying `--bulk-mib` MiB agent → gateway.
//! * `bulk_cpu_ms_per_mib`: process CPU time (both ends, from
//!   `/proc/self/stat`) per MiB of that transfer.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use protocol::WsByteStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

const KIB: usize = 1 << 10;
const MIB: u64 = 1 << 20;
/// Read and write buffer of the agent side and the bulk reader, as the
/// agent's `copy_bidirectional_with_sizes`.
const IO_BUF: usize = 64 << 10;
/// First byte of a stream: echo everything after it.
const MODE_ECHO: u8 = b'E';
/// First byte of a stream: answer one status byte (0 = connected), then
/// echo. Without it a yamux stream cannot tell the gateway that the agent
/// failed to reach its local service, which HTTP/2's `CONNECT` response does.
const MODE_CONFIRM_ECHO: u8 = b'C';
/// First byte of a stream: an 8-byte big-endian length follows; the agent
/// sends that many bytes and closes.
const MODE_SOURCE: u8 = b'S';
/// Heartbeats as the defaults of both configs (10 s interval, 30 s timeout).
const HB_INTERVAL: Duration = Duration::from_secs(10);
const HB_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent streams of `streams_c64_rps`.
const CONCURRENT: usize = 64;
/// yamux stream limit per connection (`max_num_streams`); above the 64
/// concurrent streams plus the ones still closing.
const YAMUX_MAX_STREAMS: usize = 256;

#[derive(Debug, Parser)]
#[command(about = "HTTP/2 CONNECT vs yamux over the tunnel's WebSocket byte stream")]
struct Args {
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Rounds of each figure; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sequential open/echo/close iterations per round.
    #[arg(long, default_value_t = 2_000)]
    opens: usize,
    /// 1 KiB ping-pong iterations per round.
    #[arg(long, default_value_t = 10_000)]
    pingpongs: usize,
    /// Seconds of the 64-stream run per round.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// MiB of the one-way bulk transfer per round.
    #[arg(long, default_value_t = 512)]
    bulk_mib: u64,
    /// yamux: bytes of stream receive window growth allowed across a
    /// connection beyond the 256 KiB every stream starts with (the analogue
    /// of HTTP/2's connection window). In MiB.
    #[arg(long, default_value_t = u64::from(protocol::CONNECTION_WINDOW) / MIB)]
    yamux_headroom_mib: u64,
    /// yamux: payload bytes per data frame (`split_send_size`), in KiB;
    /// 64 matches the HTTP/2 `max_frame_size`.
    #[arg(long, default_value_t = 64)]
    yamux_frame_kib: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mux {
    H2,
    Yamux,
}

impl Mux {
    fn name(self) -> &'static str {
        match self {
            Mux::H2 => "h2",
            Mux::Yamux => "yamux",
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Pin<Box<dyn Io>>;

type OpenReply = oneshot::Sender<yamux::Result<yamux::Stream>>;

/// The gateway's handle to open streams on one connection.
#[derive(Clone)]
enum Opener {
    H2(SendRequest<Empty<Bytes>>),
    Yamux(mpsc::Sender<OpenReply>),
}

impl Opener {
    async fn open(&mut self) -> anyhow::Result<BoxIo> {
        match self {
            Opener::H2(sender) => {
                // As `gateway::connector::open_stream`.
                let req = http::Request::builder()
                    .method(http::Method::CONNECT)
                    .uri(protocol::STREAM_AUTHORITY)
                    .body(Empty::new())
                    .expect("static CONNECT request is valid");
                let resp = sender.send_request(req).await?;
                if resp.status() != StatusCode::OK {
                    bail!("CONNECT refused: {}", resp.status());
                }
                let up = hyper::upgrade::on(resp).await?;
                Ok(Box::pin(TokioIo::new(up)))
            }
            Opener::Yamux(tx) => {
                let (reply, rx) = oneshot::channel();
                tx.send(reply)
                    .await
                    .map_err(|_| anyhow::anyhow!("yamux driver gone"))?;
                let stream = rx.await.context("yamux driver gone")??;
                Ok(Box::pin(stream.compat()))
            }
        }
    }
}

/// One gateway–agent connection under test.
struct Conn {
    opener: Opener,
    closer: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Conn {
    async fn close(self) {
        drop(self.opener);
        self.closer.cancel();
        for mut t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

/// A loopback TCP pair with `TCP_NODELAY`, each end a WebSocket in its role:
/// (gateway = server, agent = client).
async fn ws_pair() -> anyhow::Result<(Ws, Ws)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (dialed, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let agent = dialed?;
    let (gateway, _) = accepted?;
    agent.set_nodelay(true)?;
    gateway.set_nodelay(true)?;
    let cfg = Some(protocol::ws_config());
    let gateway = WebSocketStream::from_raw_socket(gateway, Role::Server, cfg).await;
    let agent = WebSocketStream::from_raw_socket(agent, Role::Client, cfg).await;
    Ok((gateway, agent))
}

/// The agent's side of one stream: echo, or source a number of bytes.
async fn agent_stream<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> io::Result<()> {
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode).await?;
    match mode[0] {
        MODE_ECHO | MODE_CONFIRM_ECHO => {
            if mode[0] == MODE_CONFIRM_ECHO {
                s.write_all(&[0]).await?;
                s.flush().await?;
            }
            let mut buf = vec![0u8; IO_BUF];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await?;
                s.flush().await?;
            }
        }
        MODE_SOURCE => {
            let mut len = [0u8; 8];
            s.read_exact(&mut len).await?;
            let mut left = u64::from_be_bytes(len);
            let buf = vec![b'x'; IO_BUF];
            while left > 0 {
                let n = left.min(IO_BUF as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            s.flush().await?;
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown stream mode {other}"),
            ))
        }
    }
    s.shutdown().await
}

async fn h2_handle(req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    tokio::spawn(async move {
        if let Ok(up) = hyper::upgrade::on(req).await {
            let _ = agent_stream(TokioIo::new(up)).await;
        }
    });
    Ok(Response::new(Empty::new()))
}

/// (A): HTTP/2 with the builder settings of the gateway and the agent.
async fn connect_h2() -> anyhow::Result<Conn> {
    let (gw, ag) = ws_pair().await?;
    let server = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(HB_INTERVAL)
        .keep_alive_timeout(HB_TIMEOUT)
        .initial_stream_window_size(protocol::STREAM_WINDOW)
        .initial_connection_window_size(protocol::CONNECTION_WINDOW)
        .max_frame_size(64 << 10)
        .max_send_buf_size(1 << 20)
        .max_concurrent_streams(4096)
        .serve_connection(
            TokioIo::new(WsByteStream::client(ag)),
            service_fn(h2_handle),
        );
    let server = tokio::spawn(async move {
        let _ = server.await;
    });
    let closer = CancellationToken::new();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(HB_INTERVAL)
        .keep_alive_timeout(HB_TIMEOUT)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(protocol::STREAM_WINDOW)
        .initial_connection_window_size(protocol::CONNECTION_WINDOW)
        .max_frame_size(64 << 10)
        .max_send_buf_size(1 << 20)
        .handshake(TokioIo::new(
            WsByteStream::server(gw).with_cancel(closer.clone()),
        ))
        .await?;
    let client = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn {
        opener: Opener::H2(sender),
        closer,
        tasks: vec![client, server],
    })
}

/// The yamux receive window budget: 256 KiB guaranteed to every stream
/// plus the growth headroom.
fn yamux_window(args: &Args) -> usize {
    YAMUX_MAX_STREAMS * yamux::DEFAULT_CREDIT as usize + (args.yamux_headroom_mib * MIB) as usize
}

fn yamux_config(args: &Args) -> yamux::Config {
    let mut cfg = yamux::Config::default();
    // Streams first: both setters assert window >= streams * 256 KiB.
    cfg.set_max_num_streams(YAMUX_MAX_STREAMS)
        .set_max_connection_receive_window(Some(yamux_window(args)))
        .set_split_send_size(args.yamux_frame_kib * KIB);
    cfg
}

/// Drives the gateway's yamux connection: opens outbound streams on request
/// and refuses (drops) inbound ones.
async fn drive_yamux_client(
    mut conn: yamux::Connection<Compat<WsByteStream<TcpStream>>>,
    mut requests: mpsc::Receiver<OpenReply>,
) -> yamux::Result<()> {
    let mut waiting: Option<OpenReply> = None;
    let mut requests_open = true;
    poll_fn(|cx| loop {
        if waiting.is_none() && requests_open {
            match requests.poll_recv(cx) {
                Poll::Ready(Some(r)) => waiting = Some(r),
                Poll::Ready(None) => requests_open = false,
                Poll::Pending => {}
            }
        }
        if let Some(reply) = waiting.take() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(r) => {
                    let _ = reply.send(r);
                    continue;
                }
                Poll::Pending => waiting = Some(reply),
            }
        }
        match conn.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(_unexpected))) => continue,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// (B): yamux over the same byte stream.
async fn connect_yamux(args: &Args) -> anyhow::Result<Conn> {
    let (gw, ag) = ws_pair().await?;
    let mut agent = yamux::Connection::new(
        WsByteStream::client(ag).compat(),
        yamux_config(args),
        yamux::Mode::Server,
    );
    let server = tokio::spawn(async move {
        while let Some(Ok(stream)) = poll_fn(|cx| agent.poll_next_inbound(cx)).await {
            tokio::spawn(async move {
                let _ = agent_stream(stream.compat()).await;
            });
        }
    });
    let closer = CancellationToken::new();
    let gateway = yamux::Connection::new(
        WsByteStream::server(gw)
            .with_cancel(closer.clone())
            .compat(),
        yamux_config(args),
        yamux::Mode::Client,
    );
    let (tx, rx) = mpsc::channel(CONCURRENT);
    let client = tokio::spawn(async move {
        let _ = drive_yamux_client(gateway, rx).await;
    });
    Ok(Conn {
        opener: Opener::Yamux(tx),
        closer,
        tasks: vec![client, server],
    })
}

fn p50_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}

/// `confirm`: wait for the agent's status byte before sending data, as a
/// connector that reports a refused local connection as a connect error
/// (like `open_stream` does from the `CONNECT` status) would have to.
async fn open_rtt(conn: &Conn, iterations: usize, confirm: bool) -> anyhow::Result<f64> {
    let mut opener = conn.opener.clone();
    let mut msg = [0u8; 17];
    msg[0] = MODE_ECHO;
    let mut got = [0u8; 16];
    let mut status = [0u8; 1];
    let warmup = iterations / 10;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        msg[1..].copy_from_slice(&(i as u128).to_be_bytes());
        let start = Instant::now();
        let mut s = opener.open().await?;
        if confirm {
            s.write_all(&[MODE_CONFIRM_ECHO]).await?;
            s.flush().await?;
            s.read_exact(&mut status).await?;
            if status[0] != 0 {
                bail!("agent refused the stream");
            }
            s.write_all(&msg[1..]).await?;
        } else {
            s.write_all(&msg).await?;
        }
        s.flush().await?;
        s.read_exact(&mut got).await?;
        s.shutdown().await?;
        let took = start.elapsed();
        if got != msg[1..] {
            bail!("echo mismatch");
        }
        // The agent's close, untimed: it ends the stream on both sides
        // before the next one opens.
        if s.read(&mut got).await? != 0 {
            bail!("data after the echo");
        }
        if i >= warmup {
            samples.push(took);
        }
    }
    Ok(p50_us(samples))
}

async fn echo_stream(opener: &mut Opener) -> anyhow::Result<BoxIo> {
    let mut s = opener.open().await?;
    s.write_all(&[MODE_ECHO]).await?;
    s.flush().await?;
    Ok(s)
}

async fn exchange(s: &mut BoxIo, req: &[u8], resp: &mut [u8]) -> anyhow::Result<()> {
    s.write_all(req).await?;
    s.flush().await?;
    s.read_exact(resp).await?;
    Ok(())
}

async fn finish(mut s: BoxIo) -> anyhow::Result<()> {
    s.shutdown().await?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    Ok(())
}

async fn pingpong(conn: &Conn, iterations: usize) -> anyhow::Result<f64> {
    let mut opener = conn.opener.clone();
    let mut s = echo_stream(&mut opener).await?;
    let req = vec![7u8; KIB];
    let mut resp = vec![0u8; KIB];
    let warmup = iterations / 10;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let start = Instant::now();
        exchange(&mut s, &req, &mut resp).await?;
        if i >= warmup {
            samples.push(start.elapsed());
        }
    }
    if resp != req {
        bail!("echo mismatch");
    }
    finish(s).await?;
    Ok(p50_us(samples))
}

async fn concurrent(conn: &Conn, streams: usize, secs: u64) -> anyhow::Result<f64> {
    let mut opener = conn.opener.clone();
    let mut opened = Vec::with_capacity(streams);
    for _ in 0..streams {
        opened.push(echo_stream(&mut opener).await?);
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::with_capacity(streams);
    for mut s in opened {
        tasks.push(tokio::spawn(async move {
            let req = vec![7u8; KIB];
            let mut resp = vec![0u8; KIB];
            let mut n = 0u64;
            while Instant::now() < deadline {
                exchange(&mut s, &req, &mut resp).await?;
                n += 1;
            }
            finish(s).await?;
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Process CPU time (user + system, all threads) from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3; utime
    // and stime are fields 14 and 15, in USER_HZ (100 on Linux) ticks.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Returns (MiB/s, CPU ms per MiB).
async fn bulk(conn: &Conn, mib: u64) -> anyhow::Result<(f64, f64)> {
    let mut opener = conn.opener.clone();
    let total = mib * MIB;
    let mut s = opener.open().await?;
    let mut head = [0u8; 9];
    head[0] = MODE_SOURCE;
    head[1..].copy_from_slice(&total.to_be_bytes());
    let cpu0 = cpu_time();
    let start = Instant::now();
    s.write_all(&head).await?;
    // Half-close: the rest is one way. (An HTTP/2 server ending its side
    // first resets a still-open request side with NO_ERROR.)
    s.shutdown().await?;
    let mut buf = vec![0u8; IO_BUF];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let took = start.elapsed();
    let cpu = match (cpu0, cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_secs_f64() * 1e3 / mib as f64,
        _ => f64::NAN,
    };
    if got != total {
        bail!("bulk: got {got} of {total} bytes");
    }
    Ok((mib as f64 / took.as_secs_f64(), cpu))
}

const FIGURES: [(&str, &str); 6] = [
    ("open_rtt_us", "µs, lower is better"),
    ("open_confirmed_us", "µs, lower is better"),
    ("pingpong_us", "µs, lower is better"),
    ("streams_c64_rps", "exchanges/s, higher is better"),
    ("bulk_mib_s", "MiB/s, higher is better"),
    ("bulk_cpu_ms_per_mib", "CPU ms/MiB, lower is better"),
];

async fn round(mux: Mux, args: &Args) -> anyhow::Result<[f64; 6]> {
    let conn = match mux {
        Mux::H2 => connect_h2().await?,
        Mux::Yamux => connect_yamux(args).await?,
    };
    let open = open_rtt(&conn, args.opens, false)
        .await
        .context("open_rtt")?;
    // HTTP/2 confirms with the `CONNECT` response; yamux needs a byte back.
    let confirmed = open_rtt(&conn, args.opens, mux == Mux::Yamux)
        .await
        .context("open_confirmed")?;
    let pp = pingpong(&conn, args.pingpongs).await.context("pingpong")?;
    let c64 = concurrent(&conn, CONCURRENT, args.secs)
        .await
        .context("streams_c64")?;
    let (bulk, cpu) = bulk(&conn, args.bulk_mib).await.context("bulk")?;
    conn.close().await;
    Ok([open, confirmed, pp, c64, bulk, cpu])
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Debug, serde::Serialize)]
struct Figure {
    name: &'static str,
    unit: &'static str,
    h2: f64,
    yamux: f64,
    ratio: f64,
    h2_rounds: Vec<f64>,
    yamux_rounds: Vec<f64>,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    rounds: usize,
    yamux_max_streams: usize,
    yamux_max_connection_receive_window: usize,
    yamux_split_send_size: usize,
    h2_stream_window: u32,
    h2_connection_window: u32,
    figures: Vec<Figure>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rounds == 0 || args.opens == 0 || args.pingpongs == 0 || args.bulk_mib == 0 {
        bail!("--rounds, --opens, --pingpongs and --bulk-mib must be positive");
    }
    let mut results: [Vec<[f64; 6]>; 2] = [Vec::new(), Vec::new()];
    for r in 0..args.rounds {
        for (i, mux) in [Mux::H2, Mux::Yamux].into_iter().enumerate() {
            let v = round(mux, &args)
                .await
                .with_context(|| format!("{} round {}", mux.name(), r + 1))?;
            eprintln!(
                "round {} {:>5}: open {:.1} µs, confirmed {:.1} µs, pingpong {:.1} µs, c64 {:.0}/s, bulk {:.0} MiB/s, {:.2} CPU ms/MiB",
                r + 1,
                mux.name(),
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5]
            );
            results[i].push(v);
        }
    }
    let figures: Vec<Figure> = FIGURES
        .iter()
        .enumerate()
        .map(|(k, (name, unit))| {
            let h2_rounds: Vec<f64> = results[0].iter().map(|v| v[k]).collect();
            let yamux_rounds: Vec<f64> = results[1].iter().map(|v| v[k]).collect();
            let h2 = median(&h2_rounds);
            let yamux = median(&yamux_rounds);
            Figure {
                name,
                unit,
                h2,
                yamux,
                ratio: yamux / h2,
                h2_rounds,
                yamux_rounds,
            }
        })
        .collect();
    println!(
        "median of {} rounds; yamux: {} streams max, {} MiB receive window budget, {} KiB frames",
        args.rounds,
        YAMUX_MAX_STREAMS,
        yamux_window(&args) as u64 / MIB,
        args.yamux_frame_kib
    );
    println!(
        "{:<22} {:>12} {:>12} {:>10}  unit",
        "figure", "h2", "yamux", "yamux/h2"
    );
    for f in &figures {
        println!(
            "{:<22} {:>12.2} {:>12.2} {:>10.3}  {}",
            f.name, f.h2, f.yamux, f.ratio, f.unit
        );
    }
    if let Some(path) = &args.json {
        let report = Report {
            rounds: args.rounds,
            yamux_max_streams: YAMUX_MAX_STREAMS,
            yamux_max_connection_receive_window: yamux_window(&args),
            yamux_split_send_size: args.yamux_frame_kib * KIB,
            h2_stream_window: protocol::STREAM_WINDOW,
            h2_connection_window: protocol::CONNECTION_WINDOW,
            figures,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
