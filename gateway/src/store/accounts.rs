//! Caller tokens and admin tokens: random, shown once, stored only as
//! SHA-256 hashes with a short prefix that lets a person tell them apart.
//! Revoked tokens keep their row (the audit log names them).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sqlx::Row;
use zeroize::Zeroizing;

use super::{not_found, now_secs, random_id, token_hash, validate_org, Store, StoreError};

/// A caller: an organization's credential holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerInfo {
    pub id: String,
    pub org: String,
}

/// A caller as listed: never its token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CallerRecord {
    pub id: String,
    pub org: String,
    pub name: Option<String>,
    /// The first characters of the token after `ct_`; `None` for callers
    /// made before prefixes were kept.
    pub token_prefix: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

/// A caller token the gateway accepts until `expires_at`.
#[derive(Debug, Clone)]
pub struct ActiveCaller {
    pub hash: [u8; 32],
    pub info: CallerInfo,
    pub expires_at: Option<i64>,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminScope {
    /// Read objects only.
    Read,
    /// Read and change.
    Write,
}

impl AdminScope {
    fn as_str(self) -> &'static str {
        match self {
            AdminScope::Read => "read",
            AdminScope::Write => "write",
        }
    }
}

impl std::str::FromStr for AdminScope {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "read" => Ok(AdminScope::Read),
            "write" => Ok(AdminScope::Write),
            _ => Err(StoreError::Invalid {
                field: "scope",
                reason: "a scope is `read` or `write`",
            }),
        }
    }
}

/// An admin token as listed: never the token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdminTokenInfo {
    pub id: String,
    pub name: String,
    pub scope: AdminScope,
    pub token_prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Characters of a token (after its `ct_`/`at_` tag) kept to identify it.
const PREFIX_CHARS: usize = 8;
/// Longest caller or admin-token name.
const MAX_NAME_CHARS: usize = 64;

fn new_token(tag: &str) -> (String, String) {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *raw);
    let body = URL_SAFE_NO_PAD.encode(*raw);
    let prefix = body[..PREFIX_CHARS].to_string();
    (format!("{tag}{body}"), prefix)
}

/// A name: 1-64 printable characters (spaces allowed, not at the ends).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && name.trim() == name
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid {
            field: "name",
            reason: "a name is 1-64 printable characters, without leading or trailing spaces",
        })
    }
}

fn caller_record(r: &sqlx::any::AnyRow, now: i64) -> CallerRecord {
    let expires_at: Option<i64> = r.get("expires_at");
    let revoked_at: Option<i64> = r.get("revoked_at");
    CallerRecord {
        id: r.get("id"),
        org: r.get("org"),
        name: r.get("name"),
        token_prefix: r.get("token_prefix"),
        created_at: r.get("created_at"),
        expires_at,
        revoked_at,
        state: if revoked_at.is_some() {
            "revoked"
        } else if expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        },
    }
}

fn admin_token_info(r: &sqlx::any::AnyRow) -> AdminTokenInfo {
    let scope: String = r.get("scope");
    AdminTokenInfo {
        id: r.get("id"),
        name: r.get("name"),
        scope: scope.parse().unwrap_or(AdminScope::Read),
        token_prefix: r.get("token_prefix"),
        created_at: r.get("created_at"),
        revoked_at: r.get("revoked_at"),
    }
}

const CALLER_SELECT: &str =
    "SELECT id, org, name, token_prefix, created_at, expires_at, revoked_at FROM callers";
const ADMIN_SELECT: &str =
    "SELECT id, name, scope, token_prefix, created_at, revoked_at FROM admin_tokens";

impl Store {
    /// Creates a caller credential for `org`. The token is returned once,
    /// here; only its hash is stored.
    pub async fn create_caller(&self, org: &str) -> Result<(CallerInfo, String), StoreError> {
        let (rec, token) = self.create_caller_with(org, None, None).await?;
        Ok((
            CallerInfo {
                id: rec.id,
                org: rec.org,
            },
            token,
        ))
    }

    /// Creates a caller with an optional name and expiry (unix seconds).
    pub async fn create_caller_with(
        &self,
        org: &str,
        name: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<(CallerRecord, String), StoreError> {
        validate_org(org)?;
        if let Some(n) = name {
            validate_name(n)?;
        }
        let now = now_secs();
        if expires_at.is_some_and(|e| e <= now) {
            return Err(StoreError::Invalid {
                field: "expires",
                reason: "the expiry must be in the future",
            });
        }
        let id = random_id("cal_", 8);
        let (token, prefix) = new_token("ct_");
        sqlx::query(
            "INSERT INTO callers (id, org, token_hash, created_at, name, token_prefix, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(org)
        .bind(&token_hash(&token)[..])
        .bind(now)
        .bind(name)
        .bind(&prefix)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        let rec = CallerRecord {
            id,
            org: org.into(),
            name: name.map(Into::into),
            token_prefix: Some(prefix),
            created_at: now,
            expires_at,
            revoked_at: None,
            state: "active",
        };
        Ok((rec, token))
    }

    /// Every caller, newest first.
    pub async fn list_callers(&self) -> Result<Vec<CallerRecord>, StoreError> {
        let now = now_secs();
        let rows = sqlx::query(&format!("{CALLER_SELECT} ORDER BY created_at DESC, id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| caller_record(r, now)).collect())
    }

    /// Revokes a caller for good. Revoking twice keeps the first time.
    pub async fn revoke_caller(&self, id: &str) -> Result<CallerRecord, StoreError> {
        sqlx::query("UPDATE callers SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(now_secs())
            .bind(id)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(&format!("{CALLER_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("caller", id))?;
        Ok(caller_record(&row, now_secs()))
    }

    /// Every caller not revoked, with its token hash: the gateway keeps
    /// them in memory and checks the expiry on each request.
    pub async fn active_callers(&self) -> Result<Vec<ActiveCaller>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, org, token_hash, expires_at FROM callers WHERE revoked_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let hash: Vec<u8> = r.get("token_hash");
                Some(ActiveCaller {
                    hash: hash.try_into().ok()?,
                    info: CallerInfo {
                        id: r.get("id"),
                        org: r.get("org"),
                    },
                    expires_at: r.get("expires_at"),
                })
            })
            .collect())
    }

    /// Creates an admin token. The token is returned once, here.
    pub async fn create_admin_token(
        &self,
        name: &str,
        scope: AdminScope,
    ) -> Result<(AdminTokenInfo, String), StoreError> {
        validate_name(name)?;
        let id = random_id("adm_", 8);
        let (token, prefix) = new_token("at_");
        let now = now_secs();
        sqlx::query(
            "INSERT INTO admin_tokens (id, name, scope, token_hash, token_prefix, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(name)
        .bind(scope.as_str())
        .bind(&token_hash(&token)[..])
        .bind(&prefix)
        .bind(now)
        .execute(&self.pool)
        .await?;
        let info = AdminTokenInfo {
            id,
            name: name.into(),
            scope,
            token_prefix: prefix,
            created_at: now,
            revoked_at: None,
        };
        Ok((info, token))
    }

    /// Every admin token, newest first.
    pub async fn list_admin_tokens(&self) -> Result<Vec<AdminTokenInfo>, StoreError> {
        let rows = sqlx::query(&format!("{ADMIN_SELECT} ORDER BY created_at DESC, id"))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(admin_token_info).collect())
    }

    /// Revokes an admin token for good.
    pub async fn revoke_admin_token(&self, id: &str) -> Result<AdminTokenInfo, StoreError> {
        sqlx::query("UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
            .bind(now_secs())
            .bind(id)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query(&format!("{ADMIN_SELECT} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("admin token", id))?;
        Ok(admin_token_info(&row))
    }

    /// Every admin token not revoked, with its hash.
    pub async fn active_admin_tokens(&self) -> Result<Vec<([u8; 32], AdminTokenInfo)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, scope, token_prefix, created_at, revoked_at, token_hash \
             FROM admin_tokens WHERE revoked_at IS NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let hash: Vec<u8> = r.get("token_hash");
                Some((hash.try_into().ok()?, admin_token_info(r)))
            })
            .collect())
    }
}
