//! Command line: `serve`, and the admin commands (`tunnel`, `caller`,
//! `agent`, `admin-token`, `audit`, `store`). An admin command goes
//! through the running gateway's admin API when one is running (so it
//! learns of the change at once), else works on the store directly.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::admin::client::{self, ClientError};
use crate::admin::ops::{execute, Actor, Op, OpError};
use crate::admin::runtime;
use crate::config::GatewayConfig;
use crate::store::{AdminScope, Store};

/// Application-tunnel gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What every admin command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Print the answer as JSON (the admin API's).
    #[arg(long)]
    json: bool,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: public listener, agent listener, routes, admin API.
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage tunnels.
    Tunnel {
        #[command(subcommand)]
        command: TunnelCommand,
    },
    /// Manage caller credentials.
    Caller {
        #[command(subcommand)]
        command: CallerCommand,
    },
    /// See and drain the agents connected to the running gateway.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Manage admin API tokens.
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Maintain the store.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Check policy plugin files before installing them.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check a plugin file as the gateway would at load: size, pin,
    /// compiling, imports, `identify`, and `init` with each configuration.
    /// Exits non-zero with the gateway's message when it would be refused.
    /// The folder and file permissions are the installed copy's: a file
    /// group or others may write is only warned about here.
    Check {
        /// The `.wasm` file, e.g. a build in target/wasm32-wasip2/release.
        file: PathBuf,
        /// A configuration to run `init` with, as a route's `config` gives
        /// it (the text, e.g. JSON). Repeat for several. Without any: the
        /// configurations of the routes in --gateway-config that list the
        /// plugin, else an empty one (a route without `config`).
        #[arg(long = "config", value_name = "TEXT")]
        configs: Vec<String>,
        /// The name it will be installed under (`<name>.wasm`); the plugin
        /// must identify as it. By default, the name it identifies as.
        #[arg(long)]
        name: Option<String>,
        /// The gateway's configuration file: its `[plugins]` limits and
        /// pins apply, and its routes give the configurations.
        #[arg(long, value_name = "FILE")]
        gateway_config: Option<PathBuf>,
    },
}

/// Tunnel commands.
#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Create a tunnel and print its id and key (the only time the key is shown).
    Create {
        #[command(flatten)]
        common: Common,
        /// Organization owning the tunnel.
        #[arg(long)]
        org: String,
        /// Tunnel name (a DNS label: routes and `<name>.<base_domain>` use it).
        #[arg(long)]
        name: String,
    },
    /// List tunnels (never their keys).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Show one tunnel and its connected agents.
    Show {
        #[command(flatten)]
        common: Common,
        name: String,
    },
    /// Delete a tunnel: its agents are disconnected at once and its key refused.
    Delete {
        #[command(flatten)]
        common: Common,
        name: String,
    },
    /// Give a tunnel a new key (printed once); the old one keeps working for the overlap.
    RotateKey {
        #[command(flatten)]
        common: Common,
        name: String,
        /// How long the old key stays accepted (`90s`, `15m`, `24h`, `7d`; `0` ends it now).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
    },
}

/// Caller commands.
#[derive(Debug, Subcommand)]
pub enum CallerCommand {
    /// Create a caller token for an organization (shown once; only its hash is stored).
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        org: String,
        /// A name to tell the caller apart in lists and the audit log.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime of the token (`30d`, `12h`, ...); without it, it lasts until revoked.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
    },
    /// List callers (never their tokens: a short prefix identifies each).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a caller: its token is refused from the next request on.
    Revoke {
        #[command(flatten)]
        common: Common,
        id: String,
    },
}

/// Agent commands (they need a running gateway).
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// List connected agents.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Drain one agent: no new requests; disconnected once idle.
    Drain {
        #[command(flatten)]
        common: Common,
        /// Its connection id (`agent list`).
        conn_id: u64,
    },
    /// Disconnect one agent now: its requests in flight fail; it dials
    /// again unless its tunnel's key no longer lets it in.
    Disconnect {
        #[command(flatten)]
        common: Common,
        /// Its connection id (`agent list`).
        conn_id: u64,
    },
}

/// Admin-token commands.
#[derive(Debug, Subcommand)]
pub enum AdminTokenCommand {
    /// Create an admin API token (shown once; only its hash is stored).
    Create {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        name: String,
        /// `read` (look only) or `write` (change too).
        #[arg(long)]
        scope: AdminScope,
    },
    /// List admin tokens (never the tokens).
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke an admin token.
    Revoke {
        #[command(flatten)]
        common: Common,
        id: String,
    },
}

/// Audit commands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The newest entries, newest first.
    List {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// Store commands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Reseal every tunnel key under a new key-encryption key (the gateway may be serving).
    Rekey {
        #[command(flatten)]
        common: Common,
        /// Where to write the new KEK (required with `store.kek_env`; the
        /// gateway must then be stopped).
        #[arg(long)]
        new_kek_file: Option<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (try `90s`, `15m`, `24h` or `7d`)"))
}

/// The user running the CLI, for the audit log.
fn cli_user() -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let name = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    match (name, uid) {
        (Some(n), Some(u)) => format!("{n}(uid {u})"),
        (Some(n), None) => n,
        (None, Some(u)) => format!("uid {u}"),
        (None, None) => "unknown".into(),
    }
}

/// Runs `op`: through the running gateway if there is one, else on the store.
fn dispatch(cfg: &GatewayConfig, op: Op) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let user = cli_user();
        let running = runtime::read(&cfg.store.path);
        if let (
            Some(_),
            Op::Rekey {
                new_kek_file: Some(_),
            },
        ) = (&running, &op)
        {
            anyhow::bail!(
                "the gateway is running: a rekey with --new-kek-file (for store.kek_env) needs it \
                 stopped, since it cannot read a new environment variable while it runs"
            );
        }
        if let Some(running) = running {
            match client::call(&running, &op, &user).await {
                Ok(v) => return Ok(v),
                Err(e @ ClientError::Unreachable(..)) if !matches!(op, Op::Rekey { .. }) => {
                    eprintln!(
                        "warning: {e}; working on the store directly (the gateway sees the \
                         change within store.refresh)"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        if matches!(
            op,
            Op::ListAgents | Op::DrainAgent { .. } | Op::DisconnectAgent { .. }
        ) {
            return Err(OpError::NotRunning.into());
        }
        let store = Store::open(&cfg.store)
            .await
            .with_context(|| format!("opening store {}", cfg.store.describe()))?;
        let who = Actor {
            actor: format!("cli:{user}"),
            source: "local".into(),
        };
        let out = execute(op, store.clone(), None, who).await;
        store.close().await;
        Ok(out?.body)
    })
}

/// `gateway plugin check`: prints what a load would say, or fails with
/// the message the gateway would refuse the file with.
fn plugin_check(
    file: &std::path::Path,
    configs: Vec<String>,
    name: Option<&str>,
    gateway_config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use crate::plugins::Plugins;

    let cfg = gateway_config.map(GatewayConfig::load).transpose()?;
    let limits = cfg.as_ref().map(|c| c.plugins.clone()).unwrap_or_default();
    let given = !configs.is_empty();
    let configs_for = |plugin: &str| match &cfg {
        Some(cfg) if !given => crate::plugins::route_configs(cfg, plugin),
        _ => configs.clone(),
    };
    let found = Plugins::check_candidate(&limits, file, name, &configs_for)
        .with_context(|| format!("plugin check of {}", file.display()))?;
    let id = &found.identity;
    println!("ok: plugin {} {} would load", id.name, id.version);
    println!("  file     {} ({} bytes)", file.display(), found.bytes);
    println!(
        "  sha256   {}{}",
        found.sha256,
        if found.pinned {
            " (matches plugins.sha256)"
        } else {
            ""
        }
    );
    let imports = match found.imports.join(", ") {
        none if none.is_empty() => "nothing".to_string(),
        some => some,
    };
    println!("  imports  {imports}");
    let n = found.configs.len();
    let source = if given {
        "from --config"
    } else if cfg.is_none() {
        "an empty one, as for a route without `config`"
    } else if found.configs != [String::new()] {
        "those of the routes that list it"
    } else {
        "no route lists it with a `config`: an empty one"
    };
    println!(
        "  init     accepted {n} configuration{} ({source})",
        if n == 1 { "" } else { "s" }
    );
    let dir = limits
        .dir
        .as_ref()
        .map_or_else(|| "<plugins.dir>".to_string(), |d| d.display().to_string());
    println!("  install  {dir}/{}.wasm", id.name);
    if let Some(why) = &found.shared_write {
        println!(
            "warning: {why}; the gateway refuses such a file in plugins.dir: install it \
             with mode 0644 or stricter"
        );
    }
    let file_name = file.file_name().map(|f| f.to_string_lossy().into_owned());
    if file_name.as_deref() != Some(&format!("{}.wasm", id.name)) {
        println!(
            "note: this file is named {}; the gateway loads the plugin {} only from {}.wasm",
            file_name.unwrap_or_default(),
            id.name,
            id.name
        );
    }
    Ok(())
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Serve { config } = cli.command {
        let cfg = GatewayConfig::load(&config)?;
        let _telemetry = telemetry::init(
            &cfg.log,
            &cfg.telemetry,
            "tunnel-gateway",
            false,
            &crate::metrics::METRICS.export,
        )?;
        return crate::serve::serve(cfg);
    }
    let _plain = telemetry::init_plain();
    if let Command::Plugin {
        command:
            PluginCommand::Check {
                file,
                configs,
                name,
                gateway_config,
            },
    } = cli.command
    {
        return plugin_check(&file, configs, name.as_deref(), gateway_config.as_deref());
    }
    let (common, op, show): (Common, Op, fn(&Value)) = match cli.command {
        Command::Serve { .. } | Command::Plugin { .. } => unreachable!("handled above"),
        Command::Tunnel { command } => match command {
            TunnelCommand::Create { common, org, name } => {
                (common, Op::CreateTunnel { org, name }, show_new_tunnel)
            }
            TunnelCommand::List { common } => (common, Op::ListTunnels, show_tunnels),
            TunnelCommand::Show { common, name } => (common, Op::ShowTunnel { name }, show_pretty),
            TunnelCommand::Delete { common, name } => {
                (common, Op::DeleteTunnel { name }, show_deleted)
            }
            TunnelCommand::RotateKey {
                common,
                name,
                overlap,
            } => (
                common,
                Op::RotateKey {
                    name,
                    overlap_secs: Some(overlap.as_secs()),
                },
                show_rotated,
            ),
        },
        Command::Caller { command } => match command {
            CallerCommand::Create {
                common,
                org,
                name,
                expires,
            } => (
                common,
                Op::CreateCaller {
                    org,
                    name,
                    expires_in_secs: expires.map(|d| d.as_secs().max(1)),
                },
                show_new_caller,
            ),
            CallerCommand::List { common } => (common, Op::ListCallers, show_callers),
            CallerCommand::Revoke { common, id } => (common, Op::RevokeCaller { id }, show_pretty),
        },
        Command::Agent { command } => match command {
            AgentCommand::List { common } => (common, Op::ListAgents, show_agents),
            AgentCommand::Drain { common, conn_id } => {
                (common, Op::DrainAgent { conn_id }, show_pretty)
            }
            AgentCommand::Disconnect { common, conn_id } => {
                (common, Op::DisconnectAgent { conn_id }, show_pretty)
            }
        },
        Command::AdminToken { command } => match command {
            AdminTokenCommand::Create {
                common,
                name,
                scope,
            } => (
                common,
                Op::CreateAdminToken { name, scope },
                show_new_admin_token,
            ),
            AdminTokenCommand::List { common } => (common, Op::ListAdminTokens, show_pretty),
            AdminTokenCommand::Revoke { common, id } => {
                (common, Op::RevokeAdminToken { id }, show_pretty)
            }
        },
        Command::Audit {
            command: AuditCommand::List { common, limit },
        } => (common, Op::ListAudit { limit: Some(limit) }, show_audit),
        Command::Store {
            command:
                StoreCommand::Rekey {
                    common,
                    new_kek_file,
                },
        } => (common, Op::Rekey { new_kek_file }, show_pretty),
    };
    let cfg = GatewayConfig::load(&common.config)?;
    let value = dispatch(&cfg, op)?;
    if common.json {
        use std::io::Write;
        // A closed pipe (`| head`) is not an error of ours.
        let _ = writeln!(std::io::stdout(), "{value}");
    } else {
        show(&value);
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn show_pretty(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn show_new_tunnel(v: &Value) {
    println!("tunnel created");
    println!("  id:   {}", s(&v["id"]));
    println!("  name: {}", s(&v["name"]));
    println!("  org:  {}", s(&v["org"]));
    println!("  key:  {}", s(&v["key"]));
    println!("The key is shown only now. On the agent host run:");
    println!("  agent key set --config agent.toml   (and paste the key)");
}

fn show_tunnels(v: &Value) {
    for t in v.as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\tkey generation {}\tagents {}",
            s(&t["id"]),
            s(&t["name"]),
            s(&t["org"]),
            s(&t["key_generation"]),
            s(&t["agents"]),
        );
    }
}

fn show_deleted(v: &Value) {
    println!(
        "tunnel {} deleted; {} agent(s) disconnected",
        s(&v["deleted"]),
        s(&v["agents_disconnected"])
    );
}

fn show_rotated(v: &Value) {
    println!("tunnel {} has a new key", s(&v["name"]));
    println!("  key:            {}", s(&v["key"]));
    println!("  key generation: {}", s(&v["key_generation"]));
    match v["previous_key_valid_until"].as_i64() {
        Some(t) => println!(
            "  the previous key is accepted until {} (unix {t})",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(t as u64)
            )
        ),
        None => println!("  the previous key is no longer accepted"),
    }
    println!("The key is shown only now. On each agent host run `agent key set`.");
}

fn show_new_caller(v: &Value) {
    println!("caller created for org {}", s(&v["org"]));
    println!("  id:    {} (what authz rules name)", s(&v["id"]));
    println!("  token: {}", s(&v["token"]));
    if let Some(t) = v["expires_at"].as_i64() {
        println!(
            "  expires: {}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(t as u64)
            )
        );
    }
    println!("Send it as `Proxy-Authorization: Bearer <token>`. It is shown only now.");
}

fn show_callers(v: &Value) {
    for c in v.as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\tct_{}…\t{}",
            s(&c["id"]),
            s(&c["org"]),
            s(&c["name"]),
            s(&c["token_prefix"]),
            s(&c["state"]),
        );
    }
}

fn show_agents(v: &Value) {
    for a in v.as_array().into_iter().flatten() {
        println!(
            "{}\t{}\t{}\t{}\t{}\tinflight {}\tin {} B\tout {} B{}{}",
            s(&a["conn_id"]),
            s(&a["tunnel"]),
            s(&a["agent"]),
            s(&a["version"]),
            s(&a["remote_addr"]),
            s(&a["inflight"]),
            s(&a["bytes_in"]),
            s(&a["bytes_out"]),
            if a["draining"] == true {
                "\tdraining"
            } else {
                ""
            },
            if a["key"] == "previous" {
                "\tprevious key"
            } else {
                ""
            },
        );
    }
}

fn show_new_admin_token(v: &Value) {
    println!("admin token created ({} scope)", s(&v["scope"]));
    println!("  id:    {}", s(&v["id"]));
    println!("  token: {}", s(&v["token"]));
    println!("Send it as `Authorization: Bearer <token>` to the admin API. It is shown only now.");
}

fn show_audit(v: &Value) {
    for e in v.as_array().into_iter().flatten() {
        let at = e["at"].as_i64().unwrap_or(0).max(0) as u64;
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at)),
            s(&e["actor"]),
            s(&e["source"]),
            s(&e["action"]),
            s(&e["object"]),
            e["detail"]
        );
    }
}
