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
