//! Without a collector, the spans meant for export are not built at all:
//! every request would otherwise pay for a span in the registry and its
//! attributes, with nowhere to send them. (Its own process: `init`
//! installs the global subscriber.)

use telemetry::{self, ExportCounters, LogSection, TelemetrySection, SPAN_TARGET};

#[test]
fn with_no_collector_export_spans_are_disabled_and_log_lines_still_work() {
    let log = LogSection::default();
    let no_collector = TelemetrySection::default();
    assert!(
        no_collector.endpoint.is_none(),
        "the default has no collector"
    );
    let _guard = telemetry::init(
        &log,
        &no_collector,
        "test",
        false,
        &ExportCounters::default(),
    )
    .expect("logging installs");

    let span = tracing::info_span!(target: SPAN_TARGET, "request");
    assert!(
        span.is_disabled(),
        "an export span must not be built without a collector"
    );
    let child = tracing::info_span!(target: SPAN_TARGET, parent: &span, "policy plugin");
    assert!(child.is_disabled());
    // Log lines are unaffected: an info event is enabled at the default level.
    assert!(tracing::enabled!(target: "access", tracing::Level::INFO));
}
