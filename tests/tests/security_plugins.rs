//! Security story: the policy plugins a route runs are the ones the
//! operator installed, and one tenant cannot use the plugins' shared state
//! against another.
//!
//! - A file `X.wasm` holding another plugin (`authz.wasm` copied over
//!   `org-check.wasm`) is refused at start and at reload (the running
//!   version keeps judging); so is a component built against the older WIT
//!   (no `identify`), and a file whose SHA-256 is not the pinned one.
//! - A plugin folder or file, or a key-encryption key file (gateway or
//!   agent), writable by group or others is refused with its path and mode.
//! - One organization flooding fresh OAuth nonces fills only its own share
//!   of the replay set: another organization's OAuth requests are still
//!   served, and a nonce used on one route is not burnt for another.
//! - A plugin that met its memory limit and carried on does not make a
//!   later, unrelated failure look like a memory failure.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::scrape;
use tests::setup::WikiTunnel;
use tests::{bin_path, plugin_wasm, upstream, Agent, AgentOptions, Gateway, GatewayOptions, Route};
use tests::{Reply, PATIENCE};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn error_of(event: &Value) -> String {
    event["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_copied_over_org_check_is_refused_at_start_and_at_reload() {
    // At start: the gateway does not come up, and says which file holds what.
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .plugin_file("org-check", plugin_wasm("authz"))
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
    )
    .await;
    for part in ["org-check.wasm", "\"authz\"", "\"org-check\""] {
        assert!(stderr.contains(part), "no {part} in:\n{stderr}");
    }

    // At reload: the copy is rejected and org-check keeps judging.
    let gateway = Gateway::start(
        GatewayOptions::new()
            .plugin_setting("reload_interval", "\"100ms\"")
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let _agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let acme = gateway.caller(&gateway.create_caller("acme").await);
    let globex = gateway.caller(&gateway.create_caller("globex").await);
    assert_eq!(globex.get("wiki.test", "/").send().await.status, 403);

    let mark = gateway.events().mark();
    gateway.replace_plugin("org-check", &plugin_wasm("authz"));
    let rejected = gateway
        .wait_for_since(mark, "plugin_rejected", &[("plugin", "org-check")])
        .await;
    let error = error_of(&rejected);
    assert!(
        error.contains("\"authz\"") && error.contains("\"org-check\""),
        "{rejected}"
    );
    let refused = globex.get("wiki.test", "/").send().await;
    assert_eq!(refused.status, 403, "another org's caller: {refused:?}");
    assert_eq!(acme.get("wiki.test", "/").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_the_older_wit_is_refused() {
    // A component that exports nothing, like one built before `identify`
    // existed lacks that export.
    let empty_component = b"\0asm\x0d\x00\x01\x00".to_vec();
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .plugin_file("org-check", empty_component)
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
    )
    .await;
    assert!(stderr.contains("org-check.wasm"), "{stderr}");
    assert!(
        stderr.contains("identify") && stderr.contains("older WIT"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_file_that_is_not_the_pinned_build_is_refused_at_start_and_at_reload() {
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .plugin_setting(
                "sha256",
                &format!("{{ \"org-check\" = \"{}\" }}", "0".repeat(64)),
            )
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
    )
    .await;
    assert!(
        stderr.contains("org-check.wasm") && stderr.contains("pinned in plugins.sha256"),
        "{stderr}"
    );

    // Pinned to today's build, `faulty` loads; a newer build of the same
    // plugin (which would be accepted unpinned, see policy.rs) is refused.
    let pinned = hex::encode(Sha256::digest(plugin_wasm("faulty")));
    let gateway = Gateway::start(
        GatewayOptions::new()
            .plugin_setting("reload_interval", "\"100ms\"")
            .plugin_setting("sha256", &format!("{{ faulty = \"{pinned}\" }}"))
            .with_route(Route::new("wiki.test", "wiki").plugin("faulty", "allow")),
    )
    .await;
    let loaded = gateway
        .wait_for("plugin_loaded", &[("plugin", "faulty")])
        .await;
    assert_eq!(loaded["sha256"], pinned.as_str(), "{loaded}");
    assert_eq!(loaded["version"], "0.1.0", "{loaded}");
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let _agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    let mark = gateway.events().mark();
    gateway.replace_plugin("faulty", &plugin_wasm("faulty-next"));
    let rejected = gateway
        .wait_for_since(mark, "plugin_rejected", &[("plugin", "faulty")])
        .await;
    assert!(error_of(&rejected).contains("pinned"), "{rejected}");
    assert_eq!(rejected["running_sha256"], pinned.as_str());
    let served = caller.get("wiki.test", "/").send().await;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.echo().header("x-faulty"), Some("allow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_folders_and_files_writable_by_others_are_refused() {
    // A folder of our own, named through the environment.
    let own = tempfile::tempdir().unwrap();
    let dir = own.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("org-check.wasm");
    std::fs::write(&file, plugin_wasm("org-check")).unwrap();
    let start = |dir: &Path| {
        Gateway::start_expecting_failure(
            GatewayOptions::new()
                .env("GATEWAY__PLUGINS__DIR", dir.to_str().unwrap())
                .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
        )
    };

    chmod(&dir, 0o777);
    chmod(&file, 0o644);
    let stderr = start(&dir).await;
    assert!(
        stderr.contains(&format!(
            "{} is writable by group or others (mode 0777)",
            dir.display()
        )),
        "{stderr}"
    );
    chmod(&dir, 0o755);
    chmod(&file, 0o664);
    let stderr = start(&dir).await;
    assert!(
        stderr.contains(&format!(
            "{} is writable by group or others (mode 0664)",
            file.display()
        )),
        "{stderr}"
    );

    // Running: a file made group-writable is reported and not reloaded;
    // the loaded version keeps serving.
    let WikiTunnel {
        gateway,
        wiki: _wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(
        GatewayOptions::new()
            .plugin_setting("reload_interval", "\"100ms\"")
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
    )
    .await;
    let mark = gateway.events().mark();
    let installed = gateway.plugins_dir().join("org-check.wasm");
    chmod(&installed, 0o666);
    let rejected = gateway
        .wait_for_since(mark, "plugin_rejected", &[("plugin", "org-check")])
        .await;
    assert!(error_of(&rejected).contains("(mode 0666)"), "{rejected}");
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_encryption_key_files_writable_by_others_are_refused() {
    use base64::Engine as _;
    // The gateway's.
    let own = tempfile::tempdir().unwrap();
    let kek = own.path().join("kek");
    std::fs::write(
        &kek,
        base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
    )
    .unwrap();
    chmod(&kek, 0o666);
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new().env("GATEWAY__STORE__KEK_FILE", kek.to_str().unwrap()),
    )
    .await;
    assert!(
        stderr.contains(&format!(
            "{} is writable by group or others (mode 0666)",
            kek.display()
        )),
        "{stderr}"
    );

    // The agent's: a second agent with the same config is refused at start.
    let t = WikiTunnel::start().await;
    let agent_kek = t.agent.config_path().with_file_name("agent.kek");
    chmod(&agent_kek, 0o620);
    let run = tokio::process::Command::new(bin_path("agent"))
        .args(["run", "--config"])
        .arg(t.agent.config_path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the agent exits at once")
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is writable by group or others (mode 0620)",
            agent_kek.display()
        )),
        "{stderr}"
    );
    // The first agent, started before, still serves.
    assert_eq!(t.caller.get("wiki.test", "/").send().await.status, 200);
}

fn is_nonce_used(r: &Reply) -> bool {
    r.status == 401 && r.text() == "oauth_problem=nonce_used\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_organization_flooding_fresh_nonces_cannot_deny_oauth_to_another() {
    const KEYS: usize = 8; // so each organization may hold 2 (a quarter)
    let oauth1 = r#"{"public_base_url": "https://jira.example.com"}"#;
    let gateway = Gateway::start(
        GatewayOptions::new()
            .plugin_setting("max_replay_keys", &KEYS.to_string())
            .with_route(
                Route::new("jira.acme.test", "jira-acme")
                    .plugin("org-check", "")
                    .plugin("oauth1", oauth1),
            )
            .with_route(
                Route::new("jira.globex.test", "jira-globex")
                    .plugin("org-check", "")
                    .plugin("oauth1", oauth1),
            ),
    )
    .await;
    let jira = upstream::echo("jira").await;
    let ta = gateway.create_tunnel("acme", "jira-acme").await;
    let tb = gateway.create_tunnel("globex", "jira-globex").await;
    let _a = Agent::connect(&gateway, &ta, jira.addr(), AgentOptions::new()).await;
    let _b = Agent::connect(&gateway, &tb, jira.addr(), AgentOptions::new()).await;
    let acme = gateway.caller(&gateway.create_caller("acme").await);
    let globex = gateway.caller(&gateway.create_caller("globex").await);
    let ts = tests::unix_now();
    let send = |caller: &tests::Caller, host: &'static str, nonce: String| {
        let call = caller
            .get(host, "/rest/api/2/myself")
            .header("authorization", &tests::oauth_header(&nonce, ts));
        async move { call.send().await }
    };

    // acme sends as many fresh nonces as the whole set holds: its share
    // fills, the rest are refused.
    let mut served = 0;
    for i in 0..KEYS {
        let r = send(&acme, "jira.acme.test", format!("acme-{i}")).await;
        if r.status == 200 {
            served += 1;
        } else {
            assert!(is_nonce_used(&r), "acme nonce {i}: {r:?}");
        }
    }
    assert_eq!(served, 2, "acme holds its share of the replay set, no more");

    // globex is still served, even with a nonce acme used: keys are scoped
    // to the route, so acme cannot burn globex's nonces either.
    let r = send(&globex, "jira.globex.test", "acme-0".into()).await;
    assert_eq!(r.status, 200, "globex with acme's nonce: {r:?}");
    let r = send(&globex, "jira.globex.test", "globex-1".into()).await;
    assert_eq!(r.status, 200, "globex with a fresh nonce: {r:?}");
    // Replays are still refused within a route.
    let r = send(&globex, "jira.globex.test", "globex-1".into()).await;
    assert!(is_nonce_used(&r), "globex's replay: {r:?}");
    // acme's next fresh nonce finds its share full.
    let r = send(&acme, "jira.acme.test", "acme-fresh".into()).await;
    assert!(is_nonce_used(&r), "acme, share full: {r:?}");

    let m = scrape::metrics(gateway.admin()).await;
    let refusals = |org: &str| {
        m.sum(
            "tunnel_gateway_plugin_replay_refusals_total",
            &[("plugin", "oauth1"), ("org", org), ("limit", "org_share")],
        )
    };
    assert_eq!(refusals("acme"), (KEYS - 2 + 1) as f64, "{}", m.text);
    assert_eq!(refusals("globex"), 0.0, "{}", m.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_survived_its_memory_limit_does_not_turn_a_later_trap_into_a_memory_failure()
{
    let WikiTunnel {
        gateway,
        wiki: _wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(
        GatewayOptions::new().with_route(Route::new("wiki.test", "wiki").plugin("faulty", "count")),
    )
    .await;

    // The plugin asks for more than its limit, takes the refusal, allows.
    let hog = caller.get("wiki.test", "/hog").send().await;
    assert_eq!(hog.status, 200, "{hog:?}");
    assert_eq!(hog.echo().header("x-faulty-hog"), Some("refused"));
    // A later trap is reported as a trap.
    let trap = caller.get("wiki.test", "/trap").send().await;
    assert_eq!(trap.status, 500, "{trap:?}");
    assert!(trap.text().contains("`faulty` failed"), "{:?}", trap.text());
    let m = scrape::metrics(gateway.admin()).await;
    let failures = |kind| {
        m.sum(
            "tunnel_gateway_plugin_failures_total",
            &[("plugin", "faulty"), ("kind", kind)],
        )
    };
    assert_eq!(
        (failures("trap"), failures("memory")),
        (1.0, 0.0),
        "{}",
        m.text
    );
    assert_eq!(caller.get("wiki.test", "/after").send().await.status, 200);
}
