//! Story: the gateway crashes and comes back on the same address; the agent
//! notices, reconnects by itself, and callers are served again.

use tests::setup::WikiTunnel;
use tests::PATIENCE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reconnects_after_the_gateway_restarts() {
    let mut t = WikiTunnel::start().await;
    assert_eq!(
        t.caller.get("wiki.test", "/before").send().await.status,
        200
    );

    let mark = t.agent.events().mark();
    t.gateway.kill();
    let gone = t
        .agent
        .wait_event_after(mark, "disconnected", PATIENCE)
        .await;
    assert!(
        gone["reason"].is_string(),
        "disconnected without a reason: {gone}"
    );

    // Same store, same agents' port; the public port may move.
    t.gateway.restart().await;
    t.agent.wait_connected().await;

    // Tunnels and caller tokens survived the restart.
    let caller = t.gateway.caller(&t.token);
    let reply = caller.get("wiki.test", "/after").send().await;
    assert_eq!(reply.echo().target, "/after");
    let tunnels = t.gateway.list_tunnels().await;
    assert!(
        tunnels.iter().any(|x| x["id"] == t.tunnel.id.as_str()),
        "{tunnels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_trying_while_the_gateway_is_down() {
    let mut t = WikiTunnel::start().await;
    let mark = t.agent.events().mark();
    t.gateway.kill();
    t.agent
        .wait_event_after(mark, "disconnected", PATIENCE)
        .await;
    // Nothing listens: attempts fail and are retried with backoff.
    let failed = t
        .agent
        .wait_event_after(mark, "connect_failed", PATIENCE)
        .await;
    let retry_mark = t.agent.events().mark();
    t.agent
        .wait_event_after(retry_mark, "connect_failed", PATIENCE)
        .await;
    assert!(failed["reason"].is_string(), "{failed}");

    t.gateway.restart().await;
    t.agent.wait_connected().await;
    assert_eq!(
        t.gateway
            .caller(&t.token)
            .get("wiki.test", "/")
            .send()
            .await
            .status,
        200
    );
}
