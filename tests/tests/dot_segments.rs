//! Story: route prefixes match the path as sent, so a path with dot
//! segments (`..`, `.`, literal or percent-encoded) could step outside its
//! route once the local service normalizes it. The gateway answers such a
//! path 400 and the service never sees it; ordinary dots in names pass.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::upstream::{self, Echo};
use tests::{wire, GatewayOptions, Route};

/// A raw GET, so no client library normalizes the path on the way.
fn get(token: &str, host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_with_dot_segments_get_400_and_reach_no_service() {
    let opts =
        GatewayOptions::new().with_route(Route::new("tools.test", "wiki").path_prefix("/api/"));
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let public = t.gateway.public_addr();
    let wait = Duration::from_secs(5);

    let cases = [
        ("wiki.test", "/api/../admin"),
        ("wiki.test", "/api/%2e%2e/admin"),
        ("wiki.test", "/api/%2E%2E/admin"),
        ("wiki.test", "/api/..%2Fadmin"),
        ("wiki.test", "/a/./b"),
        // Under a prefix route: what would escape `/api/` after normalizing.
        ("tools.test", "/api/../admin"),
        ("tools.test", "/api/%2e%2e/admin"),
        ("tools.test", "/api/..%2Fadmin"),
    ];
    let mut failures = Vec::new();
    for (host, path) in cases {
        let reply = wire::exchange(public, &get(&t.token, host, path), wait).await;
        if reply.status() != Some(400) {
            failures.push(format!(
                "{host} {path}: expected 400, got status {:?}:\n{}",
                reply.status(),
                reply.text().lines().take(12).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} paths were not refused:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    assert_eq!(
        t.wiki.requests(),
        0,
        "a path with dot segments reached the local service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dots_inside_names_pass_untouched() {
    let t = WikiTunnel::start().await;
    let public = t.gateway.public_addr();
    let paths = [
        "/file.tar.gz",
        "/p/a%3Bb",
        "/.well-known/security.txt",
        "/a/..b/c",
    ];
    for path in paths {
        let reply = wire::exchange(
            public,
            &get(&t.token, "wiki.test", path),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(reply.status(), Some(200), "{path}: {}", reply.text());
        let echo: Echo = serde_json::from_str(reply.body_text().trim())
            .unwrap_or_else(|e| panic!("{path}: not an echo answer ({e}): {}", reply.text()));
        assert_eq!(echo.target, path, "the path reached the service changed");
    }
    assert_eq!(t.wiki.requests(), paths.len() as u64);
}
