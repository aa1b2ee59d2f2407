//! Story: only the holder of a tunnel's key can serve it, and an agent only
//! talks to a gateway whose certificate it can verify, over TLS 1.3.

use serde_json::Value;
use tests::upstream::{self, impostor, Impostor};
use tests::{pki::Pki, wire, Agent, AgentOptions, Gateway, GatewayOptions, Tunnel, PATIENCE};

/// Same id, someone else's key.
fn with_key_of(tunnel: &Tunnel, other: &Tunnel) -> Tunnel {
    Tunnel {
        key: other.key.clone(),
        ..tunnel.clone()
    }
}

/// An id that looks like a real one but names no tunnel.
fn unknown_id(tunnel: &Tunnel) -> Tunnel {
    let mut id: Vec<char> = tunnel.id.chars().collect();
    let last = id
        .iter()
        .rposition(|c| c.is_ascii_alphanumeric())
        .expect("an id character");
    id[last] = match id[last] {
        '0' => '1',
        c if c.is_ascii_digit() => '0',
        'a' => 'b',
        'A' => 'B',
        c if c.is_ascii_uppercase() => 'A',
        _ => 'a',
    };
    Tunnel {
        id: id.into_iter().collect(),
        ..tunnel.clone()
    }
}

/// Starts an agent that the gateway must refuse; returns its `rejected`
/// event and the gateway's `agent_rejected` event.
async fn refused(gateway: &Gateway, tunnel: &Tunnel) -> (Value, Value) {
    let service = upstream::echo("wiki").await;
    let mark = gateway.events().mark();
    let mut agent = Agent::start(gateway, tunnel, service.addr(), AgentOptions::new()).await;
    let rejected = agent.wait_event("rejected", PATIENCE).await;
    let status = agent.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(2),
        "a refused agent exits with 2, no retry loop\n{}",
        agent.logs()
    );
    let gateway_side = gateway
        .events()
        .wait_after(
            mark,
            "agent_rejected",
            |e| e["event"] == "agent_rejected",
            PATIENCE,
        )
        .await;
    let connected = agent
        .events()
        .snapshot()
        .iter()
        .any(|e| e["event"] == "connected");
    assert!(
        !connected,
        "a refused agent reported connected: {}",
        agent.events().dump()
    );
    (rejected, gateway_side)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_unknown_tunnel_are_refused_alike() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let wiki = gateway.create_tunnel("acme", "wiki").await;
    let other = gateway.create_tunnel("acme", "other").await;

    let (wrong_key, gw_wrong_key) = refused(&gateway, &with_key_of(&wiki, &other)).await;
    let (unknown, gw_unknown) = refused(&gateway, &unknown_id(&wiki)).await;

    assert_eq!(
        gw_wrong_key["reason"], "authentication failed",
        "{gw_wrong_key}"
    );
    assert_eq!(
        gw_unknown["reason"], "authentication failed",
        "{gw_unknown}"
    );
    assert_eq!(
        wrong_key["reason"], unknown["reason"],
        "the agent must not learn whether the tunnel exists"
    );
    let leaked = gateway
        .events()
        .snapshot()
        .into_iter()
        .any(|e| e["event"] == "agent_connected");
    assert!(
        !leaked,
        "no agent may be connected: {}",
        gateway.events().dump()
    );

    // Nobody serves the tunnel: callers are told to come back later.
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_key_is_accepted_whichever_cipher_stores_it() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let opts = AgentOptions::new().cipher("chacha20-poly1305");
    let agent = Agent::connect(&gateway, &tunnel, wiki.addr(), opts).await;
    let connected = agent.wait_event("connected", PATIENCE).await;
    assert_eq!(connected["tunnel"], tunnel.id.as_str(), "{connected}");
    let gw = gateway
        .wait_for("agent_connected", &[("agent", agent.name())])
        .await;
    assert_eq!(
        (gw["tunnel"].as_str(), gw["tunnel_name"].as_str()),
        (Some(tunnel.id.as_str()), Some("wiki"))
    );
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(
        caller.get("wiki.test", "/").send().await.echo().server,
        "wiki"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_listener_speaks_tls_1_3_only() {
    let gateway = Gateway::start(GatewayOptions::new()).await;
    let roots = || gateway.pki().root_store();
    let tls13 =
        wire::tls_handshake(gateway.agents_addr(), roots(), &[&rustls::version::TLS13]).await;
    assert_eq!(tls13, Ok(rustls::ProtocolVersion::TLSv1_3));
    let tls12 =
        wire::tls_handshake(gateway.agents_addr(), roots(), &[&rustls::version::TLS12]).await;
    assert!(
        tls12.is_err(),
        "a TLS 1.2-only client was accepted: {tls12:?}"
    );
}

/// An agent pointed at `fake` keeps failing to connect, says why, and
/// never sends it a byte of the tunnel protocol.
async fn agent_refuses(fake: &Impostor, ca: &std::path::Path) {
    let gateway = Gateway::start(GatewayOptions::new()).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let service = upstream::echo("wiki").await;
    let opts = AgentOptions::new().url(&fake.url()).ca_file(ca);
    let agent = Agent::start(&gateway, &tunnel, service.addr(), opts).await;

    let failed = agent.wait_event("connect_failed", PATIENCE).await;
    let reason = failed["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason.contains("certificate"),
        "reason should name the certificate: {failed}"
    );
    // It retries (with backoff) and is refused each time.
    let mark = agent.events().mark();
    agent
        .wait_event_after(mark, "connect_failed", PATIENCE)
        .await;
    fake.stats()
        .connections
        .wait_at_least(2, "TLS attempts at the impostor", PATIENCE)
        .await;
    assert_eq!(
        fake.stats().handshakes.get(),
        0,
        "the agent completed a handshake with an impostor"
    );
    assert_eq!(
        fake.stats().app_bytes.get(),
        0,
        "the agent sent application bytes to an impostor"
    );
    assert!(!agent
        .events()
        .snapshot()
        .iter()
        .any(|e| e["event"] == "connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_certificate_for_another_hostname() {
    let pki = Pki::generate();
    let fake = impostor(&pki.wrong_hostname()).await;
    agent_refuses(&fake, &pki.ca_file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_certificate_from_an_untrusted_ca() {
    let trusted = Pki::generate();
    let untrusted = Pki::generate();
    let fake = impostor(&untrusted.gateway).await;
    agent_refuses(&fake, &trusted.ca_file).await;
}
