//! The relay between gateway instances (see [`crate::cluster`]), both ends:
//!
//! - the instance a caller reached, with no agent of the tunnel: after
//!   admission and the policy chain, [`TunnelProxy::relay_needed`] picks an
//!   instance holding one, [`peer`] is it as a pingora upstream (mutual
//!   TLS 1.3), and [`mark`] writes the relay fields into the head it
//!   already rewrote as for an agent;
//! - the instance relayed to, on its relay listener:
//!   [`TunnelProxy::admit_relayed`] takes the caller, tunnel and route
//!   from those fields instead of a credential, runs no plugin, and the
//!   request goes to a local agent, never to a third instance.

use std::net::SocketAddr;
use std::time::Duration;

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::outcome::Outcome;
use super::{Ctx, TunnelProxy};
use crate::cluster::{
    Cluster, RELAY_BODY_LIMIT, RELAY_CALLER, RELAY_FROM, RELAY_ORG, RELAY_ROUTE, RELAY_TUNNEL,
};
use crate::http_checks;
use crate::store::CallerInfo;

/// How long the relay's TCP connect and its TLS handshake may take.
const RELAY_CONNECT: Duration = Duration::from_secs(3);
const RELAY_HANDSHAKE: Duration = Duration::from_secs(5);
/// The instance relayed to answers a slow service itself (504, after
/// `upstream_timeout`); the relaying one waits this much longer.
const RELAY_SLACK: Duration = Duration::from_secs(5);
/// Other instances a request may be relayed to after the first failed.
const MAX_RELAY_RETRIES: u32 = 2;

impl TunnelProxy {
    /// Whether the admitted request goes to another instance: there is a
    /// cluster, this is not already a relayed request, no agent of the
    /// tunnel is here, and another instance holds one.
    pub(super) fn relay_needed(&self, ctx: &mut Ctx) -> bool {
        if self.relayed {
            return false;
        }
        let (Some(cluster), Some(tunnel)) = (&self.cluster, &ctx.tunnel) else {
            return false;
        };
        if self.registry.serves(&tunnel.id) {
            return false;
        }
        ctx.relay_to = cluster.relay_target(&tunnel.id);
        ctx.relay_to.is_some()
    }

    /// After a failed relay attempt that sent nothing the instance could
    /// have acted on: the instance is suspect, and another instance
    /// holding the tunnel, if any, takes the request.
    pub(super) fn relay_again(&self, ctx: &mut Ctx) -> bool {
        let (Some(cluster), Some(tunnel), Some(failed)) =
            (&self.cluster, &ctx.tunnel, ctx.relay_to)
        else {
            return false;
        };
        cluster.suspect(failed);
        if ctx.relay_retries >= MAX_RELAY_RETRIES {
            return false;
        }
        match cluster.relay_target_except(&tunnel.id, Some(failed)) {
            Some(next) => {
                tracing::info!(tunnel = %tunnel.name, instance = %failed, trace_id = %ctx.trace_id, "could not relay to the instance holding the tunnel; relaying to {next}");
                ctx.relay_to = Some(next);
                ctx.relay_retries += 1;
                true
            }
            None => false,
        }
    }

    /// Admission of a relayed request: the relay fields the instance that
    /// admitted it wrote (its TLS client certificate was checked against
    /// the cluster's CA before any byte was read). Framing is checked
    /// again; credentials, routing and plugins are not.
    pub(super) async fn admit_relayed(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), Outcome> {
        let req = session.req_header();
        http_checks::check_framing(&req.headers).map_err(Outcome::bad_request)?;
        let field = |name: &str| -> std::result::Result<String, Outcome> {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= 256)
                .map(str::to_string)
                .ok_or_else(|| {
                    Outcome::bad_request(&format!("relayed request without a valid `{name}`"))
                })
        };
        let tunnel_id = field(RELAY_TUNNEL)?;
        let caller = CallerInfo {
            id: field(RELAY_CALLER)?,
            org: field(RELAY_ORG)?,
        };
        let route = field(RELAY_ROUTE)?;
        let body_limit: u64 = field(RELAY_BODY_LIMIT)?
            .parse()
            .map_err(|_| Outcome::bad_request("relayed request with an invalid body limit"))?;
        let from = field(RELAY_FROM).unwrap_or_default();
        let tunnel = self
            .registry
            .tunnel_by_id(&tunnel_id)
            .await
            .map_err(|e| {
                tracing::error!("tunnel lookup failed: {e}");
                Outcome::StoreUnavailable("tunnel")
            })?
            .ok_or_else(|| Outcome::NoTunnel {
                name: tunnel_id.clone(),
            })?;
        // The caller's Host, which the first instance judged and forwarded
        // untouched.
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| crate::judgement::judge_host(h).ok())
            .ok_or_else(|| Outcome::bad_request("relayed request without a valid Host"))?;
        ctx.host = host.host.clone();
        ctx.authority = host.authority();
        ctx.path = req.uri.path().to_string();
        ctx.route = Some(route.into());
        ctx.upgrade = http_checks::is_websocket_upgrade(&req.headers);
        ctx.body_limit = body_limit;
        if let Some(len) = http_checks::content_length(&req.headers) {
            if len > body_limit {
                return Err(Outcome::BodyTooLarge {
                    declared: Some(len),
                    limit: body_limit,
                });
            }
        }
        tracing::debug!(tunnel = %tunnel.name, from = %from, trace_id = %ctx.trace_id, "relayed request admitted");
        ctx.caller = Some(caller);
        ctx.tunnel = Some(tunnel);
        Ok(())
    }
}

/// The instance at `to` as a pingora upstream: TLS 1.3 (the relay
/// listener takes nothing else), its certificate checked against the
/// cluster's CA and name, this instance's shown.
pub(super) fn peer(cluster: &Cluster, to: SocketAddr, ctx: &Ctx) -> Box<HttpPeer> {
    let mut peer = HttpPeer::new(to, true, cluster.server_name.clone());
    peer.client_cert_key = Some(cluster.client_cert.clone());
    peer.options.ca = Some(cluster.ca.clone());
    peer.options.alpn = ALPN::H1;
    peer.options.connection_timeout = Some(RELAY_CONNECT);
    peer.options.total_connection_timeout = Some(RELAY_HANDSHAKE);
    peer.options.read_timeout = (!ctx.upgrade).then_some(ctx.live.upstream_timeout + RELAY_SLACK);
    peer.options.write_timeout = Some(ctx.live.upstream_timeout + RELAY_SLACK);
    // Well under the listener's keep-alive (the same `public.keepalive`
    // on every instance): a pooled connection is dropped here before the
    // other side closes it under a request.
    peer.options.idle_timeout = Some(ctx.live.pool_idle / 2);
    Box::new(peer)
}

/// Writes the relay fields: who the caller is, which tunnel and route the
/// policy chain admitted, the body limit, and this instance's id.
pub(super) fn mark(
    upstream: &mut RequestHeader,
    ctx: &Ctx,
    cluster: Option<&Cluster>,
) -> Result<()> {
    if let Some(t) = &ctx.tunnel {
        upstream.insert_header(RELAY_TUNNEL, t.id.as_str())?;
    }
    if let Some(c) = &ctx.caller {
        upstream.insert_header(RELAY_CALLER, c.id.as_str())?;
        upstream.insert_header(RELAY_ORG, c.org.as_str())?;
    }
    if let Some(r) = &ctx.route {
        upstream.insert_header(RELAY_ROUTE, r.as_ref())?;
    }
    upstream.insert_header(RELAY_BODY_LIMIT, ctx.body_limit.to_string())?;
    if let Some(c) = cluster {
        upstream.insert_header(RELAY_FROM, c.instance.as_str())?;
    }
    Ok(())
}
