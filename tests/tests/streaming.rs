//! Story: a 1 GiB upload and a 1 GiB download go through the tunnel intact
//! (same SHA-256 on both ends) without either process holding them in
//! memory. `TUNNEL_E2E_STREAM_BYTES` makes them smaller for a quick run.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::{body, pattern, upstream, GatewayOptions, Route};

const GIB: u64 = 1 << 30;
/// What a streaming process may grow by while one body passes, over its
/// resident memory once warmed up: a stream's HTTP/2 window (2 MiB) and
/// send buffer (1 MiB), the WebSocket and TLS records in flight, pingora's
/// buffers, and the allocator's slack. Measured: a few MiB per process.
const GROWTH_CEILING: u64 = 32 << 20;
/// The warm-up transfer before the baseline is taken.
const WARM_UP: u64 = 16 << 20;
/// Debug builds on two cores: generous, but still a deadline.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(900);

fn size() -> u64 {
    std::env::var("TUNNEL_E2E_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(GIB)
}

async fn big_body_tunnel() -> WikiTunnel {
    let opts = GatewayOptions::new()
        .upstream_timeout(Duration::from_secs(600))
        .with_route(Route::new("big.test", "wiki").max_body_bytes(2 * GIB));
    WikiTunnel::start_with(opts, upstream::echo("wiki").await).await
}

/// A field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// Resident memory of both processes after a warm-up transfer (pools,
/// sessions and the allocator's arenas in their steady state), with
/// their peaks reset to it (`clear_refs` 5).
struct Baseline {
    rss: [(&'static str, u32, u64); 2],
}

impl Baseline {
    fn take(t: &WikiTunnel) -> Baseline {
        let rss = [("gateway", t.gateway.pid()), ("agent", t.agent.pid())].map(|(who, pid)| {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
                .expect("reset the peak resident memory");
            (who, pid, status_bytes(pid, "VmRSS:"))
        });
        Baseline { rss }
    }

    /// Each process's peak grew by less than [`GROWTH_CEILING`] and less
    /// than a quarter of the body: a process holding the body grows by all
    /// of it.
    fn assert_streamed(&self, n: u64) {
        let ceiling = GROWTH_CEILING.min(n / 4);
        for (who, pid, base) in self.rss {
            let peak = status_bytes(pid, "VmHWM:");
            let growth = peak.saturating_sub(base);
            eprintln!(
                "{who}: {} MiB resident after warm-up, peak {} MiB while {} MiB passed (+{} KiB)",
                base >> 20,
                peak >> 20,
                n >> 20,
                growth >> 10
            );
            assert!(
                growth < ceiling,
                "{who} grew by {} MiB while a {} MiB body passed (allowed: {} MiB): the body was buffered",
                growth >> 20,
                n >> 20,
                ceiling >> 20
            );
        }
    }
}

async fn upload(t: &WikiTunnel, n: u64) {
    let reply = t
        .caller
        .post("big.test", "/upload", body::pattern(n))
        .header("content-length", &n.to_string())
        .timeout(TRANSFER_TIMEOUT)
        .send()
        .await;
    let echo = reply.echo();
    assert_eq!(echo.body_len, n, "bytes received by the local service");
    assert_eq!(
        echo.body_sha256,
        pattern::sha256(n),
        "checksum at the local service"
    );
}

async fn download(t: &WikiTunnel, n: u64) {
    let reply = t
        .caller
        .get("big.test", &format!("/bytes/{n}"))
        .timeout(TRANSFER_TIMEOUT)
        .send_hashing()
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.len, n, "bytes received by the caller");
    assert_eq!(reply.sha256, pattern::sha256(n), "checksum at the caller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_arrives_intact() {
    let t = big_body_tunnel().await;
    upload(&t, WARM_UP).await;
    let baseline = Baseline::take(&t);
    let n = size();
    upload(&t, n).await;
    baseline.assert_streamed(n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_arrives_intact() {
    let t = big_body_tunnel().await;
    download(&t, WARM_UP).await;
    let baseline = Baseline::take(&t);
    let n = size();
    download(&t, n).await;
    baseline.assert_streamed(n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_of_unknown_length_arrives_intact() {
    let t = big_body_tunnel().await;
    let n = 64 << 20;
    let reply = t
        .caller
        .post("big.test", "/upload", body::pattern(n))
        .send()
        .await;
    let echo = reply.echo();
    assert_eq!((echo.body_len, echo.body_sha256), (n, pattern::sha256(n)));
}
