//! Promises of the README about the agent that no other story checked,
//! each an inline module with its own story:
//!
//! - [`reconnect_backoff`]: a lost gateway is retried with exponential
//!   backoff and full jitter between `reconnect.initial_backoff` and
//!   `reconnect.max_backoff`, reset by a connection that lasted
//!   `reconnect.stable_after`;
//! - [`unfinished_handshakes`]: a gateway that ends the handshake without
//!   a verdict (as one of another protocol version does) or breaks it is
//!   retried, with the reason said; only `rejected` makes the agent exit.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// A TCP front the agent dials instead of the gateway: it records when
/// each connection attempt arrives, and either relays it to the gateway's
/// agents' listener (TLS and all pass through untouched, the certificate
/// is for `localhost` either way) or closes it at once, as a gateway that
/// is down would. Stops when dropped.
struct Front {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// The number of attempts so far.
    arrived: watch::Sender<usize>,
}

struct State {
    attempts: Vec<Instant>,
    /// Attempts to close before relaying again.
    refuse_next: usize,
    /// Where attempts are relayed; `None`: every attempt is closed.
    relay_to: Option<SocketAddr>,
    relays: Vec<AbortHandle>,
}

impl Front {
    /// A front relaying to `relay_to` after closing the first `refuse_first`
    /// attempts.
    async fn start(relay_to: Option<SocketAddr>, refuse_first: usize) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the front");
        let addr = listener.local_addr().expect("front address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                attempts: Vec::new(),
                refuse_next: refuse_first,
                relay_to,
                relays: Vec::new(),
            }),
            arrived: watch::channel(0).0,
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let at = Instant::now();
                let mut state = s.state.lock().unwrap();
                state.attempts.push(at);
                let target = if state.refuse_next > 0 {
                    state.refuse_next -= 1;
                    None
                } else {
                    state.relay_to
                };
                if let Some(to) = target {
                    let relay = tokio::spawn(relay(client, to));
                    state.relays.push(relay.abort_handle());
                }
                // else: `client` is dropped, the connection closed at once.
                let n = state.attempts.len();
                drop(state);
                s.arrived.send_replace(n);
            }
        });
        Front {
            addr,
            shared,
            accept,
        }
    }

    /// The URL an agent dials to come through this front.
    fn url(&self) -> String {
        format!("wss://localhost:{}/_tunnel/v1", self.addr.port())
    }

    /// From now on, attempts are relayed to `to` (or closed, with `None`).
    fn relay(&self, to: Option<SocketAddr>) {
        self.shared.state.lock().unwrap().relay_to = to;
    }

    /// The gateway goes away: relayed connections are cut and every later
    /// attempt is closed. Returns when it happened.
    fn cut(&self) -> Instant {
        let mut state = self.shared.state.lock().unwrap();
        state.relay_to = None;
        for relay in state.relays.drain(..) {
            relay.abort();
        }
        Instant::now()
    }

    fn attempts(&self) -> Vec<Instant> {
        self.shared.state.lock().unwrap().attempts.clone()
    }

    /// Waits until `n` attempts arrived (for at most `within`).
    async fn wait_attempts(&self, n: usize, within: Duration) -> Vec<Instant> {
        let deadline = tokio::time::Instant::now() + within;
        match self.attempt(n, deadline).await {
            Some(_) => self.attempts(),
            None => panic!(
                "{} connection attempts within {within:?}, not {n}",
                self.attempts().len()
            ),
        }
    }

    /// The time attempt number `n` (1-based) arrived, if it does by
    /// `deadline`.
    async fn attempt(&self, n: usize, deadline: tokio::time::Instant) -> Option<Instant> {
        let mut arrived = self.shared.arrived.subscribe();
        loop {
            if let Some(at) = self.attempts().get(n - 1) {
                return Some(*at);
            }
            if tokio::time::timeout_at(deadline, arrived.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(mut client: TcpStream, to: SocketAddr) {
    let Ok(mut gateway) = TcpStream::connect(to).await else {
        return; // nothing listens there: the attempt is closed
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut gateway).await;
}

/// The time between consecutive instants, starting from `from`.
fn gaps(from: Instant, attempts: &[Instant]) -> Vec<Duration> {
    let mut last = from;
    attempts
        .iter()
        .map(|at| {
            let gap = at.duration_since(last);
            last = *at;
            gap
        })
        .collect()
}

mod reconnect_backoff {
    //! Story: the gateway goes away and the agent keeps dialing it, without
    //! hammering it: the wait before each new attempt is drawn at random
    //! between zero and a ceiling that starts at `initial_backoff`, doubles
    //! with each failed attempt and stops at `max_backoff` (full jitter, so
    //! a fleet of agents does not come back in step). A connection that
    //! lasted `stable_after` starts the next round of
    //! waits from the initial ceiling again; a shorter one does not.
    //!
    //! Attempts are timed where the gateway would see them (a TCP front
    //! before the agents' listener). The settings are small (20 ms to a few
    //! seconds); every bound allows `SLACK` for a loaded machine, and the
    //! claims about randomness are ones that fail by chance less than once
    //! in ten thousand runs.

    use std::time::{Duration, Instant};

    use super::{gaps, Front};
    use tests::events::kind;
    use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions, PATIENCE};

    /// What a wait may exceed its ceiling by: the failed attempt itself
    /// (TCP, a TLS handshake cut short) and a machine busy with other work.
    const SLACK: Duration = Duration::from_millis(300);

    const INITIAL_MS: u64 = 20;

    /// An agent dialing `front` with these `[reconnect]` settings (the
    /// environment overrides the harness's config file).
    fn dialing(front: &Front, max_ms: u64, stable_secs: u64) -> AgentOptions {
        AgentOptions::new()
            .url(&front.url())
            .env(
                "AGENT__RECONNECT__INITIAL_BACKOFF",
                &format!("{INITIAL_MS}ms"),
            )
            .env("AGENT__RECONNECT__MAX_BACKOFF", &format!("{max_ms}ms"))
            .env("AGENT__RECONNECT__STABLE_AFTER", &format!("{stable_secs}s"))
    }

    /// The ceiling of the wait before attempt `i + 1` after a drop (or the
    /// `i`-th failure in a row).
    fn ceiling(i: usize, max_ms: u64) -> Duration {
        Duration::from_millis((INITIAL_MS << i.min(30)).min(max_ms))
    }

    fn ms(gaps: &[Duration]) -> Vec<u128> {
        gaps.iter().map(Duration::as_millis).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_gateway_goes_away_waits_grow_to_the_max_with_full_jitter() {
        const MAX_MS: u64 = 1500;
        const ATTEMPTS: usize = 16;
        let mut gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let wiki = upstream::echo("wiki").await;
        // Two agents, each through its own front, both connected.
        let fronts = [
            Front::start(Some(gateway.agents_addr()), 0).await,
            Front::start(Some(gateway.agents_addr()), 0).await,
        ];
        let mut agents = Vec::new();
        for front in &fronts {
            let opts = dialing(front, MAX_MS, 30);
            agents.push(Agent::connect(&gateway, &tunnel, wiki.addr(), opts).await);
            assert_eq!(front.attempts().len(), 1, "connected at the first attempt");
        }
        let marks: Vec<usize> = agents.iter().map(|a| a.events().mark()).collect();

        // The gateway goes away; each agent notices and dials again and again.
        gateway.kill();
        let gone = Instant::now();
        let mut all = Vec::new();
        for ((front, agent), mark) in fronts.iter().zip(&agents).zip(marks) {
            let attempts = front
                .wait_attempts(1 + ATTEMPTS, Duration::from_secs(60))
                .await;
            let gaps = gaps(gone, &attempts[1..1 + ATTEMPTS]);
            // Its events say so: one connect_failed per attempt (the last
            // one's may still be on its way), never `rejected`.
            let events = agent.events().snapshot();
            let failed = events[mark..]
                .iter()
                .filter(|e| kind(e) == "connect_failed")
                .count();
            assert!(failed >= ATTEMPTS - 1, "{}", agent.events().dump());
            assert!(!events.iter().any(|e| kind(e) == "rejected"));
            all.push(gaps);
        }

        let capped = |g: &Vec<Duration>| -> Vec<Duration> {
            (0..ATTEMPTS)
                .filter(|i| ceiling(*i, MAX_MS).as_millis() == u128::from(MAX_MS))
                .map(|i| g[i])
                .collect()
        };
        for (n, g) in all.iter().enumerate() {
            let shown = format!("agent {n}: waits {:?} ms", ms(g));
            // Never more than the ceiling: 20, 40, 80 ms... then 1.5 s at most.
            for (i, gap) in g.iter().enumerate() {
                assert!(
                    *gap <= ceiling(i, MAX_MS) + SLACK,
                    "wait #{i} over its ceiling of {:?}; {shown}",
                    ceiling(i, MAX_MS)
                );
            }
            // Full jitter: once at the cap the waits are all over [0, max],
            // not one value (8 draws all within 200 ms of each other:
            // about one chance in 10^5).
            let capped = capped(g);
            assert!(capped.len() >= 8, "{shown}");
            let spread = *capped.iter().max().unwrap() - *capped.iter().min().unwrap();
            assert!(
                spread > Duration::from_millis(200),
                "the capped waits are not jittered (spread {spread:?}); {shown}"
            );
        }
        // The waits grew: some capped wait is longer than any of the first
        // two could be (20 or 40 ms plus slack). All 16 capped draws below
        // 450 ms would be a one in 10^8 chance.
        let longest = all.iter().flat_map(capped).max().unwrap();
        assert!(
            longest > Duration::from_millis(450),
            "the waits did not grow: {:?} / {:?}",
            ms(&all[0]),
            ms(&all[1])
        );
        // The two agents are not in step.
        let apart = (0..ATTEMPTS)
            .filter(|i| ceiling(*i, MAX_MS).as_millis() == u128::from(MAX_MS))
            .any(|i| all[0][i].abs_diff(all[1][i]) > Duration::from_millis(200));
        assert!(
            apart,
            "two agents waited the same: {:?} / {:?}",
            ms(&all[0]),
            ms(&all[1])
        );
        // The gateway is back: both come home by themselves.
        gateway.restart().await;
        for agent in &agents {
            tokio::time::timeout(PATIENCE, agent.wait_connected())
                .await
                .expect("reconnected after the gateway came back");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_lasted_stable_after_starts_the_waits_over_and_a_shorter_one_does_not(
    ) {
        const MAX_MS: u64 = 4000;
        const STABLE: Duration = Duration::from_secs(2);
        let gateway = Gateway::start(GatewayOptions::new().route("wiki.test", "wiki")).await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let wiki = upstream::echo("wiki").await;

        // Eight failed attempts in a row (ceilings 20 ms ... 2.56 s), then
        // the ninth gets through.
        let front = Front::start(Some(gateway.agents_addr()), 8).await;
        let agent = Agent::start(
            &gateway,
            &tunnel,
            wiki.addr(),
            dialing(&front, MAX_MS, STABLE.as_secs()),
        )
        .await;
        agent.wait_connected().await;
        let up = front.attempts();
        assert_eq!(up.len(), 9, "connected at the ninth attempt");

        // A short connection: the next waits go on from where they were
        // (a ceiling of 4 s). Five waits in a row under 450 ms would mean
        // it started over (odds by chance: about 2 in 10^5).
        let mark = agent.events().mark();
        let cut = front.cut();
        assert!(
            cut.duration_since(up[8]) < STABLE,
            "the short connection lasted {:?}, not less than {STABLE:?}",
            cut.duration_since(up[8])
        );
        agent.wait_event_after(mark, "disconnected", PATIENCE).await;
        let mut last = cut;
        let mut short_gaps = Vec::new();
        while let Some(at) = front
            .attempt(
                up.len() + short_gaps.len() + 1,
                tokio::time::Instant::from_std(last + Duration::from_millis(450)),
            )
            .await
        {
            short_gaps.push(at.duration_since(last));
            last = at;
            assert!(
                short_gaps.len() < 5,
                "after a connection shorter than stable_after the waits started over: {:?} ms",
                ms(&short_gaps)
            );
        }

        // Back, and up for longer than stable_after.
        front.relay(Some(gateway.agents_addr()));
        agent.wait_connected().await;
        tokio::time::sleep(STABLE + Duration::from_secs(1)).await;
        let seen = front.attempts().len();
        let mark = agent.events().mark();
        let cut = front.cut();
        agent.wait_event_after(mark, "disconnected", PATIENCE).await;
        // The waits start over: ceilings of 20, 40 and 80 ms.
        let attempts = front.wait_attempts(seen + 3, PATIENCE).await;
        let reset = gaps(cut, &attempts[seen..seen + 3]);
        for (i, gap) in reset.iter().enumerate() {
            assert!(
                *gap <= ceiling(i, MAX_MS) + SLACK,
                "after a stable connection, wait #{i} was over its ceiling of {:?}: {:?} ms \
                 (after the short connection: {:?} ms)",
                ceiling(i, MAX_MS),
                ms(&reset),
                ms(&short_gaps)
            );
        }
    }
}

mod unfinished_handshakes {
    //! Story: an agent meets a gateway that does not finish the handshake:
    //! one that hangs up after the hello (as a gateway that does not speak
    //! the agent's protocol version does), one that closes politely, one
    //! whose answer is oversized, one whose challenge is malformed. Each is
    //! a failed attempt with its reason in a `connect_failed` event, and
    //! the agent tries again; only a `rejected` verdict makes it stop, with
    //! exit code 2. A stand-in gateway (real TLS with the gateway's
    //! certificate, a real WebSocket) plays each in turn and records the
    //! agent's hellos.

    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use futures_util::{SinkExt as _, StreamExt as _};
    use protocol::handshake::b64;
    use serde_json::{json, Value};
    use tests::events::kind;
    use tests::pki::CertFiles;
    use tests::{upstream, Agent, AgentOptions, Gateway, GatewayOptions, PATIENCE};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tokio_tungstenite::tungstenite::Message as Ws;

    /// How the stand-in answers the n-th connection's hello.
    fn script(n: usize) -> &'static str {
        ["hang up", "close", "oversized", "short nonce"]
            .get(n)
            .copied()
            .unwrap_or("reject")
    }

    /// Starts the stand-in gateway; returns its address and the hellos.
    async fn stand_in(cert: &CertFiles) -> (SocketAddr, Arc<Mutex<Vec<Value>>>) {
        let (chain, key) = cert.load();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("gateway certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let seen = hellos.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, what) = (acceptor.clone(), seen.clone(), script(n));
                n += 1;
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                        return;
                    };
                    let Some(Ok(Ws::Text(hello))) = ws.next().await else {
                        return;
                    };
                    seen.lock()
                        .unwrap()
                        .push(serde_json::from_str(hello.as_str()).unwrap_or(Value::Null));
                    let answer = match what {
                        "hang up" => return, // dropped: no close frame, no verdict
                        "close" => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        "oversized" => json!({"type": "challenge", "nonce": "A".repeat(5000)}),
                        "short nonce" => json!({"type": "challenge", "nonce": b64(&[1; 31])}),
                        _ => json!({"type": "challenge", "nonce": b64(&[1; 32])}),
                    };
                    if ws.send(Ws::text(answer.to_string())).await.is_err() {
                        return;
                    }
                    if what == "reject" {
                        // The proof, then the verdict.
                        let _ = ws.next().await;
                        let verdict =
                            json!({"type": "rejected", "reason": "authentication failed"});
                        let _ = ws.send(Ws::text(verdict.to_string())).await;
                        let _ = ws.close(None).await;
                    }
                    // Until the agent hangs up.
                    while let Some(Ok(_)) = ws.next().await {}
                });
            }
        });
        (addr, hellos)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_retries_a_gateway_that_ends_the_handshake_without_a_verdict() {
        // A real gateway only for the certificates and the tunnel's key.
        let gateway = Gateway::start(GatewayOptions::new()).await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let wiki = upstream::echo("wiki").await;
        let (addr, hellos) = stand_in(&gateway.pki().gateway).await;
        let url = format!("wss://localhost:{}/_tunnel/v1", addr.port());
        let mut agent = Agent::start(
            &gateway,
            &tunnel,
            wiki.addr(),
            AgentOptions::new().name("node-1").url(&url),
        )
        .await;

        let rejected = agent.wait_event("rejected", PATIENCE).await;
        assert_eq!(rejected["reason"], "authentication failed", "{rejected}");
        let status = agent.wait_exit().await;
        assert_eq!(status.code(), Some(2), "{}", agent.logs());

        // Four failed attempts before it, each with its reason.
        let events = agent.events().snapshot();
        let reasons: Vec<String> = events
            .iter()
            .filter(|e| kind(e) == "connect_failed")
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(reasons.len(), 4, "{}", agent.events().dump());
        assert!(!reasons[0].is_empty(), "hang up: {reasons:?}");
        assert_eq!(
            reasons[1], "gateway closed the connection during the handshake",
            "{reasons:?}"
        );
        assert!(
            reasons[2].contains("handshake message is")
                && reasons[2].contains("over the 4096 byte limit"),
            "oversized: {reasons:?}"
        );
        assert!(
            reasons[3].contains("nonce is not 32 bytes"),
            "short nonce: {reasons:?}"
        );
        assert!(
            !events.iter().any(|e| kind(e) == "connected"),
            "{}",
            agent.events().dump()
        );

        // Every attempt said who it is, in the protocol version it speaks.
        let hellos = hellos.lock().unwrap().clone();
        assert_eq!(hellos.len(), 5, "{hellos:?}");
        for hello in &hellos {
            assert_eq!(hello["type"], "hello", "{hello}");
            assert_eq!(hello["version"], protocol::PROTOCOL_VERSION, "{hello}");
            assert_eq!(hello["tunnel_id"], tunnel.id.as_str(), "{hello}");
            assert_eq!(hello["agent"], "node-1", "{hello}");
        }
    }
}
