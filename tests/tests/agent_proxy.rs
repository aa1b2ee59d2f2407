//! Story: the on-prem network's only way out is an HTTP forward proxy. The
//! agent reaches the gateway through it with one CONNECT, TLS and the key
//! proof end to end; with credentials when the proxy wants them (never
//! shown); a proxy that refuses is named with its status and retried with
//! backoff; `HTTPS_PROXY`/`NO_PROXY` work as with curl.

use std::time::Duration;

use serde_json::Value;
use tests::connect_proxy::{ConnectProxy, Seen};
use tests::upstream::{self, Upstream};
use tests::{Agent, AgentOptions, Caller, Gateway, GatewayOptions, Tunnel, PATIENCE};

struct Site {
    gateway: Gateway,
    tunnel: Tunnel,
    wiki: Upstream,
    caller: Caller,
}

async fn site() -> Site {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    Site {
        gateway,
        tunnel,
        wiki,
        caller,
    }
}

/// The CONNECTs that asked for the gateway's agent listener.
fn connects_to_gateway(proxy: &ConnectProxy, gateway: &Gateway) -> Vec<Seen> {
    let target = format!("localhost:{}", gateway.agents_addr().port());
    proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "CONNECT" && s.target == target)
        .collect()
}

/// Waits for `n` `connect_failed` events and returns them.
async fn failures(agent: &Agent, n: usize) -> Vec<Value> {
    agent
        .events()
        .wait_until(
            &format!("{n} connect_failed events"),
            |events| {
                let failed: Vec<Value> = events
                    .iter()
                    .filter(|e| e["event"] == "connect_failed")
                    .cloned()
                    .collect();
                (failed.len() >= n).then_some(failed)
            },
            PATIENCE,
        )
        .await
}

fn connected_events(agent: &Agent) -> Vec<Value> {
    agent
        .events()
        .snapshot()
        .into_iter()
        .filter(|e| e["event"] == "connected")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_a_connect_proxy_serves_callers_and_the_proxy_sees_only_tls() {
    let site = site().await;
    let proxy = ConnectProxy::start().await;
    let opts = AgentOptions::new().proxy(&proxy.url(None));
    let agent = Agent::connect(&site.gateway, &site.tunnel, site.wiki.addr(), opts).await;

    for _ in 0..3 {
        let reply = site
            .caller
            .get("wiki.test", "/through/the/proxy")
            .send()
            .await;
        assert_eq!(reply.status, 200, "{}", agent.logs());
        assert_eq!(reply.echo().target, "/through/the/proxy");
    }
    let connected = &connected_events(&agent)[0];
    assert_eq!(connected["proxy"], proxy.url(None).as_str(), "{connected}");

    let seen = proxy.seen();
    assert_eq!(seen.len(), 1, "exactly one CONNECT: {seen:?}");
    let tunnel = &seen[0];
    assert_eq!(
        (tunnel.method.as_str(), tunnel.target.as_str()),
        (
            "CONNECT",
            format!("localhost:{}", site.gateway.agents_addr().port()).as_str()
        ),
        "the agent asks for the gateway's name and port (TLS checks that name)"
    );
    assert_eq!(tunnel.credentials, None);
    // Record type 22 (handshake), version 3.x, then after the 2-byte
    // length the handshake type 1: ClientHello.
    assert_eq!(
        (tunnel.first_bytes.get(..2), tunnel.first_bytes.get(5)),
        (Some(&[0x16, 0x03][..]), Some(&0x01)),
        "the first bytes through the tunnel are a TLS ClientHello: {:02x?}",
        tunnel.first_bytes
    );
    let plain = String::from_utf8_lossy(&tunnel.first_bytes).to_lowercase();
    assert!(
        !plain.contains("upgrade") && !plain.contains(&site.tunnel.id.to_lowercase()),
        "plaintext crossed the proxy: {plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_get_through_and_refused_ones_are_named_without_the_password_and_retried()
{
    let site = site().await;
    let proxy = ConnectProxy::start().await;
    proxy.require_credentials("alice:s3cr@t:pw");

    // The right credentials, percent-encoded in the URL as in any URL.
    let good = AgentOptions::new().proxy(&proxy.url(Some("alice:s3cr%40t%3Apw")));
    let agent = Agent::connect(&site.gateway, &site.tunnel, site.wiki.addr(), good).await;
    assert_eq!(site.caller.get("wiki.test", "/").send().await.status, 200);
    let sent: Vec<_> = connects_to_gateway(&proxy, &site.gateway)
        .into_iter()
        .map(|s| (s.status, s.credentials))
        .collect();
    assert_eq!(sent, [(200, Some("alice:s3cr@t:pw".to_string()))]);
    drop(agent);

    // Wrong ones: a clear, retried failure that never shows the password.
    let password = "Wr0ngPassw0rd";
    let wrong = AgentOptions::new().proxy(&proxy.url(Some(&format!("alice:{password}"))));
    let agent = Agent::start(&site.gateway, &site.tunnel, site.wiki.addr(), wrong).await;
    let failed = failures(&agent, 3).await;
    for f in &failed {
        let reason = f["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("407") && reason.contains("proxy refused the credentials"),
            "{f}"
        );
        assert!(reason.contains(&proxy.url(None)), "names the proxy: {f}");
    }
    assert!(connected_events(&agent).is_empty());
    for (what, text) in [("events", agent.events().dump()), ("logs", agent.logs())] {
        assert!(
            !text.contains(password) && !text.contains("alice"),
            "the credentials leaked into the agent's {what}:\n{text}"
        );
    }

    let metrics = tests::scrape::metrics(agent.admin().await).await;
    assert!(
        metrics.sum(
            "tunnel_agent_gateway_connect_failures_total",
            &[("reason", "proxy_auth")]
        ) >= 1.0,
        "{}",
        metrics.text
    );

    // The proxy's administrator accepts these credentials: the agent, still
    // retrying, gets through.
    proxy.require_credentials(&format!("alice:{password}"));
    agent.wait_connected().await;
    assert_eq!(site.caller.get("wiki.test", "/").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_proxy_is_named_with_its_status_line_and_retried_until_it_lets_the_agent_out() {
    let site = site().await;
    let proxy = ConnectProxy::start().await;
    proxy.refuse(403, "Forbidden");
    let opts = AgentOptions::new().proxy(&proxy.url(None));
    let agent = Agent::start(&site.gateway, &site.tunnel, site.wiki.addr(), opts).await;

    let failed = failures(&agent, 3).await;
    let reason = failed[0]["reason"].as_str().unwrap_or_default();
    let target = format!("localhost:{}", site.gateway.agents_addr().port());
    assert!(
        reason.contains(&format!(
            "proxy {} refused CONNECT {target}: `HTTP/1.1 403 Forbidden`",
            proxy.url(None)
        )),
        "{reason}"
    );
    let refused = connects_to_gateway(&proxy, &site.gateway);
    assert!(
        refused.len() >= 3 && refused.iter().all(|s| s.status == 403),
        "one CONNECT per attempt: {refused:?}"
    );
    assert!(connected_events(&agent).is_empty());

    // The counter by reason, as the agent's admin listener serves it.
    let metrics = tests::scrape::metrics(agent.admin().await).await;
    assert!(
        metrics.sum(
            "tunnel_agent_gateway_connect_failures_total",
            &[("reason", "proxy")]
        ) >= 1.0,
        "{}",
        metrics.text
    );

    proxy.stop_refusing();
    agent.wait_connected().await;
    assert_eq!(site.caller.get("wiki.test", "/").send().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_is_used_unless_no_proxy_names_the_gateway_or_the_config_says_none(
) {
    let site = site().await;
    let proxy = ConnectProxy::start().await;
    let url = proxy.url(None);

    // HTTPS_PROXY alone: through the proxy.
    let env = AgentOptions::new().env("HTTPS_PROXY", &url);
    let agent = Agent::connect(&site.gateway, &site.tunnel, site.wiki.addr(), env).await;
    assert_eq!(connected_events(&agent)[0]["proxy"], url.as_str());
    assert_eq!(connects_to_gateway(&proxy, &site.gateway).len(), 1);
    drop(agent);

    // NO_PROXY naming the gateway's host (curl's list syntax): direct.
    let bypass = AgentOptions::new()
        .env("https_proxy", &url)
        .env("NO_PROXY", "intranet.example, .corp, localhost");
    let agent = Agent::connect(&site.gateway, &site.tunnel, site.wiki.addr(), bypass).await;
    assert_eq!(connected_events(&agent)[0]["proxy"], Value::Null);
    drop(agent);

    // `proxy = "none"` in the config: the environment is ignored.
    let none = AgentOptions::new().env("HTTPS_PROXY", &url).proxy("none");
    let agent = Agent::connect(&site.gateway, &site.tunnel, site.wiki.addr(), none).await;
    assert_eq!(connected_events(&agent)[0]["proxy"], Value::Null);
    assert_eq!(site.caller.get("wiki.test", "/").send().await.status, 200);
    assert_eq!(
        connects_to_gateway(&proxy, &site.gateway).len(),
        1,
        "only the first agent went through the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_never_answers_costs_one_connect_timeout_per_attempt_and_is_named() {
    let site = site().await;
    let proxy = ConnectProxy::start().await;
    proxy.go_silent();
    let opts = AgentOptions::new()
        .proxy(&proxy.url(None))
        .connect_timeout(Duration::from_secs(1));
    let agent = Agent::start(&site.gateway, &site.tunnel, site.wiki.addr(), opts).await;
    let failed = failures(&agent, 2).await;
    let reason = failed[0]["reason"].as_str().unwrap_or_default();
    assert_eq!(
        reason,
        format!("timed out after 1s (through proxy {})", proxy.url(None)),
        "{}",
        agent.events().dump()
    );
    let unanswered = proxy.seen().iter().filter(|s| s.status == 0).count();
    assert!(unanswered >= 2, "{:?}", proxy.seen());
}

/// (`gateway.proxy` is checked with the rest of the config: agent_check.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_variable_the_agent_cannot_use_stops_the_start_naming_it_without_its_credentials() {
    let site = site().await;
    let opts = AgentOptions::new().env("HTTPS_PROXY", "socks5://bob:hunter2@127.0.0.1:1080");
    let mut agent = Agent::start(&site.gateway, &site.tunnel, site.wiki.addr(), opts).await;
    let status = agent.wait_exit().await;
    let logs = agent.logs();
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(
        logs.contains("environment variable HTTPS_PROXY")
            && logs.contains("proxy scheme `socks5` is not supported: only http://"),
        "{logs}"
    );
    assert!(!logs.contains("hunter2"), "{logs}");
}
