//! Story: a tunnel nobody serves answers 503 with Retry-After, whether no
//! agent ever came or the only one left.

use tests::setup::WikiTunnel;
use tests::{Gateway, GatewayOptions, Reply};

fn assert_retry_later(reply: &Reply) {
    assert_eq!(reply.status, 503, "{reply:?}");
    let retry = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("503 without Retry-After: {reply:?}"));
    assert!(
        retry.trim().parse::<u64>().is_ok(),
        "Retry-After should be seconds: {retry:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_without_agents_answers_503_retry_after() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let _tunnel = gateway.create_tunnel("acme", "wiki").await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_retry_later(&caller.get("wiki.test", "/").send().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_only_agent_leaves_callers_get_503() {
    let mut t = WikiTunnel::start().await;
    assert_eq!(t.caller.get("wiki.test", "/").send().await.status, 200);

    let status = t.agent.terminate().await;
    assert!(
        status.success(),
        "agent exit after SIGTERM: {status}\n{}",
        t.agent.logs()
    );
    t.gateway
        .wait_for("agent_disconnected", &[("agent", t.agent.name())])
        .await;

    assert_retry_later(&t.caller.get("wiki.test", "/").send().await);
    assert_eq!(t.wiki.requests(), 1);
}
