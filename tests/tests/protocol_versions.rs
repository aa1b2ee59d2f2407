//! Story: the gateway is upgraded before its agents. An agent still
//! speaking protocol 1 (every caller connection one `CONNECT` stream) keeps
//! serving, with byte-exact requests and bodies both ways, and the admin
//! API shows which agents still speak it; an agent set to a version nobody
//! speaks stops at start with the field named.

use tests::admin::Operator;
use tests::setup::WikiTunnel;
use tests::{bin_path, upstream, wire, Agent, AgentOptions, Gateway, GatewayOptions, PATIENCE};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_speaking_protocol_1_keeps_serving_after_the_gateway_upgrade() {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::raw().await;
    let _old = Agent::connect(
        &gateway,
        &tunnel,
        wiki.addr(),
        AgentOptions::new()
            .name("old-node")
            .env("AGENT__GATEWAY__PROTOCOL_VERSION", "1"),
    )
    .await;
    let token = gateway.create_caller("acme").await;

    let agents = gateway
        .api(&gateway.admin_token("read").await)
        .get("/v1/agents")
        .await
        .expect(200, "agents");
    let listed = agents.json.as_array().cloned().unwrap_or_default();
    let old = listed
        .iter()
        .find(|a| a["agent"] == "old-node")
        .unwrap_or_else(|| panic!("old-node not listed: {agents:?}"));
    assert_eq!(old["protocol"], 1, "{old}");

    // A GET and a POST with a body (the service reads it by its
    // Content-Length before answering): both reach the service as sent.
    let body = "a=1&b=%20";
    let requests = [
        format!(
            "GET /p?q=%zz&a=1 HTTP/1.1\r\nHost: wiki.test\r\nX-Request-ID: 7\r\n\
             Proxy-Authorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST /form HTTP/1.1\r\nHost: wiki.test\r\nContent-Length: {}\r\n\
             Proxy-Authorization: Bearer {token}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    ];
    for request in &requests {
        let reply = wire::exchange(
            gateway.public_addr(),
            request.as_bytes(),
            std::time::Duration::from_secs(10),
        )
        .await;
        assert_eq!(reply.status(), Some(200), "{}", reply.text());
    }
    let heads = wiki.raw_heads();
    assert_eq!(heads.len(), 2);
    let first = String::from_utf8_lossy(&heads[0]).into_owned();
    assert!(
        first.starts_with("GET /p?q=%zz&a=1 HTTP/1.1\r\n")
            && first.contains("\r\nX-Request-ID: 7\r\n"),
        "the GET as the service saw it:\n{first}"
    );
    let second = String::from_utf8_lossy(&heads[1]).into_owned();
    assert!(
        second.starts_with("POST /form HTTP/1.1\r\n"),
        "the POST as the service saw it:\n{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_set_to_an_unknown_protocol_version_stops_naming_the_field() {
    let t = WikiTunnel::start().await;
    let run = Command::new(bin_path("agent"))
        .args(["run", "--config"])
        .arg(t.agent.config_path())
        .env("AGENT__GATEWAY__PROTOCOL_VERSION", "3")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("an agent with an unknown protocol version exits at once")
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started:\n{stderr}");
    assert!(
        stderr.contains("gateway.protocol_version"),
        "stderr should name gateway.protocol_version:\n{stderr}"
    );
}
