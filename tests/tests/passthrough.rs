//! Story: an OAuth 1.0a-signed request keeps its signature valid: the
//! request line, query string, Host and Authorization reach the on-prem
//! service byte for byte, while the gateway owns the forwarding headers.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::{upstream, wire, GatewayOptions};

const TARGET: &str = "/p/a%3Bb%2c%7E?q=%20+%2B&&a=1&a=2&empty=&=v";
const OAUTH: &str = "OAuth oauth_consumer_key=\"jira-cloud\", oauth_nonce=\"kllo9940pd9333jh\", \
     oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"1191242096\", \
     oauth_token=\"nnch734d00sl2jdk\", oauth_version=\"1.0\", oauth_signature=\"a%2Bb%3D\"";

/// The header lines of a raw head, as (name, value) with the value untrimmed
/// except for the single space after the colon.
fn header_lines(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            (
                name.to_ascii_lowercase(),
                value.strip_prefix(' ').unwrap_or(value).to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signed_parts_of_a_request_arrive_byte_for_byte() {
    let t = WikiTunnel::start_with(GatewayOptions::new(), upstream::raw().await).await;
    let request = format!(
        "GET {TARGET} HTTP/1.1\r\nHost: wiki.test\r\nAuthorization: {OAUTH}\r\n\
         Proxy-Authorization: Bearer {}\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n",
        t.token
    );
    let reply = wire::exchange(
        t.gateway.public_addr(),
        request.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());

    let heads = t.wiki.raw_heads();
    assert_eq!(heads.len(), 1, "one request reaches the service");
    let head = String::from_utf8(heads[0].clone()).expect("UTF-8 head");
    let request_line = head.split("\r\n").next().unwrap();
    assert_eq!(
        request_line,
        format!("GET {TARGET} HTTP/1.1"),
        "request line changed:\n{head}"
    );

    let headers = header_lines(&head);
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("host"), ["wiki.test"], "{head}");
    assert_eq!(
        values("authorization"),
        [OAUTH],
        "Authorization changed:\n{head}"
    );
    assert!(
        values("proxy-authorization").is_empty(),
        "caller token forwarded:\n{head}"
    );
    assert_eq!(values("x-forwarded-for"), ["127.0.0.1"], "{head}");
}

/// The header names of a raw head as written, in order.
fn names_as_written(head: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_case_and_order_both_ways_and_odd_targets_arrive_as_sent() {
    // HTTP/2 inside the tunnel writes names in lower case; what the caller
    // and the service wrote must still be what the other side sees.
    let t = WikiTunnel::start_with(GatewayOptions::new(), upstream::raw().await).await;
    // A target with what normalising code likes to touch: an escaped
    // space, a broken escape, `+`, an empty pair and every sub-delimiter.
    let target: &[u8] = b"/wiki/A~b/x%20y?q=%zz&r=a+b&s=%E2%82%AC&&t=/?:@!$'()*,;=";
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: wiki.test\r\nX-Request-ID: 7\r\nx-lower: a\r\n\
             X-MiXeD-Case: b\r\nProxy-Authorization: Bearer {}\r\nSOAPAction: \"urn:x\"\r\n\
             Connection: close\r\n\r\n",
            t.token
        )
        .as_bytes(),
    );
    let reply = wire::exchange(t.gateway.public_addr(), &request, Duration::from_secs(10)).await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());

    let heads = t.wiki.raw_heads();
    assert_eq!(heads.len(), 1, "one request reaches the service");
    let head = &heads[0];
    let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap();
    let mut expected_line = b"GET ".to_vec();
    expected_line.extend_from_slice(target);
    expected_line.extend_from_slice(b" HTTP/1.1");
    assert_eq!(
        String::from_utf8_lossy(&head[..line_end]),
        String::from_utf8_lossy(&expected_line),
        "request line changed"
    );
    let sent = names_as_written(head);
    let callers: Vec<&str> = sent
        .iter()
        .map(String::as_str)
        .filter(|n| {
            [
                "Host",
                "X-Request-ID",
                "x-lower",
                "X-MiXeD-Case",
                "SOAPAction",
            ]
            .contains(n)
        })
        .collect();
    assert_eq!(
        callers,
        [
            "Host",
            "X-Request-ID",
            "x-lower",
            "X-MiXeD-Case",
            "SOAPAction"
        ],
        "names as the service saw them: {sent:?}"
    );

    // And back: the service's names reach the caller as it wrote them.
    let got = names_as_written(&reply.bytes);
    for name in ["X-Answered-By", "X-lower-Then-UPPER"] {
        assert!(
            got.iter().any(|n| n == name),
            "{name} not as the service wrote it: {got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_steer_the_agent_with_the_tunnels_own_header_names() {
    // The tunnel's protocol carries a request's target, its names' case
    // and its caller's pool beside HTTP/2 under names of its own; a caller
    // sending those names must change nothing the service sees.
    let t = WikiTunnel::start_with(GatewayOptions::new(), upstream::raw().await).await;
    let request = format!(
        "GET /public/page HTTP/1.1\r\nHost: wiki.test\r\n\
         tunnel-target: /admin/delete-everything\r\n\
         tunnel-header-names: HOST,TUNNEL-TARGET,X\r\ntunnel-pool: 1\r\n\
         tunnel-local-error: refused\r\n\
         Proxy-Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
        t.token
    );
    let reply = wire::exchange(
        t.gateway.public_addr(),
        request.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    let heads = t.wiki.raw_heads();
    assert_eq!(heads.len(), 1);
    let head = String::from_utf8_lossy(&heads[0]).into_owned();
    assert!(
        head.starts_with("GET /public/page HTTP/1.1\r\n"),
        "the service was asked for another target:\n{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("\r\ntunnel-"),
        "the tunnel's own names reached the service:\n{head}"
    );
    assert!(head.contains("\r\nHost: wiki.test\r\n"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_forwarding_headers_belong_to_the_gateway() {
    let t = WikiTunnel::start().await;
    let echo = t
        .caller
        .get("wiki.test", "/whoami")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.test")
        .header("forwarded", "for=6.6.6.6;host=evil.test")
        .header("x-application", "kept")
        .send()
        .await
        .echo();

    for gone in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert_eq!(
            echo.header(gone),
            None,
            "{gone} should not be forwarded: {echo:?}"
        );
    }
    assert_eq!(echo.all("x-forwarded-for"), ["127.0.0.1"], "{echo:?}");
    assert_eq!(echo.all("x-forwarded-proto"), ["http"], "{echo:?}");
    assert_eq!(echo.all("x-forwarded-host"), ["wiki.test"], "{echo:?}");
    let forwarded = echo.all("forwarded");
    assert_eq!(forwarded.len(), 1, "{echo:?}");
    assert!(forwarded[0].contains("127.0.0.1"), "{forwarded:?}");
    assert!(
        !forwarded[0].contains("6.6.6.6") && !forwarded[0].contains("evil"),
        "{forwarded:?}"
    );
    assert_eq!(echo.header("x-application"), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_supplied_proxy_headers_never_reach_the_service() {
    let t = WikiTunnel::start().await;
    // Headers a service behind a trusted proxy reads as the proxy's word
    // about the client or the original URL.
    let planted = [
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-port", "443"),
        ("x-original-url", "/admin/users"),
        ("x-rewrite-url", "/admin/users"),
        ("x-original-host", "admin.internal"),
        ("true-client-ip", "6.6.6.6"),
        ("x-client-ip", "6.6.6.7"),
        ("x-real-ip", "6.6.6.8"),
    ];
    let mut call = t.caller.get("wiki.test", "/whoami");
    for (name, value) in planted {
        call = call.header(name, value);
    }
    let echo = call.header("x-application", "kept").send().await.echo();

    let leaked: Vec<&str> = planted
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| echo.header(name).is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "forwarded to the service: {leaked:?}\n{echo:?}"
    );
    let mut forwarding: Vec<&str> = echo
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("x-forwarded-"))
        .collect();
    forwarding.sort_unstable();
    assert_eq!(
        forwarding,
        ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"],
        "only the gateway's own forwarding headers arrive: {echo:?}"
    );
    assert!(
        !echo
            .headers
            .iter()
            .any(|(_, v)| v.contains("6.6.6.") || v.contains("/admin")),
        "a planted value reached the service: {echo:?}"
    );
    assert_eq!(echo.header("x-application"), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarded_host_keeps_the_port_the_caller_sent() {
    let t = WikiTunnel::start().await;
    let echo = t
        .caller
        .get("wiki.test:8080", "/")
        .header("x-forwarded-host", "evil.test")
        .send()
        .await
        .echo();
    assert_eq!(echo.all("host"), ["wiki.test:8080"], "{echo:?}");
    assert_eq!(echo.all("x-forwarded-host"), ["wiki.test:8080"], "{echo:?}");
    let forwarded = echo.all("forwarded");
    assert_eq!(forwarded.len(), 1, "{echo:?}");
    assert!(
        forwarded[0].contains("host=\"wiki.test:8080\""),
        "{forwarded:?}"
    );
}

/// A caller that says `Connection: close` gets its answer with
/// `Connection: close` and then the connection closes, as RFC 9112 §9.6
/// asks; a caller that says nothing keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_connection_close_closes_the_connection_after_the_answer() {
    let t = WikiTunnel::start_with(GatewayOptions::new(), upstream::echo("wiki").await).await;
    let request = |connection: &str| {
        format!(
            "GET /x HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {}\r\n{connection}\r\n",
            t.token
        )
    };
    let reply = wire::exchange(
        t.gateway.public_addr(),
        request("Connection: close\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(
        reply.closed,
        "the gateway kept the connection open:\n{}",
        reply.text()
    );
    assert!(
        reply
            .text()
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{}",
        reply.text()
    );

    let reply = wire::exchange(
        t.gateway.public_addr(),
        request("").as_bytes(),
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert!(
        !reply.closed,
        "a kept-alive caller was disconnected:\n{}",
        reply.text()
    );
}
