//! Story: an operator replaces and removes tunnel keys while agents serve:
//! `tunnel rotate-key` with an overlap (no request fails, new-key agents
//! are preferred, old-key agents leave when it ends), `tunnel delete`, and
//! `gateway store rekey` under load, with the gateway running or stopped.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::admin::{failures, find_audit, Operator, RequestLoop};
use tests::upstream::{self, Upstream};
use tests::{Agent, AgentOptions, Gateway, GatewayOptions, Tunnel, PATIENCE};

/// Starts an agent holding `tunnel`'s (id, key) that the gateway must
/// refuse: it reports `rejected` and exits 2 without ever connecting.
async fn assert_refused(gateway: &Gateway, tunnel: &Tunnel, why: &str) {
    let service = upstream::echo("refused").await;
    let mut agent = Agent::start(gateway, tunnel, service.addr(), AgentOptions::new()).await;
    agent.wait_event("rejected", PATIENCE).await;
    let status = agent.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(2),
        "{why}: refused agent exit\n{}",
        agent.logs()
    );
    assert!(
        !agent
            .events()
            .snapshot()
            .iter()
            .any(|e| e["event"] == "connected"),
        "{why}: the agent connected: {}",
        agent.events().dump()
    );
}

/// Waits for the gateway's `agent_disconnected` of `agent` after `mark`,
/// returning it and when it was seen.
async fn disconnected(gateway: &Gateway, mark: usize, agent: &str) -> (Value, Instant) {
    let e = gateway
        .events()
        .wait_after(
            mark,
            &format!("agent_disconnected of {agent}"),
            |e| e["event"] == "agent_disconnected" && e["agent"] == agent,
            PATIENCE,
        )
        .await;
    (e, Instant::now())
}

fn reason(e: &Value) -> String {
    e["reason"].as_str().unwrap_or_default().to_string()
}

fn served_by(o: &tests::admin::Outcome) -> &str {
    o.server.as_deref().unwrap_or("-")
}

struct TwoNodes {
    gateway: Gateway,
    tunnel: Tunnel,
    node_a: Upstream,
    node_b: Upstream,
}

async fn gateway_with_tunnel(opts: GatewayOptions) -> TwoNodes {
    let gateway = Gateway::start(opts.route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    TwoNodes {
        gateway,
        tunnel,
        node_a: upstream::echo("node-a").await,
        node_b: upstream::echo("node-b").await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_with_an_overlap_loses_no_request_and_retires_the_old_key_when_it_ends() {
    let t = gateway_with_tunnel(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let agent_a = Agent::connect(
        gateway,
        &t.tunnel,
        t.node_a.addr(),
        AgentOptions::new().name("node-a"),
    )
    .await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    let load = RequestLoop::start(&caller, "wiki.test", "/rotate", 2);
    load.wait_more(5).await;

    let overlap = Duration::from_secs(4);
    let mark = gateway.events().mark();
    let asked = Instant::now();
    let (new, printed) = gateway.rotate_key("wiki", "4s").await;
    let answered = Instant::now();
    assert_eq!(
        (new.id.as_str(), new.name.as_str()),
        (t.tunnel.id.as_str(), "wiki")
    );
    assert_ne!(new.key, t.tunnel.key, "rotate-key must print a new key");
    assert_eq!(printed["key_generation"], 1, "{printed}");
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = printed["previous_key_valid_until"]
        .as_u64()
        .unwrap_or_else(|| panic!("no previous_key_valid_until: {printed}"));
    assert!(
        (now_unix + 2..=now_unix + 6).contains(&until),
        "previous key valid until {until}, now {now_unix}, overlap 4 s"
    );

    let listed = gateway.list_tunnels().await;
    let wiki = listed
        .iter()
        .find(|x| x["name"] == "wiki")
        .expect("wiki listed");
    assert_eq!(wiki["key_generation"], 1, "{wiki}");
    assert_eq!(wiki["previous_key_valid_until"], until, "{wiki}");

    // The new node comes up with the new key during the overlap and is
    // preferred from then on.
    let agent_b = Agent::connect(
        gateway,
        &new,
        t.node_b.addr(),
        AgentOptions::new().name("node-b"),
    )
    .await;
    let b_connected = Instant::now();
    assert!(
        b_connected < asked + overlap,
        "agent B took until after the overlap to connect; the test proves nothing"
    );
    let agents = gateway.agent_list().await;
    let key_of = |name: &str| {
        agents
            .iter()
            .find(|a| a["agent"] == name)
            .map(|a| a["key"].clone())
            .unwrap_or_else(|| panic!("{name} not in agent list {agents:?}"))
    };
    assert_eq!(key_of("node-a"), "previous", "{agents:?}");
    assert_eq!(key_of("node-b"), "current", "{agents:?}");

    // Old-key agent leaves within a second of the overlap's end, no sooner.
    let (gone, gone_at) = disconnected(gateway, mark, agent_a.name()).await;
    assert!(
        reason(&gone).contains("key rotated"),
        "reason should say the key was rotated: {gone}"
    );
    assert!(
        gone_at >= asked + overlap - Duration::from_secs(1),
        "old-key agent disconnected {:?} after rotate-key, before the 4 s overlap ended",
        gone_at - asked
    );
    assert!(
        gone_at <= answered + overlap + Duration::from_millis(1500),
        "old-key agent disconnected {:?} after rotate-key returned: more than a second after the 4 s overlap",
        gone_at - answered
    );
    load.wait_more(5).await;
    let outcomes = load.stop().await;

    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the rotation:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n")
    );
    // Once B was up, A got no new request (small slack for requests sent
    // while B's connection was being registered).
    let slack = Duration::from_millis(200);
    let to_a: Vec<_> = outcomes
        .iter()
        .filter(|o| o.sent > b_connected + slack && served_by(o) != "node-b")
        .map(|o| format!("{} served by {}", o.target, served_by(o)))
        .collect();
    assert!(
        to_a.is_empty(),
        "requests sent after the new-key agent connected went elsewhere:\n{}",
        to_a.join("\n")
    );
    assert!(
        outcomes.iter().any(|o| o.sent > b_connected + slack),
        "no request was sent once the new-key agent was up"
    );

    // The old key is refused from now on, the new one still works.
    agent_a.wait_event("rejected", PATIENCE).await;
    assert_refused(gateway, &t.tunnel, "old key after the overlap").await;
    assert_eq!(
        caller.get("wiki.test", "/after").send().await.echo().server,
        "node-b"
    );
    drop(agent_b);

    let audit = gateway.audit_list().await;
    let entry = find_audit(&audit, "tunnel.rotate_key", "wiki");
    assert!(
        entry["actor"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cli:"),
        "{entry}"
    );
    let text = serde_json::to_string(&audit).unwrap();
    assert!(
        !text.contains(&new.key) && !text.contains(&t.tunnel.key),
        "a key in the audit log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_without_overlap_disconnects_old_key_agents_at_once() {
    let t = gateway_with_tunnel(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let agent_a = Agent::connect(
        gateway,
        &t.tunnel,
        t.node_a.addr(),
        AgentOptions::new().name("node-a"),
    )
    .await;
    let mark = gateway.events().mark();
    let (new, printed) = gateway.rotate_key("wiki", "0").await;
    let answered = Instant::now();
    assert_eq!(printed["key_generation"], 1, "{printed}");
    let (gone, gone_at) = disconnected(gateway, mark, agent_a.name()).await;
    assert!(reason(&gone).contains("key rotated"), "{gone}");
    assert!(
        gone_at <= answered + Duration::from_secs(1),
        "with --overlap 0 the old-key agent went {:?} after rotate-key returned",
        gone_at.saturating_duration_since(answered)
    );
    agent_a.wait_event("rejected", PATIENCE).await;
    assert_refused(gateway, &t.tunnel, "old key after an immediate rotation").await;

    let _agent_b = Agent::connect(gateway, &new, t.node_b.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(
        caller.get("wiki.test", "/").send().await.echo().server,
        "node-b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tunnel_drops_its_agents_answers_404_and_refuses_its_key() {
    let t = gateway_with_tunnel(GatewayOptions::new().base_domain("tunnels.test")).await;
    let gateway = &t.gateway;
    let a = Agent::connect(gateway, &t.tunnel, t.node_a.addr(), AgentOptions::new()).await;
    let b = Agent::connect(gateway, &t.tunnel, t.node_b.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
    // A second tunnel without a route, reached as `docs.<base_domain>`.
    let docs = gateway.create_tunnel("acme", "docs").await;
    let docs_service = upstream::echo("docs").await;
    let c = Agent::connect(gateway, &docs, docs_service.addr(), AgentOptions::new()).await;
    let by_name = caller.get("docs.tunnels.test", "/").send().await;
    assert_eq!(by_name.echo().server, "docs");

    let mark = gateway.events().mark();
    let deleted = gateway.cli_json(&["tunnel", "delete", "wiki"]).await;
    let answered = Instant::now();
    assert_eq!(deleted["deleted"], "wiki", "{deleted}");
    assert_eq!(deleted["agents_disconnected"], 2, "{deleted}");
    for agent in [&a, &b] {
        let (gone, gone_at) = disconnected(gateway, mark, agent.name()).await;
        assert!(reason(&gone).contains("tunnel deleted"), "{gone}");
        assert!(
            gone_at <= answered + Duration::from_secs(1),
            "agent of a deleted tunnel left {:?} after the delete",
            gone_at.saturating_duration_since(answered)
        );
    }

    let routed = caller.get("wiki.test", "/").send().await;
    assert_eq!(
        routed.status, 404,
        "explicit route to a deleted tunnel: {routed:?}"
    );
    assert!(
        routed.text().contains("tunnel") && routed.text().contains("wiki"),
        "the 404 should say which tunnel is missing: {}",
        routed.text()
    );

    // The same through the API, for the tunnel reached by its name.
    let api = gateway.api(&gateway.admin_token("write").await);
    let mark = gateway.events().mark();
    let gone_docs = api
        .delete("/v1/tunnels/docs")
        .await
        .expect(200, "DELETE /v1/tunnels/docs");
    assert_eq!(gone_docs.json["agents_disconnected"], 1, "{gone_docs:?}");
    let (gone, _) = disconnected(gateway, mark, c.name()).await;
    assert!(reason(&gone).contains("tunnel deleted"), "{gone}");
    let by_name = caller.get("docs.tunnels.test", "/").send().await;
    assert_eq!(
        by_name.status, 404,
        "wildcard name of a deleted tunnel: {by_name:?}"
    );
    let never = caller.get("never-was.tunnels.test", "/").send().await;
    assert_eq!(
        by_name.text().replace("docs", "NAME"),
        never.text().replace("never-was", "NAME"),
        "a deleted tunnel answers as an unknown one"
    );

    // Its agents come back with the old key and are refused; so is a new one.
    a.wait_event("rejected", PATIENCE).await;
    b.wait_event("rejected", PATIENCE).await;
    assert_refused(gateway, &t.tunnel, "key of a deleted tunnel").await;
    let listed = gateway.list_tunnels().await;
    assert!(
        listed
            .iter()
            .all(|x| x["name"] != "wiki" && x["name"] != "docs"),
        "deleted tunnel still listed: {listed:?}"
    );
    find_audit(&gateway.audit_list().await, "tunnel.delete", "wiki");

    let again = gateway.try_cli(&["tunnel", "delete", "wiki"]).await;
    assert!(
        !again.status.success(),
        "deleting it twice succeeded: {again:?}"
    );
    assert!(
        again.stderr.contains("wiki"),
        "the error should name the tunnel: {again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_rekeyed_while_requests_flow_and_the_old_kek_can_go() {
    let mut t = gateway_with_tunnel(GatewayOptions::new()).await;
    let agent = Agent::connect(&t.gateway, &t.tunnel, t.node_a.addr(), AgentOptions::new()).await;
    let caller = t.gateway.caller(&t.gateway.create_caller("acme").await);
    let kek = t.gateway.kek_file();
    let old_kek = std::fs::read(&kek).expect("the store's KEK file");

    let load = RequestLoop::start(&caller, "wiki.test", "/rekey", 2);
    load.wait_more(5).await;
    let rekeyed = t.gateway.cli_json(&["store", "rekey"]).await;
    load.wait_more(5).await;
    let outcomes = load.stop().await;
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the rekey:\n{}",
        failed.len(),
        outcomes.len(),
        failed.join("\n")
    );
    assert_eq!(rekeyed["tunnels_rekeyed"], 1, "{rekeyed}");
    let kept = kek.with_file_name("kek.old");
    assert_eq!(
        rekeyed["old_kek_file"],
        kept.to_string_lossy().as_ref(),
        "{rekeyed}"
    );
    assert_eq!(std::fs::read(&kept).expect("kek.old kept"), old_kek);
    assert_ne!(
        std::fs::read(&kek).unwrap(),
        old_kek,
        "the KEK file was not replaced"
    );

    // An agent reconnecting after the rekey is accepted (the running
    // gateway decrypts with the new KEK).
    drop(agent);
    let agent = Agent::connect(&t.gateway, &t.tunnel, t.node_a.addr(), AgentOptions::new()).await;
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);

    // A second rekey before the operator removed the old KEK is refused:
    // it would overwrite the only copy of a key something may still need.
    let again = t.gateway.try_cli(&["store", "rekey"]).await;
    assert!(
        !again.status.success(),
        "rekey over a kept kek.old: {again:?}"
    );
    assert!(
        again.stderr.contains("kek.old"),
        "the refusal should name the file to remove: {again:?}"
    );

    // Without the old KEK, a restarted gateway still admits the agent.
    std::fs::remove_file(&kept).unwrap();
    t.gateway.restart().await;
    agent.wait_connected().await;
    let caller = t.gateway.caller(&t.gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
    find_audit(&t.gateway.audit_list().await, "store.rekey", "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_rekeyed_with_the_gateway_stopped() {
    let mut t = gateway_with_tunnel(GatewayOptions::new()).await;
    let status = t.gateway.terminate().await;
    assert!(status.success(), "{}", t.gateway.logs());
    let rekeyed = t.gateway.cli_json(&["store", "rekey"]).await;
    assert_eq!(rekeyed["tunnels_rekeyed"], 1, "{rekeyed}");
    let kept = t.gateway.kek_file().with_file_name("kek.old");
    assert!(kept.is_file(), "old KEK not kept at {}", kept.display());
    std::fs::remove_file(&kept).unwrap();

    t.gateway.restart().await;
    let _agent = Agent::connect(&t.gateway, &t.tunnel, t.node_a.addr(), AgentOptions::new()).await;
    let caller = t.gateway.caller(&t.gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
    let audit = t.gateway.audit_list().await;
    let entry = find_audit(&audit, "store.rekey", "");
    assert_eq!(
        entry["source"], "local",
        "a rekey on the store directly: {entry}"
    );
}

/// The entry of `agent` in an agent listing.
fn entry<'a>(agents: &'a [Value], agent: &str) -> &'a Value {
    agents
        .iter()
        .find(|a| a["agent"] == agent)
        .unwrap_or_else(|| panic!("{agent} missing from {agents:?}"))
}

fn bytes_of(a: &Value) -> u64 {
    a["bytes_in"].as_u64().unwrap_or(0) + a["bytes_out"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_listed_and_one_is_drained_while_the_other_serves() {
    let mut t = gateway_with_tunnel(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let a = Agent::connect(
        gateway,
        &t.tunnel,
        t.node_a.addr(),
        AgentOptions::new().name("node-a"),
    )
    .await;
    let _b = Agent::connect(
        gateway,
        &t.tunnel,
        t.node_b.addr(),
        AgentOptions::new().name("node-b"),
    )
    .await;
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
            let e = entry(list, name);
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
        bytes_of(entry(&after, "node-a")) + bytes_of(entry(&after, "node-b"))
            > bytes_of(entry(&before, "node-a")) + bytes_of(entry(&before, "node-b")),
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
    let conn = entry(&gateway.agent_list().await, "node-a")["conn_id"]
        .as_u64()
        .unwrap();
    assert_eq!(conn, gateway.conn_id("node-a"));
    let mark = gateway.events().mark();
    let drained = gateway
        .cli_json(&["agent", "drain", &conn.to_string()])
        .await;
    assert_eq!(drained["draining"], true, "{drained}");
    let listed = gateway.agent_list().await;
    assert_eq!(entry(&listed, "node-a")["draining"], true, "{listed:?}");
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
async fn a_rekey_during_a_rotation_overlap_keeps_both_keys_working() {
    let mut t = gateway_with_tunnel(GatewayOptions::new()).await;
    let (new, _) = t.gateway.rotate_key("wiki", "10m").await;
    let rekeyed = t.gateway.cli_json(&["store", "rekey"]).await;
    assert_eq!(rekeyed["tunnels_rekeyed"], 1, "{rekeyed}");
    std::fs::remove_file(t.gateway.kek_file().with_file_name("kek.old")).unwrap();
    t.gateway.restart().await;

    // Both the previous key (still in its overlap) and the current one
    // were resealed under the new KEK.
    let old_agent = Agent::connect(
        &t.gateway,
        &t.tunnel,
        t.node_a.addr(),
        AgentOptions::new().name("old-key"),
    )
    .await;
    let new_agent = Agent::connect(
        &t.gateway,
        &new,
        t.node_b.addr(),
        AgentOptions::new().name("new-key"),
    )
    .await;
    let agents = t.gateway.agent_list().await;
    assert_eq!(
        entry(&agents, old_agent.name())["key"],
        "previous",
        "{agents:?}"
    );
    assert_eq!(
        entry(&agents, new_agent.name())["key"],
        "current",
        "{agents:?}"
    );
}
