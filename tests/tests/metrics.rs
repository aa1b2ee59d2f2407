//! Story: an operator watches tunnels through the admin listeners.
//!
//! - the gateway's `/metrics` counts requests by route, tunnel and status,
//!   their latency and bytes, connected tunnels and agents, agent connects,
//!   disconnects and refused handshakes, and each plugin's decisions,
//!   failures and call time; the counters move as requests pass and fail;
//! - the agent's `/metrics` counts what it forwarded and its connection;
//! - `/healthz` answers while the process runs; `/readyz` says whether it
//!   can serve (the agent: only while connected to the gateway; the
//!   gateway: not once a graceful shutdown began);
//! - access-log lines carry route, tunnel, agent, status, duration, bytes
//!   and trace id, as JSON when the config asks for it.

use std::time::Duration;

use tests::scrape::{self, Metrics};
use tests::{eventually, upstream, Agent, AgentOptions, Gateway, GatewayOptions, Route, PATIENCE};

/// Scrapes until `ok` holds on the page, or fails with the page.
async fn scrape_until(
    admin: std::net::SocketAddr,
    what: &str,
    ok: impl Fn(&Metrics) -> bool,
) -> Metrics {
    eventually(what, PATIENCE, || async {
        let m = scrape::metrics(admin).await;
        if ok(&m) {
            Ok(m)
        } else {
            Err(m.text)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_as_requests_pass_and_fail_on_both_sides() {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(
                Route::new("wiki.test", "wiki")
                    .plugin("org-check", "")
                    .plugin("authz", r#"{"rules":[{"methods":["GET","POST"]}]}"#),
            )
            .with_route(Route::new("broken.test", "wiki").plugin("faulty", "trap")),
    )
    .await;
    let admin = gateway.admin();
    assert_eq!(scrape::get(admin, "/healthz").await.0, 200);
    let (status, body) = scrape::get(admin, "/readyz").await;
    assert_eq!(status, 200, "gateway ready: {body}");
    assert_eq!(scrape::get(admin, "/nope").await.0, 404);

    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    let m = scrape_until(admin, "one tunnel and one agent connected", |m| {
        m.sum("tunnel_gateway_agents_connected", &[]) == 1.0
    })
    .await;
    assert_eq!(m.sum("tunnel_gateway_tunnels_connected", &[]), 1.0);
    assert_eq!(
        m.sum("tunnel_gateway_agent_connects_total", &[("tunnel", "wiki")]),
        1.0
    );

    for _ in 0..3 {
        assert_eq!(caller.get("wiki.test", "/page").send().await.status, 200);
    }
    let upload = caller
        .post("wiki.test", "/upload", tests::body::full(vec![7u8; 1000]))
        .send()
        .await;
    assert_eq!(upload.status, 200);
    assert_eq!(
        caller
            .request(http::Method::DELETE, "wiki.test", "/page")
            .send()
            .await
            .status,
        403
    );
    assert_eq!(caller.get("broken.test", "/").send().await.status, 500);
    assert_eq!(caller.get("nowhere.test", "/").send().await.status, 404);

    let route = ("route", "route-0");
    // The access phase runs after the response is sent: wait for all.
    let m = scrape_until(admin, "the requests counted", |m| {
        m.sum("tunnel_gateway_requests_total", &[route, ("status", "200")]) == 4.0
            && m.sum("tunnel_gateway_requests_total", &[route, ("status", "403")]) == 1.0
            && m.sum(
                "tunnel_gateway_requests_total",
                &[("route", "route-1"), ("status", "500")],
            ) == 1.0
            && m.sum(
                "tunnel_gateway_requests_total",
                &[("route", "-"), ("status", "404")],
            ) == 1.0
    })
    .await;
    assert_eq!(
        m.sum(
            "tunnel_gateway_requests_total",
            &[route, ("tunnel", "wiki"), ("status", "403")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "tunnel_gateway_requests_total",
            &[("route", "route-1"), ("status", "500")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "tunnel_gateway_requests_total",
            &[("route", "-"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        m.sum("tunnel_gateway_request_duration_seconds_count", &[route]),
        5.0
    );
    assert!(m.sum("tunnel_gateway_request_duration_seconds_sum", &[route]) > 0.0);
    assert_eq!(
        m.sum("tunnel_gateway_request_body_bytes_total", &[route]),
        1000.0
    );
    assert!(m.sum("tunnel_gateway_response_body_bytes_total", &[route]) > 1000.0);
    assert_eq!(
        m.sum(
            "tunnel_gateway_plugin_decisions_total",
            &[("plugin", "authz"), ("decision", "deny")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "tunnel_gateway_plugin_decisions_total",
            &[("plugin", "org-check"), ("decision", "allow")]
        ),
        5.0
    );
    assert_eq!(
        m.sum(
            "tunnel_gateway_plugin_failures_total",
            &[("plugin", "faulty"), ("kind", "trap")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "tunnel_gateway_plugin_call_duration_seconds_count",
            &[("plugin", "authz")]
        ),
        5.0
    );

    // The agent counts what it forwarded, and its connection.
    let agent_admin = agent.admin().await;
    assert_eq!(scrape::get(agent_admin, "/healthz").await.0, 200);
    let (status, body) = scrape::get(agent_admin, "/readyz").await;
    assert_eq!(status, 200, "agent ready while connected: {body}");
    let am = scrape_until(agent_admin, "the agent's requests counted", |m| {
        m.sum("tunnel_agent_requests_total", &[("status", "200")]) == 4.0
    })
    .await;
    assert_eq!(am.sum("tunnel_agent_request_body_bytes_total", &[]), 1000.0);
    assert!(am.sum("tunnel_agent_response_body_bytes_total", &[]) > 1000.0);
    assert_eq!(
        am.sum("tunnel_agent_request_duration_seconds_count", &[]),
        4.0
    );
    assert_eq!(am.gauge("tunnel_agent_gateway_connected"), 1.0);
    assert_eq!(am.sum("tunnel_agent_gateway_connects_total", &[]), 1.0);

    // A wrong key is refused and counted.
    // Same id, another tunnel's key.
    let other = gateway.create_tunnel("acme", "other").await;
    let mut forged = tunnel.clone();
    forged.key = other.key.clone();
    let impostor = Agent::start(&gateway, &forged, wiki.addr(), AgentOptions::new()).await;
    scrape_until(admin, "the refused handshake counted", |m| {
        m.sum(
            "tunnel_gateway_agent_handshakes_rejected_total",
            &[("reason", "key")],
        ) == 1.0
    })
    .await;
    drop(impostor);

    // The gateway goes away: the agent is no longer ready.
    drop(gateway);
    let body = eventually(
        "the agent not ready without a gateway",
        PATIENCE,
        || async {
            match scrape::get(agent_admin, "/readyz").await {
                (503, body) => Ok(body),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    assert!(body.contains("not connected"), "{body}");
    let am = scrape::metrics(agent_admin).await;
    assert_eq!(am.gauge("tunnel_agent_gateway_connected"), 0.0);
    assert!(am.sum("tunnel_agent_gateway_disconnects_total", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_leaving_is_counted_and_access_lines_are_json_when_asked() {
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", ""))
            .grace_period(Duration::from_secs(10))
            .extra_config("[log]\nformat = \"json\"\n"),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let agent = Agent::connect(
        &gateway,
        &tunnel,
        wiki.addr(),
        AgentOptions::new().extra_config("[log]\nformat = \"json\"\n"),
    )
    .await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    let reply = caller
        .get("wiki.test", "/page?x=1")
        .header(
            "traceparent",
            "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await;
    assert_eq!(reply.status, 200);
    let len = reply.body.len() as u64;

    let access = |logs: String| -> serde_json::Value {
        logs.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == "access")
            .unwrap_or_else(|| panic!("no JSON access line in:\n{logs}"))
    };
    let line = eventually("the gateway's access line", PATIENCE, || async {
        let logs = gateway.logs();
        if logs.contains("\"access\"") {
            Ok(access(logs))
        } else {
            Err(logs)
        }
    })
    .await;
    assert_eq!(line["route"], "route-0", "{line}");
    assert_eq!(line["tunnel"], "wiki", "{line}");
    assert_eq!(line["agent"], agent.name(), "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["duration_ms"].is_u64(), "{line}");
    assert_eq!(line["bytes_in"], 0, "{line}");
    assert_eq!(line["bytes_out"], len, "{line}");
    assert_eq!(
        line["trace_id"], "5bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    let line = eventually("the agent's access line", PATIENCE, || async {
        let logs = agent.logs();
        if logs.contains("\"access\"") {
            Ok(access(logs))
        } else {
            Err(logs)
        }
    })
    .await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["bytes_out"], len, "{line}");
    assert_eq!(
        line["trace_id"], "5bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );

    let admin = gateway.admin();
    drop(agent);
    scrape_until(admin, "the agent's departure counted", |m| {
        m.gauge("tunnel_gateway_agents_connected") == 0.0
            && m.gauge("tunnel_gateway_tunnels_connected") == 0.0
            && m.sum(
                "tunnel_gateway_agent_disconnects_total",
                &[("tunnel", "wiki")],
            ) == 1.0
    })
    .await;

    // A graceful shutdown takes the gateway out of rotation at once while
    // it still answers health checks.
    gateway.begin_shutdown();
    let body = eventually("not ready after SIGTERM", PATIENCE, || async {
        match scrape::get(admin, "/readyz").await {
            (503, body) => Ok(body),
            (200, body) => Err(format!("200 {body}")),
            (status, body) => panic!("/readyz answered {status} while shutting down: {body}"),
        }
    })
    .await;
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(scrape::get(admin, "/healthz").await.0, 200);
}
