//! Presence: which gateway instance holds agents of which tunnel, each
//! word valid until its lease ends. An instance rewrites its own rows on
//! every renewal; one that dies stops renewing and is ignored once its
//! lease is over. The table has no trigger: renewals every few seconds
//! must not make every instance reread its callers and tunnels.

use sqlx::Row;

use super::{Backend, Store, StoreError};

/// The channel an instance announces a change of the tunnels it holds on
/// (PostgreSQL): the others read presence again at once instead of at
/// their next renewal.
pub const CHANNEL: &str = "tunnel_presence";

/// Another instance holding agents of a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub tunnel_id: String,
    pub instance: String,
    /// Where it takes relayed requests.
    pub relay_addr: String,
}

impl Store {
    /// The time leases are counted in (unix milliseconds): the database's
    /// clock on PostgreSQL, so instances whose clocks disagree still agree
    /// on when a lease ends; this process's on SQLite (one machine).
    pub async fn presence_now(&self) -> Result<i64, StoreError> {
        match self.backend {
            Backend::Postgres => Ok(sqlx::query_scalar(
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
            )
            .fetch_one(&self.pool)
            .await?),
            Backend::Sqlite => Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0)),
        }
    }

    /// Records that `instance` (relaying at `relay_addr`) holds agents of
    /// exactly `tunnels`, until `until_ms` (unix milliseconds, in
    /// [`Store::presence_now`]'s clock): its rows are replaced in one
    /// transaction, and when `announce`, the others are told on commit.
    pub async fn presence_renew(
        &self,
        instance: &str,
        relay_addr: &str,
        tunnels: &[String],
        until_ms: i64,
        announce: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM presence WHERE instance = $1")
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        for tunnel in tunnels {
            sqlx::query(
                "INSERT INTO presence (instance, tunnel_id, relay_addr, expires_at_ms) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(instance)
            .bind(tunnel)
            .bind(relay_addr)
            .bind(until_ms)
            .execute(&mut *tx)
            .await?;
        }
        if announce && self.backend == Backend::Postgres {
            // The channel name is ours; NOTIFY takes no parameter.
            sqlx::query(&format!("NOTIFY {CHANNEL}"))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every other instance's rows still within their lease at `now_ms`;
    /// rows long expired are removed on the way.
    pub async fn presence_others(
        &self,
        instance: &str,
        now_ms: i64,
    ) -> Result<Vec<Holder>, StoreError> {
        // An hour past its lease, a row is no one's business.
        sqlx::query("DELETE FROM presence WHERE expires_at_ms < $1")
            .bind(now_ms - 3_600_000)
            .execute(&self.pool)
            .await?;
        let rows = sqlx::query(
            "SELECT tunnel_id, instance, relay_addr FROM presence \
             WHERE instance <> $1 AND expires_at_ms > $2 ORDER BY tunnel_id, instance",
        )
        .bind(instance)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Holder {
                tunnel_id: r.get("tunnel_id"),
                instance: r.get("instance"),
                relay_addr: r.get("relay_addr"),
            })
            .collect())
    }

    /// Removes `instance`'s rows (a clean shutdown).
    pub async fn presence_forget(&self, instance: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM presence WHERE instance = $1")
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
