//! Story: two on-prem nodes serve one tunnel; the gateway spreads requests
//! over both, and when one node dies the other takes everything at once.

use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_the_load_and_one_survives_the_other() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let node1 = upstream::echo("node-1").await;
    let node2 = upstream::echo("node-2").await;
    let mut agent1 = Agent::connect(&gateway, &tunnel, node1.addr(), AgentOptions::new()).await;
    let _agent2 = Agent::connect(&gateway, &tunnel, node2.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    // Concurrent requests: least-in-flight spreading must use both nodes.
    let batch: Vec<_> = (0..20)
        .map(|i| {
            let caller = caller.clone();
            tokio::spawn(async move {
                caller
                    .get("wiki.test", &format!("/slow/200?i={i}"))
                    .send()
                    .await
            })
        })
        .collect();
    for reply in batch {
        assert_eq!(reply.await.unwrap().status, 200);
    }
    assert!(
        node1.requests() > 0 && node2.requests() > 0,
        "both nodes should serve: node-1 got {}, node-2 got {}",
        node1.requests(),
        node2.requests()
    );

    // Node 1 dies without a word; every request from now on must succeed.
    agent1.kill();
    let before = node2.requests();
    let mut failures = Vec::new();
    for i in 0..30 {
        let reply = caller
            .get("wiki.test", &format!("/after-kill/{i}"))
            .send()
            .await;
        if reply.status != 200 {
            failures.push(format!(
                "request {i}: {} {}",
                reply.status,
                reply.first_line()
            ));
        } else {
            assert_eq!(reply.echo().server, "node-2");
        }
    }
    assert!(
        failures.is_empty(),
        "requests failed after one agent died:\n{}",
        failures.join("\n")
    );
    assert_eq!(node2.requests() - before, 30);
}

/// Story: a caller sends one request at a time (a sync job, a crawler).
/// Every agent is idle at each choice, and each still serves its share:
/// ties go round the agents instead of always to the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequential_caller_is_served_by_every_agent() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let node1 = upstream::echo("node-1").await;
    let node2 = upstream::echo("node-2").await;
    let _agent1 = Agent::connect(&gateway, &tunnel, node1.addr(), AgentOptions::new()).await;
    let _agent2 = Agent::connect(&gateway, &tunnel, node2.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    for i in 0..20 {
        let reply = caller.get("wiki.test", &format!("/seq/{i}")).send().await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.first_line());
    }
    let (one, two) = (node1.requests(), node2.requests());
    assert_eq!(one + two, 20);
    assert!(
        (8..=12).contains(&one),
        "sequential requests should alternate: node-1 got {one}, node-2 got {two}"
    );
}
