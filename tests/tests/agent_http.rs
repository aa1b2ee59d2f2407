//! Story: the agent forwards each request of a tunnel stream to the local
//! service as HTTP/1.1 and keeps the service's answer intact, whatever
//! the service does with its connections.
//!
//! - a service that closes its connection after every answer (without
//!   saying `Connection: close`) still answers every request of a caller's
//!   kept-alive connection;
//! - a HEAD answer keeps its `Content-Length` and has no body;
//! - a service that answers an upgrade request with a plain response keeps
//!   serving the stream, and closing afterwards still does no harm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::{Agent, AgentOptions, Gateway, GatewayOptions, PATIENCE};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// A service that answers one request per connection, then closes it.
/// `HEAD` gets `Content-Length: 1234` and no body; anything else `ok`.
/// Counts the connections it has closed.
async fn one_shot_service() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let closed = Arc::new(AtomicU64::new(0));
    let count = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer: &[u8] = if head.starts_with(b"HEAD ") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"
                } else if head.starts_with(b"GET /upgrade") {
                    b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 4\r\n\r\nnope"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                };
                let _ = tcp.write_all(answer).await;
                let _ = tcp.shutdown().await;
                drop(tcp);
                count.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

async fn wait_closed(closed: &AtomicU64, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    while closed.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "the service did not close its connection"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_closing_after_each_answer_still_answers_every_request() {
    let (service, closed) = one_shot_service().await;
    let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let _agent = Agent::connect(&gateway, &tunnel, service, AgentOptions::new()).await;
    let caller = gateway.caller(&gateway.create_caller("acme").await);
    let mut conn = caller.keep_alive().await;

    for i in 1..=5u64 {
        let reply = conn.get("wiki.test", &format!("/n/{i}")).await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.text(), "ok");
        // The service has closed this connection before the next request.
        wait_closed(&closed, i).await;
    }

    let reply = conn.get("wiki.test", "/before").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let head = caller
        .request(http::Method::HEAD, "wiki.test", "/file")
        .send()
        .await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("1234"));
    assert!(head.body.is_empty());

    // An upgrade the service declines is an ordinary answer; the service
    // then closes, and the next request is served all the same.
    let declined = caller
        .get("wiki.test", "/upgrade")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .send()
        .await;
    assert_eq!(declined.status, 426, "{declined:?}");
    assert_eq!(declined.text(), "nope");
    wait_closed(&closed, 8).await;
    let reply = conn.get("wiki.test", "/after").await;
    assert_eq!(reply.status, 200, "{reply:?}");
}
