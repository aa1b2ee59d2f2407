//! Command line: `serve`, `tunnel create|list`, `caller create`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::GatewayConfig;
use crate::store::Store;

/// Application-tunnel gateway.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: public listener, agent listener, routes.
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
}

/// Tunnel commands.
#[derive(Debug, Subcommand)]
pub enum TunnelCommand {
    /// Create a tunnel and print its id and key (the only time the key is shown).
    Create {
        #[arg(long)]
        config: PathBuf,
        /// Organization owning the tunnel.
        #[arg(long)]
        org: String,
        /// Tunnel name (a DNS label: routes and `<name>.<base_domain>` use it).
        #[arg(long)]
        name: String,
        /// Print JSON `{"id","name","org","key"}`.
        #[arg(long)]
        json: bool,
    },
    /// List tunnels.
    List {
        #[arg(long)]
        config: PathBuf,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
}

/// Caller commands.
#[derive(Debug, Subcommand)]
pub enum CallerCommand {
    /// Create a caller token for an organization (shown once; only its hash is stored).
    Create {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        org: String,
        /// Print JSON `{"org","token"}`.
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &std::path::Path) -> anyhow::Result<GatewayConfig> {
    Ok(GatewayConfig::load(path)?)
}

fn admin<T>(
    cfg: &GatewayConfig,
    f: impl AsyncFnOnce(&Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::open(&cfg.store)
            .await
            .with_context(|| format!("opening store {}", cfg.store.path.display()))?;
        let out = f(&store).await;
        store.close().await;
        out
    })
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    // `serve` logs as its config says; the short commands plainly.
    let _plain =
        (!matches!(cli.command, Command::Serve { .. })).then(protocol::telemetry::init_plain);
    match cli.command {
        Command::Serve { config } => {
            let cfg = load(&config)?;
            let _telemetry = protocol::telemetry::init(
                &cfg.log,
                &cfg.telemetry,
                "tunnel-gateway",
                false,
                &crate::metrics::METRICS.export,
            )?;
            crate::serve::serve(cfg)
        }
        Command::Tunnel {
            command:
                TunnelCommand::Create {
                    config,
                    org,
                    name,
                    json,
                },
        } => {
            let cfg = load(&config)?;
            let (info, key) = admin(&cfg, async |s| Ok(s.create_tunnel(&org, &name).await?))?;
            if json {
                println!(
                    "{}",
                    json!({"id": info.id, "name": info.name, "org": info.org, "key": key.reveal_text()})
                );
            } else {
                println!("tunnel created");
                println!("  id:   {}", info.id);
                println!("  name: {}", info.name);
                println!("  org:  {}", info.org);
                println!("  key:  {}", key.reveal_text());
                println!("The key is shown only now. On the agent host run:");
                println!("  agent key set --config agent.toml   (and paste the key)");
            }
            Ok(())
        }
        Command::Tunnel {
            command: TunnelCommand::List { config, json },
        } => {
            let cfg = load(&config)?;
            let list = admin(&cfg, async |s| Ok(s.list_tunnels().await?))?;
            if json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                for t in list {
                    println!("{}\t{}\t{}", t.id, t.name, t.org);
                }
            }
            Ok(())
        }
        Command::Caller {
            command: CallerCommand::Create { config, org, json },
        } => {
            let cfg = load(&config)?;
            let (info, token) = admin(&cfg, async |s| Ok(s.create_caller(&org).await?))?;
            if json {
                println!(
                    "{}",
                    json!({"id": info.id, "org": info.org, "token": token})
                );
            } else {
                println!("caller created for org {}", info.org);
                println!("  id:    {} (what authz rules name)", info.id);
                println!("  token: {token}");
                println!("Send it as `Proxy-Authorization: Bearer <token>`. It is shown only now.");
            }
            Ok(())
        }
    }
}
