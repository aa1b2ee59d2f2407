//! Security story: the `Host` a caller sends is judged before anything is
//! routed or forwarded. A value with userinfo, a comma, a non-numeric or
//! out-of-range port, or any character outside a host name or IP literal
//! is 400: `Host: attacker.example,x@wiki.test` would otherwise route to
//! the wiki and then reach it in `X-Forwarded-Host`, where a framework
//! reading the first value builds password-reset links to the attacker.
//! The forwarding headers carry the judged host, never the raw value.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::upstream::Echo;
use tests::wire;

fn get(token: &str, host: &str) -> Vec<u8> {
    format!(
        "GET /page HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_userinfo_a_list_or_a_bad_port_is_refused_and_never_forwarded() {
    let t = WikiTunnel::start().await;
    let addr = t.gateway.public_addr();
    let attacks = [
        "attacker.example,x@wiki.test",
        "x@wiki.test",
        "wiki.test:1,attacker.example",
        "wiki.test,attacker.example",
        "wiki.test:x",
        "wiki.test:",
        "wiki.test:0",
        "wiki.test:65536",
        "wiki.test:80:80",
        "wiki.test/admin",
        "[::1",
    ];
    let mut wrong = Vec::new();
    for host in attacks {
        let reply = wire::exchange(addr, &get(&t.token, host), WAIT).await;
        if reply.status() != Some(400) || !reply.closed {
            wrong.push(format!(
                "Host: {host}: expected 400 and a closed connection, got {:?}: {}",
                reply.status(),
                reply.text().lines().last().unwrap_or_default()
            ));
        }
    }
    assert!(wrong.is_empty(), "not refused:\n{}", wrong.join("\n"));
    assert_eq!(t.wiki.requests(), 0, "a bad Host reached the wiki");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_carry_the_judged_host() {
    let t = WikiTunnel::start().await;
    let addr = t.gateway.public_addr();
    for (sent, forwarded) in [
        ("WIKI.test:8080", "wiki.test:8080"),
        ("wiki.test.", "wiki.test"),
        ("wiki.test", "wiki.test"),
    ] {
        let reply = wire::exchange(addr, &get(&t.token, sent), WAIT).await;
        assert_eq!(reply.status(), Some(200), "{sent}: {}", reply.text());
        let echo: Echo = serde_json::from_str(reply.body_text().trim()).unwrap();
        assert_eq!(echo.all("x-forwarded-host"), vec![forwarded], "{sent}");
        let fwd = echo.header("forwarded").expect("Forwarded is set");
        assert!(
            fwd.ends_with(&format!("host=\"{forwarded}\"")),
            "{sent}: Forwarded: {fwd}"
        );
        // The Host header itself reaches the service as sent (signatures
        // may cover it); it was judged valid.
        assert_eq!(echo.header("host"), Some(sent));
    }
}
