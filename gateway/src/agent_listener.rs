//! The agents' listener: TLS 1.3, WebSocket upgrade on the fixed path, the
//! key-proof handshake, then an HTTP/2 client over the WebSocket whose
//! `CONNECT` streams carry caller connections. One task per agent
//! connection owns it until it closes, drains or the gateway stops.
//!
//! Budgets, so that no one party can keep the others' agents out:
//! unauthenticated connections share `max_pending_handshakes`, of which one
//! source may hold `max_pending_handshakes_per_source`, and each has
//! `tls_timeout` to finish TLS; authenticated ones share
//! `max_connections`, of which one tunnel may hold `max_agents_per_tunnel`.
//! An agent refused for a full budget after a good proof is told `TryLater`
//! and retries with backoff; it never sees `Rejected`, which is final.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use protocol::handshake::{
    self, Admit, Hello, KeyUsed, Keys, ServerError, ServerParams, Verifier, REJECTED_REASON,
};
use protocol::{Control, WsByteStream};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::WebSocketStream;

use crate::config::AgentsSection;
use crate::connector::open_stream;
use crate::counted::Counted;
use crate::per_source::{PerSource, SourceSlot};
use crate::registry::{AgentConn, AgentSlot, ByteCounts, NewAgent, Registry};
use crate::store::TunnelInfo;
use protocol::events::emit;

type AgentWs = WebSocketStream<TlsStream<TcpStream>>;

/// Least time between an agent's proof and the gateway's verdict.
const VERDICT_FLOOR: Duration = Duration::from_millis(25);

/// The agent listener, run as a pingora background service.
pub struct AgentListener {
    listener: Mutex<Option<std::net::TcpListener>>,
    shared: Arc<Shared>,
}

struct Shared {
    acceptor: TlsAcceptor,
    handshakes: Arc<Semaphore>,
    /// Pending handshakes per source address.
    sources: PerSource,
    connections: Arc<Semaphore>,
    registry: Arc<Registry>,
    cfg: AgentsSection,
    grace: Duration,
}

/// How a handshake failed.
#[derive(Debug, thiserror::Error)]
enum HsError {
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("TLS not finished within {0:?}")]
    TlsTimeout(Duration),
    /// The whole handshake (TLS, upgrade, messages) took too long.
    #[error("handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("protocol: {0}")]
    Protocol(#[from] handshake::HandshakeError),
    #[error("peer closed during handshake")]
    Closed,
    #[error("tunnel store unavailable")]
    Store,
    #[error("rejected agent `{agent}` for tunnel `{tunnel_id}`")]
    Rejected { tunnel_id: String, agent: String },
    /// Authenticated, but a budget is full; the agent was told `TryLater`.
    #[error("agent `{agent}` of tunnel `{tunnel}` told to retry later: {why}")]
    Full {
        tunnel: String,
        agent: String,
        /// The metric label: `tunnel_full` or `max_connections`.
        reason: &'static str,
        why: String,
    },
}

/// An agent that passed the handshake.
struct Admitted {
    ws: AgentWs,
    tunnel: TunnelInfo,
    agent: String,
    software: Option<String>,
    /// The protocol version the agent speaks.
    protocol: u32,
    key_generation: i64,
    _admission: Admission,
}

/// What an admitted agent connection holds for as long as it lives.
struct Admission {
    _tunnel_slot: AgentSlot,
    _connection: tokio::sync::OwnedSemaphorePermit,
}

impl AgentListener {
    /// A listener on an already bound socket (so port 0 is known before start).
    pub fn new(
        listener: std::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        registry: Arc<Registry>,
        cfg: AgentsSection,
        grace: Duration,
    ) -> Self {
        AgentListener {
            listener: Mutex::new(Some(listener)),
            shared: Arc::new(Shared {
                acceptor: TlsAcceptor::from(tls),
                handshakes: Arc::new(Semaphore::new(cfg.max_pending_handshakes)),
                sources: PerSource::new(cfg.max_pending_handshakes_per_source),
                connections: Arc::new(Semaphore::new(cfg.max_connections)),
                registry,
                cfg,
                grace,
            }),
        }
    }
}

#[async_trait]
impl BackgroundService for AgentListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().expect("lock").take() else {
            return;
        };
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("agent listener: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // One source first: a host over its share is
                        // refused before it can touch the shared budget.
                        let Some(source_slot) = self.shared.sources.try_acquire(peer.ip()) else {
                            crate::metrics::handshake_rejected("per_source");
                            tracing::debug!(%peer, "agent connection refused: agents.max_pending_handshakes_per_source reached");
                            continue;
                        };
                        // Unauthenticated connections get their own, smaller
                        // budget so slow handshakes cannot crowd out agents.
                        let Ok(permit) = self.shared.handshakes.clone().try_acquire_owned() else {
                            crate::metrics::handshake_rejected("busy");
                            tracing::warn!(%peer, "agent connection refused: agents.max_pending_handshakes reached");
                            continue;
                        };
                        let shared = self.shared.clone();
                        let sd = shutdown.clone();
                        tokio::spawn(serve_agent(shared, tcp, peer, sd, (permit, source_slot)));
                    }
                    Err(e) => {
                        // Out of descriptors or similar: back off instead of spinning.
                        tracing::warn!("agent accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

async fn serve_agent(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: ShutdownWatch,
    pending: (tokio::sync::OwnedSemaphorePermit, SourceSlot),
) {
    let _ = tcp.set_nodelay(true);
    let timeout = shared.cfg.handshake_timeout;
    // Boxed, here and for the other one-time steps below: a task keeps the
    // space of its largest await for its whole life, and an agent's task
    // lives as long as its connection. The handshake's state (TLS and
    // WebSocket setup) is freed once it is done.
    let deadline = tokio::time::Instant::now() + timeout;
    let handshake = Box::pin(handshake(&shared, tcp, deadline));
    let admitted = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return handshake_failed(peer, e),
        Err(_) => return handshake_failed(peer, HsError::Timeout(timeout)),
    };
    drop(pending);
    if let Err(e) = run_tunnel(&shared, admitted, peer, shutdown).await {
        tracing::info!(%peer, "agent connection ended: {e}");
    }
}

/// Counts and reports a handshake that did not admit an agent.
fn handshake_failed(peer: SocketAddr, e: HsError) {
    match e {
        HsError::Rejected { tunnel_id, agent } => {
            crate::metrics::handshake_rejected("key");
            tracing::warn!(%peer, %tunnel_id, %agent, "agent rejected: {REJECTED_REASON}");
            emit(
                json!({"event": "agent_rejected", "reason": REJECTED_REASON, "peer": peer.to_string()}),
            );
        }
        HsError::Full {
            tunnel,
            agent,
            reason,
            why,
        } => {
            crate::metrics::handshake_rejected(reason);
            tracing::warn!(%peer, %tunnel, %agent, "agent told to retry later: {why}");
            emit(json!({
                "event": "agent_refused",
                "reason": reason,
                "tunnel_name": tunnel,
                "agent": agent,
                "peer": peer.to_string(),
            }));
        }
        HsError::Timeout(limit) => {
            crate::metrics::handshake_rejected("timeout");
            tracing::info!(%peer, "agent handshake timed out after {limit:?}");
        }
        HsError::TlsTimeout(limit) => {
            crate::metrics::handshake_rejected("tls_timeout");
            tracing::info!(%peer, "agent connection closed: TLS not finished within {limit:?}");
        }
        e => {
            crate::metrics::handshake_rejected("protocol");
            tracing::info!(%peer, "agent handshake failed: {e}");
        }
    }
}

async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    deadline: tokio::time::Instant,
) -> Result<Admitted, HsError> {
    // A peer that sends nothing (or trickles its ClientHello) holds a
    // pending slot for this long, not for the whole handshake timeout.
    let tls_limit = shared.cfg.tls_timeout;
    let tls = tokio::time::timeout(tls_limit, shared.acceptor.accept(tcp))
        .await
        .map_err(|_| HsError::TlsTimeout(tls_limit))?
        .map_err(HsError::Tls)?;
    let mut exporter = [0u8; handshake::NONCE_LEN];
    tls.get_ref()
        .1
        .export_keying_material(&mut exporter, protocol::EXPORTER_LABEL, None)
        .map_err(|e| HsError::Tls(std::io::Error::other(e)))?;
    // The callback type is tungstenite's; its error variant is large by design.
    #[allow(clippy::result_large_err)]
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == protocol::AGENT_PATH {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some("not found".into()));
            *err.status_mut() = http::StatusCode::NOT_FOUND;
            Err(err)
        }
    };
    let mut ws = tokio_tungstenite::accept_hdr_async_with_config(
        tls,
        check_path,
        Some(protocol::ws_config()),
    )
    .await?;

    let params = ServerParams {
        exporter,
        deadline,
        verdict_floor: VERDICT_FLOOR,
    };
    let accepted = handshake::server(&mut ws, &mut StoreVerifier { shared }, &params)
        .await
        .map_err(|e| match e {
            ServerError::Transport(e) => HsError::Ws(e),
            ServerError::Protocol(e) => HsError::Protocol(e),
            ServerError::Closed => HsError::Closed,
            ServerError::Timeout => HsError::Timeout(shared.cfg.handshake_timeout),
            ServerError::Lookup(StoreUnavailable) => HsError::Store,
            ServerError::Rejected { hello, .. } => HsError::Rejected {
                tunnel_id: hello.tunnel_id,
                agent: hello.agent,
            },
            ServerError::TryLater {
                hello,
                reason: why,
                refused: (tunnel, reason),
            } => HsError::Full {
                tunnel,
                agent: hello.agent,
                reason,
                why,
            },
        })?;
    let (tunnel, key_generation, admission) = accepted.admitted;
    let Hello {
        agent,
        software,
        version,
        ..
    } = accepted.hello;
    Ok(Admitted {
        ws,
        tunnel,
        agent,
        software: software.map(|s| s.chars().take(64).collect()),
        protocol: version,
        key_generation,
        _admission: admission,
    })
}

/// The store lookup failed (logged where it failed).
struct StoreUnavailable;

/// The gateway's side of the handshake's verdict: the tunnel's keys from
/// the registry, and its budgets.
struct StoreVerifier<'a> {
    shared: &'a Shared,
}

impl Verifier for StoreVerifier<'_> {
    /// The tunnel and its current key's generation.
    type Tunnel = (TunnelInfo, i64);
    /// The tunnel, the generation of the key the agent proved, its places.
    type Admitted = (TunnelInfo, i64, Admission);
    /// The tunnel's name and the metric label.
    type Refused = (String, &'static str);
    type Error = StoreUnavailable;

    async fn lookup(
        &mut self,
        hello: &Hello,
    ) -> Result<Option<Keys<Self::Tunnel>>, StoreUnavailable> {
        match self.shared.registry.tunnel_with_key(&hello.tunnel_id).await {
            Ok(Some(k)) => Ok(Some(Keys {
                current: k.current,
                previous: k.previous,
                tunnel: (k.info, k.generation),
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                let tunnel_id = &hello.tunnel_id;
                tracing::error!(%tunnel_id, "tunnel lookup failed, closing without a verdict: {e}");
                Err(StoreUnavailable)
            }
        }
    }

    fn admit(
        &mut self,
        _hello: &Hello,
        (info, generation): Self::Tunnel,
        key: KeyUsed,
    ) -> Admit<Self::Admitted, Self::Refused> {
        let key_generation = match key {
            KeyUsed::Current => generation,
            KeyUsed::Previous => generation - 1,
        };
        match admit(self.shared, &info) {
            Ok(admission) => Admit::Welcome {
                tunnel_name: info.name.clone(),
                admitted: (info, key_generation, admission),
            },
            Err((reason, why)) => Admit::TryLater {
                reason: why,
                refused: (info.name, reason),
            },
        }
    }
}

/// Takes a place for an authenticated agent in its tunnel's and the
/// gateway's budgets, or says which is full (metric label, and the reason
/// the agent is told). Checked only after a good proof, so the answer
/// tells nothing to whoever does not hold the key.
fn admit(shared: &Shared, tunnel: &TunnelInfo) -> Result<Admission, (&'static str, String)> {
    let max = shared.cfg.max_agents_per_tunnel;
    let slot = shared
        .registry
        .reserve_agent_slot(&tunnel.id, max)
        .ok_or_else(|| {
            (
                "tunnel_full",
                format!(
                    "tunnel `{}` already has {max} agents connected (agents.max_agents_per_tunnel)",
                    tunnel.name
                ),
            )
        })?;
    let permit = shared
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            (
                "max_connections",
                "the gateway has its most agent connections (agents.max_connections)".to_string(),
            )
        })?;
    Ok(Admission {
        _tunnel_slot: slot,
        _connection: permit,
    })
}

fn agent_event(event: &str, agent: &AgentConn) -> serde_json::Value {
    json!({
        "event": event,
        "tunnel": agent.tunnel.id,
        "tunnel_name": agent.tunnel.name,
        "agent": agent.agent_name,
        "conn": agent.conn_id,
    })
}

async fn run_tunnel(
    shared: &Shared,
    admitted: Admitted,
    peer: SocketAddr,
    mut shutdown: ShutdownWatch,
) -> anyhow::Result<()> {
    let Admitted {
        ws,
        tunnel,
        agent: agent_name,
        software,
        protocol,
        key_generation,
        _admission,
    } = admitted;
    let bytes = Arc::new(ByteCounts::default());
    // The HTTP/2 connection is driven by a task of its own; cancelling
    // this token is how we close the connection (drained, shutdown).
    let closer = tokio_util::sync::CancellationToken::new();
    let _close_on_exit = closer.clone().drop_guard();
    let hb = shared.cfg.heartbeat_interval;
    let hb_timeout = shared.cfg.heartbeat_timeout;
    let mut io = WsByteStream::server(ws).with_cancel(closer.clone());
    // The agent speaks first (its HTTP/2 SETTINGS): see `peer_spoke`.
    tokio::time::timeout(shared.cfg.handshake_timeout, Box::pin(io.peer_spoke()))
        .await
        .map_err(|_| anyhow::anyhow!("agent sent nothing after the handshake"))??;
    let (sender, mut conn) = Box::pin(
        h2::client::Builder::new()
            // Fixed, generous windows: the default 64 KiB caps a stream at
            // 64 KiB per round trip. The connection window bounds what one
            // agent connection buffers in total.
            .initial_window_size(protocol::STREAM_WINDOW)
            .initial_connection_window_size(protocol::CONNECTION_WINDOW)
            .max_frame_size(64 << 10)
            .max_send_buffer_size(1 << 20)
            // CONNECT streams, never server push.
            .enable_push(false)
            .handshake::<_, Bytes>(Counted::new(io, bytes.clone())),
    )
    .await?;
    // Both sides ping every heartbeat interval, idle or not: a hung agent
    // (no FIN, no crash) is dropped once a pong is `hb_timeout` late.
    let ping = conn
        .ping_pong()
        .expect("taken once, right after the handshake");
    let ended = bytes.clone();
    let mut conn_task = tokio::spawn(async move {
        let r = tokio::select! {
            r = conn => r.map_err(|e| e.to_string()),
            e = protocol::h2io::heartbeat(ping, hb, hb_timeout) => Err(e.to_string()),
        };
        ended
            .transport_ended
            .store(true, std::sync::atomic::Ordering::Release);
        r
    });
    let control = match tokio::time::timeout(
        shared.cfg.handshake_timeout,
        Box::pin(open_stream(sender.clone(), protocol::CONTROL_AUTHORITY)),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            conn_task.abort();
            anyhow::bail!("control stream: {e}");
        }
        Err(_) => {
            conn_task.abort();
            anyhow::bail!("control stream: timed out");
        }
    };
    // A tunnel created behind the gateway's back (the CLI on the store)
    // must be in the tables before `enforce` looks the agent up there.
    if let Err(e) = Box::pin(shared.registry.reread_if_changed()).await {
        conn_task.abort();
        anyhow::bail!("store: {e}");
    }
    let agent = shared.registry.add_agent(
        NewAgent {
            tunnel,
            agent_name,
            key_generation,
            remote: peer,
            software,
            protocol,
            bytes,
        },
        sender,
    );
    tracing::info!(tunnel = %agent.tunnel.name, agent = %agent.agent_name, conn = agent.conn_id, "agent connected");
    emit(agent_event("agent_connected", &agent));

    // Control lines are at most 64 bytes: a default 8 KiB buffer would be
    // 8 KiB more per connected agent.
    let mut control = BufReader::with_capacity(128, control);
    let mut line = Vec::with_capacity(64);
    let mut draining = false;
    let mut by_operator = false;
    let mut stopping = false;
    let reason = loop {
        tokio::select! {
            r = &mut conn_task => {
                break match r {
                    Ok(Ok(())) => "connection closed".to_string(),
                    Ok(Err(e)) => format!("connection failed: {e}"),
                    Err(e) => format!("connection task failed: {e}"),
                };
            }
            read = read_control_line(&mut control, &mut line), if !draining => match read {
                Ok(Some(Control::Drain)) => {
                    draining = true;
                    agent.start_draining();
                    shared.registry.held_changed.notify_one();
                    tracing::info!(tunnel = %agent.tunnel.name, agent = %agent.agent_name, inflight = agent.inflight(), "agent draining");
                    emit(agent_event("agent_draining", &agent));
                }
                Ok(None) => break "control stream closed".to_string(),
                Err(e) => break format!("control stream: {e}"),
            },
            _ = agent.wait_idle(), if draining => break if by_operator {
                "drained by operator".to_string()
            } else {
                "drained".to_string()
            },
            reason = agent.kicked() => break reason,
            _ = agent.drain_requested(), if !draining => {
                draining = true;
                by_operator = true;
                agent.start_draining();
                shared.registry.held_changed.notify_one();
                tracing::info!(tunnel = %agent.tunnel.name, agent = %agent.agent_name, inflight = agent.inflight(), "agent drained by operator");
                emit(agent_event("agent_draining", &agent));
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                draining = true;
                agent.start_draining();
            }
            _ = tokio::time::sleep(shared.grace), if stopping => break "gateway shutting down".to_string(),
        }
    };
    shared.registry.remove_agent(&agent);
    conn_task.abort();
    tracing::info!(tunnel = %agent.tunnel.name, agent = %agent.agent_name, %reason, "agent disconnected");
    let mut ev = agent_event("agent_disconnected", &agent);
    ev["reason"] = json!(reason);
    emit(ev);
    Ok(())
}

/// Reads one control line of at most 64 bytes. `None` at end of stream.
async fn read_control_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<Option<Control>> {
    use tokio::io::AsyncReadExt;
    line.clear();
    let n = r.take(64).read_until(b'\n', line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "control line too long",
        ));
    }
    line.pop();
    Control::parse(line)
        .map(Some)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown control line"))
}
