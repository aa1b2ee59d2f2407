//! Story: an operator sees where a request spent its time and why it was
//! refused, across both sides of the tunnel, in one OpenTelemetry trace.
//!
//! A real OTLP receiver (the OTLP protobuf messages over gRPC and over
//! HTTP) collects what the real gateway and agent export:
//!
//! - a request through the gateway, its plugins and the agent gives spans
//!   from both processes in one trace with the right parent links, and
//!   the local service receives a `traceparent` of that trace, naming the
//!   agent's forward span;
//! - a caller's `traceparent` is continued; without one a trace starts;
//! - a refused request's span names the plugin that refused it, its status
//!   and its reason, and no span carries the caller's token or query;
//! - with the collector hanging or down, requests still succeed without
//!   waiting on it, and the lost spans are counted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tests::otlp::{blackhole, Collector, ReceivedSpan};
use tests::upstream::closed_port;
use tests::{scrape, upstream, Agent, AgentOptions, Gateway, GatewayOptions, Route};

/// How long spans may take to reach the collector (exports run every 50 ms).
const EXPORT_WAIT: Duration = Duration::from_secs(20);

fn telemetry(endpoint: &str, protocol: &str) -> String {
    format!(
        "[telemetry]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\n\
         export_interval = \"50ms\"\n\
         [telemetry.headers]\nx-collector-key = \"k-123\"\n\
         [telemetry.resource]\n\"deployment.environment\" = \"test\"\n"
    )
}

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found = find(spans, service, name);
    assert_eq!(
        found.len(),
        1,
        "expected one `{name}` span from {service}, got {found:#?}"
    );
    found[0]
}

/// Spans of trace `trace_id` once both sides' last spans arrived.
async fn trace(collector: &Collector, trace_id: &str) -> Vec<ReceivedSpan> {
    let id = trace_id.to_string();
    collector
        .wait_for(&format!("trace {trace_id}"), EXPORT_WAIT, |spans| {
            let of = |svc: &str, name: &str| {
                spans
                    .iter()
                    .any(|s| s.trace_id == id && s.service == svc && s.name == name)
            };
            of("tunnel-gateway", "request") && of("tunnel-agent", "tunnel request")
        })
        .await
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect()
}

/// Spans of trace `trace_id` once the gateway's `request` span arrived
/// (a refused request never reaches the agent).
async fn gateway_trace(collector: &Collector, what: &str, trace_id: &str) -> Vec<ReceivedSpan> {
    collector
        .wait_for(what, EXPORT_WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == trace_id && s.name == "request")
        })
        .await
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_caller_through_both_processes_to_the_local_service() {
    let collector = Collector::start().await;
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(
                Route::new("wiki.test", "wiki")
                    .plugin("org-check", "")
                    .plugin("authz", r#"{"rules":[{"methods":["GET"]}]}"#),
            )
            .extra_config(&telemetry(&collector.grpc_endpoint(), "grpc")),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let _agent = Agent::connect(
        &gateway,
        &tunnel,
        wiki.addr(),
        AgentOptions::new().extra_config(&telemetry(&collector.http_endpoint(), "http/protobuf")),
    )
    .await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);

    // The caller's trace is continued.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let reply = caller
        .get("wiki.test", "/page?q=1")
        .header("traceparent", &format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let echo = reply.echo();
    let received = echo
        .header("traceparent")
        .expect("the local service received a traceparent")
        .to_string();
    let parts: Vec<&str> = received.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {received}");
    assert_eq!(
        parts[1], trace_id,
        "the local service's traceparent is of the caller's trace"
    );
    assert_eq!(parts[3], "01", "sampled flag carried on");

    let spans = trace(&collector, trace_id).await;
    let request = one(&spans, "tunnel-gateway", "request");
    assert_eq!(
        request.parent_span_id, caller_span,
        "continues the caller's span"
    );
    assert_eq!(request.kind, "server");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("http.route", "route-0"),
        ("url.path", "/page"),
        ("tunnel.name", "wiki"),
        ("tunnel.org", "acme"),
        ("caller.org", "acme"),
        ("server.address", "wiki.test"),
    ] {
        assert_eq!(
            request.attributes.get(key).map(String::as_str),
            Some(value),
            "request span attribute {key}: {request:#?}"
        );
    }
    let plugins = find(&spans, "tunnel-gateway", "policy plugin");
    let names: BTreeSet<_> = plugins
        .iter()
        .map(|s| s.attributes.get("plugin.name").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["authz".to_string(), "org-check".to_string()]),
        "one span per plugin: {plugins:#?}"
    );
    for p in &plugins {
        assert_eq!(
            p.parent_span_id, request.span_id,
            "plugin spans are children of the request"
        );
        assert_eq!(
            p.attributes.get("policy.decision").map(String::as_str),
            Some("allow")
        );
        assert!(p.end_unix_nanos >= p.start_unix_nanos);
    }
    let select = one(&spans, "tunnel-gateway", "select agent");
    assert_eq!(select.parent_span_id, request.span_id);
    assert_eq!(
        select.attributes.get("tunnel.agent").map(String::as_str),
        Some(_agent.name())
    );
    let stream = one(&spans, "tunnel-gateway", "tunnel stream");
    assert_eq!(stream.parent_span_id, request.span_id);
    assert_eq!(stream.kind, "client");

    let accepted = one(&spans, "tunnel-agent", "tunnel request");
    assert_eq!(
        accepted.parent_span_id, stream.span_id,
        "the agent's span is a child of the gateway's tunnel stream span"
    );
    assert_eq!(accepted.kind, "server");
    assert_eq!(
        accepted.protocol, "http",
        "the agent exported over OTLP/HTTP"
    );
    assert_eq!(
        request.protocol, "grpc",
        "the gateway exported over OTLP/gRPC"
    );
    let forward = one(&spans, "tunnel-agent", "forward to local service");
    assert_eq!(forward.parent_span_id, accepted.span_id);
    assert_eq!(forward.kind, "client");
    assert_eq!(
        parts[2], forward.span_id,
        "the local service's parent is the agent's forward span"
    );
    let response = one(&spans, "tunnel-agent", "response");
    assert_eq!(response.parent_span_id, accepted.span_id);
    assert_eq!(
        response
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    assert!(request
        .resource
        .get("deployment.environment")
        .is_some_and(|v| v == "test"));
    // Every export of either protocol carries the configured header.
    let exports = collector.export_headers();
    assert!(!exports.is_empty());
    for headers in &exports {
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "x-collector-key" && v == "k-123"),
            "an export without the configured header: {headers:?}"
        );
    }

    // Without a traceparent the gateway starts the trace.
    let reply = caller.get("wiki.test", "/other").send().await;
    assert_eq!(reply.status, 200);
    let received = reply
        .echo()
        .header("traceparent")
        .expect("traceparent")
        .to_string();
    let new_trace = received.split('-').nth(1).expect("trace id").to_string();
    assert_ne!(new_trace, trace_id);
    let spans = trace(&collector, &new_trace).await;
    let root = one(&spans, "tunnel-gateway", "request");
    assert_eq!(root.parent_span_id, "", "a new trace starts at the gateway");
    let accepted = one(&spans, "tunnel-agent", "tunnel request");
    let stream = one(&spans, "tunnel-gateway", "tunnel stream");
    assert_eq!(accepted.parent_span_id, stream.span_id);

    // A caller cannot switch tracing off (or on) for its requests: the
    // gateway samples by its own ratio (1.0 here), not the caller's flag.
    let unsampled = "3bf92f3577b34da6a3ce929d0e0e4736";
    let reply = caller
        .get("wiki.test", "/quiet")
        .header(
            "traceparent",
            &format!("00-{unsampled}-00f067aa0ba902b7-00"),
        )
        .send()
        .await;
    assert_eq!(reply.status, 200);
    let received = reply
        .echo()
        .header("traceparent")
        .expect("traceparent")
        .to_string();
    assert!(
        received.ends_with("-01"),
        "recorded despite the caller: {received}"
    );
    let spans = trace(&collector, unsampled).await;
    assert_eq!(
        one(&spans, "tunnel-gateway", "request").parent_span_id,
        "00f067aa0ba902b7"
    );

    // The access log carries the same trace id.
    let logs = gateway.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("access") && l.contains(&new_trace)),
        "gateway access line with trace id {new_trace}:\n{logs}"
    );
    assert!(
        _agent
            .logs()
            .lines()
            .any(|l| l.contains("access") && l.contains(&new_trace)),
        "agent access line with trace id {new_trace}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_span_names_the_plugin_and_its_reason_but_no_secret() {
    let collector = Collector::start().await;
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(
                Route::new("wiki.test", "wiki")
                    .plugin("org-check", "")
                    .plugin("authz", r#"{"rules":[{"methods":["GET"]}]}"#),
            )
            .with_route(Route::new("broken.test", "wiki").plugin("faulty", "trap"))
            .extra_config(&telemetry(&collector.grpc_endpoint(), "grpc")),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let _agent = Agent::connect(
        &gateway,
        &tunnel,
        wiki.addr(),
        AgentOptions::new().extra_config(&telemetry(&collector.http_endpoint(), "http/protobuf")),
    )
    .await;
    let token = gateway.create_caller("acme").await;
    let caller = gateway.caller(&token);

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let reply = caller
        .request(
            http::Method::DELETE,
            "wiki.test",
            "/page?oauth_signature=S3CR3T",
        )
        .header("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))
        .header("authorization", "OAuth oauth_signature=\"S3CR3T\"")
        .send()
        .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(wiki.requests(), 0);

    let spans = gateway_trace(&collector, "the refused request's span", trace_id).await;
    let request = one(&spans, "tunnel-gateway", "request");
    assert_eq!(
        request
            .attributes
            .get("policy.refused_by")
            .map(String::as_str),
        Some("authz"),
        "{request:#?}"
    );
    assert_eq!(
        request
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("403")
    );
    assert!(
        request
            .attributes
            .get("refusal.reason")
            .is_some_and(|r| !r.is_empty()),
        "the plugin's reason is on the span: {request:#?}"
    );
    let authz = find(&spans, "tunnel-gateway", "policy plugin")
        .into_iter()
        .find(|s| s.attributes.get("plugin.name").map(String::as_str) == Some("authz"))
        .expect("authz span");
    assert_eq!(
        authz.attributes.get("policy.decision").map(String::as_str),
        Some("deny")
    );
    assert_eq!(
        authz
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("403")
    );
    assert!(
        find(&spans, "tunnel-gateway", "tunnel stream").is_empty(),
        "a refused request never enters the tunnel"
    );

    // A plugin failure names the plugin and its kind, with an error status.
    let failing = "1bf92f3577b34da6a3ce929d0e0e4736";
    let reply = caller
        .get("broken.test", "/")
        .header("traceparent", &format!("00-{failing}-b7ad6b7169203331-01"))
        .send()
        .await;
    assert_eq!(reply.status, 500);
    let spans = gateway_trace(&collector, "the failed plugin's span", failing).await;
    let plugin = one(&spans, "tunnel-gateway", "policy plugin");
    assert_eq!(
        plugin.attributes.get("policy.failure").map(String::as_str),
        Some("trap")
    );
    assert_eq!(plugin.status_code, "error");
    let request = one(&spans, "tunnel-gateway", "request");
    assert_eq!(
        request
            .attributes
            .get("policy.refused_by")
            .map(String::as_str),
        Some("faulty")
    );
    assert_eq!(
        request.status_code, "error",
        "a 500 marks the request span failed"
    );

    // A forwarded request with secrets in its query and Authorization.
    let forwarded = "2bf92f3577b34da6a3ce929d0e0e4736";
    let reply = caller
        .get("wiki.test", "/page?api_key=S3CR3T")
        .header(
            "traceparent",
            &format!("00-{forwarded}-b7ad6b7169203331-01"),
        )
        .header("authorization", "Bearer S3CR3T")
        .send()
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.echo().header("authorization"),
        Some("Bearer S3CR3T"),
        "the service still gets it"
    );
    collector
        .wait_for("the forwarded request's spans", EXPORT_WAIT, |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == forwarded && s.name == "response")
        })
        .await;

    // No span of either process, from any request, carries the caller's
    // token, the Authorization header or the query string; nor do logs.
    for span in collector.spans() {
        let status = ("status".to_string(), span.status_message.clone());
        for (k, v) in span.attributes.iter().chain([(&status.0, &status.1)]) {
            assert!(
                !v.contains(&token) && !v.contains("S3CR3T"),
                "{} span {} attribute {k} leaks a secret: {v}",
                span.service,
                span.name
            );
        }
    }
    for (who, logs) in [("gateway", gateway.logs()), ("agent", _agent.logs())] {
        assert!(
            !logs.contains(&token) && !logs.contains("S3CR3T"),
            "{who} logs leak a secret:\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_requests_succeed_without_waiting_and_lost_spans_are_counted() {
    // The gateway's collector accepts connections and never answers; the
    // agent's refuses them.
    let (hanging, _guard) = blackhole().await;
    let refused = closed_port().await;
    let settings = |endpoint: String| {
        format!(
            "[telemetry]\nendpoint = \"{endpoint}\"\nexport_interval = \"20ms\"\n\
             export_timeout = \"3s\"\nqueue_size = 32\nbatch_size = 8\n"
        )
    };
    let gateway = Gateway::start(
        GatewayOptions::new()
            .with_route(Route::new("wiki.test", "wiki").plugin("org-check", ""))
            .extra_config(&settings(format!("http://{hanging}"))),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let agent = Agent::connect(
        &gateway,
        &tunnel,
        wiki.addr(),
        AgentOptions::new().extra_config(&settings(format!("http://{refused}"))),
    )
    .await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    let mut conn = caller.keep_alive().await;

    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let started = Instant::now();
        let reply = conn.get("wiki.test", &format!("/n/{i}")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
    }
    // An export waits up to 3 s on the hanging collector; had any request
    // waited on it, it would have taken that long.
    assert!(
        slowest < Duration::from_secs(1),
        "a request waited on the collector: slowest took {slowest:?}"
    );
    assert_eq!(wiki.requests(), 300);

    // The gateway's queue (32 spans) filled while the export hung: the
    // rest were dropped and counted. The agent's exports failed and were
    // counted.
    let m = scrape::metrics(gateway.admin()).await;
    assert!(
        m.sum("tunnel_gateway_otel_spans_dropped_total", &[]) > 0.0,
        "dropped spans counted:\n{}",
        m.text
    );
    let agent_admin = agent.admin().await;
    tests::eventually(
        "the agent's failed exports counted",
        EXPORT_WAIT,
        || async {
            let m = scrape::metrics(agent_admin).await;
            if m.sum("tunnel_agent_otel_spans_failed_total", &[]) > 0.0 {
                Ok(())
            } else {
                Err(m.text)
            }
        },
    )
    .await;
}
