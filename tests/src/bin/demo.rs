//! The demo: a gateway, an agent and an on-prem service on this machine,
//! a few requests through the tunnel judged by the three policy plugins
//! (org-check, authz, oauth1), the trace of one request as an OpenTelemetry
//! collector receives it from both sides, a few metrics, then curl lines
//! to try by hand.
//!
//! Run `cargo build --workspace --bins` first, then
//! `cargo run -p tests --bin demo`; stop it with Ctrl-C.

use anyhow::Context as _;
use tests::otlp::{Collector, ReceivedSpan};
use tests::{
    body, scrape, upstream, Agent, AgentOptions, Gateway, GatewayOptions, Operator, Pki, Route,
};

/// The demo route's authz rules: reads anywhere, uploads under /upload/.
const AUTHZ: &str = r#"{"rules": [
  {"methods": ["GET", "HEAD"]},
  {"methods": ["POST", "PUT"], "path_prefixes": ["/upload/"]}
]}"#;

/// OAuth 1.0a at the edge without consumers: unsigned requests pass, and
/// requests that carry OAuth parameters must be complete, fresh (±600 s)
/// and never replayed.
const OAUTH1: &str = r#"{"allow_unsigned": true, "timestamp_window_secs": 600}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Fail early with the build hint rather than halfway through.
    tests::bin_path("gateway");
    tests::bin_path("agent");

    let dir = tempfile::Builder::new()
        .prefix("tunnel-demo-")
        .tempdir()
        .context("create the demo dir")?
        .keep();
    let pki = Pki::generate_in(&dir.join("pki"));
    println!("certificates (kept): {}", pki.dir().display());

    let service = upstream::echo("the on-prem demo service").await;
    println!("local service:        http://{}", service.addr());

    // A real OTLP receiver standing in for an OpenTelemetry collector: the
    // gateway exports to it over gRPC, the agent over HTTP/protobuf.
    let collector = Collector::start().await;
    let export = |endpoint: String, protocol: &str| {
        format!(
            "[telemetry]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nexport_interval = \"200ms\"\n"
        )
    };
    println!(
        "trace collector:      {} (gRPC), {} (HTTP)",
        collector.grpc_endpoint(),
        collector.http_endpoint()
    );

    let opts = GatewayOptions::new()
        .extra_config(&export(collector.grpc_endpoint(), "grpc"))
        .with_route(
            Route::new("demo.test", "demo")
                .plugin("org-check", "")
                .plugin("authz", AUTHZ)
                .plugin("oauth1", OAUTH1),
        )
        .pki(pki)
        .work_dir(&dir.join("gateway"));
    let mut gateway = Gateway::start(opts).await;
    println!(
        "gateway:              public http://{}  agents {}",
        gateway.public_addr(),
        gateway.agents_url()
    );
    println!(
        "gateway config, store and logs: {}",
        gateway.config_path().parent().unwrap_or(&dir).display()
    );

    let tunnel = gateway.create_tunnel("demo-org", "demo").await;
    let token = gateway.create_caller("demo-org").await;
    println!("tunnel:               {} (id {})", tunnel.name, tunnel.id);
    println!(
        "plugins on demo.test: org-check, authz, oauth1 (from {})",
        gateway.plugins_dir().display()
    );

    let opts = AgentOptions::new()
        .name("demo-node")
        .extra_config(&export(collector.http_endpoint(), "http/protobuf"));
    let mut agent = Agent::connect(&gateway, &tunnel, service.addr(), opts).await;
    println!("agent:                {} connected\n", agent.name());

    let caller = gateway.caller(&token);
    let anonymous = gateway.anonymous_caller();
    let show = |what: &str, reply: tests::Reply| {
        println!(
            "{what:<44} -> {} {}",
            reply.status.as_u16(),
            reply.first_line()
        );
    };
    let traced = "4bf92f3577b34da6a3ce929d0e0e4736";
    show(
        "GET demo.test/hello",
        caller
            .get("demo.test", "/hello")
            .header("traceparent", &format!("00-{traced}-00f067aa0ba902b7-01"))
            .send()
            .await,
    );
    show(
        "GET demo.test/api/items?id=7",
        caller.get("demo.test", "/api/items?id=7").send().await,
    );
    show(
        "POST demo.test/upload/ (1 MiB)",
        caller
            .post("demo.test", "/upload/", body::pattern(1 << 20))
            .send()
            .await,
    );
    show(
        "DELETE demo.test/api/items (authz: no rule)",
        caller
            .request(http::Method::DELETE, "demo.test", "/api/items")
            .send()
            .await,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let oauth = |ts: u64, nonce: &str| {
        format!(
            "OAuth oauth_consumer_key=\"demo\", oauth_nonce=\"{nonce}\", \
             oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"{ts}\", \
             oauth_version=\"1.0\", oauth_signature=\"c2lnbmF0dXJl\""
        )
    };
    let nonce = format!("demo-{now}");
    for what in ["", " again (replayed nonce)"] {
        show(
            &format!("GET demo.test/hello with OAuth{what}"),
            caller
                .get("demo.test", "/hello")
                .header("authorization", &oauth(now, &nonce))
                .send()
                .await,
        );
    }
    show(
        "GET demo.test/hello with a stale OAuth stamp",
        caller
            .get("demo.test", "/hello")
            .header("authorization", &oauth(now - 3600, "old"))
            .send()
            .await,
    );
    let other_org = gateway.caller(&gateway.create_caller("other-org").await);
    show(
        "GET demo.test/hello as another org's caller",
        other_org.get("demo.test", "/hello").send().await,
    );
    show(
        "GET demo.test/hello without a caller token",
        anonymous.get("demo.test", "/hello").send().await,
    );
    show(
        "GET unknown.test/ (no route)",
        caller.get("unknown.test", "/").send().await,
    );

    // The first request's trace, as the collector received it from both
    // processes.
    let spans = collector
        .wait_for("the demo trace", std::time::Duration::from_secs(20), |s| {
            let has = |svc: &str, name: &str| {
                s.iter()
                    .any(|x| x.trace_id == traced && x.service == svc && x.name == name)
            };
            has("tunnel-gateway", "request") && has("tunnel-agent", "tunnel request")
        })
        .await;
    let spans: Vec<_> = spans.into_iter().filter(|s| s.trace_id == traced).collect();
    println!("\nTrace {traced} of `GET demo.test/hello`, from both sides of the tunnel:");
    print_tree(&spans, "00f067aa0ba902b7", 1);

    let gm = scrape::metrics(gateway.admin()).await;
    let am = scrape::metrics(agent.admin().await).await;
    println!("\nMetrics:");
    println!("  gateway http://{}/metrics", gateway.admin());
    for status in ["200", "401", "403", "404"] {
        println!(
            "    tunnel_gateway_requests_total{{status=\"{status}\"}} {}",
            gm.sum("tunnel_gateway_requests_total", &[("status", status)])
        );
    }
    for (plugin, decision) in [("authz", "deny"), ("oauth1", "deny"), ("org-check", "deny")] {
        println!(
            "    tunnel_gateway_plugin_decisions_total{{plugin=\"{plugin}\",decision=\"{decision}\"}} {}",
            gm.sum(
                "tunnel_gateway_plugin_decisions_total",
                &[("plugin", plugin), ("decision", decision)]
            )
        );
    }
    println!("  agent   http://{}/metrics", agent.admin().await);
    println!(
        "    tunnel_agent_requests_total{{status=\"200\"}} {}",
        am.sum("tunnel_agent_requests_total", &[("status", "200")])
    );
    println!(
        "  health: http://{0}/healthz  http://{0}/readyz  (agent: http://{1}/readyz)",
        gateway.admin(),
        agent.admin().await
    );

    let admin = gateway.admin_token("write").await;
    println!("\nDashboard: http://{}/ui/", gateway.admin());
    println!("  sign in with the admin token {admin}");
    println!("  (tunnels and their rate live, agents, callers, plugins, refusals, audit)");

    println!("\nTry it yourself:\n");
    println!(
        "  curl -H 'Proxy-Authorization: Bearer {token}' -H 'Host: demo.test' http://{}/hello",
        gateway.public_addr()
    );
    println!(
        "  curl -X DELETE -H 'Proxy-Authorization: Bearer {token}' -H 'Host: demo.test' http://{}/x   # authz says 403\n",
        gateway.public_addr()
    );
    println!(
        "Plugins reload when replaced: copy a new build of a plugin over its file in {} and watch the gateway's stdout (a file holding another plugin is refused).\n",
        gateway.plugins_dir().display()
    );
    println!(
        "Traces: set [telemetry] endpoint in both configs to your collector (see README, Observability).\n"
    );
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;

    println!("\nstopping the agent (drain) ...");
    let status = agent.terminate().await;
    println!("agent exited: {status}");
    let status = gateway.terminate().await;
    println!("gateway exited: {status}");
    println!("files kept in {}", dir.display());
    Ok(())
}

/// Prints the spans under `parent` as an indented tree with durations.
fn print_tree(spans: &[ReceivedSpan], parent: &str, depth: usize) {
    let mut children: Vec<_> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent)
        .collect();
    children.sort_by_key(|s| s.start_unix_nanos);
    for s in children {
        let micros = s.end_unix_nanos.saturating_sub(s.start_unix_nanos) / 1000;
        let detail = [
            "plugin.name",
            "policy.decision",
            "tunnel.agent",
            "http.response.status_code",
        ]
        .iter()
        .filter_map(|k| s.attributes.get(*k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
        println!(
            "  {:indent$}{} / {} ({micros} µs) {detail}",
            "",
            s.service,
            s.name,
            indent = depth * 2
        );
        print_tree(spans, &s.span_id, depth + 1);
    }
}
