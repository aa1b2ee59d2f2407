//! Story: an operator replaces and removes tunnel keys while agents serve:
//! `tunnel rotate-key` with an overlap (no request fails, new-key agents
//! are preferred, old-key agents leave within a second of its end and are
//! refused from then on), at once, and `tunnel delete`.

use std::time::{Duration, Instant};

use tests::admin::{failures, find_audit, Operator, RequestLoop};
use tests::lifecycle::{agent_entry, assert_refused, disconnected, reason, TwoNodes};
use tests::upstream;
use tests::{Agent, AgentOptions, GatewayOptions, PATIENCE};

fn served_by(o: &tests::admin::Outcome) -> &str {
    o.server.as_deref().unwrap_or("-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_with_an_overlap_loses_no_request_and_retires_the_old_key_when_it_ends() {
    let t = TwoNodes::start(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let agent_a = t.agent_a().await;
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
    let t = TwoNodes::start(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let agent_a = t.agent_a().await;
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

    // Mistakes are named, and change nothing.
    let forever = gateway
        .try_cli(&["tunnel", "rotate-key", "wiki", "--overlap", "forever"])
        .await;
    assert!(!forever.status.success(), "{forever:?}");
    assert!(forever.stderr.contains("--overlap"), "{forever:?}");
    let nope = gateway.try_cli(&["tunnel", "rotate-key", "nope"]).await;
    assert!(!nope.status.success(), "{nope:?}");
    assert!(nope.stderr.contains("nope"), "{nope:?}");
    let listed = gateway.list_tunnels().await;
    let wiki = listed.iter().find(|x| x["name"] == "wiki").expect("wiki");
    assert_eq!(wiki["key_generation"], 1, "{wiki}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tunnel_drops_its_agents_answers_404_and_refuses_its_key() {
    let t = TwoNodes::start(GatewayOptions::new().base_domain("tunnels.test")).await;
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
async fn a_second_rotation_retires_the_key_of_two_rotations_ago_at_once() {
    let t = TwoNodes::start(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let first = Agent::connect(
        gateway,
        &t.tunnel,
        t.node_a.addr(),
        AgentOptions::new().name("gen-0"),
    )
    .await;
    let (gen1, _) = gateway.rotate_key("wiki", "10m").await;
    let second = Agent::connect(
        gateway,
        &gen1,
        t.node_b.addr(),
        AgentOptions::new().name("gen-1"),
    )
    .await;
    let agents = gateway.agent_list().await;
    assert_eq!(
        agent_entry(&agents, "gen-0")["key"],
        "previous",
        "{agents:?}"
    );

    // Only one previous key is kept: generation 0 goes now, 1 stays.
    let mark = gateway.events().mark();
    let (gen2, printed) = gateway.rotate_key("wiki", "10m").await;
    let answered = Instant::now();
    assert_eq!(printed["key_generation"], 2, "{printed}");
    let (gone, gone_at) = disconnected(gateway, mark, first.name()).await;
    assert!(reason(&gone).contains("key rotated"), "{gone}");
    assert!(
        gone_at <= answered + Duration::from_secs(1),
        "the generation-0 agent went {:?} after the second rotation",
        gone_at.saturating_duration_since(answered)
    );
    assert_refused(gateway, &t.tunnel, "generation-0 key after two rotations").await;
    let agents = gateway.agent_list().await;
    assert_eq!(
        agent_entry(&agents, "gen-1")["key"],
        "previous",
        "{agents:?}"
    );
    assert!(agents.iter().all(|a| a["agent"] != "gen-0"), "{agents:?}");
    let _third = Agent::connect(gateway, &gen2, t.node_a.addr(), AgentOptions::new()).await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tunnels_name_can_be_taken_again_with_a_new_id_and_key() {
    let t = TwoNodes::start(GatewayOptions::new()).await;
    let gateway = &t.gateway;
    let old_agent = Agent::connect(gateway, &t.tunnel, t.node_a.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    gateway.cli(&["tunnel", "delete", "wiki"]).await;
    old_agent.wait_event("rejected", PATIENCE).await;

    let again = gateway.create_tunnel("acme", "wiki").await;
    assert_ne!(again.id, t.tunnel.id, "a new tunnel gets a new id");
    assert_ne!(again.key, t.tunnel.key, "a new tunnel gets a new key");
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 503);
    let _new_agent = Agent::connect(gateway, &again, t.node_b.addr(), AgentOptions::new()).await;
    assert_eq!(
        caller.get("wiki.test", "/").send().await.echo().server,
        "node-b"
    );
    // The old id with the old key, and the new id with the old key: refused.
    assert_refused(gateway, &t.tunnel, "the deleted tunnel's id and key").await;
    let old_key_new_id = tests::Tunnel {
        key: t.tunnel.key.clone(),
        ..again.clone()
    };
    assert_refused(
        gateway,
        &old_key_new_id,
        "the deleted tunnel's key on the new id",
    )
    .await;
}
