//! Story: the operator sees which agents serve which tunnel (`agent
//! list`, `GET /v1/agents`) and drains one from the gateway side: it
//! finishes what it holds, gets nothing new, leaves, and comes back.

use serde_json::Value;
use tests::admin::{find_audit, Operator};
use tests::lifecycle::{agent_entry, disconnected, reason, TwoNodes};
use tests::{GatewayOptions, PATIENCE};

fn bytes_of(a: &Value) -> u64 {
    a["bytes_in"].as_u64().unwrap_or(0) + a["bytes_out"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_listed_and_one_is_drained_while_the_other_serves() {
    let mut t = TwoNodes::start(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let a = t.agent_a().await;
    let _b = t.agent_b().await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    let write = gateway.admin_token("write").await;

    let before = gateway.agent_list().await;
    let by_api = gateway
        .api(&write)
        .get("/v1/agents")
        .await
        .expect(200, "GET /v1/agents");
    let by_api: Vec<Value> = serde_json::from_value(by_api.json).unwrap();
    for list in [&before, &by_api] {
        assert_eq!(list.len(), 2, "{list:?}");
        for name in ["node-a", "node-b"] {
            let e = agent_entry(list, name);
            assert_eq!(e["tunnel"], "wiki", "{e}");
            assert_eq!(e["tunnel_id"], t.tunnel.id.as_str(), "{e}");
            assert!(e["version"].as_str().is_some_and(|v| !v.is_empty()), "{e}");
            assert!(
                e["remote_addr"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("127.0.0.1:")),
                "{e}"
            );
            assert!(
                e["connected_at"]
                    .as_u64()
                    .is_some_and(|s| s > 1_600_000_000),
                "{e}"
            );
            assert!(e["conn_id"].as_u64().is_some(), "{e}");
            assert_eq!(e["inflight"], 0, "{e}");
            assert_eq!(e["draining"], false, "{e}");
            assert_eq!(e["key"], "current", "{e}");
        }
    }
    let shown = gateway.cli_json(&["tunnel", "show", "wiki"]).await;
    assert_eq!(shown["agents"].as_array().map(Vec::len), Some(2), "{shown}");
    for i in 0..6 {
        assert_eq!(
            caller
                .get("wiki.test", &format!("/count/{i}"))
                .send()
                .await
                .status,
            200
        );
    }
    let after = gateway.agent_list().await;
    assert!(
        bytes_of(agent_entry(&after, "node-a")) + bytes_of(agent_entry(&after, "node-b"))
            > bytes_of(agent_entry(&before, "node-a")) + bytes_of(agent_entry(&before, "node-b")),
        "bytes did not grow after requests: {before:?} -> {after:?}"
    );

    // Node A holds a slow request when it is drained: it finishes it, gets
    // nothing new, and leaves once idle; node B serves everything else.
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let caller = caller.clone();
            tokio::spawn(async move {
                caller
                    .get("wiki.test", &format!("/slow/1500?s={i}"))
                    .send()
                    .await
            })
        })
        .collect();
    t.node_a
        .stats()
        .in_flight
        .wait_at_least(1, "a slow request at node A", PATIENCE)
        .await;
    let conn = agent_entry(&gateway.agent_list().await, "node-a")["conn_id"]
        .as_u64()
        .unwrap();
    assert_eq!(conn, gateway.conn_id("node-a"));
    let mark = gateway.events().mark();
    let drained = gateway
        .cli_json(&["agent", "drain", &conn.to_string()])
        .await;
    assert_eq!(drained["draining"], true, "{drained}");
    let listed = gateway.agent_list().await;
    assert_eq!(
        agent_entry(&listed, "node-a")["draining"],
        true,
        "{listed:?}"
    );
    for i in 0..8 {
        let reply = caller
            .get("wiki.test", &format!("/during-drain/{i}"))
            .send()
            .await;
        assert_eq!(
            reply.echo().server,
            "node-b",
            "request {i} went to the drained agent"
        );
    }
    for s in slow {
        assert_eq!(
            s.await.unwrap().status,
            200,
            "a request in flight at the drain failed"
        );
    }
    let (gone, _) = disconnected(gateway, mark, "node-a").await;
    assert_eq!(gone["conn"], conn, "{gone}");
    assert!(reason(&gone).contains("drained by operator"), "{gone}");
    // The agent comes back by itself after its backoff, on a new connection.
    a.wait_connected().await;
    assert_ne!(gateway.conn_id("node-a"), conn);
    find_audit(
        &gateway.audit_list().await,
        "agent.drain",
        &conn.to_string(),
    );

    let unknown = gateway.try_cli(&["agent", "drain", "999999"]).await;
    assert!(
        !unknown.status.success(),
        "draining an unknown agent succeeded: {unknown:?}"
    );

    t.gateway.terminate().await;
    let stopped = t.gateway.try_cli(&["agent", "list"]).await;
    assert!(
        !stopped.status.success(),
        "agent list without a gateway: {stopped:?}"
    );
    assert!(
        stopped.stderr.contains("not running"),
        "agent list should say the gateway is not running: {stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_disconnected_by_the_operator_goes_at_once_and_dials_again() {
    let t = TwoNodes::start(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let a = t.agent_a().await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    // A slow request on it: a disconnect, unlike a drain, does not wait.
    let slow = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.get("wiki.test", "/slow/20000").send().await })
    };
    t.node_a
        .stats()
        .in_flight
        .wait_at_least(1, "a slow request at node A", PATIENCE)
        .await;
    let conn = gateway.conn_id("node-a");
    let mark = gateway.events().mark();
    let shown = gateway
        .cli_json(&["agent", "disconnect", &conn.to_string()])
        .await;
    assert_eq!(shown["conn_id"], conn, "{shown}");
    assert_eq!(shown["inflight"], 1, "{shown}");
    let (gone, _) = disconnected(gateway, mark, "node-a").await;
    assert_eq!(gone["conn"], conn, "{gone}");
    assert!(
        reason(&gone).contains("disconnected by an operator (cli:"),
        "{gone}"
    );
    let lost = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the request in flight ends with the connection")
        .unwrap();
    assert_eq!(lost.status, 502, "{lost:?}");
    // It comes back on a new connection, and serves.
    a.wait_connected().await;
    tests::eventually("node-a on a new connection", PATIENCE, || async {
        let now = gateway.conn_id("node-a");
        if now != conn {
            Ok(())
        } else {
            Err(format!("still connection {now}"))
        }
    })
    .await;
    assert_eq!(caller.get("wiki.test", "/after").send().await.status, 200);
    let audit = gateway.audit_list().await;
    let entry = find_audit(&audit, "agent.disconnect", &conn.to_string());
    assert_eq!(entry["detail"]["agent"], "node-a", "{entry}");

    let unknown = gateway.try_cli(&["agent", "disconnect", "999999"]).await;
    assert!(
        !unknown.status.success() && unknown.stderr.contains("no agent connection 999999"),
        "disconnecting an unknown agent: {unknown:?}"
    );
}
