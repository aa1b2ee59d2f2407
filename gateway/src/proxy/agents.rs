//! The tunnel side of a request: which agent takes it, how its tunnel
//! streams are pooled, and whether a failed attempt goes again (the rules
//! are [`crate::retry`]'s; this records their result on the request).

use std::sync::Arc;

use pingora_error::{Error, ErrorType, Result};
use telemetry::{self, attr, SPAN_TARGET};

use super::{Ctx, Lost, TunnelProxy};
use crate::registry::AgentConn;
use crate::retry::{self, Attempt, Decision, RetryReason};

impl TunnelProxy {
    /// Keys kept-alive connections by agent connection and caller: a
    /// connection never serves another agent, and never another caller.
    pub(super) fn pool_key(&self, ctx: &Ctx, agent: &AgentConn) -> u64 {
        use std::hash::BuildHasher;
        let caller = ctx.caller.as_ref().map_or("", |c| c.id.as_str());
        self.pool_keys.hash_one((agent.conn_id, caller))
    }

    /// The least busy agent of the request's tunnel (not the one a retry
    /// must avoid), held in `ctx.guard` until the request is logged, with
    /// this attempt's stream span.
    pub(super) fn pick_agent(&self, ctx: &mut Ctx) -> Result<Arc<AgentConn>> {
        let tunnel = ctx
            .tunnel
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no tunnel resolved"))?;
        // A retry picks again; release the previous agent first.
        ctx.guard = None;
        let select = tracing::info_span!(target: SPAN_TARGET, parent: &ctx.span, "select agent");
        let traced = !select.is_disabled();
        if traced {
            attr(&select, "tunnel.name", tunnel.name.clone());
        }
        let guard = match self.registry.pick_except(&tunnel.id, ctx.avoid_agent) {
            Ok(g) => g,
            Err(_) => {
                ctx.no_agent = true;
                telemetry::error(&select, "no agent connected");
                return Error::e_explain(ErrorType::HTTPStatus(503), "no agent connected");
            }
        };
        let agent = guard.agent().clone();
        if traced {
            attr(&select, "tunnel.agent", agent.agent_name.clone());
            attr(&select, "tunnel.agent.inflight", agent.inflight() as i64);
        }
        drop(select);
        ctx.guard = Some(guard);
        // One stream span per attempt; a retry's replaces (and ends) the last.
        let stream = tracing::info_span!(target: SPAN_TARGET, parent: &ctx.span, "tunnel stream", otel.kind = "client");
        if traced {
            attr(&stream, "tunnel.name", tunnel.name.clone());
            attr(&stream, "tunnel.agent", agent.agent_name.clone());
        }
        ctx.stream_span = stream;
        Ok(agent)
    }

    /// Whether a failed attempt goes again (`retry::decide`), with the
    /// request's retry counts, the agent to avoid and the loss recorded in
    /// `ctx`.
    pub(super) fn judge_failure(
        &self,
        e: &Error,
        method: &http::Method,
        response_started: bool,
        body_truncated: bool,
        ctx: &mut Ctx,
    ) -> bool {
        let agent = ctx.guard.as_ref().map(|g| g.agent().clone());
        let other_agent = match (&ctx.tunnel, &agent) {
            (Some(t), Some(a)) => self.registry.has_other_agent(&t.id, a.conn_id),
            _ => false,
        };
        let decision = retry::decide(&Attempt {
            error: e,
            method,
            response_started,
            body_truncated,
            stale_retries: ctx.stale_retries,
            lost_retries: ctx.lost_retries,
            other_agent,
            same_agent_serving: agent.as_ref().is_some_and(|a| a.is_serving()),
        });
        let agent_name = agent.as_ref().map_or("?", |a| a.agent_name.as_str());
        let tunnel = ctx.tunnel.as_ref().map_or("?", |t| t.name.as_str());
        match decision {
            Decision::Retry(reason) => {
                match reason {
                    RetryReason::StreamClosed => {
                        ctx.lost_retries += 1;
                        ctx.lost = Some(Lost {
                            agent: agent_name.to_string(),
                            not_retried: None,
                        });
                    }
                    RetryReason::AgentLost => {
                        ctx.lost_retries += 1;
                        ctx.avoid_agent = agent.as_ref().map(|a| a.conn_id);
                        ctx.lost = Some(Lost {
                            agent: agent_name.to_string(),
                            not_retried: None,
                        });
                    }
                    _ => ctx.stale_retries += 1,
                }
                tracing::info!(%tunnel, agent = agent_name, reason = reason.label(), trace_id = %ctx.trace_id, "tunnel stream broke before a response; sending the request again");
                crate::metrics::request_retried(reason.label());
                true
            }
            Decision::Lost(why) => {
                tracing::warn!(%tunnel, agent = agent_name, reason = why.label(), trace_id = %ctx.trace_id, "tunnel stream broke after the request was sent; not sending it again");
                crate::metrics::request_lost(why.label());
                ctx.lost = Some(Lost {
                    agent: agent_name.to_string(),
                    not_retried: Some(why),
                });
                false
            }
            Decision::Other => false,
        }
    }
}
