//! The audit log: one row per change (who, what, when, from where). The
//! gateway also prints each entry it writes as a JSON event line.

use sqlx::Row;

use super::{Store, StoreError};

/// Longest text kept in one audit field.
const MAX_FIELD_CHARS: usize = 512;
/// Most entries one listing returns.
pub const MAX_LIST: u32 = 1000;

/// A change to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// `admin-token:<id>(<name>)` or `cli:<user>`.
    pub actor: String,
    /// The peer address of an API call, or `local`.
    pub source: String,
    /// `tunnel.create`, `caller.revoke`, ...
    pub action: &'static str,
    /// The object's name or id.
    pub object: String,
    /// What else is worth knowing (never a key or token).
    pub detail: serde_json::Value,
}

/// A recorded change.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub actor: String,
    pub source: String,
    pub action: String,
    pub object: String,
    pub detail: serde_json::Value,
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_FIELD_CHARS).collect()
}

impl Store {
    /// Records a change; returns it as stored.
    pub async fn audit(&self, e: &AuditEntry) -> Result<AuditRecord, StoreError> {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let detail = clip(&e.detail.to_string());
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit (at_ms, actor, source, action, object, detail) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(at)
        .bind(clip(&e.actor))
        .bind(clip(&e.source))
        .bind(e.action)
        .bind(clip(&e.object))
        .bind(&detail)
        .fetch_one(&self.pool)
        .await?;
        Ok(AuditRecord {
            id,
            at,
            actor: clip(&e.actor),
            source: clip(&e.source),
            action: e.action.into(),
            object: clip(&e.object),
            detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
        })
    }

    /// The newest `limit` entries (at most [`MAX_LIST`]), newest first.
    pub async fn audit_list(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, source, action, object, detail FROM audit \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit.min(MAX_LIST)))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                id: r.get("id"),
                at: r.get("at_ms"),
                actor: r.get("actor"),
                source: r.get("source"),
                action: r.get("action"),
                object: r.get("object"),
                detail: serde_json::from_str(&r.get::<String, _>("detail"))
                    .unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }
}
