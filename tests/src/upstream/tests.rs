//! The local services and the caller helpers checked against each other,
//! without a gateway in between.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::caller::Caller;
use crate::pattern;
use crate::pki::Pki;
use crate::wire;

#[tokio::test]
async fn echo_describes_the_request_it_got() {
    let service = echo("wiki").await;
    let caller = Caller::new(service.addr(), Some("t0ken"));
    let reply = caller
        .post("wiki.test", "/a/b?x=1&y", crate::body::full("hello"))
        .header("x-one", "1")
        .header("x-two", "2")
        .send()
        .await;
    let echo = reply.echo();
    assert_eq!(echo.server, "wiki");
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.target, "/a/b?x=1&y");
    assert_eq!(echo.header("Host"), Some("wiki.test"));
    assert_eq!(echo.header("proxy-authorization"), Some("Bearer t0ken"));
    assert_eq!(echo.body_len, 5);
    assert_eq!(echo.body_sha256, pattern::sha256_of(b"hello"));
    let names: Vec<&str> = echo.headers.iter().map(|(n, _)| n.as_str()).collect();
    let one = names.iter().position(|n| *n == "x-one").unwrap();
    assert_eq!(names[one + 1], "x-two");
    assert_eq!(service.requests(), 1);
}

#[tokio::test]
async fn bytes_stream_the_pattern_and_uploads_are_hashed() {
    let service = echo("s").await;
    let caller = Caller::new(service.addr(), None);
    let n = 5 * pattern::CHUNK as u64 + 123;
    let down = caller.get("s", &format!("/bytes/{n}")).send_hashing().await;
    assert_eq!((down.status.as_u16(), down.len), (200, n));
    assert_eq!(down.sha256, pattern::sha256(n));
    let up = caller
        .post("s", "/upload", crate::body::pattern(n))
        .header("content-length", &n.to_string())
        .send()
        .await
        .echo();
    assert_eq!((up.body_len, up.body_sha256), (n, pattern::sha256(n)));
}

#[tokio::test]
async fn slow_waits_before_answering() {
    let service = echo("s").await;
    let caller = Caller::new(service.addr(), None);
    let started = std::time::Instant::now();
    let reply = caller.get("s", "/slow/300").send().await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let err = caller
        .get("s", "/slow/5000")
        .timeout(Duration::from_millis(200))
        .try_send()
        .await
        .unwrap_err();
    assert!(err.contains("within"), "{err}");
}

#[tokio::test]
async fn websocket_echoes_messages() {
    let service = echo("s").await;
    let mut ws = Caller::new(service.addr(), None)
        .websocket("s", "/ws")
        .await;
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
}

#[tokio::test]
async fn raw_service_returns_the_exact_head() {
    let service = raw().await;
    let head = b"GET /p/a%2Fb;x?q=%20+%2B&&a=1 HTTP/1.1\r\nHost: h\r\nX-Odd:  spaced \r\n\r\n";
    let mut request = head.to_vec();
    request.extend_from_slice(
        b"POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    let reply = wire::exchange(service.addr(), &request, Duration::from_secs(5)).await;
    assert!(reply.closed);
    assert_eq!(reply.status(), Some(200));
    assert!(reply
        .body_text()
        .starts_with(std::str::from_utf8(head).unwrap()));
    assert_eq!(service.raw_heads()[0], head.to_vec());
    assert_eq!(service.requests(), 2);
}

#[tokio::test]
async fn tls_probe_and_impostor_see_each_other() {
    let pki = Pki::generate();
    let fake = impostor(&pki.gateway).await;
    let v13 = wire::tls_handshake(fake.addr(), pki.root_store(), &[&rustls::version::TLS13]).await;
    assert_eq!(v13, Ok(rustls::ProtocolVersion::TLSv1_3));
    let other = Pki::generate();
    let refused =
        wire::tls_handshake(fake.addr(), other.root_store(), &[&rustls::version::TLS13]).await;
    assert!(refused.unwrap_err().contains("certificate"));
    fake.stats()
        .connections
        .wait_at_least(2, "connections", Duration::from_secs(5))
        .await;
    fake.stats()
        .handshakes
        .wait_at_least(1, "handshakes", Duration::from_secs(5))
        .await;
    assert_eq!(fake.stats().handshakes.get(), 1);
    assert_eq!(fake.stats().app_bytes.get(), 0);
}
