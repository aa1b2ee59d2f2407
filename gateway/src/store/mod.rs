//! Tunnel, caller and admin-token storage through `sqlx`: SQLite (a file,
//! the default) or PostgreSQL (`store.url`, shared by several gateways).
//!
//! - The queries are written once, for sqlx's `Any` driver, in the SQL
//!   both databases read (`$1` parameters, `RETURNING`); the schema has a
//!   migration list for each ([`schema`]).
//! - On PostgreSQL a trigger notifies every change to tunnels, callers and
//!   admin tokens; [`Store::listen`] turns those notifications into
//!   rereads, so another instance's change is seen at once.
//! - Tunnel keys are sealed under a key-encryption key ([`kek`]); a
//!   rotated tunnel keeps its previous key, sealed the same way, until its
//!   overlap ends ([`Store::rotate_key`]). [`Store::rekey`] reseals every
//!   key under a new KEK in one transaction.
//! - Caller and admin tokens are stored only as SHA-256 hashes ([`accounts`]).
//! - Every change is recorded in an audit table ([`audit`]).

pub mod accounts;
pub mod audit;
pub mod kek;
pub mod presence;
mod schema;
#[doc(hidden)]
pub mod testdb;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use protocol::TunnelKey;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use accounts::{AdminScope, AdminTokenInfo, CallerInfo, CallerRecord};
pub use audit::{AuditEntry, AuditRecord};
pub use kek::Kek;

use crate::config::StoreSection;

/// A store failure, by origin.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("key-encryption key: {0}")]
    Kek(String),
    #[error("tunnel key of {0} does not decrypt under this key-encryption key (wrong KEK or tampered row)")]
    Decrypt(String),
    #[error("a tunnel named `{0}` already exists")]
    DuplicateName(String),
    #[error("no {kind} `{id}`")]
    NotFound { kind: &'static str, id: String },
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// What everyone may know about a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TunnelInfo {
    pub id: String,
    pub name: String,
    pub org: String,
}

/// A tunnel as listed: what everyone may know, and where its key stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TunnelRecord {
    #[serde(flatten)]
    pub info: TunnelInfo,
    /// Unix seconds.
    pub created_at: i64,
    /// 0 at creation, one more per rotation.
    pub key_generation: i64,
    /// Until when (unix seconds) the key before the current one is still
    /// accepted; `None` when there is none.
    pub previous_key_valid_until: Option<i64>,
}

/// A tunnel's keys, for the agent handshake.
#[derive(Debug)]
pub struct TunnelKeys {
    pub info: TunnelInfo,
    pub generation: i64,
    pub current: TunnelKey,
    /// The key before the current one, while its overlap lasts.
    pub previous: Option<TunnelKey>,
}

/// Hash under which a caller or admin token is stored and looked up.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A tunnel name is a DNS label, because `<name>.<base_domain>` must route.
pub fn validate_tunnel_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "name",
            reason: "a tunnel name is 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
        })
    }
}

/// An organization name: 1-128 printable ASCII characters without spaces.
pub fn validate_org(org: &str) -> Result<(), StoreError> {
    if !org.is_empty() && org.len() <= 128 && org.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "org",
            reason: "an organization is 1-128 printable ASCII characters without spaces",
        })
    }
}

fn random_id(prefix: &str, bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

/// Which database a store is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL, once [`Store::listen`] runs: one more for every change
    /// notified (and for every reconnection of the listening connection,
    /// which may have missed some), and a wake-up for whoever rereads.
    changes: Arc<Changes>,
    /// The KEK keys are sealed under, first; after a rekey (or when an
    /// interrupted one left `<kek_file>.new`), the other one too, so a key
    /// read during the switch still opens.
    keks: Arc<RwLock<Vec<Arc<Kek>>>>,
    cfg: StoreSection,
}

/// How the store looked: when it differs from the last one seen, another
/// process changed the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreStamp {
    /// SQLite: the length and modification time of the database file and
    /// its write-ahead log.
    Files([(u64, std::time::SystemTime); 2]),
    /// PostgreSQL: how many changes were notified.
    Notified(u64),
}

/// The changes another process made, as notified.
#[derive(Debug, Default)]
struct Changes {
    seen: AtomicU64,
    wake: tokio::sync::Notify,
    /// Another instance's presence changed ([`presence`]).
    presence: tokio::sync::Notify,
    /// The last reload another instance announced (`<instance> <digest>`),
    /// and a wake-up for the reloader.
    reloaded: std::sync::Mutex<Option<String>>,
    reload: tokio::sync::Notify,
    listener: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

/// The channel a reload is announced on (PostgreSQL).
const RELOAD_CHANNEL: &str = "tunnel_reload";

/// How long the listening connection waits before connecting again after
/// it failed (doubling up to [`LISTEN_BACKOFF_MAX`]).
const LISTEN_BACKOFF: std::time::Duration = std::time::Duration::from_millis(250);
const LISTEN_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a query may wait for a connection of the pool.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens (creating if missing) the database, brings its schema up to
    /// date and loads the KEK.
    pub async fn open(cfg: &StoreSection) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (pool, backend) = match &cfg.url {
            Some(url) => (
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(postgres_options(url.expose())?)
                    .await?,
                Backend::Postgres,
            ),
            None => (
                AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    // WAL: readers do not wait for a writer. The Any
                    // driver's options are a URL, which has no place for it.
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::query("PRAGMA journal_mode = WAL")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA busy_timeout = 5000")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect_with(sqlite_options(&cfg.path)?)
                    .await?,
                Backend::Sqlite,
            ),
        };
        schema::migrate(&pool, backend).await?;
        let tunnels: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tunnels")
            .fetch_one(&pool)
            .await?;
        let mut keks = vec![Arc::new(kek::load(cfg, tunnels == 0)?)];
        if let Some(file) = &cfg.kek_file {
            let pending = kek::pending_path(file);
            if let Ok(k) = Kek::read(&pending) {
                tracing::warn!(
                    "{} exists: a rekey was interrupted; tunnel keys sealed under it still open. \
                     Run `gateway store rekey` again to finish",
                    pending.display()
                );
                keks.push(Arc::new(k));
            }
        }
        check_kek(&pool, &keks, cfg).await?;
        Ok(Store {
            pool,
            backend,
            changes: Arc::default(),
            keks: Arc::new(RwLock::new(keks)),
            cfg: cfg.clone(),
        })
    }

    fn kek(&self) -> Arc<Kek> {
        self.keks.read().expect("lock")[0].clone()
    }

    fn open_key(
        &self,
        nonce: &[u8],
        ct: &[u8],
        info: &TunnelInfo,
        generation: i64,
    ) -> Result<TunnelKey, StoreError> {
        let keks = self.keks.read().expect("lock").clone();
        keks.iter()
            .find_map(|k| kek::open(k, nonce, ct, &info.id, &info.org, generation))
            .map(|k| TunnelKey::from_bytes(*k))
            .ok_or_else(|| StoreError::Decrypt(info.id.clone()))
    }

    /// Creates a tunnel with a fresh key. The key is returned once, here.
    pub async fn create_tunnel(
        &self,
        org: &str,
        name: &str,
    ) -> Result<(TunnelInfo, TunnelKey), StoreError> {
        validate_org(org)?;
        validate_tunnel_name(name)?;
        let id = random_id("tun_", 12);
        let key = TunnelKey::generate();
        let (nonce, ct) = kek::seal(&self.kek(), key.expose(), &id, org, 0)?;
        let res = sqlx::query(
            "INSERT INTO tunnels (id, name, org, key_nonce, key_ct, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(org)
        .bind(&nonce[..])
        .bind(&ct)
        .bind(now_secs())
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::DuplicateName(name.into()))
            }
            Err(e) => return Err(e.into()),
        }
        Ok((
            TunnelInfo {
                id,
                name: name.into(),
                org: org.into(),
            },
            key,
        ))
    }

    /// All tunnels, by name.
    pub async fn list_tunnels(&self) -> Result<Vec<TunnelInfo>, StoreError> {
        Ok(self
            .tunnel_records()
            .await?
            .into_iter()
            .map(|r| r.info)
            .collect())
    }

    /// All tunnels with their key state, by name.
    pub async fn tunnel_records(&self) -> Result<Vec<TunnelRecord>, StoreError> {
        let rows = sqlx::query(&format!("{TUNNEL_SELECT} ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(tunnel_record).collect())
    }

    /// A tunnel by name.
    pub async fn tunnel_by_name(&self, name: &str) -> Result<Option<TunnelRecord>, StoreError> {
        let row = sqlx::query(&format!("{TUNNEL_SELECT} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(tunnel_record))
    }

    /// A tunnel and its decrypted keys, by id: the current one, and the
    /// previous one while its overlap lasts.
    pub async fn tunnel_with_key(&self, id: &str) -> Result<Option<TunnelKeys>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT id, name, org, key_nonce, key_ct, key_generation, \
             prev_key_nonce, prev_key_ct, prev_key_until FROM tunnels WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let info = TunnelInfo {
            id: row.get("id"),
            name: row.get("name"),
            org: row.get("org"),
        };
        let generation: i64 = row.get("key_generation");
        let nonce: Vec<u8> = row.get("key_nonce");
        let ct: Vec<u8> = row.get("key_ct");
        let current = self.open_key(&nonce, &ct, &info, generation)?;
        let until: Option<i64> = row.get("prev_key_until");
        let previous = match (
            until,
            row.get::<Option<Vec<u8>>, _>("prev_key_nonce"),
            row.get::<Option<Vec<u8>>, _>("prev_key_ct"),
        ) {
            (Some(until), Some(n), Some(c)) if until > now_secs() => {
                Some(self.open_key(&n, &c, &info, generation - 1)?)
            }
            _ => None,
        };
        Ok(Some(TunnelKeys {
            info,
            generation,
            current,
            previous,
        }))
    }

    /// Deletes a tunnel by name; its keys are gone with it.
    pub async fn delete_tunnel(&self, name: &str) -> Result<TunnelRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!("{TUNNEL_SELECT} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found("tunnel", name))?;
        sqlx::query("DELETE FROM tunnels WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(tunnel_record(&row))
    }

    /// Gives a tunnel a new key, returned once, here. The current key
    /// stays accepted for `overlap` (none when zero); a key older than that
    /// is dropped.
    pub async fn rotate_key(
        &self,
        name: &str,
        overlap: std::time::Duration,
    ) -> Result<(TunnelRecord, TunnelKey), StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT id, org, key_nonce, key_ct, key_generation FROM tunnels WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found("tunnel", name))?;
        let (id, org): (String, String) = (row.get("id"), row.get("org"));
        let generation: i64 = row.get::<i64, _>("key_generation") + 1;
        let key = TunnelKey::generate();
        let (nonce, ct) = kek::seal(&self.kek(), key.expose(), &id, &org, generation)?;
        let secs = i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX / 2);
        let (prev_nonce, prev_ct, until) = if secs > 0 {
            (
                Some(row.get::<Vec<u8>, _>("key_nonce")),
                Some(row.get::<Vec<u8>, _>("key_ct")),
                Some(now_secs().saturating_add(secs)),
            )
        } else {
            (None, None, None)
        };
        // Only from the generation read: two rotations at once (two
        // instances) must not both print a key when one overwrote the other.
        let updated = sqlx::query(
            "UPDATE tunnels SET key_nonce = $1, key_ct = $2, key_generation = $3, \
             prev_key_nonce = $4, prev_key_ct = $5, prev_key_until = $6 \
             WHERE id = $7 AND key_generation = $8",
        )
        .bind(&nonce[..])
        .bind(&ct)
        .bind(generation)
        .bind(prev_nonce)
        .bind(prev_ct)
        .bind(until)
        .bind(&id)
        .bind(generation - 1)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Invalid {
                field: "tunnel",
                reason: "its key was rotated by someone else at the same moment; rotate again",
            });
        }
        let row = sqlx::query(&format!("{TUNNEL_SELECT} WHERE id = $1"))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((tunnel_record(&row), key))
    }

    /// Reseals every tunnel key (current and previous) under `new`, in one
    /// transaction, and uses `new` from then on; the old KEK still opens
    /// keys read during the switch. Returns how many tunnels were resealed.
    pub async fn rekey(&self, new: Kek) -> Result<usize, StoreError> {
        let new = Arc::new(new);
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT id, name, org, key_nonce, key_ct, key_generation, prev_key_nonce, prev_key_ct \
             FROM tunnels",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let info = TunnelInfo {
                id: row.get("id"),
                name: row.get("name"),
                org: row.get("org"),
            };
            let generation: i64 = row.get("key_generation");
            let key = self.open_key(
                &row.get::<Vec<u8>, _>("key_nonce"),
                &row.get::<Vec<u8>, _>("key_ct"),
                &info,
                generation,
            )?;
            let (n, c) = kek::seal(&new, key.expose(), &info.id, &info.org, generation)?;
            let prev = match (
                row.get::<Option<Vec<u8>>, _>("prev_key_nonce"),
                row.get::<Option<Vec<u8>>, _>("prev_key_ct"),
            ) {
                (Some(pn), Some(pc)) => {
                    let k = self.open_key(&pn, &pc, &info, generation - 1)?;
                    let (n, c) = kek::seal(&new, k.expose(), &info.id, &info.org, generation - 1)?;
                    Some((n.to_vec(), c))
                }
                _ => None,
            };
            let (pn, pc) = prev.unzip();
            sqlx::query(
                "UPDATE tunnels SET key_nonce = $1, key_ct = $2, prev_key_nonce = $3, prev_key_ct = $4 \
                 WHERE id = $5",
            )
            .bind(&n[..])
            .bind(&c)
            .bind(pn)
            .bind(pc)
            .bind(&info.id)
            .execute(&mut *tx)
            .await?;
        }
        let (n, c) = kek::seal(&new, &KEK_CHECK, KEK_CHECK_ID, KEK_CHECK_ORG, 0)?;
        sqlx::query("UPDATE kek_check SET nonce = $1, ct = $2 WHERE id = 1")
            .bind(&n[..])
            .bind(&c)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut keks = self.keks.write().expect("lock");
        let old = keks[0].clone();
        *keks = vec![new, old];
        Ok(rows.len())
    }

    /// The store's configuration (where its KEK comes from).
    pub fn config(&self) -> &StoreSection {
        &self.cfg
    }

    /// Which database this store is on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How the store looks now: on SQLite two `stat` calls, on PostgreSQL
    /// the count of changes notified; no query.
    pub fn stamp(&self) -> StoreStamp {
        match self.backend {
            Backend::Postgres => StoreStamp::Notified(self.changes.seen.load(Ordering::Acquire)),
            Backend::Sqlite => {
                let look = |p: &std::path::Path| {
                    std::fs::metadata(p).map_or((0, std::time::UNIX_EPOCH), |m| {
                        (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH))
                    })
                };
                let mut wal = self.cfg.path.clone().into_os_string();
                wal.push("-wal");
                StoreStamp::Files([look(&self.cfg.path), look(Path::new(&wal))])
            }
        }
    }

    /// PostgreSQL: listens for the changes every instance makes (the
    /// schema's trigger notifies them), from before this returns, so a
    /// change right after is not missed. Each one makes [`Store::stamp`]
    /// differ and wakes [`Store::changed`]. A lost listening connection
    /// is made again (with backoff), and counts as a change, since
    /// notifications sent meanwhile are lost. Nothing to do on SQLite.
    pub async fn listen(&self) -> Result<(), StoreError> {
        let Some(url) = &self.cfg.url else {
            return Ok(());
        };
        let mut listener = sqlx::postgres::PgListener::connect(url.expose()).await?;
        listener
            .listen_all([schema::CHANNEL, presence::CHANNEL, RELOAD_CHANNEL])
            .await?;
        let changes = self.changes.clone();
        let task = tokio::spawn(async move {
            let mut backoff = LISTEN_BACKOFF;
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) if n.channel() == presence::CHANNEL => {
                        changes.presence.notify_one();
                        continue;
                    }
                    Ok(Some(n)) if n.channel() == RELOAD_CHANNEL => {
                        *changes.reloaded.lock().expect("lock") = Some(n.payload().to_string());
                        changes.reload.notify_one();
                        continue;
                    }
                    Ok(Some(_)) => backoff = LISTEN_BACKOFF,
                    // The connection was lost; the next call makes it again.
                    Ok(None) => tracing::warn!(
                        "the store's notification connection was lost; connecting again"
                    ),
                    Err(e) => {
                        tracing::warn!(
                            "the store's notification connection failed ({e}); trying again in {}",
                            humantime::format_duration(backoff)
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(LISTEN_BACKOFF_MAX);
                    }
                }
                changes.seen.fetch_add(1, Ordering::AcqRel);
                changes.wake.notify_one();
                changes.presence.notify_one();
            }
        });
        if let Some(old) = self
            .changes
            .listener
            .lock()
            .expect("lock")
            .replace(task.abort_handle())
        {
            old.abort();
        }
        Ok(())
    }

    /// Returns once a change was notified since the last return (at once
    /// when one is pending). Never returns on SQLite, where a change is
    /// found by [`Store::stamp`] instead.
    pub async fn changed(&self) {
        match self.backend {
            Backend::Postgres => self.changes.wake.notified().await,
            Backend::Sqlite => std::future::pending().await,
        }
    }

    /// Returns once another instance announced that the tunnels it holds
    /// changed (PostgreSQL, while [`Store::listen`] runs); never on SQLite.
    pub async fn presence_changed(&self) {
        match self.backend {
            Backend::Postgres => self.changes.presence.notified().await,
            Backend::Sqlite => std::future::pending().await,
        }
    }

    /// Tells the other instances (PostgreSQL) that `instance` reloaded its
    /// configuration, whose routes now have `digest`: each reads its own
    /// file again at once. Nothing on SQLite.
    pub async fn announce_reload(&self, instance: &str, digest: &str) -> Result<(), StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(());
        }
        // pg_notify returns void, which no driver decodes.
        sqlx::query("SELECT COUNT(*) FROM (SELECT pg_notify($1, $2)) AS n")
            .bind(RELOAD_CHANNEL)
            .bind(format!("{instance} {digest}"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Returns the next reload another instance announced, as
    /// `(instance, digest)` (PostgreSQL, while [`Store::listen`] runs);
    /// never on SQLite.
    pub async fn reload_announced(&self) -> (String, String) {
        if self.backend != Backend::Postgres {
            return std::future::pending().await;
        }
        loop {
            self.changes.reload.notified().await;
            let payload = self.changes.reloaded.lock().expect("lock").take();
            if let Some((who, digest)) = payload.as_deref().and_then(|p| p.split_once(' ')) {
                return (who.to_string(), digest.to_string());
            }
        }
    }

    /// Stops listening and closes the pool, flushing the database.
    pub async fn close(&self) {
        if let Some(task) = self.changes.listener.lock().expect("lock").take() {
            task.abort();
        }
        self.pool.close().await;
    }
}

const TUNNEL_SELECT: &str =
    "SELECT id, name, org, created_at, key_generation, prev_key_until FROM tunnels";

fn tunnel_record(row: &AnyRow) -> TunnelRecord {
    let until: Option<i64> = row.get("prev_key_until");
    TunnelRecord {
        info: TunnelInfo {
            id: row.get("id"),
            name: row.get("name"),
            org: row.get("org"),
        },
        created_at: row.get("created_at"),
        key_generation: row.get("key_generation"),
        previous_key_valid_until: until.filter(|u| *u > now_secs()),
    }
}

/// What the store's row `kek_check` seals under the KEK, as if it were the
/// key of a tunnel of this id and organization (no tunnel id has this
/// form): an instance whose KEK does not open it is refused at start.
const KEK_CHECK: [u8; 32] = [0; 32];
const KEK_CHECK_ID: &str = "kek-check";
const KEK_CHECK_ORG: &str = "-";

/// Every instance on one store must seal under the same KEK, or the keys
/// one writes are unreadable to the others. The first instance records
/// a value sealed under its KEK; one whose KEK does not open it is
/// refused at start, rather than failing every agent later. A store from
/// before the check gets it once its first tunnel key opens.
async fn check_kek(
    pool: &AnyPool,
    keks: &[Arc<Kek>],
    cfg: &StoreSection,
) -> Result<(), StoreError> {
    let opens = |row: &AnyRow| {
        let (n, c): (Vec<u8>, Vec<u8>) = (row.get("nonce"), row.get("ct"));
        keks.iter()
            .any(|k| kek::open(k, &n, &c, KEK_CHECK_ID, KEK_CHECK_ORG, 0).is_some())
    };
    let wrong = || {
        let source = match (&cfg.kek_file, &cfg.kek_env) {
            (Some(f), _) => format!("store.kek_file ({})", f.display()),
            (None, Some(v)) => format!("store.kek_env (${v})"),
            (None, None) => "store.kek_file".into(),
        };
        StoreError::Kek(format!(
            "the key-encryption key of {source} is not the one the store {} seals its tunnel \
             keys under: every gateway on one store needs the same KEK",
            cfg.describe()
        ))
    };
    let read = "SELECT nonce, ct FROM kek_check WHERE id = 1";
    if let Some(row) = sqlx::query(read).fetch_optional(pool).await? {
        return if opens(&row) { Ok(()) } else { Err(wrong()) };
    }
    if let Some(t) = sqlx::query(
        "SELECT id, org, key_nonce, key_ct, key_generation FROM tunnels ORDER BY id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?
    {
        let (id, org): (String, String) = (t.get("id"), t.get("org"));
        let (n, c): (Vec<u8>, Vec<u8>) = (t.get("key_nonce"), t.get("key_ct"));
        let generation: i64 = t.get("key_generation");
        if !keks
            .iter()
            .any(|k| kek::open(k, &n, &c, &id, &org, generation).is_some())
        {
            return Err(wrong());
        }
    }
    let (n, c) = kek::seal(&keks[0], &KEK_CHECK, KEK_CHECK_ID, KEK_CHECK_ORG, 0)?;
    sqlx::query(
        "INSERT INTO kek_check (id, nonce, ct) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&n[..])
    .bind(&c)
    .execute(pool)
    .await?;
    // Another instance starting at once may have recorded its own first.
    let row = sqlx::query(read).fetch_one(pool).await?;
    if opens(&row) {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// SQLite's options as the `Any` driver takes them: a URL, with the path
/// percent-encoded (sqlx decodes it) and made absolute.
fn sqlite_options(path: &Path) -> Result<AnyConnectOptions, StoreError> {
    const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'.')
        .remove(b'-')
        .remove(b'_');
    if path.as_os_str().is_empty() {
        return Err(StoreError::Invalid {
            field: "store.path",
            reason: "the SQLite database file must be named (or store.url given)",
        });
    }
    let abs = std::path::absolute(path).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
    let text = abs.to_str().ok_or(StoreError::Invalid {
        field: "store.path",
        reason: "the path must be UTF-8",
    })?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        percent_encoding::utf8_percent_encode(text, PATH)
    );
    Ok(url.parse()?)
}

/// PostgreSQL's options from `store.url`; only `postgres://` and
/// `postgresql://` are taken.
fn postgres_options(url: &str) -> Result<AnyConnectOptions, StoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::Invalid {
            field: "store.url",
            reason: "a store URL is postgres://… (SQLite is store.path)",
        });
    }
    Ok(url.parse()?)
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.chars().take(128).collect(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;

    fn cfg(dir: &Path) -> StoreSection {
        StoreSection {
            path: dir.join("g.db"),
            kek_file: Some(dir.join("kek")),
            kek_env: None,
            url: None,
            refresh: std::time::Duration::from_secs(5),
        }
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gwstore-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The stores every test runs on: SQLite in `d/sqlite`, and a new
    /// database on the tests' PostgreSQL with its KEK in `d/pg`.
    async fn backends(d: &Path) -> [StoreSection; 2] {
        let (lite, pg) = (d.join("sqlite"), d.join("pg"));
        std::fs::create_dir_all(&lite).unwrap();
        std::fs::create_dir_all(&pg).unwrap();
        [
            cfg(&lite),
            StoreSection {
                url: Some(crate::config::StoreUrl::new(testdb::fresh_database().await)),
                ..cfg(&pg)
            },
        ]
    }

    /// Every byte string the store holds in `table` (PostgreSQL), or in
    /// its files (SQLite): a secret must be found in none.
    async fn stored_bytes(s: &Store, table: &str) -> Vec<Vec<u8>> {
        match s.backend() {
            Backend::Sqlite => {
                let mut wal = s.cfg.path.clone().into_os_string();
                wal.push("-wal");
                vec![
                    std::fs::read(&s.cfg.path).unwrap(),
                    std::fs::read(&wal).unwrap_or_default(),
                ]
            }
            Backend::Postgres => {
                let rows = sqlx::query(&format!(
                    "SELECT convert_to(CAST(t AS TEXT), 'UTF8') AS b FROM {table} AS t"
                ))
                .fetch_all(&s.pool)
                .await
                .unwrap();
                rows.iter().map(|r| r.get::<Vec<u8>, _>("b")).collect()
            }
        }
    }

    #[tokio::test]
    async fn tunnel_key_round_trips_encrypted() {
        let d = tmp();
        for c in backends(&d).await {
            let s = Store::open(&c).await.unwrap();
            let (info, key) = s.create_tunnel("acme", "wiki").await.unwrap();
            let back = s.tunnel_with_key(&info.id).await.unwrap().unwrap();
            assert_eq!(back.info, info);
            assert_eq!(back.current.expose(), key.expose());
            assert!(back.previous.is_none());
            // The key is not stored in the clear; the row is there.
            let stored = stored_bytes(&s, "tunnels").await;
            assert!(stored.iter().any(|b| b.windows(4).any(|w| w == b"wiki")));
            for bytes in stored {
                assert!(!bytes.windows(32).any(|w| w == key.expose()));
            }
            assert!(matches!(
                s.create_tunnel("acme", "wiki").await,
                Err(StoreError::DuplicateName(_))
            ));
            assert!(s.tunnel_with_key("tun_missing").await.unwrap().is_none());
            let kek_mode = std::fs::metadata(c.kek_file.as_ref().unwrap()).unwrap();
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(kek_mode.permissions().mode() & 0o777, 0o600);
            s.close().await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_row_moved_to_another_tunnel_does_not_decrypt() {
        let d = tmp();
        for c in backends(&d).await {
            let s = Store::open(&c).await.unwrap();
            let (a, _) = s.create_tunnel("acme", "a").await.unwrap();
            let (b, _) = s.create_tunnel("other", "b").await.unwrap();
            sqlx::query("UPDATE tunnels SET key_nonce = (SELECT key_nonce FROM tunnels WHERE id = $1), key_ct = (SELECT key_ct FROM tunnels WHERE id = $2) WHERE id = $3")
                .bind(&a.id).bind(&a.id).bind(&b.id)
                .execute(&s.pool).await.unwrap();
            assert!(matches!(
                s.tunnel_with_key(&b.id).await,
                Err(StoreError::Decrypt(_))
            ));
            s.close().await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_kek_file_writable_by_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp();
        Store::open(&cfg(&d)).await.unwrap();
        let kek = d.join("kek");
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = Store::open(&cfg(&d)).await.unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        assert!(
            e.contains("0664") && e.contains(&kek.display().to_string()),
            "{e}"
        );
        // Readable by others is the operator's choice; only write is refused.
        std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(&cfg(&d)).await.unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn wrong_kek_is_refused() {
        let d = tmp();
        for c in backends(&d).await {
            let s = Store::open(&c).await.unwrap();
            let (a, _) = s.create_tunnel("acme", "a").await.unwrap();
            s.close().await;
            let good = std::fs::read(c.kek_file.as_ref().unwrap()).unwrap();
            std::fs::write(c.kek_file.as_ref().unwrap(), STANDARD.encode([7u8; 32])).unwrap();
            let e = Store::open(&c).await.unwrap_err().to_string();
            assert!(
                e.contains("every gateway on one store needs the same KEK"),
                "{e}"
            );
            assert!(e.contains(&c.describe()), "{e}");
            // A store from before the check (no kek_check row) is judged
            // by its first tunnel key instead.
            std::fs::write(c.kek_file.as_ref().unwrap(), &good).unwrap();
            let s = Store::open(&c).await.unwrap();
            sqlx::query("DELETE FROM kek_check")
                .execute(&s.pool)
                .await
                .unwrap();
            s.close().await;
            std::fs::write(c.kek_file.as_ref().unwrap(), STANDARD.encode([7u8; 32])).unwrap();
            let e = Store::open(&c).await.unwrap_err().to_string();
            assert!(e.contains("same KEK"), "{e}");
            std::fs::write(c.kek_file.as_ref().unwrap(), &good).unwrap();
            let s = Store::open(&c).await.unwrap();
            assert!(s.tunnel_with_key(&a.id).await.unwrap().is_some());
            s.close().await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn callers_are_kept_by_token_hash_and_revoked_ones_drop_out() {
        let d = tmp();
        for c in backends(&d).await {
            callers_on(&Store::open(&c).await.unwrap()).await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    async fn callers_on(s: &Store) {
        let (c, token) = s.create_caller("acme").await.unwrap();
        let active = s.active_callers().await.unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].hash, token_hash(&token));
        assert_eq!(active[0].info, c);
        let listed = s.list_callers().await.unwrap();
        assert_eq!(listed[0].token_prefix.as_deref(), Some(&token[3..11]));
        let revoked = s.revoke_caller(&c.id).await.unwrap();
        assert_eq!(revoked.state, "revoked");
        assert!(s.active_callers().await.unwrap().is_empty());
        assert!(matches!(
            s.revoke_caller("cal_missing").await,
            Err(StoreError::NotFound { .. })
        ));
        let stored = stored_bytes(s, "callers").await;
        assert!(stored.iter().any(|b| b.windows(4).any(|w| w == b"acme")));
        for bytes in stored {
            assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()));
        }
        s.close().await;
    }

    #[tokio::test]
    async fn a_rotated_key_keeps_the_previous_one_for_its_overlap_only() {
        let d = tmp();
        for c in backends(&d).await {
            rotation_on(&Store::open(&c).await.unwrap()).await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    async fn rotation_on(s: &Store) {
        let (info, k0) = s.create_tunnel("acme", "wiki").await.unwrap();
        let (rec, k1) = s
            .rotate_key("wiki", std::time::Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(rec.key_generation, 1);
        assert!(rec.previous_key_valid_until.is_some());
        let keys = s.tunnel_with_key(&info.id).await.unwrap().unwrap();
        assert_eq!(keys.current.expose(), k1.expose());
        assert_eq!(keys.previous.unwrap().expose(), k0.expose());
        // A second rotation without overlap drops both older keys.
        let (rec, k2) = s
            .rotate_key("wiki", std::time::Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(rec.key_generation, 2);
        assert_eq!(rec.previous_key_valid_until, None);
        let keys = s.tunnel_with_key(&info.id).await.unwrap().unwrap();
        assert_eq!(keys.current.expose(), k2.expose());
        assert!(keys.previous.is_none());
        assert!(matches!(
            s.rotate_key("nope", std::time::Duration::ZERO).await,
            Err(StoreError::NotFound { .. })
        ));
        s.delete_tunnel("wiki").await.unwrap();
        assert!(s.tunnel_with_key(&info.id).await.unwrap().is_none());
        s.close().await;
    }

    #[tokio::test]
    async fn rekey_reseals_every_key_under_the_new_kek() {
        let d = tmp();
        for c in backends(&d).await {
            rekey_on(&c).await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    async fn rekey_on(c: &StoreSection) {
        let d = c.kek_file.as_ref().unwrap().parent().unwrap();
        let s = Store::open(c).await.unwrap();
        let (a, ka) = s.create_tunnel("acme", "a").await.unwrap();
        s.rotate_key("a", std::time::Duration::from_secs(60))
            .await
            .unwrap();
        let ka1 = s.tunnel_with_key(&a.id).await.unwrap().unwrap().current;
        let (b, kb) = s.create_tunnel("acme", "b").await.unwrap();
        let new = Kek::generate();
        new.write_new(&d.join("kek2")).unwrap();
        assert_eq!(s.rekey(new).await.unwrap(), 2);
        s.close().await;
        // Only the new KEK is needed from now on.
        let s = Store::open(&StoreSection {
            kek_file: Some(d.join("kek2")),
            ..c.clone()
        })
        .await
        .unwrap();
        let keys = s.tunnel_with_key(&a.id).await.unwrap().unwrap();
        assert_eq!(keys.current.expose(), ka1.expose());
        assert_eq!(keys.previous.unwrap().expose(), ka.expose());
        let keys = s.tunnel_with_key(&b.id).await.unwrap().unwrap();
        assert_eq!(keys.current.expose(), kb.expose());
        s.close().await;
    }

    #[tokio::test]
    async fn a_store_from_before_versions_is_migrated_and_keeps_its_tunnels() {
        let d = tmp();
        let c = cfg(&d);
        // The first release's tables, without a schema version.
        {
            let opts = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&c.path)
                .create_if_missing(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .connect_with(opts)
                .await
                .unwrap();
            for stmt in schema_v1() {
                sqlx::query(stmt).execute(&pool).await.unwrap();
            }
            let kek = kek::load(&c, true).unwrap();
            let key = TunnelKey::generate();
            let (n, ct) = kek::seal(&kek, key.expose(), "tun_old", "acme", 0).unwrap();
            sqlx::query("INSERT INTO tunnels VALUES ('tun_old', 'old', 'acme', $1, $2, 1)")
                .bind(&n[..])
                .bind(&ct)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
        let s = Store::open(&c).await.unwrap();
        let keys = s.tunnel_with_key("tun_old").await.unwrap().unwrap();
        assert_eq!(keys.generation, 0);
        s.create_caller_with("acme", Some("ci bot"), None)
            .await
            .unwrap();
        s.create_admin_token("ops", AdminScope::Read).await.unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn schema_v1() -> [&'static str; 2] {
        [
            "CREATE TABLE tunnels (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, org TEXT NOT NULL,              key_nonce BLOB NOT NULL, key_ct BLOB NOT NULL, created_at INTEGER NOT NULL)",
            "CREATE TABLE callers (id TEXT PRIMARY KEY, org TEXT NOT NULL,              token_hash BLOB NOT NULL UNIQUE, created_at INTEGER NOT NULL)",
        ]
    }

    #[tokio::test]
    async fn a_missing_kek_is_not_replaced_once_tunnels_exist() {
        let d = tmp();
        for c in backends(&d).await {
            let kek = c.kek_file.clone().unwrap();
            let s = Store::open(&c).await.unwrap();
            s.create_tunnel("acme", "a").await.unwrap();
            s.close().await;
            std::fs::remove_file(&kek).unwrap();
            let err = Store::open(&c).await.unwrap_err().to_string();
            assert!(err.contains("already holds tunnels"), "{err}");
            assert!(!kek.exists());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Three instances starting at once on one new PostgreSQL database:
    /// one migrates, the others wait for it and find the schema made.
    #[tokio::test]
    async fn instances_starting_together_migrate_a_postgres_store_once() {
        let d = tmp();
        let [_, c] = backends(&d).await;
        let opens = (0..3).map(|_| Store::open(&c));
        let stores = futures_util::future::try_join_all(opens).await.unwrap();
        stores[0].create_tunnel("acme", "a").await.unwrap();
        assert_eq!(stores[2].list_tunnels().await.unwrap().len(), 1);
        let v: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM store_schema")
            .fetch_one(&stores[1].pool)
            .await
            .unwrap();
        assert_eq!(v, 1);
        for s in stores {
            s.close().await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A change one instance makes is notified to another within a second,
    /// whatever wrote it; on SQLite the files' stamp moves instead.
    #[tokio::test]
    async fn another_instances_change_is_notified_at_once() {
        let d = tmp();
        let [lite, pg] = backends(&d).await;
        let (a, b) = (
            Store::open(&pg).await.unwrap(),
            Store::open(&pg).await.unwrap(),
        );
        b.listen().await.unwrap();
        let before = b.stamp();
        let changes = [
            "create a tunnel",
            "rotate its key",
            "create a caller",
            "revoke it",
            "create an admin token",
            "delete the tunnel",
        ];
        let mut caller = String::new();
        for (i, change) in changes.iter().enumerate() {
            let started = std::time::Instant::now();
            match i {
                0 => drop(a.create_tunnel("acme", "wiki").await.unwrap()),
                1 => drop(
                    a.rotate_key("wiki", std::time::Duration::ZERO)
                        .await
                        .unwrap(),
                ),
                2 => caller = a.create_caller("acme").await.unwrap().0.id,
                3 => drop(a.revoke_caller(&caller).await.unwrap()),
                4 => drop(a.create_admin_token("ops", AdminScope::Read).await.unwrap()),
                _ => drop(a.delete_tunnel("wiki").await.unwrap()),
            }
            tokio::time::timeout(std::time::Duration::from_secs(1), b.changed())
                .await
                .unwrap_or_else(|_| panic!("no notification within 1 s after: {change}"));
            eprintln!("{change}: notified after {:?}", started.elapsed());
        }
        assert_ne!(b.stamp(), before);
        // An audit entry is not a change to what instances serve.
        a.audit(&AuditEntry {
            actor: "t".into(),
            source: "t".into(),
            action: "test",
            object: "o".into(),
            detail: serde_json::json!({}),
        })
        .await
        .unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), b.changed())
                .await
                .is_err()
        );
        // SQLite: no notification, the stamp of its files moves.
        let s = Store::open(&lite).await.unwrap();
        s.listen().await.unwrap();
        let before = s.stamp();
        s.create_tunnel("acme", "wiki").await.unwrap();
        assert_ne!(s.stamp(), before);
        for s in [a, b, s] {
            s.close().await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_store_url_other_than_postgres_is_refused_and_its_password_never_shown() {
        let d = tmp();
        let e = Store::open(&StoreSection {
            url: Some(crate::config::StoreUrl::new("mysql://u:pw@h/db")),
            ..cfg(&d)
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("store.url") && e.contains("postgres://"), "{e}");
        let c = StoreSection {
            url: Some(crate::config::StoreUrl::new(
                "postgres://gw:s3cret@db.example/tunnels?password=s3cret&sslmode=require",
            )),
            ..cfg(&d)
        };
        for shown in [
            c.describe(),
            format!("{c:?}"),
            serde_json::to_string(&c).unwrap(),
        ] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                shown.contains("db.example") && shown.contains("MASKED"),
                "{shown}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn kek_from_environment() {
        let d = tmp();
        // A variable name of this test's own: the environment is process-wide.
        let var = format!("GW_TEST_KEK_{}", rand::random::<u32>());
        let cfg = StoreSection {
            kek_file: None,
            kek_env: Some(var.clone()),
            ..cfg(&d)
        };
        let err = Store::open(&cfg).await.unwrap_err().to_string();
        assert!(err.contains(&var) && err.contains("not set"), "{err}");
        std::env::set_var(&var, "not base64!");
        assert!(Store::open(&cfg).await.is_err());
        std::env::set_var(&var, STANDARD.encode([5u8; 32]));
        let s = Store::open(&cfg).await.unwrap();
        let (info, key) = s.create_tunnel("acme", "env").await.unwrap();
        assert_eq!(
            s.tunnel_with_key(&info.id)
                .await
                .unwrap()
                .unwrap()
                .current
                .expose(),
            key.expose()
        );
        assert!(
            !d.join("kek").exists(),
            "no KEK file is written when kek_env is used"
        );
        std::env::remove_var(&var);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Presence: an instance's rows are replaced whole, others see them
    /// until their lease ends, never their own.
    #[tokio::test]
    async fn presence_lasts_its_lease_and_is_replaced_whole() {
        let d = tmp();
        for c in backends(&d).await {
            let s = Store::open(&c).await.unwrap();
            let t = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            s.presence_renew(
                "gw_a",
                "10.0.0.1:7443",
                &t(&["tun_1", "tun_2"]),
                2_000,
                true,
            )
            .await
            .unwrap();
            s.presence_renew("gw_b", "10.0.0.2:7443", &t(&["tun_2"]), 5_000, false)
                .await
                .unwrap();
            let seen = |v: Vec<presence::Holder>| {
                v.into_iter()
                    .map(|h| format!("{}@{}", h.tunnel_id, h.instance))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                seen(s.presence_others("gw_c", 1_000).await.unwrap()),
                ["tun_1@gw_a", "tun_2@gw_a", "tun_2@gw_b"]
            );
            assert_eq!(
                seen(s.presence_others("gw_a", 1_000).await.unwrap()),
                ["tun_2@gw_b"]
            );
            // gw_a's lease is over at 2 s; gw_b now holds nothing.
            s.presence_renew("gw_b", "10.0.0.2:7443", &[], 9_000, true)
                .await
                .unwrap();
            assert!(s.presence_others("gw_c", 3_000).await.unwrap().is_empty());
            s.presence_renew("gw_a", "10.0.0.1:7443", &t(&["tun_3"]), 9_000, true)
                .await
                .unwrap();
            s.presence_forget("gw_a").await.unwrap();
            assert!(s.presence_others("gw_c", 3_000).await.unwrap().is_empty());
            s.close().await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The SQLite file is named by a URL inside sqlx: a path with a space,
    /// `#`, `?` or `%` must still be that file, relative paths included.
    #[tokio::test]
    async fn a_sqlite_path_with_url_characters_is_that_file() {
        let d = tmp();
        let odd = d.join("my store #1?%20.db");
        let s = Store::open(&StoreSection {
            path: odd.clone(),
            ..cfg(&d)
        })
        .await
        .unwrap();
        s.create_tunnel("acme", "wiki").await.unwrap();
        s.close().await;
        assert!(odd.is_file(), "{}", odd.display());
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.to_string_lossy().starts_with("my store #1?%20.db") || n == "kek"),
            "{names:?}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_tunnel_name("wiki-1").is_ok());
        for bad in ["", "Wiki", "a.b", "-a", "a-", &"a".repeat(64)] {
            assert!(validate_tunnel_name(bad).is_err(), "{bad}");
        }
        assert!(validate_org("acme").is_ok());
        assert!(validate_org("a b").is_err());
        assert!(validate_org("").is_err());
    }
}
