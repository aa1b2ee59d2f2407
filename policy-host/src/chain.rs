//! Running a route's chain: sandboxes taken from an entry's idle pool or
//! made fresh, one call each under the deadline, the first deny or
//! failure deciding.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::Store;

use crate::bindings;
use crate::checks::{check_denial, check_edits};
use crate::load::{Slot, Version};
use crate::{
    clip, Decision, Denial, Failure, HeaderEdit, Plugins, PolicyContext, PolicyRequest, Sandbox,
    MAX_LOG_LINES, MAX_REASON_CHARS,
};

/// One plugin in a route's chain, with the route's configuration for it
/// and its idle initialised sandboxes.
pub struct ChainEntry {
    pub slot: Arc<Slot>,
    pub config: Arc<str>,
    pub(crate) idle: Mutex<Vec<Warm>>,
    /// The host's count of idle sandboxes, shared by every configuration
    /// generation: an entry retired by a live reload gives its idle
    /// sandboxes (and their pool slots) back when it is dropped.
    pub(crate) idle_total: Arc<AtomicU32>,
}

impl Drop for ChainEntry {
    fn drop(&mut self) {
        let n = self.idle.get_mut().map_or(0, |v| v.len()) as u32;
        self.idle_total.fetch_sub(n, Ordering::Relaxed);
    }
}

/// Most idle sandboxes kept per chain entry: calls do not wait inside a
/// plugin, so about one per proxy thread is ever in use.
const MAX_IDLE_PER_ENTRY: usize = 8;

/// An initialised sandbox between requests.
pub(crate) struct Warm {
    /// The plugin version it was made from: a reload retires it.
    version: Arc<Version>,
    store: Store<Sandbox>,
    policy: bindings::Policy,
    /// Requests served so far.
    served: u32,
}

/// The result of a route's chain.
pub enum Verdict {
    /// Forward, after applying these edits in order.
    Allow(Vec<HeaderEdit>),
    /// A plugin denied: answer with its denial.
    Deny { plugin: Arc<str>, denial: Denial },
    /// A plugin could not decide: answer with the failure's status.
    Fail { plugin: Arc<str>, failure: Failure },
}

impl Plugins {
    /// A new sandbox of the running version, initialised with the entry's
    /// configuration, within `deadline`.
    async fn warm_up(&self, entry: &ChainEntry, deadline: Instant) -> Result<Warm, Failure> {
        let slot = &entry.slot;
        let version = slot.version();
        let mut store = self.store(&slot.name, &slot.replay, deadline);
        let policy = match version.pre.instantiate_async(&mut store).await {
            Ok(p) => p,
            Err(e) => return Err(self.classify(e, &store)),
        };
        match policy.call_init(&mut store, &entry.config).await {
            Ok(Ok(())) => {}
            Ok(Err(msg)) => return Err(Failure::Init(msg)),
            Err(e) => return Err(self.classify(e, &store)),
        }
        store.data_mut().ready = true;
        Ok(Warm {
            version,
            store,
            policy,
            served: 0,
        })
    }

    /// An idle sandbox of the running version, if the entry has one.
    /// Sandboxes of a replaced version are dropped on the way.
    fn take_idle(&self, entry: &ChainEntry) -> Option<Warm> {
        let current = entry.slot.version();
        let mut idle = entry.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(w) = idle.pop() {
            self.idle.fetch_sub(1, Ordering::Relaxed);
            if Arc::ptr_eq(&w.version, &current) {
                return Some(w);
            }
        }
        None
    }

    /// Keeps `warm` for the entry's next request, unless it has served its
    /// count, grew, or the idle pools are full.
    fn put_idle(&self, entry: &ChainEntry, warm: Warm) {
        let data = warm.store.data();
        // A plugin that met the memory limit and carried on is in a state
        // of its own making (a half-built structure): not reused.
        if warm.served >= self.limits.max_requests_per_sandbox || data.grew || data.memory_hit {
            return;
        }
        let mut idle = entry.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= MAX_IDLE_PER_ENTRY {
            return;
        }
        let cap = self.limits.max_sandboxes / 2;
        if self
            .idle
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
        {
            idle.push(warm);
        }
    }

    /// Runs one plugin on one request: in an idle sandbox of the entry, or
    /// a new one. Setting up a new sandbox counts against the deadline. A
    /// sandbox that fails is dropped (and so is one whose call is
    /// abandoned midway: the future owns it).
    async fn call(
        &self,
        entry: &ChainEntry,
        ctx: &PolicyContext,
        req: &PolicyRequest,
    ) -> Result<Decision, Failure> {
        let deadline = Instant::now() + self.timeout;
        let mut warm = match self.take_idle(entry) {
            Some(w) => w,
            None => self.warm_up(entry, deadline).await?,
        };
        let data = warm.store.data_mut();
        data.deadline = deadline;
        data.trace_id.clear();
        data.trace_id.push_str(&ctx.trace_id);
        data.logs_left = MAX_LOG_LINES;
        // A limit hit in an earlier request (which the plugin survived) says
        // nothing about this one's failure.
        data.memory_hit = false;
        let scope = &mut data.scope;
        for (to, from) in [
            (&mut scope.route, &ctx.route),
            (&mut scope.tunnel_id, &ctx.tunnel_id),
            (&mut scope.caller_org, &ctx.caller_org),
        ] {
            to.clear();
            to.push_str(from);
        }
        warm.store.set_epoch_deadline(1);
        match warm.policy.call_on_request(&mut warm.store, ctx, req).await {
            Ok(d) => {
                warm.served += 1;
                self.put_idle(entry, warm);
                Ok(d)
            }
            Err(e) => Err(self.classify(e, &warm.store)),
        }
    }

    /// Runs a route's chain: plugins in order, the first deny (or failure)
    /// wins, header edits accumulate.
    ///
    /// Each call is a `policy plugin` span under `parent` naming the plugin,
    /// its decision and, for a refusal, the status and the plugin's reason;
    /// and it is counted in the plugin metrics.
    pub async fn run(
        &self,
        chain: &[ChainEntry],
        ctx: &PolicyContext,
        req: &PolicyRequest,
        parent: &tracing::Span,
    ) -> Verdict {
        use telemetry::{attr, error, SPAN_TARGET};
        let m = &crate::metrics::METRICS;
        let mut edits = Vec::new();
        for entry in chain {
            let slot = &entry.slot;
            let span = tracing::info_span!(target: SPAN_TARGET, parent: parent, "policy plugin");
            let traced = !span.is_disabled();
            if traced {
                attr(&span, "plugin.name", slot.name.to_string());
            }
            let started = Instant::now();
            let outcome = self.call(entry, ctx, req).await.and_then(|d| match d {
                Decision::Allow(e) => {
                    check_edits(&e)?;
                    Ok(Decision::Allow(e))
                }
                Decision::Deny(d) => {
                    check_denial(&d)?;
                    Ok(Decision::Deny(d))
                }
            });
            let elapsed = started.elapsed();
            let micros = elapsed.as_micros() as u64;
            slot.counters.seconds.observe(elapsed.as_secs_f64());
            match outcome {
                Ok(Decision::Allow(e)) => {
                    slot.counters.allow.inc();
                    if traced {
                        attr(&span, "policy.decision", "allow");
                    }
                    tracing::debug!(plugin = %slot.name, micros, trace_id = %ctx.trace_id, "allow");
                    edits.extend(e);
                }
                Ok(Decision::Deny(mut denial)) => {
                    denial.reason = clip(std::mem::take(&mut denial.reason), MAX_REASON_CHARS);
                    slot.counters.deny.inc();
                    if traced {
                        attr(&span, "policy.decision", "deny");
                        attr(&span, "http.response.status_code", i64::from(denial.status));
                        attr(&span, "policy.reason", denial.reason.clone());
                    }
                    tracing::info!(
                        plugin = %slot.name, micros, status = denial.status,
                        trace_id = %ctx.trace_id, route = %ctx.route,
                        "denied: {:?}", denial.reason
                    );
                    return Verdict::Deny {
                        plugin: slot.name.clone(),
                        denial,
                    };
                }
                Err(failure) => {
                    // Failures of this kind so far, this one included.
                    let n = m
                        .failures
                        .get_or_create(&crate::metrics::FailureLabels {
                            plugin: slot.name.to_string(),
                            kind: failure.kind(),
                        })
                        .inc()
                        + 1;
                    if traced {
                        attr(&span, "policy.decision", "fail");
                        attr(&span, "policy.failure", failure.kind());
                        error(&span, clip(failure.to_string(), MAX_REASON_CHARS));
                    }
                    tracing::error!(
                        plugin = %slot.name, micros, kind = failure.kind(), failures = n,
                        trace_id = %ctx.trace_id, route = %ctx.route,
                        "plugin failed, request refused: {:?}",
                        clip(failure.to_string(), MAX_REASON_CHARS)
                    );
                    return Verdict::Fail {
                        plugin: slot.name.clone(),
                        failure,
                    };
                }
            }
        }
        Verdict::Allow(edits)
    }
}
