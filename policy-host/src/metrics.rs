//! The plugin host's Prometheus series, registered by the gateway into
//! its registry (the `tunnel_gateway_` prefix): decisions, failures, call
//! time, file reloads and replay-set refusals.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A plugin's decision: `allow` or `deny`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub plugin: String,
    pub decision: &'static str,
}

/// A plugin failure: `trap`, `deadline`, `memory`, `busy`, `init`, `invalid`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub plugin: String,
    pub kind: &'static str,
}

/// Per plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
}

/// A plugin file reload: `loaded` or `rejected`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub plugin: String,
    pub result: &'static str,
}

/// A replay-set insert refused for lack of room: `limit` is `set` (the
/// plugin's whole set) or `org_share` (the caller organization's share).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplayRefusalLabels {
    pub plugin: String,
    pub org: String,
    pub limit: &'static str,
}

fn plugin_seconds() -> Histogram {
    // 2 µs to about 65 ms: past the default 50 ms deadline a call fails.
    Histogram::new(exponential_buckets(0.000002, 2.0, 16))
}

/// Every plugin host series.
pub struct PolicyMetrics {
    pub decisions: Family<DecisionLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub seconds: Family<PluginLabels, Histogram, fn() -> Histogram>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub replay_refusals: Family<ReplayRefusalLabels, Counter>,
}

/// The process's plugin host series.
pub static METRICS: LazyLock<PolicyMetrics> = LazyLock::new(|| PolicyMetrics {
    decisions: Family::default(),
    failures: Family::default(),
    seconds: Family::new_with_constructor(plugin_seconds),
    reloads: Family::default(),
    replay_refusals: Family::default(),
});

/// Registers the series into the gateway's registry.
pub fn register(r: &mut Registry) {
    let m = &*METRICS;
    r.register(
        "plugin_decisions",
        "Policy plugin decisions (allow, deny)",
        m.decisions.clone(),
    );
    r.register(
        "plugin_failures",
        "Policy plugin calls that failed (trap, deadline, memory, busy, init, invalid)",
        m.failures.clone(),
    );
    r.register(
        "plugin_call_duration_seconds",
        "Time of one policy plugin call, sandbox included",
        m.seconds.clone(),
    );
    r.register(
        "plugin_reloads",
        "Plugin files reloaded (loaded) or refused (rejected)",
        m.reloads.clone(),
    );
    r.register(
        "plugin_replay_refusals",
        "Replay-set inserts refused because the set (set) or the caller organization's share (org_share) was full",
        m.replay_refusals.clone(),
    );
}

/// Counts a plugin file reload: `loaded` or `rejected`.
pub fn plugin_reloaded(plugin: &str, result: &'static str) {
    METRICS
        .reloads
        .get_or_create(&ReloadLabels {
            plugin: plugin.to_string(),
            result,
        })
        .inc();
}

/// Counts a replay-set insert refused for lack of room.
pub fn replay_refused(plugin: &str, org: &str, limit: &'static str) {
    METRICS
        .replay_refusals
        .get_or_create(&ReplayRefusalLabels {
            plugin: plugin.to_string(),
            org: org.to_string(),
            limit,
        })
        .inc();
}
