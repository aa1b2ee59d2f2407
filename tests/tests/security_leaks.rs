//! Security story: nothing one caller did leaks to another, and nothing
//! secret leaks to the logs.
//!
//! - A local service that ties authentication to the TCP connection (NTLM
//!   and Negotiate, common on-prem) never answers a caller on a connection
//!   another caller authenticated: pooled tunnel streams are kept per
//!   caller.
//! - pingora's own error lines for a failing request name the path, never
//!   the query (`oauth_token`, `oauth_signature`, API keys live there).
//! - A source that keeps sending unknown caller tokens is answered 429
//!   after its budget, before any lookup, while other sources are served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use tests::setup::WikiTunnel;
use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions};

/// A service that authenticates per connection, as IIS does with NTLM: a
/// request with `Authorization: NTLM <user>` makes the connection that
/// user's; later requests on the connection are that user's without any
/// header; a request on an unauthenticated connection gets 401.
async fn ntlm_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let user: Arc<Mutex<Option<String>>> = Arc::default();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let user = user.clone();
                    async move {
                        let mut user = user.lock().unwrap();
                        if let Some(v) = req.headers().get("authorization") {
                            let v = v.to_str().unwrap_or_default();
                            if let Some(name) = v.strip_prefix("NTLM ") {
                                *user = Some(name.to_string());
                            }
                        }
                        let resp = match &*user {
                            Some(name) => {
                                Response::new(Full::new(Bytes::from(format!("hello {name}"))))
                            }
                            None => Response::builder()
                                .status(401)
                                .header("www-authenticate", "NTLM")
                                .body(Full::new(Bytes::from("who are you")))
                                .unwrap(),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_never_gets_a_connection_another_caller_authenticated() {
    let gateway = Gateway::start(GatewayOptions::new().route("intranet.test", "intranet")).await;
    let tunnel = gateway.create_tunnel("acme", "intranet").await;
    let service = ntlm_service().await;
    let _agent = Agent::connect(&gateway, &tunnel, service, AgentOptions::new()).await;
    let alice = gateway.caller(&gateway.create_caller("acme").await);
    let bob = gateway.caller(&gateway.create_caller("acme").await);

    let reply = alice
        .get("intranet.test", "/")
        .header("authorization", "NTLM alice")
        .send()
        .await;
    assert_eq!(reply.text(), "hello alice");
    // Alice's next request rides her authenticated connection: pooling
    // still works within one caller (and shows this test can see reuse).
    assert_eq!(
        alice.get("intranet.test", "/").send().await.text(),
        "hello alice"
    );
    // Bob, of the same organization, sent no credentials of his own.
    for _ in 0..3 {
        let reply = bob.get("intranet.test", "/").send().await;
        assert_eq!(
            reply.status,
            401,
            "bob was answered on alice's connection: {:?}",
            reply.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_requests_query_never_reaches_the_log() {
    let opts = GatewayOptions::new().env("RUST_LOG", "debug");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let secret = "oauth_signature=SeCrEtSiGnAtUrE";
    // The agent's service is gone: the request fails in the proxy loop,
    // where pingora writes its own error line.
    let mut agent = t.agent;
    agent.kill();
    drop(t.wiki);
    let target = format!("/rest/api?{secret}&oauth_token=SeCrEtToKeN");
    let reply = t.caller.get("wiki.test", &target).send().await;
    assert!(reply.status.as_u16() >= 500, "{reply:?}");
    let log_path = t
        .gateway
        .config_path()
        .parent()
        .unwrap()
        .join("gateway.log");
    // Once the failing request itself is logged (so the check sees it),
    // no secret from its query may be in the log.
    let log = tests::eventually(
        "the failing request logged",
        Duration::from_secs(10),
        || async {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("/rest/api") && log.contains("access") {
                Ok(log)
            } else {
                Err(log)
            }
        },
    )
    .await;
    assert!(
        !log.contains("SeCrEt"),
        "a secret from the query was logged:\n{log}"
    );
}

/// A raw request from a chosen loopback source address.
async fn from(source: &str, gateway: SocketAddr, token: &str) -> (Option<u16>, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut tcp = sock.connect(gateway).await.unwrap();
    let req = format!(
        "GET / HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_guessing_caller_tokens_is_slowed_and_others_are_not() {
    let opts = GatewayOptions::new().extra_config("[callers]\nmax_failures_per_minute = 5\n");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let gw = t.gateway.public_addr();
    for i in 0..5 {
        let (status, text) = from("127.0.0.2", gw, &format!("ct_guess{i}")).await;
        assert_eq!(status, Some(401), "guess {i}: {text}");
    }
    let (status, text) = from("127.0.0.2", gw, "ct_guess5").await;
    assert_eq!(status, Some(429), "the sixth guess: {text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: "),
        "429 without Retry-After: {text}"
    );
    // Even a valid token waits out the minute from that source...
    let (status, _) = from("127.0.0.2", gw, &t.token).await;
    assert_eq!(status, Some(429));
    // ...while another source is served, and guesses there still get 401.
    let (status, text) = from("127.0.0.3", gw, &t.token).await;
    assert_eq!(status, Some(200), "{text}");
    let (status, _) = from("127.0.0.3", gw, "ct_other").await;
    assert_eq!(status, Some(401));
    assert_eq!(t.wiki.requests(), 1);
}
