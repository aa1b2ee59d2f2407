//! The real agent half against the real gateway half, over an in-memory
//! message channel, with tokio's clock paused so deadlines cost no time.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);
const FLOOR: Duration = Duration::from_millis(25);
const EXPORTER: [u8; NONCE_LEN] = [5; NONCE_LEN];
const FULL: &str = "tunnel `wiki` already has 1 agents connected (agents.max_agents_per_tunnel)";

/// One end of an in-memory message channel.
struct Pipe {
    tx: mpsc::UnboundedSender<Received>,
    rx: mpsc::UnboundedReceiver<Received>,
}

/// The peer's end is gone.
#[derive(Debug, PartialEq, Eq)]
struct Gone;

fn pipe() -> (Pipe, Pipe) {
    let (a_tx, b_rx) = mpsc::unbounded_channel();
    let (b_tx, a_rx) = mpsc::unbounded_channel();
    (Pipe { tx: a_tx, rx: a_rx }, Pipe { tx: b_tx, rx: b_rx })
}

impl Pipe {
    /// Sends anything, as a peer that does not follow the protocol would.
    fn raw(&self, m: Received) {
        self.tx.send(m).expect("peer listening");
    }

    /// The next message the other side sent, decoded.
    async fn next(&mut self) -> Message {
        match self.rx.recv().await {
            Some(Received::Text(t)) => Message::decode(&t).expect("a valid message"),
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

impl MessageStream for Pipe {
    type Error = Gone;

    async fn send_text(&mut self, text: String) -> Result<(), Gone> {
        self.tx.send(Received::Text(text)).map_err(|_| Gone)
    }

    async fn recv_message(&mut self) -> Result<Received, Gone> {
        Ok(self.rx.recv().await.unwrap_or(Received::Closed))
    }

    async fn close_quietly(&mut self) {
        let _ = self.tx.send(Received::Closed);
    }
}

/// A gateway with one tunnel, `t1` named `wiki`, and room for `room` more
/// agents.
struct Gateway {
    current: TunnelKey,
    previous: Option<TunnelKey>,
    room: usize,
    /// The store is down.
    broken: bool,
    lookups: usize,
}

impl Gateway {
    fn new(current: TunnelKey) -> Self {
        Gateway {
            current,
            previous: None,
            room: 1,
            broken: false,
            lookups: 0,
        }
    }
}

impl Verifier for Gateway {
    type Tunnel = &'static str;
    type Admitted = &'static str;
    type Refused = &'static str;
    type Error = &'static str;

    async fn lookup(&mut self, hello: &Hello) -> Result<Option<Keys<&'static str>>, &'static str> {
        self.lookups += 1;
        if self.broken {
            return Err("store down");
        }
        Ok((hello.tunnel_id == "t1").then(|| Keys {
            current: self.current.clone(),
            previous: self.previous.clone(),
            tunnel: "wiki",
        }))
    }

    fn admit(
        &mut self,
        _hello: &Hello,
        tunnel: &'static str,
        _key: KeyUsed,
    ) -> Admit<&'static str, &'static str> {
        if self.room == 0 {
            return Admit::TryLater {
                reason: FULL.into(),
                refused: "tunnel_full",
            };
        }
        self.room -= 1;
        Admit::Welcome {
            tunnel_name: tunnel.to_string(),
            admitted: "a slot",
        }
    }
}

fn key() -> TunnelKey {
    TunnelKey::from_bytes([1; 32])
}

fn identity<'a>(key: &'a TunnelKey, version: u32) -> Identity<'a> {
    Identity {
        tunnel_id: "t1",
        agent: "node-1",
        software: Some("0.1.0"),
        version,
        key,
    }
}

fn params(deadline: Instant) -> ServerParams {
    ServerParams {
        exporter: EXPORTER,
        deadline,
        verdict_floor: FLOOR,
    }
}

/// The clock stopped at the deadline (to tokio's millisecond), not before
/// and not long after.
fn assert_at_deadline(started: Instant) {
    let waited = started.elapsed();
    assert!(
        waited >= DEADLINE && waited <= DEADLINE + Duration::from_millis(2),
        "waited {waited:?}"
    );
}

type Server = Result<Accepted<&'static str>, ServerError<Gone, &'static str, &'static str>>;

/// Runs both halves to their ends; each side's stream is dropped when its
/// half returns, as the agent and the gateway drop a refused connection.
async fn run(
    me: Identity<'_>,
    gateway: &mut Gateway,
) -> (Result<Welcomed, ClientError<Gone>>, Server) {
    let (mut agent_end, mut gateway_end) = pipe();
    let deadline = Instant::now() + DEADLINE;
    let agent = async move { client(&mut agent_end, &me, &EXPORTER, deadline).await };
    let gateway = async move { server(&mut gateway_end, gateway, &params(deadline)).await };
    tokio::join!(agent, gateway)
}

#[tokio::test]
async fn the_right_key_is_welcomed_and_both_sides_agree() {
    tokio::time::pause();
    for version in [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION] {
        let k = key();
        let mut gateway = Gateway::new(key());
        let started = Instant::now();
        let (agent, gateway_side) = run(identity(&k, version), &mut gateway).await;
        let welcomed = agent.expect("the agent is welcomed");
        let accepted = gateway_side.expect("the gateway accepts");
        assert_eq!(
            welcomed,
            Welcomed {
                tunnel_name: "wiki".into(),
                version
            }
        );
        assert_eq!(
            accepted.hello,
            Hello {
                version,
                tunnel_id: "t1".into(),
                agent: "node-1".into(),
                software: Some("0.1.0".into()),
            }
        );
        assert_eq!(accepted.key, KeyUsed::Current);
        assert_eq!(accepted.admitted, "a slot");
        assert_eq!(gateway.room, 0, "admitted once");
        assert!(
            started.elapsed() >= FLOOR,
            "the verdict waits for its floor"
        );
    }
}

#[tokio::test]
async fn the_previous_key_is_welcomed_during_an_overlap() {
    tokio::time::pause();
    let old = TunnelKey::from_bytes([2; 32]);
    let mut gateway = Gateway::new(key());
    gateway.previous = Some(old.clone());
    let (agent, gateway_side) = run(identity(&old, PROTOCOL_VERSION), &mut gateway).await;
    assert_eq!(agent.expect("welcomed").tunnel_name, "wiki");
    assert_eq!(gateway_side.expect("accepted").key, KeyUsed::Previous);
}

#[tokio::test]
async fn a_wrong_key_or_unknown_tunnel_is_rejected_alike() {
    tokio::time::pause();
    let wrong = TunnelKey::from_bytes([9; 32]);
    let mut gateway = Gateway::new(key());
    let started = Instant::now();
    let (agent, gateway_side) = run(identity(&wrong, PROTOCOL_VERSION), &mut gateway).await;
    assert!(
        started.elapsed() >= FLOOR,
        "the verdict waits for its floor"
    );
    assert_eq!(agent, Err(ClientError::Rejected(REJECTED_REASON.into())));
    match gateway_side {
        Err(ServerError::Rejected { hello, why }) => {
            assert_eq!(why, Rejection::BadProof);
            assert_eq!(
                (hello.tunnel_id.as_str(), hello.agent.as_str()),
                ("t1", "node-1")
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(gateway.room, 1, "nothing admitted");

    let k = key();
    let unknown = Identity {
        tunnel_id: "t2",
        ..identity(&k, PROTOCOL_VERSION)
    };
    let (agent, gateway_side) = run(unknown, &mut gateway).await;
    assert_eq!(agent, Err(ClientError::Rejected(REJECTED_REASON.into())));
    assert!(
        matches!(
            gateway_side,
            Err(ServerError::Rejected {
                why: Rejection::UnknownTunnel,
                ..
            })
        ),
        "{gateway_side:?}"
    );
}

#[tokio::test]
async fn a_full_gateway_says_try_later_and_the_agent_surfaces_it() {
    tokio::time::pause();
    let k = key();
    let mut gateway = Gateway::new(key());
    gateway.room = 0;
    let (agent, gateway_side) = run(identity(&k, PROTOCOL_VERSION), &mut gateway).await;
    assert_eq!(agent, Err(ClientError::TryLater(FULL.into())));
    match gateway_side {
        Err(ServerError::TryLater {
            hello,
            reason,
            refused,
        }) => {
            assert_eq!(hello.agent, "node-1");
            assert_eq!(reason, FULL);
            assert_eq!(refused, "tunnel_full");
        }
        other => panic!("expected try-later, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_lookup_closes_without_a_verdict() {
    tokio::time::pause();
    let k = key();
    let mut gateway = Gateway::new(key());
    gateway.broken = true;
    let (agent, gateway_side) = run(identity(&k, PROTOCOL_VERSION), &mut gateway).await;
    assert_eq!(
        agent,
        Err(ClientError::Closed),
        "no verdict: the agent retries"
    );
    assert!(
        matches!(gateway_side, Err(ServerError::Lookup("store down"))),
        "{gateway_side:?}"
    );
}

#[tokio::test]
async fn a_version_the_gateway_does_not_speak_is_refused_naming_both() {
    tokio::time::pause();
    let k = key();
    for version in [MIN_PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
        let mut gateway = Gateway::new(key());
        let (agent, gateway_side) = run(identity(&k, version), &mut gateway).await;
        assert!(
            matches!(
                gateway_side,
                Err(ServerError::Protocol(HandshakeError::Version(v))) if v == version
            ),
            "{gateway_side:?}"
        );
        // The agent is told, with both sides' versions, to try again
        // later (after an upgrade of the gateway).
        assert_eq!(agent, Err(ClientError::TryLater(version_mismatch(version))));
        assert!(
            version_mismatch(version).contains(&format!("protocol version {version}"))
                && version_mismatch(version)
                    .contains(&format!("{MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}")),
            "{}",
            version_mismatch(version)
        );
        assert_eq!(gateway.lookups, 0, "refused before any lookup");
    }
}

#[tokio::test]
async fn a_silent_gateway_meets_the_agents_deadline() {
    tokio::time::pause();
    let k = key();
    let (mut agent_end, mut gateway_end) = pipe();
    let started = Instant::now();
    let r = client(
        &mut agent_end,
        &identity(&k, PROTOCOL_VERSION),
        &EXPORTER,
        started + DEADLINE,
    )
    .await;
    assert_eq!(r, Err(ClientError::Timeout));
    assert_at_deadline(started);
    assert!(matches!(gateway_end.next().await, Message::Hello { .. }));
}

#[tokio::test]
async fn a_silent_agent_meets_the_gateways_deadline_at_every_step() {
    tokio::time::pause();
    // Silent from the start, then after its hello.
    for says_hello in [false, true] {
        let (mut agent_end, mut gateway_end) = pipe();
        if says_hello {
            agent_end.raw(Received::Text(
                Message::Hello {
                    version: PROTOCOL_VERSION,
                    tunnel_id: "t1".into(),
                    agent: "node-1".into(),
                    software: None,
                }
                .encode(),
            ));
        }
        let mut gateway = Gateway::new(key());
        let started = Instant::now();
        let r = server(&mut gateway_end, &mut gateway, &params(started + DEADLINE)).await;
        assert!(matches!(r, Err(ServerError::Timeout)), "{r:?}");
        assert_at_deadline(started);
        if says_hello {
            assert!(matches!(agent_end.next().await, Message::Challenge { .. }));
        }
        assert_eq!(gateway.lookups, 0);
    }
}

/// The gateway's half against a hand-played agent that sends `m` first.
async fn gateway_receiving(m: Received) -> Server {
    let (agent_end, mut gateway_end) = pipe();
    agent_end.raw(m);
    let mut gateway = Gateway::new(key());
    let deadline = Instant::now() + DEADLINE;
    let r = server(&mut gateway_end, &mut gateway, &params(deadline)).await;
    assert_eq!(gateway.lookups, 0);
    r
}

#[tokio::test]
async fn the_gateway_refuses_oversized_malformed_binary_and_out_of_order_messages() {
    tokio::time::pause();
    let big = format!(
        r#"{{"type":"hello","version":2,"tunnel_id":"t1","agent":"{}"}}"#,
        "a".repeat(MAX_HANDSHAKE_MESSAGE)
    );
    let len = big.len();
    let r = gateway_receiving(Received::Text(big)).await;
    assert!(
        matches!(r, Err(ServerError::Protocol(HandshakeError::TooLarge(n))) if n == len),
        "{r:?}"
    );
    let r = gateway_receiving(Received::Text("{not json".into())).await;
    assert!(
        matches!(r, Err(ServerError::Protocol(HandshakeError::Malformed(_)))),
        "{r:?}"
    );
    let r = gateway_receiving(Received::Binary).await;
    assert!(
        matches!(&r, Err(ServerError::Protocol(HandshakeError::Malformed(m))) if m == "binary message during handshake"),
        "{r:?}"
    );
    let proof = Message::Proof { mac: b64(&[0; 32]) }.encode();
    let r = gateway_receiving(Received::Text(proof)).await;
    assert!(
        matches!(
            r,
            Err(ServerError::Protocol(HandshakeError::Unexpected {
                expected: "hello",
                got: "proof"
            }))
        ),
        "{r:?}"
    );
    let r = gateway_receiving(Received::Closed).await;
    assert!(matches!(r, Err(ServerError::Closed)), "{r:?}");
}

/// The agent's half against a hand-played gateway that answers the hello
/// with `m`.
async fn agent_receiving(m: Received) -> Result<Welcomed, ClientError<Gone>> {
    let k = key();
    let (mut agent_end, gateway_end) = pipe();
    gateway_end.raw(m);
    let deadline = Instant::now() + DEADLINE;
    let r = client(
        &mut agent_end,
        &identity(&k, PROTOCOL_VERSION),
        &EXPORTER,
        deadline,
    )
    .await;
    drop(gateway_end);
    r
}

#[tokio::test]
async fn the_agent_refuses_oversized_malformed_and_out_of_order_messages() {
    tokio::time::pause();
    let big = format!(
        r#"{{"type":"challenge","nonce":"{}"}}"#,
        "A".repeat(MAX_HANDSHAKE_MESSAGE)
    );
    let len = big.len();
    assert_eq!(
        agent_receiving(Received::Text(big)).await,
        Err(ClientError::Protocol(HandshakeError::TooLarge(len)))
    );
    let short = Message::Challenge {
        nonce: b64(&[7; 16]),
    }
    .encode();
    assert_eq!(
        agent_receiving(Received::Text(short)).await,
        Err(ClientError::Protocol(HandshakeError::Malformed(
            "nonce is not 32 bytes".into()
        )))
    );
    assert_eq!(
        agent_receiving(Received::Binary).await,
        Err(ClientError::Protocol(HandshakeError::Malformed(
            "binary message during handshake".into()
        )))
    );
    let early = Message::Welcome {
        tunnel_name: "wiki".into(),
    }
    .encode();
    assert_eq!(
        agent_receiving(Received::Text(early)).await,
        Err(ClientError::Protocol(HandshakeError::Unexpected {
            expected: "challenge",
            got: "welcome"
        }))
    );
    // A rejection before the challenge (an older gateway) is surfaced too.
    let rejected = Message::Rejected {
        reason: REJECTED_REASON.into(),
    }
    .encode();
    assert_eq!(
        agent_receiving(Received::Text(rejected)).await,
        Err(ClientError::Rejected(REJECTED_REASON.into()))
    );
}

#[tokio::test]
async fn the_proof_the_agent_sends_is_the_one_the_gateway_checks() {
    // The agent's proof, seen on the wire, verifies under the key, the
    // challenge and this connection's exporter, and under nothing else.
    tokio::time::pause();
    let k = key();
    let (mut agent_end, mut gateway_end) = pipe();
    let deadline = Instant::now() + DEADLINE;
    let agent = tokio::spawn(async move {
        client(
            &mut agent_end,
            &identity(&key(), PROTOCOL_VERSION),
            &EXPORTER,
            deadline,
        )
        .await
    });
    assert!(matches!(gateway_end.next().await, Message::Hello { .. }));
    let challenge = [3; NONCE_LEN];
    gateway_end.raw(Received::Text(
        Message::Challenge {
            nonce: b64(&challenge),
        }
        .encode(),
    ));
    let Message::Proof { mac } = gateway_end.next().await else {
        panic!("expected a proof");
    };
    let mac = unb64::<32>(&mac, "mac").expect("32 bytes");
    assert!(verify_proof(
        &k, "t1", "node-1", &challenge, &EXPORTER, &mac
    ));
    assert!(!verify_proof(
        &k,
        "t1",
        "node-1",
        &challenge,
        &[6; NONCE_LEN],
        &mac
    ));
    gateway_end.raw(Received::Text(
        Message::TryLater {
            reason: "full".into(),
        }
        .encode(),
    ));
    assert_eq!(
        agent.await.expect("agent task"),
        Err(ClientError::TryLater("full".into()))
    );
}
