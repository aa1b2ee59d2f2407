//! The agent's Prometheus metrics, served on its admin listener under the
//! `tunnel_agent_` prefix.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use telemetry::ExportCounters;

/// A request forwarded to the local service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The local service's status ([`telemetry::status_label`]); `0` when it gave none (it failed or
    /// closed the connection).
    pub status: &'static str,
}

/// Why a connection to the gateway did not come up.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

fn request_seconds() -> Histogram {
    // 100 µs to about 13 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every agent metric.
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histogram,
    pub request_body_bytes: Counter,
    pub response_body_bytes: Counter,
    pub streams_active: Gauge,
    pub local_connect_failures: Counter,
    pub connected: Gauge,
    pub connects: Counter,
    pub disconnects: Counter,
    pub connect_failures: Family<ReasonLabels, Counter>,
    pub export: ExportCounters,
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    requests: Family::default(),
    request_seconds: request_seconds(),
    request_body_bytes: Counter::default(),
    response_body_bytes: Counter::default(),
    streams_active: Gauge::default(),
    local_connect_failures: Counter::default(),
    connected: Gauge::default(),
    connects: Counter::default(),
    disconnects: Counter::default(),
    connect_failures: Family::default(),
    export: ExportCounters::default(),
});

/// The registry served on `/metrics`.
pub fn registry() -> Registry {
    let m = &*METRICS;
    let mut r = Registry::with_prefix("tunnel_agent");
    r.register(
        "requests",
        "Requests forwarded to the local service, by its status",
        m.requests.clone(),
    );
    r.register(
        "request_duration_seconds",
        "Time from a request's arrival through the tunnel to its last response byte",
        m.request_seconds.clone(),
    );
    r.register(
        "request_body_bytes",
        "Request body bytes forwarded to the local service",
        m.request_body_bytes.clone(),
    );
    r.register(
        "response_body_bytes",
        "Response body bytes sent back through the tunnel",
        m.response_body_bytes.clone(),
    );
    r.register(
        "streams_active",
        "Tunnel streams open (each with a connection to the local service)",
        m.streams_active.clone(),
    );
    r.register(
        "local_connect_failures",
        "Connections to the local service that failed or timed out",
        m.local_connect_failures.clone(),
    );
    r.register(
        "gateway_connected",
        "Connections to gateway instances up (1 with one gateway url; 0 when none)",
        m.connected.clone(),
    );
    r.register(
        "gateway_connects",
        "Connections to the gateway established",
        m.connects.clone(),
    );
    r.register(
        "gateway_disconnects",
        "Connections to the gateway lost or drained",
        m.disconnects.clone(),
    );
    r.register(
        "gateway_connect_failures",
        "Attempts to connect to the gateway that failed, by reason (rejected: the key was refused; proxy, proxy_auth: the CONNECT proxy failed or asked for credentials)",
        m.connect_failures.clone(),
    );
    m.export.register(&mut r);
    r
}
