//! Story: every request of a route is judged by its WebAssembly policy
//! plugins, built from `plugins/` and run by the real gateway.
//!
//! - `org-check` keeps a caller of one organization off another's tunnel
//!   and lets it onto its own;
//! - `authz` rules admit by method, path prefix (on segments) and caller,
//!   and deny everything else;
//! - a plugin that spins, traps or hoards memory gets its request refused
//!   within the deadline with a clear status, while other routes answer;
//! - header edits of an allowing plugin reach the local service;
//! - a new version of a plugin file changes decisions without a restart,
//!   and a broken replacement (bad bytes, or another plugin's file) is
//!   reported while the previous version keeps serving;
//! - a plugin that refuses its configuration stops the gateway from
//!   starting, with the plugin's own message;
//! - a plugin sandbox serves requests in turn until it has served
//!   `max_requests_per_sandbox`, traps or grows its memory, and is then
//!   replaced by a fresh one; with 1, every request gets a fresh sandbox.

use std::time::{Duration, Instant};

use tests::setup::WikiTunnel;
use tests::{plugin_wasm, upstream, Agent, AgentOptions, Gateway, GatewayOptions, Route, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_check_plugin_keeps_each_organization_on_its_own_tunnels() {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", ""))
            .with_route(Route::new("billing.test", "billing").plugin("org-check", "")),
    )
    .await;
    let wiki_tunnel = gateway.create_tunnel("acme", "wiki").await;
    let billing_tunnel = gateway.create_tunnel("globex", "billing").await;
    let wiki = upstream::echo("wiki").await;
    let billing = upstream::echo("billing").await;
    let _a = Agent::connect(&gateway, &wiki_tunnel, wiki.addr(), AgentOptions::new()).await;
    let _b = Agent::connect(
        &gateway,
        &billing_tunnel,
        billing.addr(),
        AgentOptions::new(),
    )
    .await;
    let acme = gateway.caller(&gateway.create_caller("acme").await);
    let globex = gateway.caller(&gateway.create_caller("globex").await);

    let refused = acme.get("billing.test", "/invoices").send().await;
    assert_eq!(refused.status, 403, "acme on globex's tunnel: {refused:?}");
    assert!(
        refused.text().contains("another organization"),
        "the 403 is the plugin's: {:?}",
        refused.text()
    );
    assert_eq!(
        billing.requests(),
        0,
        "a refused request reached the service"
    );

    assert_eq!(
        acme.get("wiki.test", "/page").send().await.echo().server,
        "wiki"
    );
    assert_eq!(
        globex
            .get("billing.test", "/invoices")
            .send()
            .await
            .echo()
            .server,
        "billing"
    );
    let refused = globex.get("wiki.test", "/page").send().await;
    assert_eq!(refused.status, 403);
    assert_eq!(wiki.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_rules_admit_methods_paths_and_callers_and_deny_the_rest() {
    // Rules name caller ids, which exist once the callers are created: a
    // first gateway creates the tunnel and callers in the store, a second
    // one on the same store serves the route with the rules.
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Gateway::start(GatewayOptions::new().work_dir(dir.path())).await;
    let tunnel = setup.create_tunnel("acme", "wiki").await;
    let (editor_id, editor_token) = setup.create_caller_with_id("acme").await;
    let reader_token = setup.create_caller("acme").await;
    setup.kill();
    let rules = format!(
        r#"{{"rules": [
            {{"methods": ["GET", "HEAD"], "path_prefixes": ["/wiki/"]}},
            {{"methods": ["POST"], "path_prefixes": ["/api"], "callers": ["{editor_id}"]}}
        ]}}"#
    );
    let gateway = Gateway::start(
        GatewayOptions::new().work_dir(dir.path()).with_route(
            Route::new("wiki.test", "wiki")
                .plugin("org-check", "")
                .plugin("authz", &rules),
        ),
    )
    .await;
    let wiki = upstream::echo("wiki").await;
    let _agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let editor = gateway.caller(&editor_token);
    let reader = gateway.caller(&reader_token);

    assert_eq!(
        reader.get("wiki.test", "/wiki/page").send().await.status,
        200
    );
    let outside = reader.get("wiki.test", "/wikipedia").send().await;
    assert_eq!(
        outside.status, 403,
        "prefixes match on segments: {outside:?}"
    );
    assert!(
        outside
            .text()
            .contains("no authz rule allows GET /wikipedia"),
        "{:?}",
        outside.text()
    );
    let served = wiki.requests();
    assert_eq!(served, 1, "only the allowed GET reached the service");

    let post = |c: &tests::Caller| {
        c.post("wiki.test", "/api/items", tests::body::full("x"))
            .send()
    };
    assert_eq!(
        post(&editor).await.status,
        200,
        "the editor may POST to /api"
    );
    let refused = post(&reader).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let delete = editor
        .request(http::Method::DELETE, "wiki.test", "/api/items")
        .send()
        .await;
    assert_eq!(delete.status, 403, "no rule allows DELETE: {delete:?}");
    assert_eq!(
        wiki.requests(),
        served + 1,
        "only the editor's POST reached the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_fail_closed_within_the_deadline() {
    // Long enough that the healthy request below is answered well within
    // it, however loaded the machine.
    let timeout_ms = 2000;
    // One proxy thread: a spinning plugin that held it would stall the
    // healthy route's request.
    let WikiTunnel {
        gateway,
        wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(
        GatewayOptions::new()
            .env("GATEWAY__SERVER__THREADS", "1")
            .plugin_setting("call_timeout", &format!("\"{timeout_ms}ms\""))
            .plugin_setting("max_memory_bytes", &(8u64 << 20).to_string())
            .with_route(
                Route::new("spin.test", "wiki")
                    .path_prefix("/")
                    .plugin("org-check", "")
                    .plugin("faulty", "loop"),
            )
            .with_route(Route::new("trap.test", "wiki").plugin("faulty", "trap"))
            .with_route(Route::new("hoard.test", "wiki").plugin("faulty", "grow"))
            .with_route(Route::new("edit.test", "wiki").plugin("faulty", "allow"))
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
    )
    .await;

    // Four spinning requests at once, and the healthy route answering
    // while they spin: a spinning plugin yields its thread.
    let spinning: Vec<_> = (0..4)
        .map(|i| {
            let c = caller.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let r = c.get("spin.test", &format!("/{i}")).send().await;
                (r, started.elapsed())
            })
        })
        .collect();
    // All four are inside the plugin (it says so as it starts to spin).
    tests::eventually("four plugins spinning", PATIENCE, || async {
        let logs = gateway.full_logs();
        let inside = (0..4)
            .filter(|i| logs.contains(&format!("spinning on /{i}")))
            .count();
        if inside == 4 {
            Ok(())
        } else {
            Err(format!("{inside} of 4 spinning"))
        }
    })
    .await;
    let healthy = caller.get("wiki.test", "/during").send().await;
    assert_eq!(healthy.echo().server, "wiki");
    let finished = spinning.iter().filter(|t| t.is_finished()).count();
    assert_eq!(
        finished, 0,
        "the healthy route was answered only after {finished} spinning plugins were stopped"
    );
    for task in spinning {
        let (reply, took) = task.await.unwrap();
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            reply
                .text()
                .contains(&format!("`faulty` did not decide within {timeout_ms} ms")),
            "{:?}",
            reply.text()
        );
        assert!(
            took >= Duration::from_millis(timeout_ms)
                && took < Duration::from_millis(timeout_ms) + Duration::from_secs(10),
            "refused after {took:?}, not at the {timeout_ms} ms deadline"
        );
    }

    let trapped = caller.get("trap.test", "/").send().await;
    assert_eq!(trapped.status, 500, "{trapped:?}");
    assert!(
        trapped.text().contains("`faulty` failed"),
        "{:?}",
        trapped.text()
    );

    let started = Instant::now();
    let hoarded = caller.get("hoard.test", "/").send().await;
    assert_eq!(hoarded.status, 500, "{hoarded:?}");
    assert!(
        hoarded.text().contains("exceeded its memory limit"),
        "{:?}",
        hoarded.text()
    );
    assert!(started.elapsed() < Duration::from_millis(timeout_ms * 10));

    assert_eq!(wiki.requests(), 1, "a refused request reached the service");

    // The gateway keeps serving, and an allowing plugin's header edit
    // reaches the local service.
    let edited = caller.get("edit.test", "/x").send().await;
    assert_eq!(edited.echo().header("x-faulty"), Some("allow"));
    assert_eq!(caller.get("wiki.test", "/after").send().await.status, 200);

    let logs = gateway.logs();
    for kind in ["kind=\"deadline\"", "kind=\"trap\"", "kind=\"memory\""] {
        assert!(logs.contains(kind), "no {kind} failure logged:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_plugins_reload_without_a_restart_and_broken_ones_are_refused() {
    let authz_rules = r#"{"rules": [{"methods": ["GET"]}]}"#;
    let WikiTunnel {
        gateway,
        wiki: _wiki,
        agent: _agent,
        caller,
        ..
    } = WikiTunnel::start_routed(
        GatewayOptions::new()
            .plugin_setting("reload_interval", "\"100ms\"")
            .with_route(Route::new("wiki.test", "wiki").plugin("faulty", "allow"))
            .with_route(Route::new("api.test", "wiki").plugin("authz", authz_rules)),
    )
    .await;
    let pid = gateway.pid();

    assert_eq!(caller.get("wiki.test", "/").send().await.status, 200);

    // `faulty` is replaced by its next version, which denies: decisions
    // change, no restart, and requests in flight during the swap get one
    // answer or the other, never an error.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (c, stop) = (caller.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(c.get("wiki.test", "/during").send().await.status.as_u16());
            }
            statuses
        })
    };
    let next = plugin_wasm("faulty-next");
    let mark = gateway.events().mark();
    gateway.replace_plugin("faulty", &next);
    let loaded = gateway
        .wait_for_since(mark, "plugin_loaded", &[("plugin", "faulty")])
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = traffic.await.unwrap();
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 200 || *s == 403),
        "during the reload: {statuses:?}"
    );
    assert_eq!(
        loaded["sha256"].as_str().unwrap().len(),
        64,
        "the event names the file's digest: {loaded}"
    );
    assert_eq!(
        loaded["version"], "0.1.1",
        "and the plugin's version: {loaded}"
    );
    let denied = caller.get("wiki.test", "/").send().await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(
        denied.text().contains("denied by faulty"),
        "{:?}",
        denied.text()
    );
    assert_eq!(gateway.pid(), pid);

    // Garbage in place of `faulty`: reported, and the running version stays.
    gateway.replace_plugin("faulty", b"\0asm but not really");
    let rejected = gateway
        .wait_for_since(mark, "plugin_rejected", &[("plugin", "faulty")])
        .await;
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("not a valid WebAssembly component"),
        "{rejected}"
    );
    assert_eq!(caller.get("wiki.test", "/").send().await.status, 403);

    // Another plugin in place of `authz` is refused (the file must hold
    // the plugin its name says); authz keeps judging.
    assert_eq!(caller.get("api.test", "/").send().await.status, 200);
    gateway.replace_plugin("authz", &plugin_wasm("org-check"));
    let rejected = gateway
        .wait_for_since(mark, "plugin_rejected", &[("plugin", "authz")])
        .await;
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("holds the plugin \"org-check\""),
        "{rejected}"
    );
    assert_eq!(caller.get("api.test", "/").send().await.status, 200);
    let post = caller
        .post("api.test", "/", tests::body::full("x"))
        .send()
        .await;
    assert_eq!(post.status, 403, "authz still judges: {post:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_reused_until_they_fail_grow_or_reach_their_count() {
    let wiki = upstream::echo("wiki").await;
    // What `x-faulty-served` the local service sees for each path, in
    // order: how many requests the sandbox that judged it had served.
    async fn served(
        max_per_sandbox: u32,
        wiki: &upstream::Upstream,
        paths: &[&str],
    ) -> Vec<String> {
        let gateway = Gateway::start(
            GatewayOptions::new()
                .plugin_setting("max_requests_per_sandbox", &max_per_sandbox.to_string())
                .with_route(
                    Route::new("wiki.test", "wiki")
                        .plugin("org-check", "")
                        .plugin("faulty", "count"),
                ),
        )
        .await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let _agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
        let caller = gateway.caller(&gateway.create_caller("acme").await);
        let mut seen = Vec::new();
        for path in paths {
            let r = caller.get("wiki.test", path).send().await;
            if path.contains("/trap") {
                assert_eq!(r.status, 500, "{r:?}");
                assert!(r.text().contains("`faulty` failed"), "{:?}", r.text());
                seen.push("trap".to_string());
            } else {
                assert_eq!(r.status, 200, "{path}: {r:?}");
                seen.push(
                    r.echo()
                        .header("x-faulty-served")
                        .unwrap_or("none")
                        .to_string(),
                );
            }
        }
        seen
    }

    // One sandbox serves three requests in turn, then a fresh one takes
    // over; a trap or a memory growth retires it at once.
    let paths = [
        "/a", "/b", "/c", "/d", "/e", "/trap", "/f", "/grow", "/g", "/h",
    ];
    assert_eq!(
        served(3, &wiki, &paths).await,
        ["1", "2", "3", "1", "2", "trap", "1", "2", "1", "2"],
        "sandbox reuse for {paths:?}"
    );
    // With 1, no request sees another's sandbox.
    assert_eq!(
        served(1, &wiki, &["/a", "/b", "/grow", "/c"]).await,
        ["1", "1", "1", "1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_refuses_its_configuration_stops_the_start() {
    let stderr = Gateway::start_expecting_failure(GatewayOptions::new().with_route(
        Route::new("wiki.test", "wiki").plugin("authz", r#"{"rules": [{"methods": []}]}"#),
    ))
    .await;
    assert!(stderr.contains("plugin `authz`"), "{stderr}");
    assert!(
        stderr.contains("init refused its configuration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rules[0]"),
        "the plugin's own message: {stderr}"
    );

    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .plugin_file("org-check", b"not wasm".to_vec())
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", "")),
    )
    .await;
    assert!(stderr.contains("plugin `org-check`"), "{stderr}");
    assert!(
        stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );

    // An `init` that never returns meets the call deadline at start too
    // (it used to hang the start: the epoch clock began after loading).
    let stderr = Gateway::start_expecting_failure(
        GatewayOptions::new()
            .with_route(Route::new("wiki.test", "wiki").plugin("faulty", "init-loop")),
    )
    .await;
    assert!(stderr.contains("plugin `faulty`"), "{stderr}");
    assert!(
        stderr.contains("init: ran past its 50 ms deadline"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_body_shown_to_plugins_still_reaches_the_service_and_100_continue_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gateway = Gateway::start(
        GatewayOptions::new().with_route(
            Route::new("wiki.test", "wiki")
                .form_body_bytes(4096)
                .plugin("org-check", ""),
        ),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let _agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let token = gateway.create_caller("acme").await;

    // The gateway reads a form body for the plugins before forwarding it: a
    // client that waits for 100 Continue must get it, and the body must
    // still arrive whole.
    let body = "a=1&b=two&c=%20three";
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(gateway.public_addr())
        .await
        .unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("no 100 Continue within 5 s: the client would wait for nothing")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim:?}");
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("the response within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&rest).to_string();
    assert!(text.contains(" 200 "), "{text}");
    let expected_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    assert!(
        text.contains(&format!("\"body_sha256\":\"{expected_sha}\"")),
        "the form body did not arrive intact: {text}"
    );
}
