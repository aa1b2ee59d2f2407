//! Story: an attacker who recorded an agent's handshake cannot reuse it:
//! the proof is bound to the gateway's fresh challenge and to the TLS
//! session it was made on. A hand-rolled agent speaks the handshake of the
//! `protocol` crate to show it.

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use protocol::handshake::{compute_proof, unb64, NONCE_LEN};
use protocol::{Message, TunnelKey, PROTOCOL_VERSION};
use rustls::pki_types::ServerName;
use tests::{Gateway, GatewayOptions, PATIENCE};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::WebSocketStream;

/// One WebSocket connection to the agents' listener, before the handshake.
struct Session {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    exporter: [u8; NONCE_LEN],
}

impl Session {
    async fn open(gateway: &Gateway) -> Session {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(gateway.pki().root_store())
        .with_no_client_auth();
        let tcp = TcpStream::connect(gateway.agents_addr()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS 1.3 with the agents' listener");
        let mut exporter = [0u8; NONCE_LEN];
        tls.get_ref()
            .1
            .export_keying_material(&mut exporter, protocol::EXPORTER_LABEL, None)
            .unwrap();
        let (ws, _) = tokio_tungstenite::client_async(gateway.agents_url(), tls)
            .await
            .expect("WebSocket upgrade on the agents' listener");
        Session { ws, exporter }
    }

    async fn send(&mut self, message: Message) {
        self.ws.send(Ws::text(message.encode())).await.unwrap();
    }

    async fn receive(&mut self) -> Message {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("gateway answers");
            match next.expect("connection open").expect("a frame") {
                Ws::Text(text) => return Message::decode(text.as_str()).unwrap(),
                Ws::Ping(_) | Ws::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Says hello; returns the gateway's challenge.
    async fn hello(&mut self, tunnel_id: &str, agent: &str) -> [u8; NONCE_LEN] {
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            tunnel_id: tunnel_id.into(),
            agent: agent.into(),
            software: None,
        };
        self.send(hello).await;
        match self.receive().await {
            Message::Challenge { nonce } => unb64(&nonce, "nonce").unwrap(),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// Sends a proof; returns the gateway's verdict.
    async fn prove(&mut self, mac: [u8; 32]) -> Message {
        self.send(Message::Proof {
            mac: protocol::handshake::b64(&mac),
        })
        .await;
        self.receive().await
    }
}

fn assert_rejected(verdict: Message) {
    match verdict {
        Message::Rejected { reason } => assert_eq!(reason, "authentication failed"),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_proof_is_worthless_on_another_connection() {
    let gateway = Gateway::start(GatewayOptions::new()).await;
    let tunnel = gateway.create_tunnel("acme", "wiki").await;
    let key = TunnelKey::parse(&tunnel.key).expect("the key tunnel create printed");
    let agent = "recorded-node";

    // The genuine agent's handshake, which the attacker records.
    let mut genuine = Session::open(&gateway).await;
    let challenge = genuine.hello(&tunnel.id, agent).await;
    let recorded = compute_proof(&key, &tunnel.id, agent, &challenge, &genuine.exporter);
    match genuine.prove(recorded).await {
        Message::Welcome { tunnel_name, .. } => assert_eq!(tunnel_name, "wiki"),
        other => panic!("the genuine proof was refused: {other:?}"),
    }
    // (It would now serve streams; this test only cares about the handshake.)
    let mark = gateway.events().mark();

    // Replayed as is on a new connection: a new challenge makes it wrong.
    let mut replay = Session::open(&gateway).await;
    let fresh = replay.hello(&tunnel.id, agent).await;
    assert_ne!(fresh, challenge, "the gateway reused a challenge");
    assert_rejected(replay.prove(recorded).await);

    // A relay answering a fresh challenge with the genuine TLS session's
    // binding (a man in the middle) is refused too.
    let mut relay = Session::open(&gateway).await;
    let relayed = relay.hello(&tunnel.id, agent).await;
    assert_rejected(
        relay
            .prove(compute_proof(
                &key,
                &tunnel.id,
                agent,
                &relayed,
                &genuine.exporter,
            ))
            .await,
    );

    let rejections = gateway
        .events()
        .wait_until(
            "two agent_rejected events",
            |events| {
                let n = events[mark..]
                    .iter()
                    .filter(|e| e["event"] == "agent_rejected")
                    .count();
                (n >= 2).then_some(n)
            },
            PATIENCE,
        )
        .await;
    assert_eq!(rejections, 2);
    drop(genuine);
}
