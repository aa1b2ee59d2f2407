//! Story: request smuggling attempts, malformed framing and an absolute
//! target naming another host than `Host` are answered 400 and the
//! connection is closed; none of them reaches the local service.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::wire;

/// A request to the wiki with the caller's token and extra header lines.
fn request(token: &str, method: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} /smuggle HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {token}\r\n{headers}\r\n{body}"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_get_400_and_a_closed_connection() {
    let t = WikiTunnel::start().await;
    let public = t.gateway.public_addr();
    let wait = Duration::from_secs(5);

    // The same raw client gets through with a well-formed request.
    let fine = request(
        &t.token,
        "POST",
        "Content-Length: 4\r\nConnection: close\r\n",
        "abcd",
    );
    let reply = wire::exchange(public, &fine, wait).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert_eq!(t.wiki.requests(), 1);

    let smuggled_get = "GET /admin HTTP/1.1\r\nHost: wiki.test\r\n\r\n";
    let chunked_with_smuggle = format!("0\r\n\r\n{smuggled_get}");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "Content-Length with Transfer-Encoding",
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n".into(),
            chunked_with_smuggle.clone(),
        ),
        (
            "Transfer-Encoding other than chunked",
            "Transfer-Encoding: gzip\r\n".into(),
            "abcd".into(),
        ),
        (
            "Transfer-Encoding chunked then identity",
            "Transfer-Encoding: chunked, identity\r\n".into(),
            chunked_with_smuggle.clone(),
        ),
        (
            "repeated Transfer-Encoding",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n".into(),
            chunked_with_smuggle.clone(),
        ),
        (
            "obfuscated Transfer-Encoding",
            "Transfer-Encoding : chunked\r\n".into(),
            chunked_with_smuggle.clone(),
        ),
        (
            "non-numeric Content-Length",
            "Content-Length: abc\r\n".into(),
            "abcd".into(),
        ),
        (
            "negative Content-Length",
            "Content-Length: -4\r\n".into(),
            "abcd".into(),
        ),
        (
            "Content-Length list",
            "Content-Length: 4, 5\r\n".into(),
            "abcd".into(),
        ),
        (
            "repeated Content-Length",
            "Content-Length: 4\r\nContent-Length: 5\r\n".into(),
            "abcde".into(),
        ),
        (
            "two Host headers",
            "Host: evil.test\r\nContent-Length: 0\r\n".into(),
            String::new(),
        ),
    ];

    let mut failures = Vec::new();
    for (name, headers, body) in &cases {
        let reply = wire::exchange(public, &request(&t.token, "POST", headers, body), wait).await;
        if reply.status() != Some(400) || !reply.closed {
            failures.push(format!(
                "{name}: expected 400 and a closed connection, got status {:?}, closed={}:\n{}",
                reply.status(),
                reply.closed,
                reply.text().lines().take(12).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    assert_eq!(
        t.wiki.requests(),
        1,
        "a malformed request reached the local service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_naming_another_host_gets_400() {
    let t = WikiTunnel::start().await;
    let public = t.gateway.public_addr();
    let wait = Duration::from_secs(5);
    let absolute = |url: &str, close: &str| {
        format!(
            "GET {url} HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {}\r\n{close}\r\n",
            t.token
        )
    };

    // The authority says one host, Host another: which one is routed, which
    // one the service believes? Neither: refused.
    let reply = wire::exchange(
        public,
        absolute("http://other.internal/x", "").as_bytes(),
        wait,
    )
    .await;
    assert!(
        reply.status() == Some(400) && reply.closed,
        "expected 400 and a closed connection, got status {:?}, closed={}:\n{}",
        reply.status(),
        reply.closed,
        reply.text()
    );
    assert_eq!(
        t.wiki.requests(),
        0,
        "a request with a disagreeing authority reached the local service"
    );

    // An absolute target that agrees with Host is an ordinary request.
    let reply = wire::exchange(
        public,
        absolute("http://wiki.test/x", "Connection: close\r\n").as_bytes(),
        wait,
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert_eq!(t.wiki.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_other_than_a_path_or_url_get_400_and_absolute_urls_go_as_paths() {
    // Routing, the path checks and the plugins judge the request target: it
    // must be the one that is forwarded. `x:/admin` would be judged as `/`
    // by a parser and served as `/admin` by another.
    let t =
        WikiTunnel::start_with(tests::GatewayOptions::new(), tests::upstream::raw().await).await;
    let public = t.gateway.public_addr();
    let wait = Duration::from_secs(5);
    let request = |target: &str| {
        format!(
            "GET {target} HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
            t.token
        )
    };
    for target in ["x:/admin", "*", "foo:bar://wiki.test/admin", "admin"] {
        let reply = wire::exchange(public, request(target).as_bytes(), wait).await;
        assert_eq!(
            reply.status(),
            Some(400),
            "target {target:?}: {}",
            reply.text()
        );
    }
    assert_eq!(t.wiki.requests(), 0, "an odd target reached the service");

    // An absolute URL naming the routed host reaches the service as the
    // path it judged.
    let reply = wire::exchange(public, request("http://wiki.test/a/b?c=d").as_bytes(), wait).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    let heads = t.wiki.raw_heads();
    let head = String::from_utf8_lossy(heads.last().expect("a request head"));
    assert!(head.starts_with("GET /a/b?c=d HTTP/1.1\r\n"), "{head}");
}
