//! Story: a local service slower than the gateway's upstream timeout is
//! answered 504, while a merely slow one still gets through; the agent
//! records the abandoned request.

use std::time::{Duration, Instant};

use tests::setup::WikiTunnel;
use tests::{upstream, GatewayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_slow_local_service_gives_504() {
    let opts = GatewayOptions::new().upstream_timeout(Duration::from_secs(2));
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;

    let slow_but_fine = t.caller.get("wiki.test", "/slow/500").send().await;
    assert_eq!(slow_but_fine.status, 200, "{slow_but_fine:?}");

    let started = Instant::now();
    let reply = t
        .caller
        .get("wiki.test", "/slow/30000")
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert_eq!(reply.status, 504, "{reply:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "504 after {took:?} with a 2 s upstream timeout"
    );

    // The agent records the request the gateway gave up on: an access
    // line with no status, not silence.
    tests::eventually(
        "the agent's access line for the abandoned request",
        tests::PATIENCE,
        || async {
            let logs = t.agent.logs();
            let abandoned = |l: &str| {
                l.contains("access") && l.contains("status=0") && l.contains("complete=false")
            };
            if logs.lines().any(abandoned) {
                Ok(())
            } else {
                Err(logs)
            }
        },
    )
    .await;
}
