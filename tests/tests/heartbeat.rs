//! Story: a peer that hangs without closing its connection (no crash, no
//! FIN) is noticed within the heartbeat timeout, on either side, and the
//! tunnel recovers once it comes back.

use std::time::{Duration, Instant};

use tests::setup::WikiTunnel;
use tests::{upstream, GatewayOptions, PATIENCE};

/// Interval 1 s, timeout 3 s: a hung peer is noticed once the timeout has
/// passed since the last answer, which was at most one interval before
/// the freeze: between 2 and 4 s after it, plus up to 2 s for a loaded
/// machine (events are read from the process's output).
const NOTICED_AFTER: Duration = Duration::from_secs(2);
const NOTICED_WITHIN: Duration = Duration::from_secs(6);

/// Fails unless the hang was noticed within the heartbeat's bounds.
fn noticed_in_time(frozen_at: Instant) {
    let took = frozen_at.elapsed();
    assert!(
        (NOTICED_AFTER..NOTICED_WITHIN).contains(&took),
        "noticed after {took:?}; with a 3 s timeout expected {NOTICED_AFTER:?}..{NOTICED_WITHIN:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_drops_a_hung_agent_and_takes_it_back_when_it_recovers() {
    let opts = GatewayOptions::new().heartbeat(Duration::from_secs(1), Duration::from_secs(3));
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;

    t.agent.freeze();
    let frozen_at = Instant::now();
    t.gateway
        .wait_for("agent_disconnected", &[("agent", t.agent.name())])
        .await;
    noticed_in_time(frozen_at);
    let reply = t.caller.get("wiki.test", "/").send().await;
    assert_eq!(
        reply.status, 503,
        "a hung agent must not get requests: {reply:?}"
    );

    t.agent.thaw();
    t.agent.wait_connected().await;
    assert_eq!(t.caller.get("wiki.test", "/").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_notices_a_hung_gateway_and_reconnects_when_it_recovers() {
    let gateway_opts = GatewayOptions::new().route("wiki.test", "wiki");
    let gateway = tests::Gateway::start(gateway_opts).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let opts = tests::AgentOptions::new().heartbeat(Duration::from_secs(1), Duration::from_secs(3));
    let agent = tests::Agent::connect(&gateway, &tunnel, wiki.addr(), opts).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    let mark = agent.events().mark();
    gateway.freeze();
    let frozen_at = Instant::now();
    agent.wait_event_after(mark, "disconnected", PATIENCE).await;
    noticed_in_time(frozen_at);

    gateway.thaw();
    agent.wait_event_after(mark, "connected", PATIENCE).await;
    agent.wait_connected().await;
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
}
