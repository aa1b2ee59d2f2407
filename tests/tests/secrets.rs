//! Story: secrets stay secret. The tunnel key is stored encrypted on both
//! sides, and neither the key nor a caller token shows up in logs or events.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use protocol::TunnelKey;
use tests::setup::WikiTunnel;
use tests::{upstream, GatewayOptions};

/// Every file directly in `dir`, with its bytes.
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_encrypted_at_rest_and_never_logged() {
    let opts = GatewayOptions::new().env("RUST_LOG", "debug");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    assert_eq!(t.caller.get("wiki.test", "/").send().await.status, 200);
    assert_eq!(
        t.caller
            .with_token("bogus")
            .get("wiki.test", "/")
            .send()
            .await
            .status,
        401
    );

    let key = TunnelKey::parse(&t.tunnel.key).expect("a valid key");
    let secrets: [(&str, &[u8]); 3] = [
        ("tunnel key text", t.tunnel.key.as_bytes()),
        ("tunnel key bytes", key.expose()),
        ("caller token", t.token.as_bytes()),
    ];

    let gateway_dir = t.gateway.config_path().parent().unwrap();
    let agent_dir = t.agent.config_path().parent().unwrap();
    for (file, bytes) in files_in(gateway_dir).into_iter().chain(files_in(agent_dir)) {
        for (what, secret) in secrets {
            assert!(!contains(&bytes, secret), "{what} found in clear in {file}");
        }
    }
    let events = format!("{}{}", t.gateway.events().dump(), t.agent.events().dump());
    for (what, secret) in secrets {
        assert!(
            !contains(events.as_bytes(), secret),
            "{what} found in events:\n{events}"
        );
    }

    // Something was actually stored and logged, or the checks above prove nothing.
    let agent_files = files_in(agent_dir);
    let stored_key = agent_files
        .iter()
        .find(|(f, _)| f.ends_with("agent.key"))
        .expect("agent.key written");
    assert!(
        stored_key.1.len() >= 32,
        "agent.key is too short to hold the key"
    );
    assert!(files_in(gateway_dir)
        .iter()
        .any(|(f, b)| f.ends_with("gateway.log") && !b.is_empty()));

    let kek = agent_dir.join("agent.kek");
    let mode = std::fs::metadata(&kek)
        .expect("agent.kek written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "agent.kek is readable by others: {mode:o}");
    let kek = gateway_dir.join("kek");
    let mode = std::fs::metadata(&kek)
        .expect("gateway kek written")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "gateway kek is readable by others: {mode:o}");
}

/// Every secret a deployment holds, on every path that handles one, and
/// the whole of both processes' logs at debug (trace for our own crates),
/// read after both have stopped so nothing is still buffered:
///
/// - the tunnel key, as text and as bytes, through a good handshake;
/// - another tunnel's key, presented in a handshake the gateway rejects;
/// - the caller token of a served request, and a guessed one refused 401;
/// - a key mistyped into `agent key set`, which must fail without echoing
///   it;
/// - the value of a `telemetry.headers` entry (a collector's credential),
///   sent with every export of both processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_either_log_at_debug_on_any_path() {
    use tests::otlp::Collector;
    use tests::{Agent, AgentOptions, Gateway, Route, Tunnel, PATIENCE};

    const LOG: &str = "debug,gateway=trace,agent=trace,protocol=trace,policy_host=trace,\
                       telemetry=trace,keyfile=trace";
    let otlp_secret = "otlp-S3CR3T-4f1c9a";
    let telemetry = |endpoint: String, protocol: &str| {
        format!(
            "[telemetry]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n\
             export_interval_ms = 50\n\
             [telemetry.headers]\nauthorization = \"Bearer {otlp_secret}\"\n"
        )
    };
    let collector = Collector::start().await;
    let mut gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", ""))
            .env("RUST_LOG", LOG)
            .extra_config(&telemetry(collector.grpc_endpoint(), "grpc")),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let other = gateway.create_tunnel("acme", "other").await;
    let token = gateway.create_caller("acme").await;
    let wiki = upstream::echo("wiki").await;
    let agent_opts = || {
        AgentOptions::new()
            .env("RUST_LOG", LOG)
            .extra_config(&telemetry(collector.http_endpoint(), "http/protobuf"))
    };
    let mut agent = Agent::connect(&gateway, &tunnel, wiki.addr(), agent_opts()).await;

    let caller = gateway.caller(&token);
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
    let guessed = "ct_guessed_S3CR3T_7d2e0b";
    let refused = gateway.caller(guessed).get("wiki.test", "/").send().await;
    assert_eq!(refused.status, 401);

    // A handshake with another tunnel's key is rejected.
    let wrong = Tunnel {
        key: other.key.clone(),
        ..tunnel.clone()
    };
    let mut impostor = Agent::start(&gateway, &wrong, wiki.addr(), agent_opts()).await;
    let rejected = impostor.wait_event("rejected", PATIENCE).await;
    assert_eq!(rejected["reason"], "authentication failed", "{rejected}");
    impostor.wait_exit().await;

    // A key mistyped into `agent key set`: refused, and not repeated back.
    let mut mistyped = tunnel.key.clone();
    mistyped.replace_range(..6, "S3CR3T");
    mistyped.push_str("xyz");
    let key_set =
        tests::agent::key_set(agent.config_path(), &mistyped, &[("RUST_LOG", "trace")]).await;
    assert!(
        !key_set.status.success(),
        "agent key set accepted a 46-character key"
    );
    let key_set_output = format!(
        "{}{}",
        String::from_utf8_lossy(&key_set.stdout),
        String::from_utf8_lossy(&key_set.stderr)
    );
    assert!(
        key_set_output.contains("43 characters"),
        "agent key set says what a key looks like: {key_set_output}"
    );

    // Both processes exported with the collector's credential, so its
    // value went through their exporters.
    tests::eventually("exports from both processes", PATIENCE, || async {
        let services: std::collections::BTreeSet<String> = collector
            .spans()
            .iter()
            .map(|s| s.service.clone())
            .collect();
        if services.len() >= 2 {
            Ok(())
        } else {
            Err(format!("services exported so far: {services:?}"))
        }
    })
    .await;
    assert!(
        collector
            .export_headers()
            .iter()
            .flatten()
            .any(|(n, v)| n == "authorization" && v.contains(otlp_secret)),
        "no export carried the configured header"
    );

    // Stopped, so every buffered line is written.
    agent.terminate().await;
    gateway.terminate().await;
    let key = TunnelKey::parse(&tunnel.key).expect("a valid key");
    let other_key = TunnelKey::parse(&other.key).expect("a valid key");
    let secrets: [(&str, &[u8]); 7] = [
        ("tunnel key text", tunnel.key.as_bytes()),
        ("tunnel key bytes", key.expose()),
        ("the rejected key's text", other.key.as_bytes()),
        ("the rejected key's bytes", other_key.expose()),
        ("caller token", token.as_bytes()),
        ("guessed caller token", guessed.as_bytes()),
        ("telemetry.headers value", otlp_secret.as_bytes()),
    ];
    let logs = [
        ("gateway log", gateway.full_logs()),
        ("agent log", agent.full_logs()),
        ("rejected agent's log", impostor.full_logs()),
        ("agent key set output", key_set_output.clone()),
        (
            "events",
            format!("{}{}", gateway.events().dump(), agent.events().dump()),
        ),
    ];
    for (which, text) in &logs {
        for (what, secret) in secrets {
            assert!(
                !contains(text.as_bytes(), secret),
                "{what} found in the {which}"
            );
        }
        assert!(
            !text.contains(&mistyped) && !text.contains("S3CR3T"),
            "the mistyped key (or part of it) is in the {which}"
        );
    }
    // The logs really are at debug on both sides and cover these paths,
    // or the checks above prove nothing.
    let (gateway_log, agent_log) = (&logs[0].1, &logs[1].1);
    for (which, text, needles) in [
        (
            "gateway",
            gateway_log,
            &["DEBUG", "authentication failed", "refused"][..],
        ),
        ("agent", agent_log, &["DEBUG", "connected"][..]),
        ("rejected agent", &logs[2].1, &["DEBUG", "rejected"][..]),
    ] {
        for needle in needles {
            assert!(
                text.contains(needle),
                "the {which} log lacks {needle:?}: the check above saw too little"
            );
        }
    }
}
