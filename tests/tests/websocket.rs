//! Story: a caller opens a WebSocket to the on-prem service through the
//! tunnel and frames flow both ways.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tests::setup::WikiTunnel;
use tests::{body, upstream, GatewayOptions, Route};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_echo_through_the_tunnel() {
    let t = WikiTunnel::start().await;
    let mut ws = t.caller.websocket("wiki.test", "/ws").await;

    let big: Vec<u8> = tests::pattern::chunk(7, 60_000).to_vec();
    let messages = [
        Message::text("hello through the tunnel"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big),
        Message::text("ünïcödé ✓"),
    ];
    for message in messages {
        ws.send(message.clone()).await.expect("send frame");
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo within 10 s")
            .expect("stream still open")
            .expect("a frame");
        assert_eq!(echoed, message);
    }
    ws.close(None).await.expect("close handshake");
    assert_eq!(
        t.wiki.requests(),
        1,
        "one upgrade request reached the service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_needs_a_caller_token_too() {
    let t = WikiTunnel::start().await;
    let req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        "ws://wiki.test/ws",
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(t.gateway.public_addr())
        .await
        .unwrap();
    let refused = tokio_tungstenite::client_async(req, tcp).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected an HTTP 401 refusal, got {other:?}"),
    }
    assert_eq!(t.wiki.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_is_not_cut_by_the_body_limit() {
    let opts =
        GatewayOptions::new().with_route(Route::new("chat.test", "wiki").max_body_bytes(4096));
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;

    // The limit is live on this route for ordinary requests.
    let over = t
        .caller
        .post("chat.test", "/upload", body::full(vec![b'x'; 5000]))
        .send()
        .await;
    assert_eq!(over.status, 413, "{over:?}");

    // A session is not an upload: 20 KiB of frames in all, well over 4096.
    let mut ws = t.caller.websocket("chat.test", "/ws").await;
    for i in 0..20u8 {
        let message = Message::binary(vec![i; 1024]);
        ws.send(message.clone()).await.unwrap_or_else(|e| {
            panic!("send message {i} (after {} bytes): {e}", 1024 * i as usize)
        });
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no echo of message {i} within 10 s"))
            .unwrap_or_else(|| panic!("session closed before the echo of message {i}"))
            .unwrap_or_else(|e| panic!("session failed at message {i}: {e}"));
        assert_eq!(echoed, message, "echo of message {i}");
    }
    ws.close(None).await.expect("close handshake");
}
