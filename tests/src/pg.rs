//! PostgreSQL for the stories and the benchmark: a new database on the
//! server `TUNNEL_TEST_PG` names (`scripts/test.sh` starts one), or a
//! throwaway cluster of one story's own (`scripts/pg.sh`).

use std::path::Path;

/// A new database of its own on the tests' PostgreSQL (`psql`, from the
/// same packages as the server).
pub async fn fresh_database() -> String {
    let base = std::env::var("TUNNEL_TEST_PG").unwrap_or_else(|_| {
        panic!(
            "TUNNEL_TEST_PG is not set: these stories need a PostgreSQL server. Start a \
             throwaway one with `export \"$(scripts/pg.sh start /tmp/tunnel-pg)\"` \
             (scripts/test.sh does)"
        )
    });
    let name = format!("t_{:016x}", rand_u64());
    let out = tokio::process::Command::new("psql")
        .arg(&base)
        .args(["-v", "ON_ERROR_STOP=1", "-qc"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .await
        .expect("run psql");
    assert!(
        out.status.success(),
        "creating a test database: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // postgres://user@host/postgres?host=… → …/<name>?host=…
    let (head, query) = base.split_once('?').unwrap_or((&base, ""));
    let (server, _) = head
        .rsplit_once('/')
        .expect("TUNNEL_TEST_PG names a database");
    format!("{server}/{name}?{query}")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// A PostgreSQL cluster of this test's own (`scripts/pg.sh`), stopped and
/// removed on drop, so stopping it disturbs no other story.
pub struct OwnCluster {
    dir: tempfile::TempDir,
    /// The cluster's `postgres` database.
    pub url: String,
}

impl OwnCluster {
    pub async fn start() -> OwnCluster {
        let dir = tempfile::Builder::new()
            .prefix("tunnel-pg-")
            .tempdir()
            .expect("temp dir");
        let out = Self::pg("start", dir.path()).await;
        let url = out
            .trim()
            .strip_prefix("TUNNEL_TEST_PG=")
            .unwrap_or_else(|| panic!("pg.sh start printed {out:?}"))
            .to_string();
        OwnCluster { dir, url }
    }

    async fn pg(cmd: &str, dir: &Path) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
        let out = tokio::process::Command::new(script)
            .arg(cmd)
            .arg(dir)
            .output()
            .await
            .expect("run scripts/pg.sh");
        assert!(
            out.status.success(),
            "pg.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn stop(&self) {
        Self::pg("stop", self.dir.path()).await;
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}
