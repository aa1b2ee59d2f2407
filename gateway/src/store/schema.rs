//! The store's schema and its migrations, for SQLite and PostgreSQL: a
//! store from an older gateway is brought up to date in one transaction
//! when opened.

use sqlx::AnyPool;

use super::Backend;

/// Each step takes the schema from version `index` to `index + 1`.
const SQLITE_STEPS: &[&[&str]] = &[
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
    // 3: what the KEK seals, so an instance with another KEK is refused.
    &["CREATE TABLE kek_check (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            nonce BLOB NOT NULL,
            ct BLOB NOT NULL)"],
    // 4: which instance holds agents of which tunnel, until when.
    &["CREATE TABLE presence (
            instance TEXT NOT NULL,
            tunnel_id TEXT NOT NULL,
            relay_addr TEXT NOT NULL,
            expires_at_ms INTEGER NOT NULL,
            PRIMARY KEY (instance, tunnel_id))"],
];

/// The same steps for PostgreSQL (`BYTEA` for `BLOB`, `BIGINT` for
/// `INTEGER`); the second also makes every change to tunnels, callers and
/// admin tokens a notification on [`CHANNEL`], whoever wrote it.
const POSTGRES_STEPS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS tunnels (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            org TEXT NOT NULL,
            key_nonce BYTEA NOT NULL,
            key_ct BYTEA NOT NULL,
            created_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS callers (
            id TEXT PRIMARY KEY,
            org TEXT NOT NULL,
            token_hash BYTEA NOT NULL UNIQUE,
            created_at BIGINT NOT NULL)",
    ],
    &[
        "ALTER TABLE tunnels ADD COLUMN key_generation BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE tunnels ADD COLUMN prev_key_nonce BYTEA",
        "ALTER TABLE tunnels ADD COLUMN prev_key_ct BYTEA",
        "ALTER TABLE tunnels ADD COLUMN prev_key_until BIGINT",
        "ALTER TABLE callers ADD COLUMN name TEXT",
        "ALTER TABLE callers ADD COLUMN token_prefix TEXT",
        "ALTER TABLE callers ADD COLUMN expires_at BIGINT",
        "ALTER TABLE callers ADD COLUMN revoked_at BIGINT",
        "CREATE TABLE admin_tokens (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            scope TEXT NOT NULL CHECK (scope IN ('read', 'write')),
            token_hash BYTEA NOT NULL UNIQUE,
            token_prefix TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            revoked_at BIGINT)",
        "CREATE TABLE audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at_ms BIGINT NOT NULL,
            actor TEXT NOT NULL,
            source TEXT NOT NULL,
            action TEXT NOT NULL,
            object TEXT NOT NULL,
            detail TEXT NOT NULL)",
        "CREATE OR REPLACE FUNCTION tunnel_store_changed() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
            PERFORM pg_notify('tunnel_store', TG_TABLE_NAME);
            RETURN NULL;
         END $$",
        "CREATE TRIGGER tunnels_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tunnels
            FOR EACH STATEMENT EXECUTE FUNCTION tunnel_store_changed()",
        "CREATE TRIGGER callers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON callers
            FOR EACH STATEMENT EXECUTE FUNCTION tunnel_store_changed()",
        "CREATE TRIGGER admin_tokens_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
            ON admin_tokens FOR EACH STATEMENT EXECUTE FUNCTION tunnel_store_changed()",
    ],
    &["CREATE TABLE kek_check (
            id BIGINT PRIMARY KEY CHECK (id = 1),
            nonce BYTEA NOT NULL,
            ct BYTEA NOT NULL)"],
    &["CREATE TABLE presence (
            instance TEXT NOT NULL,
            tunnel_id TEXT NOT NULL,
            relay_addr TEXT NOT NULL,
            expires_at_ms BIGINT NOT NULL,
            PRIMARY KEY (instance, tunnel_id))"],
];

/// The channel every change to the shared tables is notified on
/// (PostgreSQL).
pub const CHANNEL: &str = "tunnel_store";

/// The advisory lock instances take while they migrate, so two starting
/// at once do not both run a step.
const MIGRATION_LOCK: i64 = 0x7475_6e6e_656c; // "tunnel"

/// Brings the schema to the newest version. A store written by a newer
/// gateway is refused rather than misread. SQLite keeps the version in
/// `user_version`; PostgreSQL in the table `store_schema`, written under
/// an advisory lock held until the migration commits.
pub async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (steps, version): (&[&[&str]], i64) = match backend {
        Backend::Sqlite => (
            SQLITE_STEPS,
            sqlx::query_scalar("PRAGMA user_version")
                .fetch_one(&mut *tx)
                .await?,
        ),
        Backend::Postgres => {
            // pg_advisory_xact_lock returns void, which no driver decodes.
            sqlx::query("SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
            // Asked, not `CREATE ... IF NOT EXISTS`, whose notice would be
            // logged at every start.
            let made: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = 'store_schema'",
            )
            .fetch_one(&mut *tx)
            .await?;
            if made == 0 {
                sqlx::query("CREATE TABLE store_schema (version BIGINT NOT NULL)")
                    .execute(&mut *tx)
                    .await?;
            }
            let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM store_schema")
                .fetch_one(&mut *tx)
                .await?;
            (POSTGRES_STEPS, v.unwrap_or(0))
        }
    };
    // A store made before versions were recorded has the first step's
    // tables and version 0; its `CREATE ... IF NOT EXISTS` are no-ops.
    let from = usize::try_from(version).unwrap_or(usize::MAX);
    if from > steps.len() {
        return Err(sqlx::Error::Protocol(format!(
            "the store has schema version {version}, newer than this gateway's {}: \
             use the newer gateway",
            steps.len()
        )));
    }
    for step in &steps[from..] {
        for stmt in *step {
            sqlx::query(stmt).execute(&mut *tx).await?;
        }
    }
    let newest = steps.len();
    match backend {
        // PRAGMA takes no bound parameters; the number is ours.
        Backend::Sqlite => {
            sqlx::query(&format!("PRAGMA user_version = {newest}"))
                .execute(&mut *tx)
                .await?;
        }
        Backend::Postgres if from < newest => {
            sqlx::query("DELETE FROM store_schema")
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO store_schema (version) VALUES ($1)")
                .bind(newest as i64)
                .execute(&mut *tx)
                .await?;
        }
        Backend::Postgres => {}
    }
    tx.commit().await
}
