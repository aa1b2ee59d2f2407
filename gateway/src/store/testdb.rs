//! Test support, for this crate's tests and the end-to-end tests: a new,
//! empty PostgreSQL database on the server `TUNNEL_TEST_PG` names
//! (`scripts/pg.sh start DIR` starts one and prints the variable;
//! `scripts/test.sh` does so for the whole suite).

use sqlx::Connection;

/// The variable naming the tests' PostgreSQL server.
pub const VAR: &str = "TUNNEL_TEST_PG";

/// Creates a database of its own for one test and returns its URL.
/// Panics, saying what to run, when `TUNNEL_TEST_PG` is not set: a test
/// on PostgreSQL must not pass without one.
pub async fn fresh_database() -> String {
    let base = std::env::var(VAR).unwrap_or_else(|_| {
        panic!(
            "{VAR} is not set: the store's PostgreSQL tests need a server. Start a throwaway \
             one with `export \"$(scripts/pg.sh start /tmp/tunnel-pg)\"` (scripts/test.sh does)"
        )
    });
    let name = format!("t_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::postgres::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("connecting to {VAR}: {e}"));
    // The name is ours (hex), not input: no quoting needed.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("creating a test database: {e}"));
    let _ = conn.close().await;
    let mut url = url::Url::parse(&base).unwrap_or_else(|e| panic!("{VAR}: {e}"));
    url.set_path(&format!("/{name}"));
    url.to_string()
}
