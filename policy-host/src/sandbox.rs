//! One sandbox: the host state of one plugin instance (limits, deadline,
//! the host imports a plugin calls) and how a wasmtime error becomes a
//! [`Failure`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use wasmtime::{PoolConcurrencyLimitError, ResourceLimiter, Store, Trap, UpdateDeadline};

use crate::bindings::{
    self,
    tunnel::policy::host::{self as wit_host, Level},
};
use crate::{clip, Failure, Plugins, ReplaySet, Scope, MAX_LOG_CHARS, MAX_LOG_LINES};

/// The host state of one sandbox (one plugin instance with one route's
/// configuration), reset at the start of every request it serves.
pub struct Sandbox {
    pub(crate) plugin: Arc<str>,
    pub(crate) trace_id: String,
    pub(crate) replay: Arc<ReplaySet>,
    /// The request being judged, for the replay set's scope; empty route
    /// outside a request (`init`), where inserts are refused.
    pub(crate) scope: Scope,
    pub(crate) max_memory: usize,
    pub(crate) max_table: usize,
    pub(crate) memory_hit: bool,
    pub(crate) logs_left: u32,
    /// When the current call must end.
    pub(crate) deadline: Instant,
    /// Set once `init` has run: from then on, growing memory or a table
    /// retires the sandbox after its current request.
    pub(crate) ready: bool,
    /// Grew after `init`: do not reuse.
    pub(crate) grew: bool,
}

impl ResourceLimiter for Sandbox {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.memory_hit = true;
            return Ok(false);
        }
        self.grew |= self.ready;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grew |= self.ready;
        Ok(desired <= self.max_table)
    }
}

impl wit_host::Host for Sandbox {
    fn log(&mut self, level: Level, message: String) {
        if self.logs_left == 0 {
            return;
        }
        self.logs_left -= 1;
        let msg = clip(message, MAX_LOG_CHARS);
        // Debug formatting escapes newlines: a plugin cannot forge log lines.
        let (plugin, trace_id) = (&*self.plugin, self.trace_id.as_str());
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Info => tracing::info!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, trace_id, "{msg:?}"),
            Level::Error => tracing::error!(target: "plugin", plugin, trace_id, "{msg:?}"),
        }
    }

    fn now(&mut self) -> (u64, u32) {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        (d.as_secs(), d.subsec_nanos())
    }

    fn insert_if_absent(&mut self, key: String, ttl_secs: u32) -> bool {
        self.replay.insert_if_absent(&self.scope, &key, ttl_secs)
    }
}

impl bindings::tunnel::policy::types::Host for Sandbox {}

impl Plugins {
    pub(crate) fn store(
        &self,
        plugin: &Arc<str>,
        replay: &Arc<ReplaySet>,
        deadline: Instant,
    ) -> Store<Sandbox> {
        let mut store = Store::new(
            &self.engine,
            Sandbox {
                plugin: plugin.clone(),
                trace_id: String::new(),
                replay: replay.clone(),
                scope: Scope::default(),
                max_memory: self.limits.max_memory_bytes,
                max_table: self.limits.max_table_elements,
                memory_hit: false,
                logs_left: MAX_LOG_LINES,
                deadline,
                ready: false,
                grew: false,
            },
        );
        store.limiter(|s| s);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|cx| {
            if Instant::now() >= cx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // tokio's own yield: a task that merely wakes itself is run
                // again at once, ahead of the others, and would not yield.
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::task::yield_now()),
                ))
            }
        });
        store
    }

    pub(crate) fn classify(&self, e: wasmtime::Error, store: &Store<Sandbox>) -> Failure {
        if store.data().memory_hit {
            Failure::Memory(self.limits.max_memory_bytes)
        } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            Failure::Deadline(self.timeout)
        } else if e.downcast_ref::<PoolConcurrencyLimitError>().is_some() {
            Failure::Busy
        } else if let Some(t) = e.downcast_ref::<Trap>() {
            Failure::Trap(t.to_string())
        } else {
            Failure::Trap(format!("{e:#}"))
        }
    }
}
