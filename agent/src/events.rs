//! Machine-readable lifecycle events, one JSON object per line on stdout.

use std::io::Write;

/// Writes one event line and flushes it.
pub fn emit(event: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}
