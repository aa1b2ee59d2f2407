//! What the lifecycle stories share: a gateway with one tunnel and two
//! local services, agents that must be refused, and the gateway's
//! `agent_disconnected` events and agent listings.

use std::time::Instant;

use serde_json::Value;

use crate::upstream::{self, Upstream};
use crate::{Agent, AgentOptions, Gateway, GatewayOptions, Tunnel, PATIENCE};

/// A gateway routing `wiki.test` to the tunnel `wiki` (org `acme`), and two
/// echo services, `node-a` and `node-b`, for agents to serve.
pub struct TwoNodes {
    /// The running gateway.
    pub gateway: Gateway,
    /// The tunnel `wiki`, key included.
    pub tunnel: Tunnel,
    /// The echo service named `node-a`.
    pub node_a: Upstream,
    /// The echo service named `node-b`.
    pub node_b: Upstream,
}

impl TwoNodes {
    /// Starts the gateway with `opts` plus the `wiki.test` route.
    pub async fn start(opts: GatewayOptions) -> TwoNodes {
        let gateway = Gateway::start(opts.route("wiki.test", "wiki")).await;
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        TwoNodes {
            gateway,
            tunnel,
            node_a: upstream::echo("node-a").await,
            node_b: upstream::echo("node-b").await,
        }
    }

    /// An agent named `node-a` in front of `node_a`, with the tunnel's key.
    pub async fn agent_a(&self) -> Agent {
        self.agent("node-a", &self.node_a).await
    }

    /// An agent named `node-b` in front of `node_b`, with the tunnel's key.
    pub async fn agent_b(&self) -> Agent {
        self.agent("node-b", &self.node_b).await
    }

    async fn agent(&self, name: &str, node: &Upstream) -> Agent {
        Agent::connect(
            &self.gateway,
            &self.tunnel,
            node.addr(),
            AgentOptions::new().name(name),
        )
        .await
    }
}

/// Starts an agent holding `tunnel`'s (id, key) that the gateway must
/// refuse: it reports `rejected` and exits 2 without ever connecting.
pub async fn assert_refused(gateway: &Gateway, tunnel: &Tunnel, why: &str) {
    let service = upstream::echo("refused").await;
    let mut agent = Agent::start(gateway, tunnel, service.addr(), AgentOptions::new()).await;
    agent.wait_event("rejected", PATIENCE).await;
    let status = agent.wait_exit().await;
    assert_eq!(
        status.code(),
        Some(2),
        "{why}: refused agent exit\n{}",
        agent.logs()
    );
    assert!(
        !agent
            .events()
            .snapshot()
            .iter()
            .any(|e| e["event"] == "connected"),
        "{why}: the agent connected: {}",
        agent.events().dump()
    );
}

/// Waits for the gateway's `agent_disconnected` of `agent` after `mark`,
/// returning it and when it was seen.
pub async fn disconnected(gateway: &Gateway, mark: usize, agent: &str) -> (Value, Instant) {
    let e = gateway
        .events()
        .wait_after(
            mark,
            &format!("agent_disconnected of {agent}"),
            |e| e["event"] == "agent_disconnected" && e["agent"] == agent,
            PATIENCE,
        )
        .await;
    (e, Instant::now())
}

/// The `reason` of an event ("" when it has none).
pub fn reason(e: &Value) -> String {
    e["reason"].as_str().unwrap_or_default().to_string()
}

/// The entry of `agent` in an agent listing.
pub fn agent_entry<'a>(agents: &'a [Value], agent: &str) -> &'a Value {
    agents
        .iter()
        .find(|a| a["agent"] == agent)
        .unwrap_or_else(|| panic!("{agent} missing from {agents:?}"))
}
