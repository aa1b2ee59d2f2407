//! Story: a platform team drives the gateway through its admin API: admin
//! tokens scoped read or write, clear errors for bad input, an audit trail
//! of every change (API, CLI through the API, CLI on the store), and an
//! OpenAPI document that matches what is served.

use http::Method;
use serde_json::{json, Value};
use tests::admin::{audit_line, find_audit, Operator};
use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions, Tunnel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_a_missing_wrong_read_only_or_revoked_token() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let (read_id, read) = gateway.admin_token_with_id("dashboard", "read").await;
    let write = gateway.admin_token("write").await;
    let create = json!({"org": "acme", "name": "wiki"});

    let missing = gateway.anonymous_api().get("/v1/tunnels").await;
    assert_eq!(missing.status, 401, "{missing:?}");
    assert!(
        missing
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "401 without WWW-Authenticate: Bearer: {missing:?}"
    );
    assert!(!missing.error().is_empty(), "{missing:?}");
    let wrong = gateway.api("at_not-a-real-token").get("/v1/tunnels").await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let anonymous_write = gateway
        .anonymous_api()
        .post("/v1/tunnels", create.clone())
        .await;
    assert_eq!(anonymous_write.status, 401, "{anonymous_write:?}");

    let listed = gateway
        .api(&read)
        .get("/v1/tunnels")
        .await
        .expect(200, "read token lists");
    assert!(listed.json.is_array(), "{listed:?}");
    let refused = gateway.api(&read).post("/v1/tunnels", create.clone()).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.error().contains("read-only"),
        "403 should say the token is read-only: {refused:?}"
    );
    // Every other change is refused to it too, and none happens.
    let seed = gateway.create_tunnel("acme", "seed").await;
    let (seed_caller, _) = gateway.create_caller_with_id("acme").await;
    let kek_before = std::fs::read(gateway.kek_file()).unwrap();
    for (method, path, body) in [
        (Method::DELETE, "/v1/tunnels/seed".to_string(), None),
        (
            Method::POST,
            "/v1/tunnels/seed/rotate-key".into(),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/callers".into(),
            Some(json!({"org": "acme"})),
        ),
        (
            Method::POST,
            format!("/v1/callers/{seed_caller}/revoke"),
            Some(json!({})),
        ),
        (Method::POST, "/v1/agents/1/drain".into(), Some(json!({}))),
        (
            Method::POST,
            "/v1/admin-tokens".into(),
            Some(json!({"name": "x", "scope": "write"})),
        ),
        (
            Method::POST,
            format!("/v1/admin-tokens/{read_id}/revoke"),
            Some(json!({})),
        ),
        (Method::POST, "/v1/store/rekey".into(), Some(json!({}))),
    ] {
        let body = body.map(|b| b.to_string().into_bytes());
        let r = gateway
            .api(&read)
            .request(method.clone(), &path, body)
            .await;
        assert_eq!(r.status, 403, "read token: {method} {path}: {r:?}");
    }
    let tunnels = gateway.list_tunnels().await;
    let seed_now = tunnels
        .iter()
        .find(|x| x["name"] == "seed")
        .expect("seed kept");
    assert_eq!(seed_now["key_generation"], 0, "{seed_now}");
    assert_eq!(
        std::fs::read(gateway.kek_file()).unwrap(),
        kek_before,
        "rekeyed by a read token"
    );
    let callers = gateway.cli_json(&["caller", "list"]).await;
    assert!(
        callers
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "active"),
        "{callers}"
    );
    assert!(!seed.key.is_empty());

    // Without an overlap the rotation keeps the old key a day.
    let rotated = gateway
        .api(&write)
        .post("/v1/tunnels/seed/rotate-key", json!({}))
        .await
        .expect(200, "rotate with the default overlap");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = rotated.json["previous_key_valid_until"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        (now + 86_390..=now + 86_410).contains(&until),
        "default overlap should be 24 h: {rotated:?}"
    );

    let listed = gateway.cli_json(&["admin-token", "list"]).await;
    let text = listed.to_string();
    assert!(
        !text.contains(&read) && !text.contains(&write),
        "admin-token list showed a token: {text}"
    );
    assert!(
        text.contains(&read_id) && text.contains("dashboard"),
        "{text}"
    );
    gateway.cli(&["admin-token", "revoke", &read_id]).await;
    let revoked = gateway.api(&read).get("/v1/tunnels").await;
    assert_eq!(revoked.status, 401, "a revoked admin token: {revoked:?}");

    // The write token creates a tunnel whose key an agent can use at once.
    let made = gateway
        .api(&write)
        .post("/v1/tunnels", create)
        .await
        .expect(201, "create");
    let tunnel: Tunnel = serde_json::from_value(made.json.clone()).expect("a tunnel with its key");
    assert_eq!(made.json["key_generation"], 0, "{made:?}");
    let wiki = upstream::echo("wiki").await;
    let _agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);
    let shown = gateway
        .api(&write)
        .get("/v1/tunnels/wiki")
        .await
        .expect(200, "show");
    assert_eq!(
        shown.json["agents"].as_array().map(Vec::len),
        Some(1),
        "{shown:?}"
    );
    assert!(
        !shown.text.contains(&tunnel.key),
        "GET showed the key: {shown:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_400_naming_the_field_and_conflicts_409() {
    let gateway = Gateway::start(GatewayOptions::new()).await;
    let api = gateway.api(&gateway.admin_token("write").await);
    api.post("/v1/tunnels", json!({"org": "acme", "name": "wiki"}))
        .await
        .expect(201, "create");

    // Every case is tried before failing, so one run shows them all.
    let mut problems = Vec::new();
    for (path, body, field) in [
        (
            "/v1/tunnels",
            json!({"org": "acme", "name": "Not a label!"}),
            "name",
        ),
        ("/v1/tunnels", json!({"name": "ci"}), "org"),
        ("/v1/tunnels", json!({"org": 5, "name": "ci"}), "org"),
        (
            "/v1/tunnels",
            json!({"org": "acme", "name": "ci", "colour": "red"}),
            "colour",
        ),
        (
            "/v1/callers",
            json!({"org": "acme", "expires_in_secs": "soon"}),
            "expires_in_secs",
        ),
        (
            "/v1/callers",
            json!({"org": "acme", "expires_in_secs": 0}),
            "expires_in_secs",
        ),
        (
            "/v1/admin-tokens",
            json!({"name": "x", "scope": "root"}),
            "scope",
        ),
        (
            "/v1/tunnels/wiki/rotate-key",
            json!({"overlap_secs": -1}),
            "overlap_secs",
        ),
    ] {
        let r = api.post(path, body.clone()).await;
        if r.status != 400 || !r.error().contains(field) {
            problems.push(format!(
                "POST {path} {body}: wanted 400 naming {field}, got {} {}",
                r.status,
                r.text.trim()
            ));
        }
    }
    let garbage = api
        .request(Method::POST, "/v1/tunnels", Some(b"{not json".to_vec()))
        .await;
    assert_eq!(garbage.status, 400, "{garbage:?}");
    let huge = api
        .request(Method::POST, "/v1/tunnels", Some(vec![b' '; 70 << 10]))
        .await;
    assert_eq!(huge.status, 413, "a 70 KiB body: {huge:?}");

    let dup = api
        .post("/v1/tunnels", json!({"org": "acme", "name": "wiki"}))
        .await;
    assert_eq!(dup.status, 409, "{dup:?}");
    assert!(dup.error().contains("wiki"), "{dup:?}");
    for (method, path) in [
        (Method::GET, "/v1/tunnels/nope"),
        (Method::DELETE, "/v1/tunnels/nope"),
        (Method::POST, "/v1/tunnels/nope/rotate-key"),
    ] {
        let r = api
            .request(method.clone(), path, Some(b"{}".to_vec()))
            .await;
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        assert!(
            r.error().contains("nope"),
            "{method} {path}: should name the tunnel: {r:?}"
        );
    }
    let wrong_method = api.delete("/v1/tunnels").await;
    assert_eq!(wrong_method.status, 405, "{wrong_method:?}");
    let allow = wrong_method
        .header("allow")
        .unwrap_or_default()
        .to_uppercase();
    if !(allow.contains("GET") && allow.contains("POST")) {
        problems.push(format!(
            "DELETE /v1/tunnels: 405 without an Allow header naming GET, POST: {wrong_method:?}"
        ));
    }
    // The CLI gives the same answers through the running gateway.
    let cli_dup = gateway
        .try_cli(&["tunnel", "create", "--org", "acme", "--name", "wiki"])
        .await;
    assert!(!cli_dup.status.success(), "{cli_dup:?}");
    assert!(cli_dup.stderr.contains("wiki"), "{cli_dup:?}");
    assert!(
        problems.is_empty(),
        "bad input not answered as designed:\n{}",
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_audited_with_who_and_from_where_and_no_secret() {
    let mut gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let (write_id, write) = gateway.admin_token_with_id("automation", "write").await;
    let api = gateway.api(&write);
    let mut secrets = vec![write.clone()];

    // Through the API.
    let t = api
        .post("/v1/tunnels", json!({"org": "acme", "name": "wiki"}))
        .await
        .expect(201, "create");
    secrets.push(t.json["key"].as_str().unwrap().to_string());
    let tunnel: Tunnel = serde_json::from_value(t.json).unwrap();
    let c = api
        .post("/v1/callers", json!({"org": "acme", "name": "bot"}))
        .await
        .expect(201, "caller");
    secrets.push(c.json["token"].as_str().unwrap().to_string());
    let caller_id = c.json["id"].as_str().unwrap().to_string();
    let r = api
        .post("/v1/tunnels/wiki/rotate-key", json!({"overlap_secs": 60}))
        .await
        .expect(200, "rotate");
    secrets.push(r.json["key"].as_str().unwrap().to_string());
    let new_key = Tunnel {
        key: r.json["key"].as_str().unwrap().to_string(),
        ..tunnel.clone()
    };
    let wiki = upstream::echo("wiki").await;
    let agent = Agent::connect(&gateway, &new_key, wiki.addr(), AgentOptions::new()).await;
    let conn = gateway.conn_id(agent.name());
    api.post(&format!("/v1/agents/{conn}/drain"), json!({}))
        .await
        .expect(200, "drain");
    api.post(&format!("/v1/callers/{caller_id}/revoke"), json!({}))
        .await
        .expect(200, "revoke");
    let rekey = api
        .post("/v1/store/rekey", json!({}))
        .await
        .expect(200, "rekey");
    assert!(rekey.json["old_kek_file"].is_string(), "{rekey:?}");
    // Through the CLI while the gateway runs (it goes through the API).
    let (ro_id, ro) = gateway.admin_token_with_id("viewer", "read").await;
    secrets.push(ro);
    gateway.cli(&["admin-token", "revoke", &ro_id]).await;
    let other = gateway.create_tunnel("acme", "other").await;
    secrets.push(other.key.clone());
    gateway.cli(&["tunnel", "delete", "other"]).await;

    let served = api
        .get("/v1/audit?limit=1000")
        .await
        .expect(200, "GET /v1/audit")
        .json;
    let entries: Vec<Value> = serde_json::from_value(served.clone()).unwrap();
    let by_api = format!("admin-token:{write_id}(automation)");
    for (action, object) in [
        ("tunnel.create", "wiki"),
        ("caller.create", caller_id.as_str()),
        ("tunnel.rotate_key", "wiki"),
        ("agent.drain", &conn.to_string()),
        ("caller.revoke", caller_id.as_str()),
        ("store.rekey", ""),
    ] {
        let e = find_audit(&entries, action, object);
        assert_eq!(e["actor"], by_api.as_str(), "{}", audit_line(e));
        assert!(
            e["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("127.0.0.1:")),
            "{}",
            audit_line(e)
        );
        assert!(
            e["at"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000),
            "{e}"
        );
        assert!(e["id"].is_number() || e["id"].is_string(), "{e}");
    }
    for (action, object) in [
        ("admin_token.create", write_id.as_str()),
        ("admin_token.revoke", ro_id.as_str()),
        ("tunnel.create", "other"),
        ("tunnel.delete", "other"),
    ] {
        let e = find_audit(&entries, action, object);
        assert!(
            e["actor"].as_str().unwrap_or_default().starts_with("cli:"),
            "{}",
            audit_line(e)
        );
    }
    // Newest first; the limit is honoured and bounded.
    let ats: Vec<u64> = entries
        .iter()
        .map(|e| e["at"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        ats.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {ats:?}"
    );
    assert_eq!(
        api.get("/v1/audit?limit=2")
            .await
            .json
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let too_many = api.get("/v1/audit?limit=1001").await;
    assert_eq!(too_many.status, 400, "{too_many:?}");
    assert!(too_many.error().contains("limit"), "{too_many:?}");

    // The gateway announced each change it made as an event line.
    let events = gateway.audit_events();
    for action in [
        "tunnel.create",
        "caller.revoke",
        "agent.drain",
        "store.rekey",
        "tunnel.delete",
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["action"] == action && e["actor"].is_string()),
            "no audit event for {action}: {events:?}"
        );
    }
    // The CLI on the store directly, gateway stopped: audited as local.
    gateway.terminate().await;
    let later = gateway.create_caller("acme").await;
    secrets.push(later);
    let cli = gateway.audit_list().await;
    let newest = &cli[0];
    assert_eq!(newest["action"], "caller.create", "{}", audit_line(newest));
    assert_eq!(newest["source"], "local", "{}", audit_line(newest));
    assert!(
        newest["actor"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cli:"),
        "{}",
        audit_line(newest)
    );
    assert!(cli.len() >= entries.len(), "CLI and API list the same log");

    let logs = std::fs::read_to_string(gateway.config_path().with_file_name("gateway.log"))
        .unwrap_or_default();
    assert!(
        logs.contains("agent connected"),
        "the gateway's log file should have its lines (else the check below proves nothing)"
    );
    let everything = format!(
        "{served}\n{}\n{}",
        serde_json::to_string(&cli).unwrap(),
        gateway.everything_it_wrote()
    );
    for secret in &secrets {
        assert!(
            !everything.contains(secret.as_str()),
            "a token or key appears in the audit log or the gateway's output: {secret}"
        );
    }
}

/// `path` with its parameters replaced by ids that name nothing.
fn concrete(path: &str) -> String {
    path.replace("{name}", "no-such-tunnel")
        .replace("{conn_id}", "987654")
        .replace("{id}", "nosuchid0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_matches_the_routes() {
    let gateway = Gateway::start(GatewayOptions::new()).await;
    let api = gateway.api(&gateway.admin_token("write").await);
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(&committed).expect("docs/openapi.json"))
            .expect("docs/openapi.json is JSON");
    let served = gateway
        .anonymous_api()
        .get("/v1/openapi.json")
        .await
        .expect(200, "openapi without a token");
    assert_eq!(
        served.json, committed,
        "the served document differs from docs/openapi.json"
    );

    let paths = committed["paths"].as_object().expect("paths");
    let documented: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .expect("operations")
                .keys()
                .filter(|m| ["get", "post", "delete", "put", "patch"].contains(&m.as_str()))
                .map(move |m| (m.to_uppercase(), p.clone()))
        })
        .collect();
    for (method, path) in [
        ("GET", "/v1/tunnels"),
        ("POST", "/v1/tunnels"),
        ("GET", "/v1/tunnels/{name}"),
        ("DELETE", "/v1/tunnels/{name}"),
        ("POST", "/v1/tunnels/{name}/rotate-key"),
        ("GET", "/v1/callers"),
        ("POST", "/v1/callers"),
        ("POST", "/v1/callers/{id}/revoke"),
        ("GET", "/v1/agents"),
        ("POST", "/v1/agents/{conn_id}/drain"),
        ("GET", "/v1/admin-tokens"),
        ("POST", "/v1/admin-tokens"),
        ("POST", "/v1/admin-tokens/{id}/revoke"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/store/rekey"),
        ("GET", "/v1/openapi.json"),
    ] {
        assert!(
            documented.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is not in docs/openapi.json: {documented:?}"
        );
    }

    let unknown = api.get("/v1/nope").await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(!unknown.error().is_empty(), "{unknown:?}");
    for (method, path) in &documented {
        let target = concrete(path);
        let method: Method = method.parse().unwrap();
        let body = (method == Method::POST).then(|| b"{}".to_vec());
        let r = api.request(method.clone(), &target, body).await;
        let no_path = unknown.error().replace("/v1/nope", &target);
        assert_ne!(
            r.status, 405,
            "{method} {target} (documented) answered 405: {r:?}"
        );
        if r.status == 404 {
            // Only "no such object", naming it, never "no such path".
            let named = ["no-such-tunnel", "987654", "nosuchid0"]
                .iter()
                .any(|id| r.error().contains(id));
            assert!(
                path.contains('{') && named && r.error() != no_path,
                "{method} {target} (documented) answered 404 like an unknown path: {r:?}"
            );
        }
    }
    for (method, path) in [
        (Method::GET, "/v1/tunnel"),
        (Method::POST, "/v1/agents/1/undrain"),
        (Method::GET, "/v2/tunnels"),
    ] {
        let r = api.request(method.clone(), path, None).await;
        assert_eq!(r.status, 404, "undocumented {method} {path}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_finds_the_running_gateway_by_a_private_file_and_manages_without_it() {
    use std::os::unix::fs::PermissionsExt;
    let mut gateway = Gateway::start(GatewayOptions::new()).await;
    let runtime = gateway.config_path().with_file_name("gateway.db.admin");
    let mode = std::fs::metadata(&runtime)
        .unwrap_or_else(|e| panic!("{} while the gateway runs: {e}", runtime.display()))
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "runtime file mode {mode:o}: others may read the credential"
    );
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&runtime).unwrap()).unwrap();
    let credential = first["token"]
        .as_str()
        .expect("a local credential")
        .to_string();

    // Killed without a word, the gateway leaves the file behind: the CLI
    // works on the store directly, and knows no agent is connected.
    gateway.kill();
    let made = gateway
        .try_cli(&["caller", "create", "--org", "acme", "--json"])
        .await;
    assert!(
        made.status.success(),
        "caller create after a crash: {made:?}"
    );
    let stopped = gateway.try_cli(&["agent", "list"]).await;
    assert!(!stopped.status.success(), "{stopped:?}");
    assert!(stopped.stderr.contains("not running"), "{stopped:?}");

    // A restart replaces it (new credential); a clean exit removes it.
    gateway.restart().await;
    let second: Value = serde_json::from_str(&std::fs::read_to_string(&runtime).unwrap()).unwrap();
    assert_ne!(
        second["token"], first["token"],
        "the credential is per process"
    );
    assert_eq!(
        second["admin"],
        gateway.admin().to_string().as_str(),
        "{second}"
    );
    let old = gateway.api(&credential).get("/v1/tunnels").await;
    assert_eq!(
        old.status, 401,
        "a dead process's credential still works: {old:?}"
    );
    gateway.terminate().await;
    assert!(!runtime.exists(), "runtime file left after a clean exit");
    assert!(
        !gateway.everything_it_wrote().contains(&credential),
        "the local credential appears in the gateway's output"
    );
}
