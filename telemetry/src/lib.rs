//! Observability shared by the gateway and the agent: logs (human or JSON),
//! traces exported over OTLP, W3C trace-context propagation, Prometheus
//! metrics and the admin listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! Spans meant for export use the target [`SPAN_TARGET`]; only they reach
//! the OpenTelemetry layer, and the log layer never sees them, so a span
//! costs no formatting and a log line no span bookkeeping.
//!
//! Export never waits on the request path: finished spans go into a bounded
//! queue that a background thread drains towards the collector. A full
//! queue drops the span and counts it (`otel_spans_dropped_total`); a
//! failed export counts its spans (`otel_spans_failed_total`).

pub mod admin;
mod config;
mod export;
pub mod per_source;

use std::sync::Arc;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

pub use config::{AdminSection, FieldError, LogFormat, LogSection, OtlpProtocol, TelemetrySection};

/// The `tracing` target of spans that are exported as OpenTelemetry spans.
pub const SPAN_TARGET: &str = "otel";

/// Counters of the span pipeline, shown on `/metrics`.
#[derive(Clone, Default, Debug)]
pub struct ExportCounters {
    /// Spans handed to the collector successfully.
    pub exported: Counter,
    /// Spans dropped because the export queue was full.
    pub dropped: Counter,
    /// Spans in exports that failed (collector down, refused, timed out).
    pub failed: Counter,
}

impl ExportCounters {
    /// Registers the counters as `otel_spans_{exported,dropped,failed}_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "otel_spans_exported",
            "Spans accepted by the OpenTelemetry collector",
            self.exported.clone(),
        );
        registry.register(
            "otel_spans_dropped",
            "Spans dropped because the export queue was full",
            self.dropped.clone(),
        );
        registry.register(
            "otel_spans_failed",
            "Spans in exports the collector did not accept (down, refused, timed out)",
            self.failed.clone(),
        );
    }
}

/// Keeps the log writer and the span exporter alive; dropping it flushes
/// both (spans within the export timeout).
pub struct Guard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    _runtime: Option<tokio::runtime::Runtime>,
    _log: tracing_appender::non_blocking::WorkerGuard,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            // Flushes what is queued; a collector that is down costs at
            // most this at exit.
            let _ = p.shutdown_with_timeout(std::time::Duration::from_secs(3));
        }
        if let Some(rt) = self._runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
        }
    }
}

/// Installs logging and tracing for the process. `default_service` names
/// the service when `telemetry.service_name` is unset. Call once, before
/// any tokio runtime is entered on this thread (the HTTP exporter's client
/// starts its own).
/// `follow_incoming_default` says whether a sampled or unsampled incoming
/// `traceparent` decides, when `telemetry.follow_incoming_sampling` is
/// unset: not at the gateway (callers are untrusted), yes at the agent (its
/// parent is the gateway).
pub fn init(
    log: &LogSection,
    telemetry: &TelemetrySection,
    default_service: &str,
    follow_incoming_default: bool,
    counters: &ExportCounters,
) -> anyhow::Result<Guard> {
    let filter = match rust_log() {
        Some(v) => EnvFilter::try_new(&v).map_err(|e| anyhow::anyhow!("RUST_LOG `{v}`: {e}"))?,
        None => EnvFilter::try_new(&log.level)
            .map_err(|e| anyhow::anyhow!("log.level `{}`: {e}", log.level))?,
    };
    // Lines are written by a background thread, off the request path;
    // lossless, so a burst blocks rather than drops lines. The thread
    // flushes whenever it has drained what is queued, so under load many
    // lines share one write(2) instead of one each (which cost about a
    // fifth of the throughput with one access line per request per side).
    let (writer, log_guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stderr(),
        ));
    // Exported spans are not log lines. Every filter here carries a level
    // hint, so the global maximum stays at the configured level: `log`
    // records below it (pingora logs at debug and trace) then cost one
    // comparison instead of being formatted and dispatched.
    let events_only = without_spans(filter);
    // Swappable by [`set_log_level`] (a live reload of `log.level`).
    let (events_only, reload) = tracing_subscriber::reload::Layer::new(events_only);
    let _ = LOG_FILTER.set(reload);
    let fmt = match log.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(events_only)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(events_only)
            .boxed(),
    };

    let (provider, runtime) = export::provider(
        telemetry,
        default_service,
        follow_incoming_default,
        counters,
    )?;
    // Without a collector no span is built at all (the `otel` callsites
    // stay disabled); [`TraceCtx`] then still carries trace ids to logs and
    // to the next hop.
    let otel = telemetry.endpoint.is_some().then(|| {
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "tunnel");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_level(false)
            .with_context_activation(false)
            .with_filter(Targets::new().with_target(SPAN_TARGET, tracing::Level::INFO))
    });

    // Not `.with(otel)` on the `Option`: a `None` layer answers "always
    // interested" for every callsite, which would build every span in the
    // registry (and fill its attributes) on every request with no collector
    // to send it to. Without the layer, the only filter left turns the span
    // target off and the spans stay disabled.
    let logs = tracing_subscriber::registry().with(fmt);
    match otel {
        Some(otel) => logs.with(otel).try_init(),
        None => logs.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    if let Some(endpoint) = &telemetry.endpoint {
        tracing::info!(
            endpoint = %without_userinfo(endpoint),
            protocol = telemetry.protocol.as_str(),
            sampling_ratio = telemetry.sampling_ratio,
            "exporting traces"
        );
    }
    Ok(Guard {
        provider: Some(provider),
        _runtime: runtime,
        _log: log_guard,
    })
}

/// The log filter [`init`] installed, for [`set_log_level`].
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// `RUST_LOG` when set and not empty: it overrides `log.level`.
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `filter` for log lines: exported spans are not log lines.
fn without_spans(filter: EnvFilter) -> EnvFilter {
    filter.add_directive(
        format!("{SPAN_TARGET}=off")
            .parse()
            .expect("a valid directive"),
    )
}

/// What [`set_log_level`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevelChange {
    /// The new directives filter log lines from now on.
    Applied,
    /// `RUST_LOG` is set: it keeps deciding (as at start).
    OverriddenByRustLog,
}

/// Replaces the log filter of a running process with `level` (directives
/// as in `log.level`), for a live reload of the configuration. The
/// directives must already be valid ([`LogSection::validate`]).
pub fn set_log_level(level: &str) -> anyhow::Result<LogLevelChange> {
    if rust_log().is_some() {
        return Ok(LogLevelChange::OverriddenByRustLog);
    }
    let filter =
        EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("log.level `{level}`: {e}"))?;
    let handle = LOG_FILTER
        .get()
        .ok_or_else(|| anyhow::anyhow!("logging was not set up by telemetry::init"))?;
    handle
        .reload(without_spans(filter))
        .map_err(|e| anyhow::anyhow!("replacing the log filter: {e}"))?;
    Ok(LogLevelChange::Applied)
}

/// `endpoint` for logs: credentials in its userinfo part are left out.
fn without_userinfo(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme_str().unwrap_or("?"),
            u.authority()
                .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
                .unwrap_or_default(),
            u.path()
        ),
        Err(_) => "(invalid)".into(),
    }
}

/// Logging only (commands other than serving): human lines at `info`.
pub fn init_plain() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .try_init();
    guard
}

/// The remote parent carried by W3C `traceparent` (and `tracestate`), or
/// an empty context when absent or malformed (a new trace then starts).
pub fn extract(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Context {
    use opentelemetry::propagation::TextMapPropagator;
    struct Carrier<'a>(Option<&'a str>, Option<&'a str>);
    impl opentelemetry::propagation::Extractor for Carrier<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let tp = traceparent
        .filter(|v| well_formed_traceparent(v))
        .and_then(|v| std::str::from_utf8(v).ok());
    // An oversized tracestate is ignored rather than parsed (W3C caps it
    // at 32 members of 256 bytes; 512 bytes is what we carry on).
    let ts = tracestate
        .filter(|v| v.len() <= 512)
        .and_then(|v| std::str::from_utf8(v).ok());
    if tp.is_none() {
        return Context::new();
    }
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&Carrier(tp, ts))
}

/// W3C trace-context shape: `vv-<32 hex>-<16 hex>-<2 hex>`, lower-case,
/// version not `ff`; version 00 has nothing after the flags, later versions
/// may add `-…` fields. (The SDK's parser also takes shorter ids.)
fn well_formed_traceparent(v: &[u8]) -> bool {
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if v.len() < 55 || v.len() > 512 {
        return false;
    }
    let ok = hex(&v[0..2])
        && &v[0..2] != b"ff"
        && v[2] == b'-'
        && hex(&v[3..35])
        && v[35] == b'-'
        && hex(&v[36..52])
        && v[52] == b'-'
        && hex(&v[53..55]);
    let tail_ok = if &v[0..2] == b"00" {
        v.len() == 55
    } else {
        v.len() == 55 || v[55] == b'-'
    };
    ok && tail_ok
}

/// The span context of `span` (invalid when the span is disabled).
fn span_context(span: &tracing::Span) -> SpanContext {
    if span.is_disabled() {
        return SpanContext::empty_context();
    }
    span.context().span().span_context().clone()
}

/// One request's place in its trace: the request's span when spans are
/// exported, and in any case the trace id (the caller's, or a new one)
/// with its flags and state, so that logs and the next hop's
/// `traceparent` carry the trace even when nothing is exported.
pub struct TraceCtx {
    trace_id: TraceId,
    flags: TraceFlags,
    state: TraceState,
}

impl TraceCtx {
    /// Makes `span` (the request's span, possibly disabled) continue the
    /// caller's `traceparent`/`tracestate` when they are valid.
    pub fn start(
        span: &tracing::Span,
        traceparent: Option<&[u8]>,
        tracestate: Option<&[u8]>,
    ) -> Self {
        let parent = extract(traceparent, tracestate);
        let remote = parent.span().span_context().clone();
        if !span.is_disabled() {
            // Fails only when the span was already started: it was not.
            let _ = span.set_parent(parent);
            let sc = span_context(span);
            if sc.is_valid() {
                return TraceCtx {
                    trace_id: sc.trace_id(),
                    flags: sc.trace_flags(),
                    state: sc.trace_state().clone(),
                };
            }
        }
        if remote.is_valid() {
            TraceCtx {
                trace_id: remote.trace_id(),
                flags: remote.trace_flags(),
                state: remote.trace_state().clone(),
            }
        } else {
            TraceCtx {
                trace_id: TraceId::from_bytes(nonzero_random()),
                flags: TraceFlags::default(),
                state: TraceState::default(),
            }
        }
    }

    /// The trace id in hex, for log lines.
    pub fn trace_id(&self) -> String {
        self.trace_id.to_string()
    }

    /// `traceparent` (and `tracestate`, when not empty) for the next hop,
    /// naming `child` as the parent; a disabled `child` gets a fresh span
    /// id in the same trace.
    pub fn traceparent(&self, child: &tracing::Span) -> (String, Option<String>) {
        let sc = span_context(child);
        let (trace_id, span_id, flags, state) = if sc.is_valid() {
            (
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags(),
                sc.trace_state().header(),
            )
        } else {
            let id: [u8; 16] = nonzero_random();
            let mut span = [0u8; 8];
            span.copy_from_slice(&id[..8]);
            (
                self.trace_id,
                SpanId::from_bytes(span),
                self.flags,
                self.state.header(),
            )
        };
        let tp = format!("00-{trace_id}-{span_id}-{:02x}", flags.to_u8());
        (tp, (!state.is_empty()).then_some(state))
    }
}

/// 16 random bytes, not all zero (the first 8 are not all zero either, so
/// they make a valid span id too).
fn nonzero_random() -> [u8; 16] {
    loop {
        let b: [u8; 16] = rand::random();
        if b[..8].iter().any(|&x| x != 0) {
            return b;
        }
    }
}

/// A response status as a metric label: the usual codes as themselves,
/// others by class (`2xx`…), so a service inventing statuses cannot grow
/// the number of series without bound. `0`: no response was sent.
pub fn status_label(status: u16) -> &'static str {
    const USUAL: [(u16, &str); 32] = [
        (0, "0"),
        (101, "101"),
        (200, "200"),
        (201, "201"),
        (202, "202"),
        (204, "204"),
        (206, "206"),
        (301, "301"),
        (302, "302"),
        (303, "303"),
        (304, "304"),
        (307, "307"),
        (308, "308"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (410, "410"),
        (412, "412"),
        (413, "413"),
        (415, "415"),
        (422, "422"),
        (429, "429"),
        (431, "431"),
        (500, "500"),
        (501, "501"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
    ];
    if let Some((_, label)) = USUAL.iter().find(|(code, _)| *code == status) {
        return label;
    }
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "other",
    }
}

/// Sets an attribute on an exported span (a no-op on a disabled one).
pub fn attr(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    span.set_attribute(key, value);
}

/// Marks an exported span as failed with `description`.
pub fn error(span: &tracing::Span, description: impl Into<std::borrow::Cow<'static, str>>) {
    span.set_status(opentelemetry::trace::Status::error(description));
}

/// Resource attributes as OpenTelemetry key-values.
fn resource_attributes(t: &TelemetrySection) -> Vec<KeyValue> {
    t.resource
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect()
}

/// What the admin listener's `/readyz` asks.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_continued_and_a_bad_one_starts_afresh() {
        let cx = extract(
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(b"vendor=abc"),
        );
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote() && sc.is_valid());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert_eq!(sc.trace_state().header(), "vendor=abc");
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            b"garbage",
            b"\xff\xfe",
        ] {
            let cx = extract(Some(bad), None);
            assert!(
                !cx.span().span_context().is_valid(),
                "{:?} was accepted",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(!extract(None, Some(b"a=b")).span().span_context().is_valid());
    }

    #[test]
    fn without_exported_spans_the_trace_still_goes_on() {
        let none = tracing::Span::none();
        // The caller's trace and flags are continued with a new span id.
        let t = TraceCtx::start(
            &none,
            Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(b"vendor=abc"),
        );
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let (tp, ts) = t.traceparent(&none);
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"), "a new span id: {tp}");
        assert!(well_formed_traceparent(tp.as_bytes()), "{tp}");
        assert_eq!(ts.as_deref(), Some("vendor=abc"));
        // Without one, a new unsampled trace starts.
        let t = TraceCtx::start(&none, Some(b"bogus"), None);
        let (tp, ts) = t.traceparent(&none);
        assert!(well_formed_traceparent(tp.as_bytes()), "{tp}");
        assert!(tp.contains(&t.trace_id()) && tp.ends_with("-00"), "{tp}");
        assert_eq!(ts, None);
        let again = TraceCtx::start(&none, None, None);
        assert_ne!(again.trace_id(), t.trace_id());
    }

    #[test]
    fn unusual_statuses_are_grouped_by_class() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(0), "0");
        assert_eq!(status_label(299), "2xx");
        assert_eq!(status_label(599), "5xx");
        assert_eq!(status_label(999), "other");
    }

    #[test]
    fn credentials_in_the_endpoint_are_not_logged() {
        assert_eq!(
            without_userinfo("https://user:s3cret@otel.example.com:4318/v1/traces"),
            "https://otel.example.com:4318/v1/traces"
        );
        assert_eq!(without_userinfo("http://c:4317"), "http://c:4317/");
    }
}
