//! The admin operations, run against the store and, inside a running
//! gateway, its registry: a change is written to the store, then the
//! registry rereads its tables and disconnects whatever the change took
//! away before the answer goes back, so the next request already sees it.
//! Every change is audited.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::registry::Registry;
use crate::store::audit::{AuditEntry, MAX_LIST};
use crate::store::kek::{pending_path, retired_path};
use crate::store::{now_secs, AdminScope, Kek, Store, StoreError};
use keyfile::KekError;
use protocol::events::emit;

/// Default overlap of a key rotation: a day for agents to be given the
/// new key.
pub const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// Longest rotation overlap or caller lifetime accepted: ten years.
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// One admin operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateTunnel {
        org: String,
        name: String,
    },
    ListTunnels,
    ShowTunnel {
        name: String,
    },
    DeleteTunnel {
        name: String,
    },
    RotateKey {
        name: String,
        overlap_secs: Option<u64>,
    },
    CreateCaller {
        org: String,
        name: Option<String>,
        expires_in_secs: Option<u64>,
    },
    ListCallers,
    RevokeCaller {
        id: String,
    },
    ListAgents,
    DrainAgent {
        conn_id: u64,
    },
    /// Closes an agent's connection now; its requests in flight fail. The
    /// agent dials again unless its key no longer opens the tunnel.
    DisconnectAgent {
        conn_id: u64,
    },
    CreateAdminToken {
        name: String,
        scope: AdminScope,
    },
    ListAdminTokens,
    RevokeAdminToken {
        id: String,
    },
    ListAudit {
        limit: Option<u32>,
    },
    Rekey {
        /// Only from the CLI working on the store directly (`kek_env`).
        new_kek_file: Option<std::path::PathBuf>,
    },
}

impl Op {
    /// Whether the operation changes anything (needs a `write` token).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            Op::ListTunnels
                | Op::ShowTunnel { .. }
                | Op::ListCallers
                | Op::ListAgents
                | Op::ListAdminTokens
                | Op::ListAudit { .. }
        )
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("no agent connection {0} (see `gateway agent list`)")]
    NoAgent(u64),
    #[error(
        "the gateway is not running: agents are known only to a running gateway \
         (start it, or check that its admin listener is on)"
    )]
    NotRunning,
    #[error("{0}")]
    Refused(String),
}

impl OpError {
    /// The HTTP status the API answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            OpError::Store(StoreError::DuplicateName(_)) => 409,
            OpError::Store(StoreError::NotFound { .. }) | OpError::NoAgent(_) => 404,
            OpError::Store(StoreError::Invalid { .. }) | OpError::Invalid { .. } => 400,
            OpError::NotRunning | OpError::Refused(_) => 409,
            OpError::Store(_) => 500,
        }
    }
}

/// Who asks, for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `admin-token:<id>(<name>)` or `cli:<user>`.
    pub actor: String,
    /// The API peer, or `local`.
    pub source: String,
}

/// An operation's answer: HTTP status (200 or 201) and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

fn ok(body: Value) -> Result<Answer, OpError> {
    Ok(Answer { status: 200, body })
}

fn created(body: Value) -> Result<Answer, OpError> {
    Ok(Answer { status: 201, body })
}

fn bounded(field: &'static str, secs: u64) -> Result<u64, OpError> {
    if secs > MAX_SECS {
        return Err(OpError::Invalid {
            field,
            reason: format!("at most {MAX_SECS} seconds (ten years)"),
        });
    }
    Ok(secs)
}

/// Runs `op` as `who`. `registry` is the running gateway's (`None` for
/// the CLI working on the store directly). Must run where the store's
/// pool lives.
pub async fn execute(
    op: Op,
    store: Store,
    registry: Option<Arc<Registry>>,
    who: Actor,
) -> Result<Answer, OpError> {
    let reg = registry.as_deref();
    let (answer, audit) = match op {
        Op::ListTunnels => {
            let list = store.tunnel_records().await?;
            let agents = reg.map(|r| r.agent_views()).unwrap_or_default();
            let list: Vec<Value> = list
                .into_iter()
                .map(|t| {
                    let n = agents.iter().filter(|a| a.tunnel_id == t.info.id).count();
                    let mut v = json!(t);
                    v["agents"] = json!(n);
                    v
                })
                .collect();
            return ok(json!(list));
        }
        Op::ShowTunnel { name } => {
            let t = store
                .tunnel_by_name(&name)
                .await?
                .ok_or_else(|| not_found("tunnel", &name))?;
            let agents: Vec<_> = reg
                .map(|r| r.agent_views())
                .unwrap_or_default()
                .into_iter()
                .filter(|a| a.tunnel_id == t.info.id)
                .collect();
            let mut v = json!(t);
            v["agents"] = json!(agents);
            return ok(v);
        }
        Op::CreateTunnel { org, name } => {
            let (info, key) = store.create_tunnel(&org, &name).await?;
            let body = json!({
                "id": info.id, "name": info.name, "org": info.org,
                "key": key.reveal_text(), "key_generation": 0,
            });
            let audit = entry(
                &who,
                "tunnel.create",
                &info.name,
                json!({"id": info.id, "org": info.org}),
            );
            (created(body), audit)
        }
        Op::DeleteTunnel { name } => {
            let t = store.delete_tunnel(&name).await?;
            crate::activity::ACTIVITY.forget(&t.info.name);
            let disconnected = match reg {
                Some(r) => {
                    r.reread_now().await?;
                    r.enforce().iter().filter(|id| **id == t.info.id).count()
                }
                None => 0,
            };
            let body = json!({"deleted": t.info.name, "agents_disconnected": disconnected});
            let audit = entry(
                &who,
                "tunnel.delete",
                &t.info.name,
                json!({"id": t.info.id, "org": t.info.org, "agents_disconnected": disconnected}),
            );
            (ok(body), audit)
        }
        Op::RotateKey { name, overlap_secs } => {
            let overlap = match overlap_secs {
                Some(s) => Duration::from_secs(bounded("overlap_secs", s)?),
                None => DEFAULT_OVERLAP,
            };
            let (t, key) = store.rotate_key(&name, overlap).await?;
            let mut body = json!(t);
            body["key"] = json!(key.reveal_text());
            let audit = entry(
                &who,
                "tunnel.rotate_key",
                &t.info.name,
                json!({
                    "id": t.info.id, "key_generation": t.key_generation,
                    "overlap_secs": overlap.as_secs(),
                    "previous_key_valid_until": t.previous_key_valid_until,
                }),
            );
            (ok(body), audit)
        }
        Op::ListCallers => return ok(json!(store.list_callers().await?)),
        Op::CreateCaller {
            org,
            name,
            expires_in_secs,
        } => {
            let expires_at = match expires_in_secs {
                Some(0) => {
                    return Err(OpError::Invalid {
                        field: "expires_in_secs",
                        reason: "must be more than 0".into(),
                    })
                }
                Some(s) => Some(now_secs() + bounded("expires_in_secs", s)? as i64),
                None => None,
            };
            let (rec, token) = store
                .create_caller_with(&org, name.as_deref(), expires_at)
                .await?;
            let mut body = json!(rec);
            body["token"] = json!(token);
            let audit = entry(
                &who,
                "caller.create",
                &rec.id,
                json!({"org": rec.org, "name": rec.name, "expires_at": rec.expires_at}),
            );
            (created(body), audit)
        }
        Op::RevokeCaller { id } => {
            let rec = store.revoke_caller(&id).await?;
            let audit = entry(&who, "caller.revoke", &rec.id, json!({"org": rec.org}));
            (ok(json!(rec)), audit)
        }
        Op::ListAgents => {
            let r = reg.ok_or(OpError::NotRunning)?;
            return ok(json!(r.agent_views()));
        }
        Op::DrainAgent { conn_id } => {
            let r = reg.ok_or(OpError::NotRunning)?;
            let agent = r.agent(conn_id).ok_or(OpError::NoAgent(conn_id))?;
            agent.request_drain();
            agent.start_draining();
            r.held_changed.notify_one();
            let audit = entry(
                &who,
                "agent.drain",
                &conn_id.to_string(),
                json!({"tunnel": agent.tunnel.name, "agent": agent.agent_name}),
            );
            (ok(json!(agent.view())), audit)
        }
        Op::DisconnectAgent { conn_id } => {
            let r = reg.ok_or(OpError::NotRunning)?;
            let agent = r.agent(conn_id).ok_or(OpError::NoAgent(conn_id))?;
            let view = agent.view();
            agent.kick(&format!("disconnected by an operator ({})", who.actor));
            let audit = entry(
                &who,
                "agent.disconnect",
                &conn_id.to_string(),
                json!({"tunnel": agent.tunnel.name, "agent": agent.agent_name, "inflight": view.inflight}),
            );
            (ok(json!(view)), audit)
        }
        Op::ListAdminTokens => return ok(json!(store.list_admin_tokens().await?)),
        Op::CreateAdminToken { name, scope } => {
            let (info, token) = store.create_admin_token(&name, scope).await?;
            let mut body = json!(info);
            body["token"] = json!(token);
            let audit = entry(
                &who,
                "admin_token.create",
                &info.id,
                json!({"name": info.name, "scope": info.scope}),
            );
            (created(body), audit)
        }
        Op::RevokeAdminToken { id } => {
            let info = store.revoke_admin_token(&id).await?;
            let audit = entry(
                &who,
                "admin_token.revoke",
                &info.id,
                json!({"name": info.name}),
            );
            (ok(json!(info)), audit)
        }
        Op::ListAudit { limit } => {
            let limit = limit.unwrap_or(100);
            if limit == 0 || limit > MAX_LIST {
                return Err(OpError::Invalid {
                    field: "limit",
                    reason: format!("1 to {MAX_LIST}"),
                });
            }
            return ok(json!(store.audit_list(limit).await?));
        }
        Op::Rekey { new_kek_file } => {
            let body = rekey(&store, new_kek_file, reg.is_some()).await?;
            let audit = entry(&who, "store.rekey", "kek", body.clone());
            (ok(body), audit)
        }
    };
    if let Some(r) = reg {
        r.reread_now().await?;
        r.enforce();
    }
    let record = store.audit(&audit).await?;
    if reg.is_some() {
        let mut ev = json!(record);
        ev["event"] = json!("audit");
        emit(ev);
    }
    answer
}

fn entry(who: &Actor, action: &'static str, object: &str, detail: Value) -> AuditEntry {
    AuditEntry {
        actor: who.actor.clone(),
        source: who.source.clone(),
        action,
        object: object.into(),
        detail,
    }
}

fn not_found(kind: &'static str, id: &str) -> OpError {
    OpError::Store(StoreError::NotFound {
        kind,
        id: id.chars().take(128).collect(),
    })
}

/// Reseals every tunnel key under a new KEK. With `store.kek_file`, the
/// new KEK is written to `<kek_file>.new` first (reused if an interrupted
/// rekey left it), the keys are resealed, and then the files are swapped:
/// the old KEK is kept as `<kek_file>.old` for the operator to remove.
async fn rekey(
    store: &Store,
    new_kek_file: Option<std::path::PathBuf>,
    in_gateway: bool,
) -> Result<Value, OpError> {
    let cfg = store.config().clone();
    if in_gateway && store.backend() == crate::store::Backend::Postgres {
        // The other instances keep the old KEK in memory and could no
        // longer open the keys resealed here.
        return Err(OpError::Refused(
            "a rekey of a store shared on PostgreSQL needs every gateway instance stopped \
             (each must start with the new KEK): stop them all, run `gateway store rekey` \
             with this config, give every instance the new KEK, and start them"
                .into(),
        ));
    }
    match (&cfg.kek_file, new_kek_file) {
        (Some(file), None) => {
            let pending = pending_path(file);
            let retired = retired_path(file);
            if retired.exists() {
                return Err(OpError::Refused(format!(
                    "{} is still there from an earlier rekey: remove it once nothing needs it, \
                     then rekey again",
                    retired.display()
                )));
            }
            let new = match Kek::read(&pending) {
                Ok(k) => k,
                Err(KekError::NotFound { .. }) => {
                    let k = Kek::generate();
                    k.write_new(&pending).map_err(StoreError::from)?;
                    k
                }
                // The message names the file.
                Err(e) => return Err(OpError::Refused(e.to_string())),
            };
            let n = store.rekey(new).await?;
            let io = |what: &str, e: std::io::Error| {
                OpError::Refused(format!(
                    "tunnel keys are resealed under {}, but {what} failed: {e}; \
                     move it over {} by hand",
                    pending.display(),
                    file.display()
                ))
            };
            std::fs::rename(file, &retired).map_err(|e| io("keeping the old KEK", e))?;
            std::fs::rename(&pending, file).map_err(|e| io("installing the new KEK", e))?;
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(json!({
                "tunnels_rekeyed": n,
                "kek_file": file,
                "old_kek_file": retired,
            }))
        }
        (_, Some(path)) => {
            if in_gateway {
                return Err(OpError::Invalid {
                    field: "new_kek_file",
                    reason: "the API writes the new KEK beside store.kek_file only".into(),
                });
            }
            let new = Kek::generate();
            new.write_new(&path).map_err(StoreError::from)?;
            let n = store.rekey(new).await?;
            Ok(json!({
                "tunnels_rekeyed": n,
                "kek_file": path,
                "old_kek_file": null,
                "next": "point store.kek_file at the new file (or put its content in the \
                         store.kek_env variable) before the gateway next starts",
            }))
        }
        (None, None) => Err(OpError::Refused(
            "the KEK comes from store.kek_env: stop the gateway and run \
             `gateway store rekey --new-kek-file PATH`, then use the new key"
                .into(),
        )),
    }
}
