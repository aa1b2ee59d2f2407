//! Story: the agents' listener is shared by every organization. One host
//! that opens idle connections, or one tunnel's key holder that connects
//! agent after agent, must not keep anybody else's agents out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};

use tests::events::kind;
use tests::{scrape, upstream, Agent, AgentOptions, Gateway, GatewayOptions, PATIENCE};

const REJECTED: &str = "tunnel_gateway_agent_handshakes_rejected_total";

async fn refused(gateway: &Gateway, reason: &str) -> f64 {
    scrape::metrics(gateway.admin())
        .await
        .sum(REJECTED, &[("reason", reason)])
}

/// `n` connections from 127.0.0.2 that never say a word; each one the
/// gateway closes is opened again at once, so the pressure never drops.
/// Returns how many connects succeeded so far.
fn idle_flood(target: SocketAddr, n: usize) -> (Arc<AtomicU64>, tokio::task::JoinSet<()>) {
    let connects = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let connects = connects.clone();
        set.spawn(async move {
            loop {
                let socket = TcpSocket::new_v4().expect("socket");
                socket
                    .bind("127.0.0.2:0".parse().unwrap())
                    .expect("bind 127.0.0.2 (loopback)");
                if let Ok(mut s) = socket.connect(target).await {
                    connects.fetch_add(1, Ordering::Relaxed);
                    let mut buf = [0u8; 64];
                    // Wait for the gateway to give up on us.
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                }
                // Keeps the churn (on a machine running other tests too)
                // to a few hundred connections a second.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }
    (connects, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_host_do_not_keep_agents_out() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;

    // More idle connections than the whole pending-handshake budget (256).
    let (connects, _flood) = idle_flood(gateway.agents_addr(), 300);
    let deadline = Instant::now() + PATIENCE;
    while connects.load(Ordering::Relaxed) < 300 {
        assert!(Instant::now() < deadline, "the flood never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A real agent (from 127.0.0.1) connects well within the 10 s that the
    // flood's handshakes may last (before this fix, none of its attempts got
    // a slot until those ran out).
    let agent = Agent::start(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    tokio::time::timeout(Duration::from_secs(5), agent.wait_connected())
        .await
        .expect("the agent should connect while one host floods the listener");
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/hello").send().await.status, 200);
    assert!(refused(&gateway, "per_source").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_starts_tls_is_closed_after_the_tls_deadline() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;

    let started = Instant::now();
    let mut silent = TcpStream::connect(gateway.agents_addr())
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the gateway should close a silent connection");
    let held = started.elapsed();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the gateway sent bytes to a client that never spoke: {read:?}"
    );
    // tls_timeout defaults to 3s; the whole handshake may take 10s.
    assert!(
        held >= Duration::from_secs(2) && held < Duration::from_secs(6),
        "a silent connection was held for {held:?}"
    );
    assert_eq!(refused(&gateway, "tls_timeout").await, 1.0);

    // An agent that does speak TLS is not cut off by the deadline.
    let _agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/hello").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tunnels_key_holder_cannot_take_every_agent_slot() {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .route("wiki.test", "wiki")
            .route("jira.test", "jira"),
    )
    .await;
    let wiki_tunnel = gateway.create_tunnel("acme", "wiki").await;
    let jira_tunnel = gateway.create_tunnel("globex", "jira").await;
    let wiki = upstream::echo("wiki").await;
    let jira = upstream::echo("jira").await;

    // One real agent, then 15 more in this process with the agent's own
    // dial and session code, under the same key: the default cap of 16.
    let first = Agent::connect(&gateway, &wiki_tunnel, wiki.addr(), AgentOptions::new()).await;
    let base = agent::config::AgentConfig::load(first.config_path()).expect("agent config");
    let key = agent::keystore::load_key(&base.tunnel).expect("agent key");
    let url = base.gateway_url().expect("gateway url");
    let tls = agent::dial::tls_config(&base).expect("tls config");
    let (_drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut extra = Vec::new();
    for i in 0..15 {
        let mut cfg = base.clone();
        cfg.tunnel.agent_name = Some(format!("extra-{i}"));
        let (ws, welcome) = agent::dial::dial(&cfg, &url, None, tls.clone(), &key)
            .await
            .unwrap_or_else(|e| panic!("agent #{} of 16 should connect: {e}", i + 2));
        let drain = drain_rx.clone();
        extra.push(tokio::spawn(async move {
            agent::session::serve(&cfg, ws, &welcome.tunnel_name, drain).await
        }));
    }

    // The 17th is told, in words, to come back later: not rejected.
    let mut cfg = base.clone();
    cfg.tunnel.agent_name = Some("extra-16".into());
    match agent::dial::dial(&cfg, &url, None, tls.clone(), &key).await {
        Err(agent::dial::DialError::TryLater(reason)) => assert!(
            reason.contains("16 agents") && reason.contains("wiki"),
            "unclear reason: {reason}"
        ),
        Err(e) => panic!("the 17th agent should be told to retry later, got: {e}"),
        Ok(_) => panic!("the 17th agent of one tunnel was let in"),
    }
    // A real agent process over the cap says why and keeps retrying; it
    // does not exit as it would for a wrong key.
    let waiting = Agent::start(&gateway, &wiki_tunnel, wiki.addr(), AgentOptions::new()).await;
    let failed = waiting.wait_event("connect_failed", PATIENCE).await;
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("retry later")),
        "{failed}"
    );
    assert!(refused(&gateway, "tunnel_full").await >= 2.0);

    // Another organization's agent still connects and serves.
    let _jira_agent =
        Agent::connect(&gateway, &jira_tunnel, jira.addr(), AgentOptions::new()).await;
    let globex = gateway.caller(&gateway.create_caller("globex").await);
    let reply = globex.get("jira.test", "/hello").send().await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let acme = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(acme.get("wiki.test", "/hello").send().await.status, 200);

    // When one of the sixteen leaves, the waiting agent takes its place.
    extra.pop().expect("extra agents").abort();
    waiting.wait_connected().await;
    assert!(
        !waiting
            .events()
            .snapshot()
            .iter()
            .any(|e| kind(e) == "rejected"),
        "an agent over the cap must never be told its key is wrong"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_tells_an_agent_to_retry_later_instead_of_dropping_it() {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .route("wiki.test", "wiki")
            .agents_setting("max_connections", "1"),
    )
    .await;
    let wiki_tunnel = gateway.create_tunnel("acme", "wiki").await;
    let jira_tunnel = gateway.create_tunnel("globex", "jira").await;
    let wiki = upstream::echo("wiki").await;
    let jira = upstream::echo("jira").await;
    let _first = Agent::connect(&gateway, &wiki_tunnel, wiki.addr(), AgentOptions::new()).await;

    // Before, the gateway welcomed the agent and then hung up on it; now it
    // says why before closing, and the agent keeps trying.
    let second = Agent::start(&gateway, &jira_tunnel, jira.addr(), AgentOptions::new()).await;
    let failed = second.wait_event("connect_failed", PATIENCE).await;
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("retry later") && reason.contains("max_connections"),
        "{failed}"
    );
    assert!(refused(&gateway, "max_connections").await >= 1.0);
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/hello").send().await.status, 200);
}
