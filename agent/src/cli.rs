//! Command line: `run`, `check` and `key set`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use zeroize::Zeroizing;

use crate::config::AgentConfig;

/// Application-tunnel agent: dials out to the gateway and serves a local service.
#[derive(Debug, Parser)]
#[command(name = "agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the gateway and serve the tunnel until SIGTERM.
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check every step of a connection (config, key, local service,
    /// gateway, proxy, TLS, handshake), one OK/FAIL/SKIP line each; exits
    /// non-zero on any failure. Serves nothing.
    Check {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the stored tunnel key.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// Key commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Read the tunnel key from standard input and store it encrypted.
    Set {
        #[arg(long)]
        config: PathBuf,
    },
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    // `run` logs as its config says; `key set` plainly.
    let _plain = (!matches!(cli.command, Command::Run { .. })).then(telemetry::init_plain);
    match cli.command {
        Command::Check { config } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(crate::check::run(&config, std::io::stdout().lock())))
        }
        Command::Key {
            command: KeyCommand::Set { config },
        } => {
            let cfg = AgentConfig::load(&config)?;
            let mut text = Zeroizing::new(String::new());
            std::io::stdin().take(4096).read_to_string(&mut text)?;
            let key = protocol::TunnelKey::parse(&text)?;
            crate::keystore::store_key(&cfg.tunnel, &key)?;
            eprintln!(
                "tunnel key stored encrypted in {}",
                cfg.tunnel.key_file.display()
            );
            Ok(0)
        }
        Command::Run { config } => {
            let cfg = AgentConfig::load(&config)?;
            let _telemetry = telemetry::init(
                &cfg.log,
                &cfg.telemetry,
                "tunnel-agent",
                true,
                &crate::metrics::METRICS.export,
            )?;
            let key = crate::keystore::load_key(&cfg.tunnel)?;
            let admin = telemetry::admin::bind(&cfg.admin, crate::config::DEFAULT_ADMIN_LISTEN)?;
            let admin_tls = telemetry::admin::tls(&cfg.admin)?;
            let rt = match cfg.runtime.threads {
                1 => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
                n => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    if n > 1 {
                        b.worker_threads(n);
                    }
                    b.enable_all().build()?
                }
            };
            let status = Arc::new(crate::run::Status::default());
            rt.block_on(async {
                if let Some(listener) = admin {
                    let addr = listener.local_addr()?;
                    let r = status.clone();
                    let admin = Arc::new(telemetry::admin::Admin {
                        registry: Arc::new(crate::metrics::registry()),
                        ready: Arc::new(move || r.check()),
                        api: None,
                        tls: admin_tls,
                    });
                    tokio::spawn(admin.serve(tokio::net::TcpListener::from_std(listener)?));
                    tracing::info!(%addr, "admin listener up: /metrics /healthz /readyz");
                    protocol::events::emit(
                        serde_json::json!({"event": "admin", "admin": addr.to_string()}),
                    );
                }
                crate::run::run(cfg, key, status).await
            })
        }
    }
}
