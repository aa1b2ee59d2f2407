//! Story: oversized requests are refused at the edge: a header block over
//! the limit gets 431, a body over the route's limit gets 413, and neither
//! reaches the local service (a chunked body, whose size shows only while
//! it streams, reaches it cut off and never past the limit).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use tests::setup::WikiTunnel;
use tests::{body, upstream, wire, Agent, AgentOptions, Gateway, GatewayOptions, Route, PATIENCE};

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

/// What a local service saw of one request's body: the bytes, and whether
/// the body ended as the caller's framing said (or broke off).
#[derive(Debug, Clone, Copy)]
struct Seen {
    bytes: u64,
    complete: bool,
}

/// A local service that reads each body to its end (or its break) and
/// records what it saw before answering 200.
async fn recording_service() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let mut body = req.into_body();
                        let mut bytes = 0u64;
                        let complete = loop {
                            match body.frame().await {
                                Some(Ok(frame)) => {
                                    bytes += frame.data_ref().map_or(0, |d| d.len() as u64)
                                }
                                Some(Err(_)) => break false,
                                None => break true,
                            }
                        };
                        record.lock().unwrap().push(Seen { bytes, complete });
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("stored"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_is_refused() {
    const LIMIT: u64 = 1 << 20;
    let gateway = Gateway::start(
        GatewayOptions::new().with_route(Route::new("upload.test", "wiki").max_body_bytes(LIMIT)),
    )
    .await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let (service, seen) = recording_service().await;
    let _agent = Agent::connect(&gateway, &tunnel, service, AgentOptions::new()).await;
    let token = gateway.create_caller("acme").await;

    // No Content-Length: the gateway learns the size only while streaming.
    // The caller writes 4 MiB in chunks while reading whatever comes back,
    // as a browser or curl does, so a 413 sent mid-upload is read.
    let tcp = TcpStream::connect(gateway.public_addr()).await.unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, rx.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: upload.test\r\nProxy-Authorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    tx.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0u64;
    while written < 4 * LIMIT {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if tx.write_all(&frame).await.is_err() {
            break;
        }
        written += chunk.len() as u64;
    }
    let _ = tx.write_all(b"0\r\n\r\n").await;
    let answer = reader.await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "the caller did not read a 413 (wrote {written} bytes): {answer:?}"
    );
    assert!(
        answer.contains(&format!("exceeds this route's limit of {LIMIT} bytes")),
        "{answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // The service got at most the limit's worth of the body, and the
    // request broke off: it never completed.
    let upload = tests::eventually("the service saw the upload end", PATIENCE, || async {
        match seen.lock().unwrap().first() {
            Some(s) => Ok(*s),
            None => Err("no request yet".to_string()),
        }
    })
    .await;
    assert!(
        !upload.complete,
        "the cut upload completed at the service: {upload:?}"
    );
    assert!(
        upload.bytes <= LIMIT,
        "{} bytes reached the service, over the {LIMIT}-byte limit",
        upload.bytes
    );

    // Whatever happened to that connection, the gateway goes on serving.
    let reply = gateway
        .caller(&token)
        .post("upload.test", "/small", body::full(vec![b'y'; 1000]))
        .send()
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let last = *seen.lock().unwrap().last().unwrap();
    assert!(last.complete && last.bytes == 1000, "{last:?}");
}
