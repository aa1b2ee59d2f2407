//! Story: before opening a ticket, the person on the on-prem host runs
//! `agent check --config agent.toml`. Each step of a connection gets a line,
//! `OK`, `FAIL <exact reason>` or `SKIP` when it depends on a failed one; the
//! exit code is non-zero on any failure. The handshake is the real key
//! proof, and the check leaves without ever serving.

use tests::agent::{check, CheckOutput, Prepared};
use tests::connect_proxy::ConnectProxy;
use tests::pki::Pki;
use tests::upstream::{self, closed_port, impostor, Upstream};
use tests::{AgentOptions, Gateway, GatewayOptions, Tunnel};

struct Site {
    gateway: Gateway,
    tunnel: Tunnel,
    wiki: Upstream,
}

async fn site() -> Site {
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let wiki = upstream::echo("wiki").await;
    Site {
        gateway,
        tunnel,
        wiki,
    }
}

impl Site {
    async fn prepare(&self, opts: AgentOptions) -> Prepared {
        Prepared::new(&self.gateway, &self.tunnel, self.wiki.addr(), opts).await
    }

    fn gateway_target(&self) -> String {
        format!("localhost:{}", self.gateway.agents_addr().port())
    }
}

/// Asserts the exit code and that the line about `what` starts with `verdict`
/// and contains every one of `says`.
fn expect(out: &CheckOutput, code: i32, lines: &[(&str, &str, &[&str])]) {
    assert_eq!(out.code, Some(code), "{out}");
    for (verdict, what, says) in lines {
        let line = out.line(what);
        assert!(line.starts_with(verdict), "{verdict} {what}:\n{out}");
        for s in *says {
            assert!(line.contains(s), "{what} should say {s:?}:\n{out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_passes_every_step_of_a_working_setup_directly_or_through_a_proxy_and_never_serves(
) {
    let site = site().await;
    let agent = site.prepare(AgentOptions::new()).await;
    let out = agent.check().await;
    let config = agent.config_path().display().to_string();
    let target = site.gateway_target();
    let accepted = format!(
        "handshake accepted: tunnel {} (wiki) as agent {}",
        site.tunnel.id,
        agent.name()
    );
    expect(
        &out,
        0,
        &[
            ("OK", &format!("config {config}"), &[]),
            ("OK", "tunnel key", &["decrypts"]),
            (
                "OK",
                &format!("local service {}", site.wiki.addr()),
                &["accepts connections"],
            ),
            ("OK", &format!("gateway {target} directly"), &["reachable"]),
            ("OK", "TLS certificate valid for localhost", &[]),
            ("OK", &accepted, &[]),
        ],
    );
    assert_eq!(out.stdout.lines().count(), 6, "{out}");

    // Through a proxy: the line says which, and the proxy carried it.
    let proxy = ConnectProxy::start().await;
    let through = site
        .prepare(AgentOptions::new().proxy(&proxy.url(None)))
        .await;
    let out = through.check().await;
    expect(
        &out,
        0,
        &[
            (
                "OK",
                &format!(
                    "gateway {target} through proxy {} (from gateway.proxy)",
                    proxy.url(None)
                ),
                &["reachable"],
            ),
            ("OK", "handshake accepted", &[]),
        ],
    );
    assert_eq!(proxy.seen().len(), 1, "{:?}", proxy.seen());

    // Checked, never served: the gateway did not add either as an agent.
    let served = site
        .gateway
        .events()
        .snapshot()
        .into_iter()
        .any(|e| e["event"] == "agent_connected");
    assert!(!served, "{}", site.gateway.events().dump());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_the_bad_config_field_and_skips_every_later_step() {
    let site = site().await;
    let agent = site.prepare(AgentOptions::new()).await;
    let path = agent.config_path();
    let text = std::fs::read_to_string(path).unwrap();
    for (broken, says) in [
        (text.replace("wss://", "ws://"), "gateway.url"),
        (text.replace("[local]\n", "[local]\nbogus = 1\n"), "bogus"),
        (
            text.replace(
                "[tunnel]\n",
                "proxy = \"socks5://bob:hunter2@127.0.0.1:1080\"\n[tunnel]\n",
            ),
            "invalid config field `gateway.proxy`: proxy scheme `socks5` is not supported",
        ),
    ] {
        std::fs::write(path, broken).unwrap();
        let out = check(path, &AgentOptions::new()).await;
        expect(&out, 1, &[("FAIL", "config", &[says])]);
        assert!(!out.stdout.contains("hunter2"), "{out}");
        let skipped = out.stdout.lines().filter(|l| l.starts_with("SKIP")).count();
        assert_eq!(skipped, 5, "every later step is skipped:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_a_missing_key_and_a_key_the_gateway_refuses() {
    let site = site().await;
    let agent = site.prepare(AgentOptions::new()).await;
    let key_file = agent.config_path().with_file_name("agent.key");
    std::fs::remove_file(&key_file).unwrap();
    let out = agent.check().await;
    expect(
        &out,
        1,
        &[
            (
                "FAIL",
                &format!("tunnel key {}", key_file.display()),
                &["missing", "agent key set"],
            ),
            ("OK", "gateway", &["reachable"]),
            ("OK", "TLS certificate", &[]),
            ("SKIP", "handshake", &["no usable tunnel key"]),
        ],
    );

    let other = site.gateway.create_tunnel("acme", "other").await;
    let wrong = Tunnel {
        key: other.key.clone(),
        ..site.tunnel.clone()
    };
    let agent = Prepared::new(&site.gateway, &wrong, site.wiki.addr(), AgentOptions::new()).await;
    let out = agent.check().await;
    expect(
        &out,
        1,
        &[
            ("OK", "tunnel key", &["decrypts"]),
            (
                "FAIL",
                "handshake",
                &["the gateway refused this agent", "agent key set"],
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_a_local_service_that_is_down() {
    let site = site().await;
    let down = closed_port().await;
    let agent = Prepared::new(&site.gateway, &site.tunnel, down, AgentOptions::new()).await;
    let out = agent.check().await;
    expect(
        &out,
        1,
        &[
            (
                "FAIL",
                &format!("local service {down}"),
                &["Connection refused"],
            ),
            ("OK", "handshake accepted", &[]),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_an_unreachable_gateway_and_a_certificate_for_another_name() {
    let site = site().await;
    let port = closed_port().await.port();
    let nowhere = site
        .prepare(AgentOptions::new().url(&format!("wss://localhost:{port}/_tunnel/v1")))
        .await;
    let out = nowhere.check().await;
    expect(
        &out,
        1,
        &[
            (
                "FAIL",
                &format!("gateway localhost:{port} directly"),
                &[&format!("cannot connect to localhost:{port}"), "refused"],
            ),
            ("SKIP", "TLS certificate", &["not reachable"]),
            ("SKIP", "handshake", &["not reachable"]),
        ],
    );

    let pki = Pki::generate();
    let fake = impostor(&pki.wrong_hostname()).await;
    let impostor_agent = site
        .prepare(AgentOptions::new().url(&fake.url()).ca_file(&pki.ca_file))
        .await;
    let out = impostor_agent.check().await;
    expect(
        &out,
        1,
        &[
            ("OK", "gateway", &["reachable"]),
            (
                "FAIL",
                "TLS certificate valid for localhost",
                &[
                    "certificate not valid for name \"localhost\"",
                    "wrong.example",
                ],
            ),
            ("SKIP", "handshake", &["no trusted TLS connection"]),
        ],
    );
    assert_eq!(
        fake.stats().app_bytes.get(),
        0,
        "nothing sent to an impostor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_check_names_a_refusing_proxy_with_its_status_line() {
    let site = site().await;
    let target = site.gateway_target();
    let proxy = ConnectProxy::start().await;
    proxy.refuse(403, "Forbidden");
    let agent = site
        .prepare(AgentOptions::new().proxy(&proxy.url(None)))
        .await;
    let out = agent.check().await;
    let url = proxy.url(None);
    expect(
        &out,
        1,
        &[
            (
                "FAIL",
                &format!("gateway {target} through proxy {url} (from gateway.proxy)"),
                &[&format!(
                    "proxy {url} refused CONNECT {target}: `HTTP/1.1 403 Forbidden`"
                )],
            ),
            ("SKIP", "TLS certificate", &[]),
            ("SKIP", "handshake", &[]),
        ],
    );

    // From the environment, wanting credentials it was not given.
    proxy.stop_refusing();
    proxy.require_credentials("alice:pw");
    let from_env = site
        .prepare(AgentOptions::new().env("HTTPS_PROXY", &url))
        .await;
    let out = from_env.check().await;
    expect(
        &out,
        1,
        &[(
            "FAIL",
            &format!("through proxy {url} (from HTTPS_PROXY)"),
            &["407", "proxy requires authentication"],
        )],
    );
}
