//! Story: a 1 GiB upload and a 1 GiB download go through the tunnel intact
//! (same SHA-256 on both ends) without either process holding them in
//! memory. `TUNNEL_E2E_STREAM_BYTES` makes them smaller for a quick run.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::{body, pattern, upstream, GatewayOptions, Route};

const GIB: u64 = 1 << 30;
/// A process that buffers a whole body needs at least this much.
const MEMORY_CEILING: u64 = 512 << 20;
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

/// Peak resident memory of a process, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc status");
    kib * 1024
}

fn assert_bounded_memory(t: &WikiTunnel) {
    for (who, pid) in [("gateway", t.gateway.pid()), ("agent", t.agent.pid())] {
        let peak = peak_rss(pid);
        eprintln!("{who} peak resident memory: {} MiB", peak >> 20);
        assert!(
            peak < MEMORY_CEILING,
            "{who} peaked at {} MiB: the body was buffered",
            peak >> 20
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_arrives_intact() {
    let t = big_body_tunnel().await;
    let n = size();
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
    assert_bounded_memory(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_arrives_intact() {
    let t = big_body_tunnel().await;
    let n = size();
    let reply = t
        .caller
        .get("big.test", &format!("/bytes/{n}"))
        .timeout(TRANSFER_TIMEOUT)
        .send_hashing()
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.len, n, "bytes received by the caller");
    assert_eq!(reply.sha256, pattern::sha256(n), "checksum at the caller");
    assert_bounded_memory(&t);
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
