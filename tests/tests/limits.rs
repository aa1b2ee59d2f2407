//! Story: oversized requests are refused at the edge: a header block over
//! the limit gets 431, a body over the route's limit gets 413, and neither
//! reaches the local service.

use std::time::Duration;

use tests::setup::WikiTunnel;
use tests::{body, upstream, wire, GatewayOptions, Route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_over_the_limit_gets_431() {
    let opts = GatewayOptions::new().max_header_bytes(16 * 1024);
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;

    let fits = "a".repeat(8 * 1024);
    let reply = t
        .caller
        .get("wiki.test", "/")
        .header("x-big", &fits)
        .send()
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    let request = format!(
        "GET / HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {}\r\nX-Big: {}\r\n\r\n",
        t.token,
        "a".repeat(20 * 1024)
    );
    let reply = wire::exchange(
        t.gateway.public_addr(),
        request.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(reply.status(), Some(431), "{}", reply.text());
    assert_eq!(
        t.wiki.requests(),
        1,
        "the oversized request reached the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_route_limit_gets_413() {
    let opts = GatewayOptions::new()
        .max_body_bytes(4096)
        .with_route(Route::new("upload.test", "wiki").max_body_bytes(1024));
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let post = |host: &str, size: usize| {
        t.caller
            .post(host, "/upload", body::full(vec![b'x'; size]))
            .send()
    };

    assert_eq!(
        post("upload.test", 1024).await.echo().body_len,
        1024,
        "exactly the limit is fine"
    );
    let over = post("upload.test", 1025).await;
    assert_eq!(over.status, 413, "{over:?}");

    // The default limit applies to routes without their own.
    assert_eq!(post("wiki.test", 4096).await.status, 200);
    let over_default = post("wiki.test", 4097).await;
    assert_eq!(over_default.status, 413, "{over_default:?}");

    assert_eq!(
        t.wiki.requests(),
        2,
        "an oversized body reached the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_refused() {
    let opts =
        GatewayOptions::new().with_route(Route::new("upload.test", "wiki").max_body_bytes(1 << 20));
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    // No Content-Length: the gateway learns the size only while streaming.
    let reply = t
        .caller
        .post("upload.test", "/upload", body::pattern(4 << 20))
        .try_send()
        .await;
    match reply {
        Ok(reply) => assert_eq!(reply.status, 413, "{reply:?}"),
        // Refusing mid-stream may cut the connection before the caller reads the 413.
        Err(e) => assert!(e.contains("sending") || e.contains("body"), "{e}"),
    }
    // Whatever happened to that connection, the gateway goes on serving.
    assert_eq!(t.caller.get("upload.test", "/").send().await.status, 200);
}
