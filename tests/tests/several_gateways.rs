//! Story: a platform team runs three gateway instances on one PostgreSQL.
//! Whatever an operator changes through one instance (a caller created or
//! revoked, a tunnel key rotated, a tunnel deleted) every instance enforces
//! within a second, without a restart and without waiting for
//! `store.refresh` (set to a minute here, so only the notification can
//! explain it).
//!
//! Needs `TUNNEL_TEST_PG` (scripts/test.sh starts a throwaway cluster).

use std::time::{Duration, Instant};

use std::sync::Arc;
use tests::admin::Operator;
use tests::agent::{Agent, AgentOptions};
use tests::gateway::Tunnel;
use tests::lifecycle::{disconnected, reason};

use tests::pg::{fresh_database, OwnCluster};
use tests::pki::Pki;
use tests::{scrape, upstream, Gateway, GatewayOptions, Route};

/// What every instance must do within, after the change returned.
const WITHIN: Duration = Duration::from_secs(1);

struct Cluster {
    gateways: Vec<Gateway>,
    url: String,
    pki: Arc<Pki>,
    _shared: tempfile::TempDir,
}

/// How long an instance's presence lasts in these stories.
const LEASE: Duration = Duration::from_secs(3);

/// Three instances on one new database, sharing a KEK and a PKI, each
/// with its relay listener and an instance certificate, routing
/// `wiki.test` through `org-check` to the tunnel `wiki`.
async fn three_instances() -> Cluster {
    let url = fresh_database().await;
    let shared = tempfile::tempdir().expect("temp dir");
    let kek = shared.path().join("kek");
    let pki = Pki::generate();
    let mut gateways = Vec::new();
    for i in 0..3 {
        let opts = GatewayOptions::new()
            .pki(pki.clone())
            .store_url(&url)
            .kek_file(&kek)
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", ""))
            .env("GATEWAY__STORE__REFRESH", "60s")
            .extra_config("[callers]\nmax_failures_per_minute = 100000")
            .cluster(&pki, &format!("instance-{i}"), LEASE);
        gateways.push(Gateway::start(opts).await);
    }
    Cluster {
        gateways,
        url,
        pki,
        _shared: shared,
    }
}

/// Polls `check` on each instance until it holds, all within [`WITHIN`]
/// of `since`.
async fn on_every_instance<F, Fut>(c: &Cluster, since: Instant, what: &str, check: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    on_every_instance_within(c, since, WITHIN, what, check).await
}

/// Polls `check` on each instance until it holds, all within `within` of
/// `since`.
async fn on_every_instance_within<F, Fut>(
    c: &Cluster,
    since: Instant,
    within: Duration,
    what: &str,
    check: F,
) where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for i in 0..c.gateways.len() {
        loop {
            if check(i).await {
                eprintln!("instance {i}: {what} after {:?}", since.elapsed());
                break;
            }
            assert!(
                since.elapsed() <= within,
                "instance {i}: not {what} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn status(g: &Gateway, token: &str) -> u16 {
    g.caller(token)
        .get("wiki.test", "/")
        .send()
        .await
        .status
        .as_u16()
}

/// One agent of `tunnel` on each instance.
async fn an_agent_on_each(c: &Cluster, tunnel: &Tunnel, wiki: std::net::SocketAddr) -> Vec<Agent> {
    let mut agents = Vec::new();
    for (i, g) in c.gateways.iter().enumerate() {
        let opts = AgentOptions::new().name(&format!("agent-{i}"));
        agents.push(Agent::connect(g, tunnel, wiki, opts).await);
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_made_or_revoked_on_one_instance_is_served_or_refused_on_all_within_a_second() {
    let c = three_instances().await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = c.gateways[0].create_tunnel("acme", "wiki").await;
    let _agents = an_agent_on_each(&c, &tunnel, wiki.addr()).await;

    // Made on instance 1: every instance serves it within a second.
    let (id, token) = c.gateways[1].create_caller_with_id("acme").await;
    let made = Instant::now();
    on_every_instance(&c, made, "serving the new caller", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 200 }
    })
    .await;

    // Revoked on instance 2: every instance refuses it within a second.
    let revoked = c.gateways[2].cli_json(&["caller", "revoke", &id]).await;
    let answered = Instant::now();
    assert_eq!(revoked["state"], "revoked", "{revoked}");
    on_every_instance(&c, answered, "refusing the revoked caller (401)", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 401 }
    })
    .await;

    // The change is in the one audit log, whichever instance is asked.
    let audit = c.gateways[0].audit_list().await;
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "caller.revoke" && e["object"] == id),
        "{audit:?}"
    );

    // A rekey through a running instance would leave the others with a
    // KEK that no longer opens the keys: refused, saying what to do.
    let rekey = tests::admin::try_cli(c.gateways[0].config_path(), &["store", "rekey"]).await;
    assert!(!rekey.status.success(), "{}", rekey.stdout);
    assert!(
        rekey
            .stderr
            .contains("needs every gateway instance stopped"),
        "{}",
        rekey.stderr
    );
    assert_eq!(
        status(&c.gateways[1], &c.gateways[1].create_caller("acme").await).await,
        200
    );

    // A fourth instance given a KEK of its own would seal keys the others
    // cannot open: refused at start.
    let own = c._shared.path().join("another-kek");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&own)
            .expect("write a KEK");
        // base64 of 32 bytes of 0x07.
        f.write_all(b"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=")
            .expect("write a KEK");
    }
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .store_url(&c.url)
            .kek_file(&own)
            .route("wiki.test", "wiki"),
    )
    .await;
    assert!(
        stderr.contains("every gateway on one store needs the same KEK"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_or_a_tunnel_deleted_on_one_instance_is_enforced_on_all() {
    let c = three_instances().await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = c.gateways[0].create_tunnel("acme", "wiki").await;
    let agents = an_agent_on_each(&c, &tunnel, wiki.addr()).await;
    let token = c.gateways[0].create_caller("acme").await;
    on_every_instance(&c, Instant::now(), "serving", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 200 }
    })
    .await;

    // Rotated on instance 2 without overlap: the old-key agents on every
    // instance are disconnected within a second.
    let marks: Vec<usize> = c.gateways.iter().map(|g| g.events().mark()).collect();
    let (rotated_tunnel, _) = c.gateways[2].rotate_key("wiki", "0s").await;
    let answered = Instant::now();
    for (i, (g, a)) in c.gateways.iter().zip(&agents).enumerate() {
        let (gone, at) = disconnected(g, marks[i], a.name()).await;
        assert!(
            reason(&gone).contains("key rotated"),
            "instance {i}: {gone}"
        );
        assert!(
            at <= answered + WITHIN,
            "instance {i} disconnected its old-key agent {:?} after the rotation",
            at - answered
        );
    }
    drop(agents);
    // The old key is refused by every instance (the agent learns only
    // that authentication failed, and stops); the new one is accepted.
    for (i, g) in c.gateways.iter().enumerate() {
        let mark = g.events().mark();
        let mut refused = Agent::start(g, &tunnel, wiki.addr(), AgentOptions::new()).await;
        let e = refused.wait_event("rejected", tests::PATIENCE).await;
        assert_eq!(e["reason"], "authentication failed", "instance {i}: {e}");
        assert_eq!(refused.wait_exit().await.code(), Some(2), "instance {i}");
        g.events()
            .wait_after(
                mark,
                "agent_rejected",
                |e| e["event"] == "agent_rejected",
                tests::PATIENCE,
            )
            .await;
    }
    let agents = an_agent_on_each(&c, &rotated_tunnel, wiki.addr()).await;
    on_every_instance(&c, Instant::now(), "serving on the new key", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 200 }
    })
    .await;

    // Deleted on instance 1: every instance disconnects its agents and
    // answers the route with 404 naming the tunnel.
    let marks: Vec<usize> = c.gateways.iter().map(|g| g.events().mark()).collect();
    c.gateways[1].cli_json(&["tunnel", "delete", "wiki"]).await;
    let answered = Instant::now();
    for (i, (g, a)) in c.gateways.iter().zip(&agents).enumerate() {
        let (gone, at) = disconnected(g, marks[i], a.name()).await;
        assert!(
            reason(&gone).contains("tunnel deleted"),
            "instance {i}: {gone}"
        );
        assert!(at <= answered + WITHIN, "instance {i}: {:?}", at - answered);
    }
    on_every_instance(&c, answered, "answering 404 for the deleted tunnel", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 404 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_url_that_is_wrong_or_unreachable_stops_the_start_with_a_clear_error() {
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new().store_url("mysql://gw:s3cret@db.example/tunnels"),
    )
    .await;
    assert!(
        stderr.contains("store.url") && stderr.contains("postgres://"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the password was shown: {stderr}"
    );

    // A server that is not there: the start fails naming the store,
    // without its password, within the pool's wait.
    let nowhere = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "postgres://gw:s3cret@localhost/tunnels?host={}",
        nowhere.path().display()
    );
    let stderr = Gateway::start_expecting_failure(GatewayOptions::new().store_url(&url)).await;
    assert!(
        stderr.contains("opening store postgres://gw:MASKED@localhost/tunnels"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the password was shown: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stopping_under_a_serving_gateway_stops_changes_not_traffic() {
    let pg = OwnCluster::start().await;
    let g = Gateway::start(
        GatewayOptions::new()
            .store_url(&pg.url)
            .route("wiki.test", "wiki"),
    )
    .await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = g.create_tunnel("acme", "wiki").await;
    let _agent = Agent::connect(&g, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let token = g.create_caller("acme").await;
    assert_eq!(status(&g, &token).await, 200);

    pg.stop().await;
    // Known callers to connected agents are still served, from memory.
    for _ in 0..5 {
        assert_eq!(status(&g, &token).await, 200);
    }
    // A change cannot be made, and says why, within the pool's wait.
    let asked = Instant::now();
    let made = tests::admin::try_cli(g.config_path(), &["caller", "create", "--org", "acme"]).await;
    assert!(!made.status.success(), "{}", made.stdout);
    assert!(made.stderr.contains("database error"), "{}", made.stderr);
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "a change waited {:?} for a stopped database",
        asked.elapsed()
    );
    assert!(!made.stderr.contains(&token), "{}", made.stderr);
    eprintln!(
        "caller create with the database stopped: {}",
        made.stderr.trim()
    );
    // The instance noticed, and keeps trying to listen again.
    g.wait_log("notification connection").await;
    assert_eq!(status(&g, &token).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_instance_serves_a_tunnel_whose_agent_sits_on_another_one_hop_plugins_once() {
    let c = three_instances().await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = c.gateways[0].create_tunnel("acme", "wiki").await;
    // The only agent, on instance 0.
    let _agent = Agent::connect(&c.gateways[0], &tunnel, wiki.addr(), AgentOptions::new()).await;
    let token = c.gateways[1].create_caller("acme").await;

    // Instance 0 announces that it holds the tunnel: 1 and 2 relay to it
    // within a second (without the announcement, at their next renewal).
    on_every_instance(&c, Instant::now(), "serving through the relay", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 200 }
    })
    .await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let via = |i: usize, forged: bool| {
        let call = c.gateways[i]
            .caller(&token)
            .get("wiki.test", "/page?q=1")
            .header("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"));
        if forged {
            call.header("tunnel-relay-org", "globex")
                .header("tunnel-relay-tunnel", "tun_forged")
        } else {
            call
        }
    };
    let before: Vec<f64> = futures_util::future::join_all(c.gateways.iter().map(|g| async {
        scrape::metrics(g.admin()).await.sum(
            "tunnel_gateway_plugin_decisions_total",
            &[("plugin", "org-check")],
        )
    }))
    .await;
    let relayed = via(2, true).send().await;
    assert_eq!(relayed.status, 200, "{relayed:?}");
    let seen = relayed.echo();
    assert_eq!(seen.target, "/page?q=1");
    // One hop's forwarding headers: the caller's address, once.
    assert_eq!(seen.all("x-forwarded-for"), vec!["127.0.0.1"], "{seen:?}");
    assert_eq!(seen.header("x-forwarded-host"), Some("wiki.test"));
    // No relay field, forged or real, and no credential reaches the service.
    for (name, _) in &seen.headers {
        assert!(
            !name.starts_with("tunnel-relay-"),
            "{name} reached the service"
        );
        assert_ne!(name, "proxy-authorization");
    }
    // The trace goes on across the hop: the service's parent is in the
    // caller's trace.
    let parent = seen
        .header("traceparent")
        .expect("traceparent at the service");
    assert!(parent.contains(trace), "{parent}");
    // The plugin ran once, at the instance the caller reached.
    let after: Vec<f64> = futures_util::future::join_all(c.gateways.iter().map(|g| async {
        scrape::metrics(g.admin()).await.sum(
            "tunnel_gateway_plugin_decisions_total",
            &[("plugin", "org-check")],
        )
    }))
    .await;
    let ran: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(ran, vec![0.0, 0.0, 1.0], "org-check decisions per instance");

    // A relay field from a caller counts for nothing: no credential is
    // still 401, another organization's caller still 403.
    let anonymous = c.gateways[1]
        .anonymous_caller()
        .get("wiki.test", "/")
        .header("tunnel-relay-caller", "cal_x")
        .header("tunnel-relay-org", "acme")
        .header("tunnel-relay-tunnel", &tunnel.id)
        .send()
        .await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let other = c.gateways[1].create_caller("globex").await;
    let foreign = c.gateways[1]
        .caller(&other)
        .get("wiki.test", "/")
        .header("tunnel-relay-org", "acme")
        .send()
        .await;
    assert_eq!(foreign.status, 403, "{foreign:?}");

    // The relay listener takes only instances: no client certificate, or
    // one from another CA, gets no HTTP answer.
    let stranger = Pki::generate();
    let stranger_cert = stranger.issue("stranger", &["gateway-relay"]);
    for (who, cert) in [
        ("no certificate", None),
        ("another CA's", Some(&stranger_cert)),
    ] {
        let answer = relay_get(c.gateways[0].relay_addr(), &c.pki, cert, &tunnel.id, "10").await;
        eprintln!("relay listener, {who}: {answer}");
        assert!(
            !answer.starts_with("HTTP/1.1"),
            "{who}: the relay listener answered {answer:?}"
        );
    }
    // An instance's own certificate is answered (a relayed request for a
    // tunnel this instance has no agent of: 503, not relayed again).
    let own = c.pki.issue("instance-x", &["gateway-relay"]);
    let answer = relay_get(
        c.gateways[1].relay_addr(),
        &c.pki,
        Some(&own),
        &tunnel.id,
        "10",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Relay fields that do not read are refused, not guessed at.
    let answer = relay_get(
        c.gateways[0].relay_addr(),
        &c.pki,
        Some(&own),
        &tunnel.id,
        "-1",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("body limit"),
        "{answer}"
    );
    let answer = relay_get(c.gateways[0].relay_addr(), &c.pki, Some(&own), "", "10").await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("tunnel-relay-tunnel"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_instance_holding_the_agents_dies_the_others_say_so_and_then_forget_it() {
    let mut c = three_instances().await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = c.gateways[0].create_tunnel("acme", "wiki").await;
    let _agent = Agent::connect(&c.gateways[0], &tunnel, wiki.addr(), AgentOptions::new()).await;
    let token = c.gateways[1].create_caller("acme").await;
    on_every_instance_within(
        &c,
        Instant::now(),
        LEASE,
        "serving through the relay",
        |i| {
            let (g, token) = (&c.gateways[i], token.clone());
            async move { status(g, &token).await == 200 }
        },
    )
    .await;

    c.gateways[0].kill();
    let killed = Instant::now();
    // Until its lease ends the others still name it, and say it cannot be
    // reached (502); then they know no instance holds the tunnel (503).
    let first = c.gateways[1]
        .caller(&token)
        .get("wiki.test", "/")
        .send()
        .await;
    assert!(first.status == 502 || first.status == 503, "{first:?}");
    if first.status == 502 {
        assert!(
            first
                .text()
                .contains("no gateway instance holding an agent of tunnel `wiki`"),
            "{}",
            first.text()
        );
    }
    for i in [1, 2] {
        let g = &c.gateways[i];
        loop {
            let r = g.caller(&token).get("wiki.test", "/").send().await;
            if r.status == 503 {
                assert!(r.text().contains("no agent is connected"), "{}", r.text());
                break;
            }
            assert_eq!(r.status, 502, "instance {i}: {r:?}");
            assert!(
                killed.elapsed() < LEASE + LEASE / 3 + Duration::from_secs(1),
                "instance {i} still relays to a dead instance {:?} after it died",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "instance {i}: forgot the dead instance after {:?}",
            killed.elapsed()
        );
    }
}

/// A GET on the relay listener at `addr` with the given client
/// certificate (TLS 1.3, the cluster's CA trusted): the start of what it
/// answered, or the error.
async fn relay_get(
    addr: std::net::SocketAddr,
    pki: &Pki,
    cert: Option<&tests::pki::CertFiles>,
    tunnel_id: &str,
    body_limit: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(pki.root_store());
    let config = match cert {
        Some(files) => {
            let (chain, key) = files.load();
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect relay");
    let name = rustls::pki_types::ServerName::try_from("gateway-relay").expect("name");
    let mut tls = match connector.connect(name, tcp).await {
        Ok(t) => t,
        Err(e) => return format!("handshake failed: {e}"),
    };
    let head = format!(
        "GET / HTTP/1.1\r\nHost: wiki.test\r\ntunnel-relay-tunnel: {tunnel_id}\r\n\
         tunnel-relay-caller: cal_x\r\ntunnel-relay-org: acme\r\ntunnel-relay-route: r\r\n\
         tunnel-relay-body-limit: {body_limit}\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = tls.write_all(head.as_bytes()).await {
        return format!("write failed: {e}");
    }
    // `Connection: close`: everything up to the end of the stream.
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await {
        Ok(Ok(_)) => String::from_utf8_lossy(&answer).into_owned(),
        Ok(Err(_)) if !answer.is_empty() => String::from_utf8_lossy(&answer).into_owned(),
        Ok(Err(e)) => format!("read failed: {e}"),
        Err(_) => "no answer within 10 s".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_keeps_two_instances_and_an_instance_dying_loses_only_its_in_flight_requests() {
    let mut c = three_instances().await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = c.gateways[0].create_tunnel("acme", "wiki").await;
    let urls: Vec<String> = c.gateways.iter().map(|g| g.agents_url()).collect();
    // `gateway.urls` with the default of two connections: instances 0
    // and 1; instance 2 has none of its own.
    let _agent_proc = Agent::start(
        &c.gateways[0],
        &tunnel,
        wiki.addr(),
        AgentOptions::new().name("spread").urls(&urls),
    )
    .await;
    let agent = &_agent_proc;
    let connected = |mark: usize, n: usize| {
        let events = agent.events().clone();
        async move {
            tests::eventually("agent connections", tests::PATIENCE, || {
                let seen: Vec<String> = events
                    .snapshot()
                    .into_iter()
                    .skip(mark)
                    .filter(|e| e["event"] == "connected")
                    .map(|e| e["gateway"].as_str().unwrap_or_default().to_string())
                    .collect();
                let found = if seen.len() >= n {
                    Ok(seen)
                } else {
                    Err(format!("{seen:?}"))
                };
                async move { found }
            })
            .await
        }
    };
    let first = connected(0, 2).await;
    assert_eq!(first.len(), 2);
    assert_ne!(first[0], first[1], "two connections to one instance");
    assert!(
        first.contains(&urls[0]) && first.contains(&urls[1]),
        "{first:?}"
    );
    let token = c.gateways[2].create_caller("acme").await;
    on_every_instance_within(&c, Instant::now(), LEASE, "serving", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 200 }
    })
    .await;

    // Callers keep sending through instances 1 and 2 while instance 0
    // dies.
    let load_1 = tests::RequestLoop::start(&c.gateways[1].caller(&token), "wiki.test", "/a", 2);
    let load_2 = tests::RequestLoop::start(&c.gateways[2].caller(&token), "wiki.test", "/b", 2);
    load_1.wait_more(10).await;
    load_2.wait_more(10).await;
    let mark = agent.events().mark();
    let killing = Instant::now();
    c.gateways[0].kill();
    let killed = Instant::now();
    // The agent replaces the lost connection with one to instance 2.
    let replaced = connected(mark, 1).await;
    assert_eq!(replaced[0], urls[2], "{replaced:?}");
    eprintln!(
        "agent connected to instance 2 {:?} after the kill",
        killed.elapsed()
    );
    load_1.wait_more(20).await;
    load_2.wait_more(20).await;
    let (o1, o2) = (load_1.stop().await, load_2.stop().await);
    // Only requests in flight when instance 0 died may have failed (those
    // instance 2 had relayed to it); every other one was served.
    let mut lost = 0;
    for o in o1.iter().chain(&o2) {
        if o.result != Ok(200) {
            assert!(
                o.sent <= killed && o.done >= killing,
                "a request not in flight at the kill failed: {:?}, sent {:?} after the kill \
                 and done {:?} before it",
                o.result,
                o.sent.saturating_duration_since(killed),
                killing.saturating_duration_since(o.done)
            );
            lost += 1;
        }
    }
    eprintln!(
        "{} requests through instances 1 and 2, {lost} lost in flight",
        o1.len() + o2.len()
    );
    assert!(o1.len() + o2.len() >= 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_reloaded_on_one_instance_is_announced_to_all() {
    let c = three_instances().await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = c.gateways[0].create_tunnel("acme", "wiki").await;
    let _agents = an_agent_on_each(&c, &tunnel, wiki.addr()).await;
    let token = c.gateways[0].create_caller("acme").await;
    let docs = |i: usize| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move {
            g.caller(&token)
                .get("docs.test", "/")
                .send()
                .await
                .status
                .as_u16()
        }
    };
    for i in 0..3 {
        assert_eq!(docs(i).await, 404, "instance {i} before the reload");
    }
    let add_docs = |text: String| {
        format!(
            "{text}\n[[routes]]\nname = \"docs\"\nhost = \"docs.test\"\ntunnel = \"wiki\"\n\
             [[routes.plugins]]\nname = \"org-check\"\nconfig = \"\"\n"
        )
    };

    // Only instance 0's file gets the route, and it reloads: the others
    // hear of it at once, read their own files again, find them
    // different, and say so.
    let marks: Vec<usize> = c.gateways.iter().map(|g| g.events().mark()).collect();
    c.gateways[0].rewrite_config(add_docs);
    c.gateways[0].sighup();
    let reloaded = c.gateways[0].wait_reload(marks[0]).await;
    let at = Instant::now();
    assert_eq!(reloaded["event"], "config_reloaded", "{reloaded}");
    assert_eq!(docs(0).await, 200);
    for i in [1, 2] {
        let differs = c.gateways[i]
            .events()
            .wait_after(
                marks[i],
                "config_differs",
                |e| e["event"] == "config_differs",
                tests::PATIENCE,
            )
            .await;
        assert!(
            at.elapsed() <= WITHIN,
            "instance {i} heard of the reload {:?} after it",
            at.elapsed()
        );
        assert!(
            differs["instance"]
                .as_str()
                .is_some_and(|s| s.starts_with("gw_")),
            "{differs}"
        );
        assert_ne!(differs["announced"], differs["here"], "{differs}");
        assert_eq!(
            docs(i).await,
            404,
            "instance {i} kept its own file's routes"
        );
    }

    // Given the same file, every instance serves the route.
    for g in &c.gateways[1..] {
        g.rewrite_config(add_docs);
    }
    let written = Instant::now();
    on_every_instance_within(&c, written, tests::PATIENCE, "serving the new route", |i| {
        let docs = docs(i);
        async move { docs.await == 200 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_agent_drains_stops_being_relayed_to_within_moments() {
    let c = three_instances().await;
    let wiki = upstream::echo("wiki").await;
    let tunnel = c.gateways[0].create_tunnel("acme", "wiki").await;
    let on_0 = Agent::connect(&c.gateways[0], &tunnel, wiki.addr(), AgentOptions::new()).await;
    let _on_1 = Agent::connect(&c.gateways[1], &tunnel, wiki.addr(), AgentOptions::new()).await;
    let token = c.gateways[2].create_caller("acme").await;
    on_every_instance(&c, Instant::now(), "serving", |i| {
        let (g, token) = (&c.gateways[i], token.clone());
        async move { status(g, &token).await == 200 }
    })
    .await;
    // Instance 2 relays to 0 and 1 in turn; 0's only agent drains.
    let load = tests::RequestLoop::start(&c.gateways[2].caller(&token), "wiki.test", "/", 2);
    load.wait_more(20).await;
    let conn = c.gateways[0].conn_id(on_0.name());
    let mark = c.gateways[0].events().mark();
    let asked = Instant::now();
    c.gateways[0]
        .cli_json(&["agent", "drain", &conn.to_string()])
        .await;
    disconnected(&c.gateways[0], mark, on_0.name()).await;
    load.wait_more(40).await;
    let outcomes = load.stop().await;
    // Instance 0 announces at once that it no longer serves the tunnel;
    // until instance 2 has read that (milliseconds), a request it relays
    // there is answered 503 "no agent". None fails after.
    let window = Duration::from_millis(300);
    let mut in_window = 0;
    for o in outcomes.iter().filter(|o| o.result != Ok(200)) {
        assert_eq!(o.result, Ok(503), "{:?}", o.result);
        assert!(
            o.sent >= asked && o.sent <= asked + window,
            "a relayed request sent {:?} after the drain failed",
            o.sent.saturating_duration_since(asked)
        );
        in_window += 1;
    }
    eprintln!(
        "{} relayed requests, {in_window} answered 503 in the moments after the drain",
        outcomes.len()
    );
}
