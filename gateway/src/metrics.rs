//! The gateway's Prometheus metrics, served on the admin listener under
//! the `tunnel_gateway_` prefix. One process-wide set: the proxy, the
//! agent listener and the registry record into it; the plugin host's own
//! series (`policy_host::metrics`) are registered beside them.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use telemetry::ExportCounters;

/// A finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name; `-` when no route matched.
    pub route: String,
    /// Tunnel name; `-` before a tunnel was known.
    pub tunnel: String,
    /// Response status ([`telemetry::status_label`]); `0` when none was sent (the caller went away).
    pub status: &'static str,
}

/// Per route and tunnel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub tunnel: String,
}

/// Per tunnel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    pub tunnel: String,
}

/// A reason: why an agent's handshake was refused, or why a request was
/// retried or lost.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

fn request_seconds() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every gateway metric.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub request_body_bytes: Family<RouteLabels, Counter>,
    pub response_body_bytes: Family<RouteLabels, Counter>,
    pub tunnels_connected: Gauge,
    pub agents_connected: Gauge,
    pub agent_connects: Family<TunnelLabels, Counter>,
    pub agent_disconnects: Family<TunnelLabels, Counter>,
    pub handshakes_rejected: Family<ReasonLabels, Counter>,
    pub request_retries: Family<ReasonLabels, Counter>,
    pub requests_lost: Family<ReasonLabels, Counter>,
    /// Caller connections the gateway closed itself, by reason
    /// (`public_listener`).
    pub public_connections_closed: Family<ReasonLabels, Counter>,
    pub export: ExportCounters,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requests: Family::default(),
    request_seconds: Family::new_with_constructor(request_seconds),
    request_body_bytes: Family::default(),
    response_body_bytes: Family::default(),
    tunnels_connected: Gauge::default(),
    agents_connected: Gauge::default(),
    agent_connects: Family::default(),
    agent_disconnects: Family::default(),
    handshakes_rejected: Family::default(),
    request_retries: Family::default(),
    requests_lost: Family::default(),
    public_connections_closed: Family::default(),
    export: ExportCounters::default(),
});

/// The registry served on `/metrics`.
pub fn registry() -> Registry {
    let m = &*METRICS;
    let mut r = Registry::with_prefix("tunnel_gateway");
    r.register(
        "requests",
        "Requests answered, by route, tunnel and status",
        m.requests.clone(),
    );
    r.register(
        "request_duration_seconds",
        "Time from the request's arrival to its last response byte",
        m.request_seconds.clone(),
    );
    r.register(
        "request_body_bytes",
        "Request body bytes received from callers",
        m.request_body_bytes.clone(),
    );
    r.register(
        "response_body_bytes",
        "Response body bytes sent to callers",
        m.response_body_bytes.clone(),
    );
    r.register(
        "tunnels_connected",
        "Tunnels with at least one agent connected",
        m.tunnels_connected.clone(),
    );
    r.register(
        "agents_connected",
        "Agent connections currently up",
        m.agents_connected.clone(),
    );
    r.register(
        "agent_connects",
        "Agent connections accepted",
        m.agent_connects.clone(),
    );
    r.register(
        "agent_disconnects",
        "Agent connections ended",
        m.agent_disconnects.clone(),
    );
    r.register(
        "agent_handshakes_rejected",
        "Agent handshakes refused, by reason",
        m.handshakes_rejected.clone(),
    );
    r.register(
        "request_retries",
        "Requests sent again on a new tunnel stream, by reason (stale, agent_lost, stream_closed, connect)",
        m.request_retries.clone(),
    );
    r.register(
        "requests_lost",
        "Requests whose tunnel stream broke after they were sent and that were not sent again (502), by reason",
        m.requests_lost.clone(),
    );
    policy_host::metrics::register(&mut r);
    r.register(
        "public_connections_closed",
        "Caller connections the gateway closed itself: over a connection cap \
         (max_connections, max_connections_per_source) or too slow \
         (tls_handshake_timeout, header_read_timeout, header_too_large)",
        m.public_connections_closed.clone(),
    );
    m.export.register(&mut r);
    r.register(
        "config_reloads",
        "Live reloads of the configuration file: applied (ok) or refused (failed)",
        CONFIG_RELOADS.clone(),
    );
    r
}

/// A live reload's outcome: `ok` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// `config_reloads_total{result}` (see [`crate::reload`]).
pub static CONFIG_RELOADS: LazyLock<Family<ResultLabels, Counter>> = LazyLock::new(Family::default);

/// Counts an agent handshake refused for `reason`.
pub fn handshake_rejected(reason: &'static str) {
    METRICS
        .handshakes_rejected
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Counts a request sent again for `reason`.
pub fn request_retried(reason: &'static str) {
    METRICS
        .request_retries
        .get_or_create(&ReasonLabels { reason })
        .inc();
}

/// Counts a request lost with its tunnel stream and not sent again.
pub fn request_lost(reason: &'static str) {
    METRICS
        .requests_lost
        .get_or_create(&ReasonLabels { reason })
        .inc();
}
