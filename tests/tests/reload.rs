//! Story: an operator changes the gateway's configuration while it serves.
//! Routes, plugin configurations and limits take effect on SIGHUP or as
//! soon as the file changes, without a failed request, a dropped agent or
//! a request cut short; a file that is invalid, that a plugin refuses, or
//! that changes a setting only a restart applies is refused whole, with
//! the field or plugin named, and the running configuration keeps serving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tests::upstream::{self, Upstream};
use tests::{scrape, Agent, AgentOptions, Gateway, GatewayOptions, Route, PATIENCE};

/// A route in the config file's own words.
fn route_toml(name: &str, host: &str, tunnel: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\nhost = \"{host}\"\ntunnel = \"{tunnel}\"\nallow_without_plugins = true\n"
    )
}

/// The names in a `config_reloaded` event's `routes.<what>`.
fn routes(event: &Value, what: &str) -> Vec<String> {
    event["routes"][what]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A gateway routing `wiki.test` to the tunnel `wiki`, its agent, and a
/// caller of the tunnel's organization; the tunnel `ci` exists too (no
/// route names it yet) and is served by the same agent's service.
struct Setup {
    gateway: Gateway,
    caller: tests::Caller,
    service: Upstream,
    _agents: Vec<Agent>,
}

async fn setup(opts: GatewayOptions) -> Setup {
    let gateway = Gateway::start(opts.route("wiki.test", "wiki")).await;
    let service = upstream::echo("service").await;
    let mut agents = Vec::new();
    for name in ["wiki", "ci"] {
        let tunnel = gateway.create_tunnel("acme", name).await;
        agents.push(Agent::connect(&gateway, &tunnel, service.addr(), AgentOptions::new()).await);
    }
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    Setup {
        gateway,
        caller,
        service,
        _agents: agents,
    }
}

async fn status(caller: &tests::Caller, host: &str, path: &str) -> u16 {
    caller.get(host, path).send().await.status.as_u16()
}

async fn reloads(gateway: &Gateway, result: &str) -> f64 {
    scrape::metrics(gateway.admin())
        .await
        .sum("tunnel_gateway_config_reloads_total", &[("result", result)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_route_goes_live_on_sighup() {
    let s = setup(GatewayOptions::new()).await;
    assert_eq!(status(&s.caller, "ci.test", "/").await, 404);

    let mark = s.gateway.events().mark();
    s.gateway
        .rewrite_config(|c| c + &route_toml("ci", "ci.test", "ci"));
    s.gateway.sighup();
    // The signal always reloads (the file watcher may have been first).
    let event = s
        .gateway
        .events()
        .wait_after(
            mark,
            "config_reloaded after SIGHUP",
            |e| e["event"] == "config_reloaded" && e["trigger"] == "sighup",
            PATIENCE,
        )
        .await;
    assert!(event["path"].as_str().is_some(), "{event}");
    assert_eq!(
        s.caller.get("ci.test", "/x").send().await.echo().target,
        "/x"
    );
    assert_eq!(status(&s.caller, "wiki.test", "/").await, 200);
    assert!(reloads(&s.gateway, "ok").await >= 1.0);
    // Tunnels and agents were not touched.
    assert!(
        !s.gateway
            .events()
            .snapshot()
            .iter()
            .skip(mark)
            .any(|e| e["event"] == "agent_disconnected"),
        "{}",
        s.gateway.events().dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_changing_reloads_it_without_a_signal() {
    let s = setup(GatewayOptions::new()).await;

    // Appended in place (same inode).
    let mark = s.gateway.events().mark();
    s.gateway
        .edit_config_in_place(|c| c + &route_toml("ci", "ci.test", "ci"));
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    assert_eq!(event["trigger"], "file", "{event}");
    assert_eq!(routes(&event, "added"), ["ci"], "{event}");
    assert_eq!(
        event["changed"].as_array().map(Vec::len),
        Some(1),
        "only the routes changed: {event}"
    );
    assert_eq!(status(&s.caller, "ci.test", "/").await, 200);

    // Replaced by a rename, as editors save: the route is gone again.
    let mark = s.gateway.events().mark();
    s.gateway.rewrite_config(|c| {
        let at = c
            .rfind("\n[[routes]]\nname = \"ci\"")
            .expect("the ci route");
        c[..at].to_string()
    });
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    assert_eq!(routes(&event, "removed"), ["ci"], "{event}");
    assert_eq!(status(&s.caller, "ci.test", "/").await, 404);
    assert_eq!(status(&s.caller, "wiki.test", "/").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_reload_under_load_without_a_failed_request() {
    let s = setup(GatewayOptions::new()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (caller, stop, ok, failed) =
            (s.caller.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match caller.get("wiki.test", "/load").try_send().await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            errors
        }));
    }
    // Five reloads while the requests flow: routes added one by one, the
    // last one (`ci`) live at the end.
    for i in 0..5 {
        let before = ok.load(Ordering::Relaxed);
        while ok.load(Ordering::Relaxed) < before + 20 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mark = s.gateway.events().mark();
        let (name, host) = if i == 4 {
            ("ci".to_string(), "ci.test".to_string())
        } else {
            (format!("extra-{i}"), format!("extra-{i}.test"))
        };
        s.gateway
            .rewrite_config(|c| c + &route_toml(&name, &host, "ci"));
        s.gateway.sighup();
        let event = s.gateway.wait_reload(mark).await;
        assert_eq!(event["event"], "config_reloaded", "{event}");
    }
    let before = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < before + 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for task in load {
        errors.extend(task.await.unwrap());
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the reloads: {errors:?}"
    );
    assert!(ok.load(Ordering::Relaxed) >= 120);
    assert_eq!(status(&s.caller, "ci.test", "/").await, 200);
    assert_eq!(status(&s.caller, "extra-2.test", "/").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_keeps_the_running_routes_and_names_the_field() {
    let s = setup(GatewayOptions::new()).await;

    // A value validation refuses: the new route's path prefix.
    let mark = s.gateway.events().mark();
    s.gateway.rewrite_config(|c| {
        c + &route_toml("ci", "ci.test", "ci") + "path_prefix = \"no-slash\"\n"
    });
    s.gateway.sighup();
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reload_failed", "{event}");
    assert_eq!(event["fields"][0], "routes[1].path_prefix", "{event}");
    let error = event["error"].as_str().unwrap_or_default();
    assert!(error.contains("routes[1].path_prefix"), "{error}");
    s.gateway.wait_log("configuration reload refused").await;
    assert_eq!(status(&s.caller, "wiki.test", "/").await, 200);
    assert_eq!(status(&s.caller, "ci.test", "/").await, 404);

    // A value of the wrong type: the loader names the key.
    let mark = s.gateway.events().mark();
    s.gateway.rewrite_config(|c| {
        c.replace("no-slash", "/")
            .replace("[public]\n", "[public]\nmax_body_bytes = \"lots\"\n")
    });
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reload_failed", "{event}");
    let error = event["error"].as_str().unwrap_or_default();
    assert!(error.contains("max_body_bytes"), "{error}");
    assert_eq!(status(&s.caller, "ci.test", "/").await, 404);
    assert!(reloads(&s.gateway, "failed").await >= 2.0);

    // Fixed, the same file applies.
    let mark = s.gateway.events().mark();
    s.gateway
        .rewrite_config(|c| c.replace("max_body_bytes = \"lots\"\n", ""));
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    assert_eq!(status(&s.caller, "ci.test", "/").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_only_a_restart_applies_refuses_the_reload_naming_it() {
    let s = setup(GatewayOptions::new()).await;
    let mark = s.gateway.events().mark();
    s.gateway.rewrite_config(|c| {
        let c = c
            .replace(
                "[public]\nlisten = \"127.0.0.1:0\"",
                "[public]\nlisten = \"127.0.0.1:1\"",
            )
            .replace("threads = 2", "threads = 1");
        // A route beside them: refused with the rest.
        c + &route_toml("ci", "ci.test", "ci")
    });
    s.gateway.sighup();
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reload_failed", "{event}");
    let mut fields: Vec<_> = event["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    fields.sort();
    assert_eq!(fields, ["public.listen", "server.threads"], "{event}");
    let error = event["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("public.listen") && error.contains("restart"),
        "{error}"
    );
    assert_eq!(
        status(&s.caller, "ci.test", "/").await,
        404,
        "nothing applied"
    );
    assert_eq!(status(&s.caller, "wiki.test", "/").await, 200);
}

/// The `authz` rules of the `wiki.test` route, as written in the file.
fn rules(methods: &str) -> String {
    serde_json::to_string(&format!(r#"{{"rules": [{{"methods": [{methods}]}}]}}"#)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_configurations_reload_and_one_the_plugin_refuses_is_not_applied() {
    let gateway = Gateway::start(GatewayOptions::new().with_route(
        Route::new("wiki.test", "wiki").plugin("authz", r#"{"rules": [{"methods": ["GET"]}]}"#),
    ))
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let ci = gateway.create_tunnel("acme", "ci").await;
    let service = upstream::echo("service").await;
    let _agent = Agent::connect(&gateway, &tunnel, service.addr(), AgentOptions::new()).await;
    let _ci_agent = Agent::connect(&gateway, &ci, service.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    let post = || async {
        caller
            .post("wiki.test", "/api", tests::body::full("x"))
            .send()
            .await
            .status
            .as_u16()
    };
    assert_eq!(post().await, 403);

    // New rules admit POST; a new route brings a plugin not loaded before.
    let org_check = gateway.plugins_dir().join("org-check.wasm");
    std::fs::write(&org_check, tests::plugin_wasm("org-check")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&org_check, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mark = gateway.events().mark();
    gateway.rewrite_config(|c| {
        assert!(c.contains(&rules(r#""GET""#)), "{c}");
        c.replace(&rules(r#""GET""#), &rules(r#""GET", "POST""#))
            + "\n[[routes]]\nname = \"ci\"\nhost = \"ci.test\"\ntunnel = \"ci\"\n\
               [[routes.plugins]]\nname = \"org-check\"\n"
    });
    gateway.sighup();
    let event = gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    assert_eq!(routes(&event, "changed"), ["route-0"], "{event}");
    assert_eq!(routes(&event, "added"), ["ci"], "{event}");
    gateway
        .wait_for_since(mark, "plugin_loaded", &[("plugin", "org-check")])
        .await;
    assert_eq!(post().await, 200);
    assert_eq!(status(&caller, "ci.test", "/").await, 200);

    // Rules the plugin's init refuses: the reload is refused with the
    // plugin's own message, and the running rules keep judging.
    let mark = gateway.events().mark();
    gateway.rewrite_config(|c| c.replace(&rules(r#""GET", "POST""#), &rules("")));
    gateway.sighup();
    let event = gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reload_failed", "{event}");
    let error = event["error"].as_str().unwrap_or_default();
    assert!(error.contains("plugin `authz`"), "{error}");
    assert!(error.contains("init refused its configuration"), "{error}");
    assert!(error.contains("rules[0]"), "{error}");
    assert_eq!(post().await, 200, "the running rules still admit POST");
    let delete = caller
        .request(http::Method::DELETE, "wiki.test", "/api")
        .send()
        .await;
    assert_eq!(delete.status, 403, "{delete:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_the_route_a_reload_removed() {
    let s = setup(GatewayOptions::new()).await;
    let slow = {
        let caller = s.caller.clone();
        tokio::spawn(async move { caller.get("wiki.test", "/slow/2000").send().await })
    };
    s.service
        .stats()
        .in_flight
        .wait_at_least(1, "the slow request at the service", PATIENCE)
        .await;

    let mark = s.gateway.events().mark();
    s.gateway
        .rewrite_config(|c| c.replace("host = \"wiki.test\"", "host = \"docs.test\""));
    s.gateway.sighup();
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    assert_eq!(routes(&event, "changed"), ["route-0"], "{event}");
    assert_eq!(status(&s.caller, "wiki.test", "/").await, 404);
    assert_eq!(status(&s.caller, "docs.test", "/").await, 200);

    let reply = slow.await.unwrap();
    assert_eq!(reply.echo().target, "/slow/2000", "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_live_for_requests_that_start_after_the_reload() {
    // The body and header limits, and the budget of failed credentials.
    let s = setup(
        GatewayOptions::new()
            .max_body_bytes(1000)
            .max_header_bytes(2048)
            .extra_config("[callers]\nmax_failures_per_minute = 100\n"),
    )
    .await;
    let upload = || async {
        s.caller
            .post("wiki.test", "/upload", tests::body::full(vec![b'x'; 2000]))
            .send()
            .await
            .status
            .as_u16()
    };
    assert_eq!(upload().await, 413);
    // Past the listener's own bound for a head (the limit plus room for
    // the request line), and past the proxy's limit.
    let big_head = || async {
        s.caller
            .get("wiki.test", "/")
            .header("x-big", &"a".repeat(20_000))
            .send()
            .await
            .status
            .as_u16()
    };
    assert_eq!(big_head().await, 431);
    let anonymous = s.gateway.anonymous_caller();
    for _ in 0..3 {
        assert_eq!(status(&anonymous, "wiki.test", "/").await, 401);
    }

    let mark = s.gateway.events().mark();
    s.gateway.rewrite_config(|c| {
        c.replace("max_body_bytes = 1000", "max_body_bytes = 4000")
            .replace("max_header_bytes = 2048", "max_header_bytes = 32768")
            .replace(
                "max_failures_per_minute = 100",
                "max_failures_per_minute = 4",
            )
    });
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    let mut changed: Vec<_> = event["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    changed.sort();
    assert_eq!(
        changed,
        [
            "callers.max_failures_per_minute",
            "public.max_body_bytes",
            "public.max_header_bytes"
        ],
        "{event}"
    );
    assert_eq!(upload().await, 200, "the larger body limit applies");
    assert_eq!(big_head().await, 200, "the larger header limit applies");
    // This source had 3 failures (counts carry over): one more spends the
    // new budget of 4, and the source is refused.
    assert_eq!(status(&anonymous, "wiki.test", "/").await, 401);
    let refused = anonymous.get("wiki.test", "/").send().await;
    assert_eq!(refused.status, 429, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_live() {
    // `RUST_LOG` (which the harness sets otherwise) would keep deciding.
    let s = setup(
        GatewayOptions::new()
            .env("RUST_LOG", "")
            .extra_config("[log]\nlevel = \"warn\"\n"),
    )
    .await;
    assert_eq!(status(&s.caller, "wiki.test", "/before").await, 200);

    let mark = s.gateway.events().mark();
    s.gateway
        .rewrite_config(|c| c.replace("level = \"warn\"", "level = \"info\""));
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    assert_eq!(event["changed"][0], "log.level", "{event}");
    // Info lines are written from now on: the reload's own, then the
    // access line of the next request.
    s.gateway.wait_log("configuration reloaded").await;
    assert_eq!(status(&s.caller, "wiki.test", "/after").await, 200);
    s.gateway.wait_log("host=wiki.test").await;
    assert!(
        !s.gateway.logs().contains("gateway ready"),
        "info lines from before the reload were filtered: {}",
        s.gateway.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_still_apply_after_a_reload() {
    let s = setup(GatewayOptions::new().env("GATEWAY__PUBLIC__MAX_BODY_BYTES", "1000")).await;
    let upload = || async {
        s.caller
            .post("wiki.test", "/upload", tests::body::full(vec![b'x'; 2000]))
            .send()
            .await
            .status
            .as_u16()
    };
    assert_eq!(upload().await, 413);
    let mark = s.gateway.events().mark();
    s.gateway
        .rewrite_config(|c| c + &route_toml("ci", "ci.test", "ci"));
    let event = s.gateway.wait_reload(mark).await;
    assert_eq!(event["event"], "config_reloaded", "{event}");
    assert_eq!(event["changed"], serde_json::json!(["routes"]), "{event}");
    assert_eq!(status(&s.caller, "ci.test", "/").await, 200);
    assert_eq!(upload().await, 413, "the override still decides");
}
