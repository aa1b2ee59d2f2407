//! Machine-readable lifecycle events, one JSON object per line on stdout,
//! for supervisors and tests (the gateway's, the agent's and the plugin
//! host's). Human logs go to stderr through `tracing`.

use std::io::Write;

/// Writes one event line and flushes it.
pub fn emit(event: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the process down.
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}
