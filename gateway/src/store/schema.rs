//! The store's schema and its migrations, numbered by SQLite's
//! `user_version`: a store from an older gateway is brought up to date in
//! one transaction when opened.

use sqlx::SqlitePool;

/// Each step takes the schema from version `index` to `index + 1`.
const STEPS: &[&[&str]] = &[
    // 1: tunnels and callers as the first releases made them.
    &[
        "CREATE TABLE IF NOT EXISTS tunnels (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            org TEXT NOT NULL,
            key_nonce BLOB NOT NULL,
            key_ct BLOB NOT NULL,
            created_at INTEGER NOT NULL)",
        "CREATE TABLE IF NOT EXISTS callers (
            id TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            token_hash BLOB NOT NULL UNIQUE,
            created_at INTEGER NOT NULL)",
    ],
    // 2: key rotation, caller names, expiry and revocation, admin tokens,
    // the audit log.
    &[
        "ALTER TABLE tunnels ADD COLUMN key_generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tunnels ADD COLUMN prev_key_nonce BLOB",
        "ALTER TABLE tunnels ADD COLUMN prev_key_ct BLOB",
        "ALTER TABLE tunnels ADD COLUMN prev_key_until INTEGER",
        "ALTER TABLE callers ADD COLUMN name TEXT",
        "ALTER TABLE callers ADD COLUMN token_prefix TEXT",
        "ALTER TABLE callers ADD COLUMN expires_at INTEGER",
        "ALTER TABLE callers ADD COLUMN revoked_at INTEGER",
        "CREATE TABLE admin_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('read', 'write')),
            token_hash BLOB NOT NULL UNIQUE,
            token_prefix TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            revoked_at INTEGER)",
        "CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at_ms INTEGER NOT NULL,
            actor TEXT NOT NULL,
            source TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            detail TEXT NOT NULL)",
    ],
];

/// Brings the schema to the newest version. A store written by a newer
/// gateway is refused rather than misread.
pub async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await?;
    // A store made before versions were recorded has the first step's
    // tables and version 0; its `CREATE ... IF NOT EXISTS` are no-ops.
    let from = usize::try_from(version).unwrap_or(usize::MAX);
    if from > STEPS.len() {
        return Err(sqlx::Error::Protocol(format!(
            "the store has schema version {version}, newer than this gateway's {}: \
             use the newer gateway",
            STEPS.len()
        )));
    }
    for step in &STEPS[from..] {
        for stmt in *step {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
    }
    // PRAGMA takes no bound parameters; the number is ours.
    sqlx::query(&format!("PRAGMA user_version = {}", STEPS.len()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
