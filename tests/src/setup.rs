//! The opening most stories share, so each test file can get to its point.

use crate::upstream::{self, Upstream};
use crate::{Agent, AgentOptions, Caller, Gateway, GatewayOptions, Tunnel};

/// A gateway routing `wiki.test` to the tunnel `wiki` of org `acme`, the
/// wiki (a local service) behind one connected agent, and a caller of
/// `acme` holding a valid token.
pub struct WikiTunnel {
    /// The running gateway.
    pub gateway: Gateway,
    /// The tunnel `wiki`, key included.
    pub tunnel: Tunnel,
    /// The local service behind the agent.
    pub wiki: Upstream,
    /// The connected agent.
    pub agent: Agent,
    /// A caller of `acme`.
    pub caller: Caller,
    /// The caller's token.
    pub token: String,
}

impl WikiTunnel {
    /// The usual setup with an echo service named `wiki`.
    pub async fn start() -> WikiTunnel {
        Self::start_with(GatewayOptions::new(), upstream::echo("wiki").await).await
    }

    /// The usual setup with extra gateway options and a chosen service.
    pub async fn start_with(opts: GatewayOptions, wiki: Upstream) -> WikiTunnel {
        Self::started(Gateway::start(opts.route("wiki.test", "wiki")).await, wiki).await
    }

    /// The usual tunnel, echo service, agent and caller behind a gateway
    /// whose options route to `wiki` themselves (with the plugins a story
    /// wants on the route).
    pub async fn start_routed(opts: GatewayOptions) -> WikiTunnel {
        Self::started(Gateway::start(opts).await, upstream::echo("wiki").await).await
    }

    async fn started(gateway: Gateway, wiki: Upstream) -> WikiTunnel {
        let tunnel = gateway.create_tunnel("acme", "wiki").await;
        let agent = Agent::connect(&gateway, &tunnel, wiki.addr(), AgentOptions::new()).await;
        let token = gateway.create_caller("acme").await;
        let caller = gateway.caller(&token);
        WikiTunnel {
            gateway,
            tunnel,
            wiki,
            agent,
            caller,
            token,
        }
    }
}
