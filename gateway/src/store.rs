//! Tunnel and caller storage: SQLite through `sqlx`, with tunnel keys
//! encrypted under a key-encryption key (AES-256-GCM, tunnel id and org as
//! associated data) and caller tokens stored only as SHA-256 hashes.

use protocol::private_file::read_private;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use protocol::TunnelKey;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use zeroize::{Zeroize, Zeroizing};

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
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// The key-encryption key. `Debug` never shows it.
pub struct Kek(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(MASKED)")
    }
}

impl Kek {
    fn parse(text: &str) -> Result<Self, StoreError> {
        let mut raw = STANDARD
            .decode(text.trim())
            .map_err(|_| StoreError::Kek("not base64".into()))?;
        if raw.len() != 32 {
            raw.zeroize();
            return Err(StoreError::Kek("must be 32 bytes".into()));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&raw);
        raw.zeroize();
        Ok(Kek(k))
    }

    /// Reads the KEK named by the config. A missing `kek_file` is created
    /// with fresh random bytes and mode 0600 only when `may_create` (the
    /// store holds no tunnel yet): a new KEK would make every stored tunnel
    /// key unreadable, so a wrong path must fail instead.
    pub fn load(cfg: &StoreSection, may_create: bool) -> Result<Self, StoreError> {
        if let Some(var) = &cfg.kek_env {
            let text =
                Zeroizing::new(std::env::var(var).map_err(|_| {
                    StoreError::Kek(format!("environment variable {var} is not set"))
                })?);
            return Self::parse(&text);
        }
        let path = cfg
            .kek_file
            .as_ref()
            .ok_or_else(|| StoreError::Kek("set store.kek_file or store.kek_env".into()))?;
        match read_private(path) {
            Ok(text) => {
                Self::parse(&text).map_err(|e| StoreError::Kek(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => Self::create(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::Kek(format!(
                "{} is missing but the store already holds tunnels: restore it \
                 (a new key would leave every tunnel key unreadable)",
                path.display()
            ))),
            Err(e) => Err(StoreError::Kek(format!("{}: {e}", path.display()))),
        }
    }

    fn create(path: &Path) -> Result<Self, StoreError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *k);
        let text = Zeroizing::new(STANDARD.encode(*k));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Kek(format!("cannot create {}: {e}", path.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::Kek(format!("cannot write {}: {e}", path.display())))?;
        Ok(Kek(k))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&*self.0).expect("32-byte key")
    }
}

fn aad(id: &str, org: &str) -> Vec<u8> {
    let mut a = b"tunnel-key/v1".to_vec();
    for part in [id, org] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part.as_bytes());
    }
    a
}

/// What everyone may know about a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TunnelInfo {
    pub id: String,
    pub name: String,
    pub org: String,
}

/// A caller: an organization's credential holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerInfo {
    pub id: String,
    pub org: String,
}

/// Hash under which a caller token is stored and looked up.
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

/// The tunnel and caller store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    kek: std::sync::Arc<Kek>,
    /// The database file; with `-wal` beside it, what [`Store::stamp`] reads.
    path: std::path::PathBuf,
}

/// What the database files looked like (length and modification time of
/// the file and its write-ahead log): when it differs from the last one
/// seen, another process changed the store.
pub type StoreStamp = [(u64, std::time::SystemTime); 2];

impl Store {
    /// Opens (creating if missing) the database and loads the KEK.
    pub async fn open(cfg: &StoreSection) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(&cfg.path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tunnels (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                org TEXT NOT NULL,
                key_nonce BLOB NOT NULL,
                key_ct BLOB NOT NULL,
                created_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS callers (
                id TEXT PRIMARY KEY,
                org TEXT NOT NULL,
                token_hash BLOB NOT NULL UNIQUE,
                created_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let tunnels: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tunnels")
            .fetch_one(&pool)
            .await?;
        let kek = Kek::load(cfg, tunnels == 0)?;
        Ok(Store {
            pool,
            kek: std::sync::Arc::new(kek),
            path: cfg.path.clone(),
        })
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
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .kek
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.expose(),
                    aad: &aad(&id, org),
                },
            )
            .map_err(|_| StoreError::Kek("encryption failed".into()))?;
        let res = sqlx::query(
            "INSERT INTO tunnels (id, name, org, key_nonce, key_ct, created_at) VALUES (?, ?, ?, ?, ?, ?)",
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
        let rows = sqlx::query("SELECT id, name, org FROM tunnels ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(tunnel_info).collect())
    }

    /// A tunnel by name.
    pub async fn tunnel_by_name(&self, name: &str) -> Result<Option<TunnelInfo>, StoreError> {
        let row = sqlx::query("SELECT id, name, org FROM tunnels WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(tunnel_info))
    }

    /// A tunnel and its decrypted key, by id.
    pub async fn tunnel_with_key(
        &self,
        id: &str,
    ) -> Result<Option<(TunnelInfo, TunnelKey)>, StoreError> {
        let Some(row) =
            sqlx::query("SELECT id, name, org, key_nonce, key_ct FROM tunnels WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let info = tunnel_info(&row);
        let nonce: Vec<u8> = row.get("key_nonce");
        let ct: Vec<u8> = row.get("key_ct");
        if nonce.len() != 12 {
            return Err(StoreError::Decrypt(info.id));
        }
        let plain = Zeroizing::new(
            self.kek
                .cipher()
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad(&info.id, &info.org),
                    },
                )
                .map_err(|_| StoreError::Decrypt(info.id.clone()))?,
        );
        let bytes: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Decrypt(info.id.clone()))?;
        Ok(Some((info, TunnelKey::from_bytes(bytes))))
    }

    /// Creates a caller credential for `org`. The token is returned once, here;
    /// only its hash is stored.
    pub async fn create_caller(&self, org: &str) -> Result<(CallerInfo, String), StoreError> {
        validate_org(org)?;
        let id = random_id("cal_", 8);
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *raw);
        let token = format!("ct_{}", URL_SAFE_NO_PAD.encode(*raw));
        sqlx::query("INSERT INTO callers (id, org, token_hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(&id)
            .bind(org)
            .bind(&token_hash(&token)[..])
            .bind(now_secs())
            .execute(&self.pool)
            .await?;
        Ok((
            CallerInfo {
                id,
                org: org.into(),
            },
            token,
        ))
    }

    /// How the database files look now (two `stat` calls, no query).
    pub fn stamp(&self) -> StoreStamp {
        let look = |p: &std::path::Path| {
            std::fs::metadata(p).map_or((0, std::time::UNIX_EPOCH), |m| {
                (m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH))
            })
        };
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        [look(&self.path), look(Path::new(&wal))]
    }

    /// Every caller with its token hash: the gateway keeps them in memory.
    pub async fn all_callers(&self) -> Result<Vec<([u8; 32], CallerInfo)>, StoreError> {
        let rows = sqlx::query("SELECT id, org, token_hash FROM callers")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let hash: Vec<u8> = r.get("token_hash");
                let hash: [u8; 32] = hash.try_into().ok()?;
                Some((
                    hash,
                    CallerInfo {
                        id: r.get("id"),
                        org: r.get("org"),
                    },
                ))
            })
            .collect())
    }

    /// The caller whose token hashes to `hash`.
    pub async fn caller_by_hash(&self, hash: &[u8; 32]) -> Result<Option<CallerInfo>, StoreError> {
        let row = sqlx::query("SELECT id, org FROM callers WHERE token_hash = ?")
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| CallerInfo {
            id: r.get("id"),
            org: r.get("org"),
        }))
    }

    /// Closes the pool, flushing the database.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn tunnel_info(row: &sqlx::sqlite::SqliteRow) -> TunnelInfo {
    TunnelInfo {
        id: row.get("id"),
        name: row.get("name"),
        org: row.get("org"),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path) -> StoreSection {
        StoreSection {
            path: dir.join("g.db"),
            kek_file: Some(dir.join("kek")),
            kek_env: None,
            refresh_secs: 5,
        }
    }

    fn tmp() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("gwstore-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn tunnel_key_round_trips_encrypted() {
        let d = tmp();
        let s = Store::open(&cfg(&d)).await.unwrap();
        let (info, key) = s.create_tunnel("acme", "wiki").await.unwrap();
        let (back, k2) = s.tunnel_with_key(&info.id).await.unwrap().unwrap();
        assert_eq!(back, info);
        assert_eq!(k2.expose(), key.expose());
        // The key is not stored in the clear.
        let raw = std::fs::read(d.join("g.db")).unwrap();
        let wal = std::fs::read(d.join("g.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(32).any(|w| w == key.expose()));
        }
        assert!(matches!(
            s.create_tunnel("acme", "wiki").await,
            Err(StoreError::DuplicateName(_))
        ));
        assert!(s.tunnel_with_key("tun_missing").await.unwrap().is_none());
        let kek_mode = std::fs::metadata(d.join("kek")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(kek_mode.permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_row_moved_to_another_tunnel_does_not_decrypt() {
        let d = tmp();
        let s = Store::open(&cfg(&d)).await.unwrap();
        let (a, _) = s.create_tunnel("acme", "a").await.unwrap();
        let (b, _) = s.create_tunnel("other", "b").await.unwrap();
        sqlx::query("UPDATE tunnels SET key_nonce = (SELECT key_nonce FROM tunnels WHERE id = ?), key_ct = (SELECT key_ct FROM tunnels WHERE id = ?) WHERE id = ?")
            .bind(&a.id).bind(&a.id).bind(&b.id)
            .execute(&s.pool).await.unwrap();
        assert!(matches!(
            s.tunnel_with_key(&b.id).await,
            Err(StoreError::Decrypt(_))
        ));
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
        let s = Store::open(&cfg(&d)).await.unwrap();
        let (a, _) = s.create_tunnel("acme", "a").await.unwrap();
        s.close().await;
        std::fs::write(d.join("kek"), STANDARD.encode([7u8; 32])).unwrap();
        let s = Store::open(&cfg(&d)).await.unwrap();
        assert!(matches!(
            s.tunnel_with_key(&a.id).await,
            Err(StoreError::Decrypt(_))
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn callers_are_found_by_token_hash_only() {
        let d = tmp();
        let s = Store::open(&cfg(&d)).await.unwrap();
        let (c, token) = s.create_caller("acme").await.unwrap();
        let found = s
            .caller_by_hash(&token_hash(&token))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found, c);
        assert!(s
            .caller_by_hash(&token_hash("ct_wrong"))
            .await
            .unwrap()
            .is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_missing_kek_is_not_replaced_once_tunnels_exist() {
        let d = tmp();
        let s = Store::open(&cfg(&d)).await.unwrap();
        s.create_tunnel("acme", "a").await.unwrap();
        s.close().await;
        std::fs::remove_file(d.join("kek")).unwrap();
        let err = Store::open(&cfg(&d)).await.unwrap_err().to_string();
        assert!(err.contains("already holds tunnels"), "{err}");
        assert!(!d.join("kek").exists());
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
                .1
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

    #[test]
    fn kek_debug_is_masked() {
        let k = Kek::parse(&STANDARD.encode([1u8; 32])).unwrap();
        assert_eq!(format!("{k:?}"), "Kek(MASKED)");
    }
}
