//! Story: a hostile caller tries to take the public listener from everyone
//! else, by dawdling (a request head or body trickled in, a connection left
//! idle, a TLS handshake or HTTP/2 preface never finished) or by opening
//! more connections than its share. Each attacking connection is closed
//! within its deadline, over-cap connections are closed as soon as they are
//! accepted, and a legitimate caller (from another loopback address,
//! 127.0.0.1, while the attacker uses 127.0.0.2 and up) keeps being served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tests::setup::WikiTunnel;
use tests::{scrape, upstream, GatewayOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Where the attacker connects from; the legitimate caller uses 127.0.0.1.
const ATTACKER: &str = "127.0.0.2";

/// A TCP connection to `to` from the loopback address `source`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{source}:0").parse().expect("source address"))
        .expect("bind the source address");
    sock.connect(to).await.expect("connect to the gateway")
}

/// Reads until the gateway closes the connection or `wait` passes from
/// `since`: what arrived, and when (after `since`) the connection closed.
async fn until_closed(
    s: &mut TcpStream,
    since: Instant,
    wait: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::from_std(since + wait);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Some(since.elapsed())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Asserts the connection closes between `min` and `max` after `since`;
/// returns what arrived before.
async fn closes_between(
    s: &mut TcpStream,
    since: Instant,
    min: Duration,
    max: Duration,
    what: &str,
) -> Vec<u8> {
    let (got, closed) = until_closed(s, since, max).await;
    let text = String::from_utf8_lossy(&got);
    let after = closed.unwrap_or_else(|| panic!("{what}: still open after {max:?} ({text:?})"));
    assert!(
        after >= min,
        "{what}: closed after {after:?}, before {min:?}"
    );
    got
}

/// Reads one response (head and `Content-Length` body); returns its status.
async fn read_response(s: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().expect("content-length"));
                if got.len() >= end + 4 + len {
                    return head[9..12].parse().expect("status");
                }
            }
            let n = s.read(&mut buf).await.expect("read the response");
            assert!(
                n > 0,
                "closed mid-response: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a response within 30 s")
}

fn get_head(token: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {token}\r\n\r\n")
}

/// A legitimate GET from 127.0.0.1 gets its 200.
async fn served(t: &WikiTunnel) {
    let reply = t.caller.get("wiki.test", "/").send().await;
    assert_eq!(
        reply.status, 200,
        "the legitimate caller was not served: {reply:?}"
    );
}

async fn closed_count(t: &WikiTunnel, reason: &str) -> f64 {
    scrape::metrics(t.gateway.admin()).await.sum(
        "tunnel_gateway_public_connections_closed_total",
        &[("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_sent_one_byte_at_a_time_is_cut_off_at_the_header_deadline() {
    // The default deadline (10 s): before it, each byte arriving within
    // pingora's 60 s per-read timeout kept the connection for ever.
    let t = WikiTunnel::start().await;
    let addr = t.gateway.public_addr();
    let head = format!(
        "GET / HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {}\r\nX-Pad: {}\r\n\r\n",
        t.token,
        "a".repeat(4096)
    );
    let attackers: Vec<_> = (0..8)
        .map(|_| {
            let head = head.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let s = connect_from(ATTACKER, addr).await;
                let (mut rd, mut wr) = s.into_split();
                let trickle = tokio::spawn(async move {
                    for b in head.bytes() {
                        if wr.write_all(&[b]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                });
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                let closed = loop {
                    match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
                        Err(_) => break None,
                        Ok(Ok(0)) | Ok(Err(_)) => break Some(started.elapsed()),
                        Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                    }
                };
                trickle.abort();
                (closed, String::from_utf8_lossy(&got).into_owned())
            })
        })
        .collect();

    // Served all through the attack.
    while !attackers.iter().all(|a| a.is_finished()) {
        served(&t).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for a in attackers {
        let (closed, got) = a.await.expect("attacker task");
        let after = closed.unwrap_or_else(|| panic!("a trickled head held its connection 30 s"));
        assert!(
            after >= Duration::from_secs(9) && after < Duration::from_secs(20),
            "closed after {after:?}, with a 10 s header deadline"
        );
        assert!(
            got.starts_with("HTTP/1.1 408"),
            "the caller was told: {got:?}"
        );
    }
    assert!(closed_count(&t, "header_read_timeout").await >= 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_and_an_idle_keep_alive_one_are_closed_in_time() {
    let opts = GatewayOptions::new()
        .env("GATEWAY__PUBLIC__HEADER_READ_TIMEOUT", "2s")
        .env("GATEWAY__PUBLIC__KEEPALIVE", "3s");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let addr = t.gateway.public_addr();

    let since = Instant::now();
    let mut silent = connect_from(ATTACKER, addr).await;
    let said = closes_between(
        &mut silent,
        since,
        Duration::from_millis(1500),
        Duration::from_secs(10),
        "a connection that sends nothing",
    )
    .await;
    assert!(said.is_empty(), "nothing asked, nothing answered: {said:?}");

    // Keep-alive: served, then closed once idle for `keepalive`.
    let mut kept = connect_from("127.0.0.1", addr).await;
    for _ in 0..2 {
        kept.write_all(get_head(&t.token).as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut kept).await, 200);
    }
    let idle_since = Instant::now();
    closes_between(
        &mut kept,
        idle_since,
        Duration::from_millis(2500),
        Duration::from_secs(12),
        "an idle keep-alive connection",
    )
    .await;
    served(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_served_but_a_stalled_one_is_cut_off_at_the_read_timeout() {
    let opts = GatewayOptions::new()
        .env("GATEWAY__PUBLIC__HEADER_READ_TIMEOUT", "2s")
        .env("GATEWAY__PUBLIC__READ_TIMEOUT", "3s");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let addr = t.gateway.public_addr();
    let post = |len: usize| {
        format!(
            "POST /upload HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {}\r\nContent-Length: {len}\r\n\r\n",
            t.token
        )
    };

    // The head deadline covers the head only: a body taking longer than it,
    // with no gap as long as the read timeout, is served.
    let mut slow = connect_from("127.0.0.1", addr).await;
    slow.write_all(post(5).as_bytes()).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        slow.write_all(b"x").await.unwrap();
    }
    assert_eq!(read_response(&mut slow).await, 200, "a slow upload");

    let mut stalled = connect_from(ATTACKER, addr).await;
    stalled.write_all(post(100).as_bytes()).await.unwrap();
    stalled.write_all(&[b'x'; 10]).await.unwrap();
    let since = Instant::now();
    closes_between(
        &mut stalled,
        since,
        Duration::from_millis(2500),
        Duration::from_secs(15),
        "a stalled body",
    )
    .await;
    served(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_hold_more_than_its_share_of_connections() {
    let opts = GatewayOptions::new().env("GATEWAY__PUBLIC__MAX_CONNECTIONS_PER_SOURCE", "4");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let addr = t.gateway.public_addr();

    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(connect_from(ATTACKER, addr).await);
    }
    // Six are closed at once (the header deadline is 10 s away); four stay.
    let since = Instant::now();
    let mut open = Vec::new();
    for mut c in conns {
        let (got, closed) = until_closed(&mut c, since, Duration::from_secs(3)).await;
        assert!(got.is_empty(), "an over-cap connection got bytes: {got:?}");
        if closed.is_none() {
            open.push(c);
        }
    }
    assert_eq!(open.len(), 4, "connections from one source left open");
    served(&t).await;
    assert_eq!(closed_count(&t, "max_connections_per_source").await, 6.0);

    // The source's slots come back as its connections close.
    drop(open);
    let mut c = tests::eventually("the source's slots back", tests::PATIENCE, || async {
        let mut c = connect_from(ATTACKER, addr).await;
        c.write_all(get_head(&t.token).as_bytes()).await.unwrap();
        let mut first = [0u8; 1];
        match c.peek(&mut first).await {
            Ok(1) => Ok(c),
            other => Err(format!("the connection was closed: {other:?}")),
        }
    })
    .await;
    assert_eq!(read_response(&mut c).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_global_cap_connections_are_closed_until_slots_free_up() {
    let opts = GatewayOptions::new()
        .env("GATEWAY__PUBLIC__MAX_CONNECTIONS", "3")
        .env("GATEWAY__PUBLIC__MAX_CONNECTIONS_PER_SOURCE", "3");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let addr = t.gateway.public_addr();

    // Three sources, one connection each: no per-source cap is reached.
    let mut held = Vec::new();
    for src in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        held.push(connect_from(src, addr).await);
    }
    let since = Instant::now();
    for c in &mut held {
        let (_, closed) = until_closed(c, since, Duration::from_millis(500)).await;
        assert!(closed.is_none(), "a connection under the cap was closed");
    }
    let mut over = connect_from("127.0.0.5", addr).await;
    closes_between(
        &mut over,
        Instant::now(),
        Duration::ZERO,
        Duration::from_secs(3),
        "a connection past the global cap",
    )
    .await;
    assert_eq!(closed_count(&t, "max_connections").await, 1.0);

    drop(held);
    let reply = tests::eventually("served again", tests::PATIENCE, || async {
        t.caller
            .get("wiki.test", "/")
            .try_send()
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_or_http2_preface_or_an_idle_http2_connection_is_cut_off() {
    let opts = GatewayOptions::new()
        .public_tls()
        .env("GATEWAY__PUBLIC__HEADER_READ_TIMEOUT", "2s")
        .env("GATEWAY__PUBLIC__KEEPALIVE", "3s");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let addr = t.gateway.public_addr();

    // Connects, then sends half a TLS record header and nothing more.
    let since = Instant::now();
    let mut stalled = connect_from(ATTACKER, addr).await;
    stalled.write_all(&[0x16, 0x03]).await.unwrap();
    closes_between(
        &mut stalled,
        since,
        Duration::from_millis(1500),
        Duration::from_secs(10),
        "a stalled TLS handshake",
    )
    .await;
    assert_eq!(closed_count(&t, "tls_handshake_timeout").await, 1.0);

    // Finishes TLS choosing HTTP/2, then never sends the client preface.
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(t.gateway.pki().root_store())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let since = Instant::now();
    let tcp = connect_from(ATTACKER, addr).await;
    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut buf = [0u8; 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Err(_) => panic!("an HTTP/2 connection without a preface held 10 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break since.elapsed(),
            Ok(Ok(_)) => {} // the server's SETTINGS
        }
    };
    assert!(
        closed >= Duration::from_millis(1500),
        "closed after {closed:?}"
    );

    // Sends the preface and its SETTINGS, then no request: an idle HTTP/2
    // connection, closed after `keepalive`.
    let tcp = connect_from(ATTACKER, addr).await;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let idle_since = Instant::now();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await {
            Err(_) => panic!("an idle HTTP/2 connection held 15 s"),
            Ok(Ok(0)) | Ok(Err(_)) => break idle_since.elapsed(),
            Ok(Ok(_)) => {} // SETTINGS, its ACK, WINDOW_UPDATE
        }
    };
    assert!(
        closed >= Duration::from_millis(2500),
        "closed after {closed:?}"
    );

    for http2 in [false, true] {
        let reply = t
            .gateway
            .https_caller(&t.token, http2)
            .get("wiki.test", "/")
            .send()
            .await;
        assert_eq!(reply.status, 200, "HTTPS (h2: {http2}): {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_reading_its_response_is_cut_off_at_the_write_timeout() {
    // The field's old name with a bare number of seconds (as deployments
    // set it before durations became text): still read.
    let opts = GatewayOptions::new().env("GATEWAY__PUBLIC__WRITE_TIMEOUT_SECS", "2");
    let t = WikiTunnel::start_with(opts, upstream::echo("wiki").await).await;
    let size: usize = 64 << 20;
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ATTACKER}:0").parse().unwrap()).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut reader = sock.connect(t.gateway.public_addr()).await.unwrap();
    let head = format!(
        "GET /bytes/{size} HTTP/1.1\r\nHost: wiki.test\r\nProxy-Authorization: Bearer {}\r\n\r\n",
        t.token
    );
    reader.write_all(head.as_bytes()).await.unwrap();
    // Reads nothing for three write timeouts, while others are served.
    let stop = Instant::now() + Duration::from_secs(6);
    while Instant::now() < stop {
        served(&t).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Then reads what the gateway had sent before giving up, and no more.
    let (got, closed) = until_closed(&mut reader, Instant::now(), Duration::from_secs(20)).await;
    assert!(closed.is_some(), "the connection is still open");
    assert!(
        got.len() < size,
        "all {size} bytes arrived to a caller that stopped reading"
    );
}
