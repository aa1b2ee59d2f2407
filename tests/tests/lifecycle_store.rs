//! Story: the operator replaces the store's key-encryption key with
//! `gateway store rekey`: while requests flow (none fails), with the
//! gateway stopped, and during a key rotation's overlap; the old KEK is
//! kept as `<kek_file>.old` until the operator removes it.

use tests::admin::{failures, find_audit, Operator, RequestLoop};
use tests::lifecycle::{agent_entry, TwoNodes};
use tests::{Agent, AgentOptions, GatewayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_is_rekeyed_while_requests_flow_and_the_old_kek_can_go() {
    let mut t = TwoNodes::start(GatewayOptions::new()).await;
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
    let mut t = TwoNodes::start(GatewayOptions::new()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_during_a_rotation_overlap_keeps_both_keys_working() {
    let mut t = TwoNodes::start(GatewayOptions::new()).await;
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
        agent_entry(&agents, old_agent.name())["key"],
        "previous",
        "{agents:?}"
    );
    assert_eq!(
        agent_entry(&agents, new_agent.name())["key"],
        "current",
        "{agents:?}"
    );
}
