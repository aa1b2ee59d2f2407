//! What became of each plugin file, for the dashboard: versions loaded
//! and replacements rejected, newest last, the last [`MAX_HISTORY`] kept.
//! Each entry is also the JSON event line (`plugin_loaded`,
//! `plugin_rejected`) the process writes on stdout.

use std::collections::VecDeque;
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::events::emit;
use serde::Serialize;
use serde_json::json;

/// Entries kept.
pub const MAX_HISTORY: usize = 200;

/// A plugin file loaded or rejected.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// Unix milliseconds.
    pub at: u64,
    pub plugin: String,
    /// `loaded` or `rejected`.
    pub event: &'static str,
    pub version: Option<String>,
    pub sha256: Option<String>,
    /// Why a replacement was rejected (the version before keeps serving).
    pub error: Option<String>,
}

static HISTORY: LazyLock<Mutex<VecDeque<HistoryEntry>>> = LazyLock::new(Default::default);

fn keep(entry: HistoryEntry) {
    let mut h = HISTORY.lock().unwrap_or_else(|p| p.into_inner());
    if h.len() >= MAX_HISTORY {
        h.pop_front();
    }
    h.push_back(entry);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A version of `plugin` now serves.
pub(crate) fn loaded(plugin: &str, version: &str, sha256: &str) {
    emit(json!({
        "event": "plugin_loaded", "plugin": plugin,
        "version": version, "sha256": sha256,
    }));
    keep(HistoryEntry {
        at: now_ms(),
        plugin: plugin.to_string(),
        event: "loaded",
        version: Some(version.to_string()),
        sha256: Some(sha256.to_string()),
        error: None,
    });
}

/// A replacement of `plugin` was refused; `running` still serves. Kept in
/// the history only when `kept` (a refusal for a passing reason is not).
pub(crate) fn rejected(plugin: &str, error: &str, running: &str, kept: bool) {
    emit(json!({
        "event": "plugin_rejected", "plugin": plugin,
        "error": error, "running_sha256": running,
    }));
    if !kept {
        return;
    }
    keep(HistoryEntry {
        at: now_ms(),
        plugin: plugin.to_string(),
        event: "rejected",
        version: None,
        sha256: None,
        error: Some(error.to_string()),
    });
}

/// Every entry kept, newest first.
pub fn history() -> Vec<HistoryEntry> {
    let h = HISTORY.lock().unwrap_or_else(|p| p.into_inner());
    h.iter().rev().cloned().collect()
}
