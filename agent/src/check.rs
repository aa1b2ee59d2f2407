//! `agent check --config F`: what a person runs on the on-prem host before
//! opening a ticket. Each step of a real connection, in order, with the
//! agent's own code ([`crate::dial`], [`crate::keystore`],
//! [`crate::session::connect_to_local`]); one line each:
//!
//! ```text
//! OK   config /etc/tunnel-agent/agent.toml
//! OK   tunnel key /var/lib/tunnel-agent/tunnel.key decrypts
//! FAIL local service 127.0.0.1:8080: Connection refused (os error 111)
//! OK   gateway gw.example.com:8443 reachable through proxy http://proxy:3128 (from HTTPS_PROXY)
//! OK   TLS certificate valid for gw.example.com
//! OK   handshake accepted: tunnel tun_… (jira) as agent jira-node-1
//! ```
//!
//! A step that needs a failed one says `SKIP`. The handshake is the real
//! key proof; the connection is then closed before the gateway opens its
//! control stream, so the gateway never counts this as a serving agent and
//! sends it no request. Exit code 0 when every line is OK, else 1.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::dial::{authenticate, open_transport, tls_config, tls_connect, DialError};

/// Exit code of `agent check` when a step failed.
pub const EXIT_FAILED: i32 = 1;

struct Report<W: Write> {
    out: W,
    failed: bool,
}

impl<W: Write> Report<W> {
    fn ok(&mut self, what: &str) {
        let _ = writeln!(self.out, "OK   {what}");
    }
    fn fail(&mut self, what: &str, reason: impl std::fmt::Display) {
        self.failed = true;
        let _ = writeln!(self.out, "FAIL {what}: {reason}");
    }
    fn skip(&mut self, what: &str, because: &str) {
        let _ = writeln!(self.out, "SKIP {what}: {because}");
    }
}

/// `Err` with the reason when `fut` fails or outlasts `limit`.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// Runs every check, printing one line each to `out`; returns the exit code.
pub async fn run(config: &Path, out: impl Write) -> i32 {
    let mut r = Report { out, failed: false };
    let what_config = format!("config {}", config.display());
    let cfg = match AgentConfig::load(config) {
        Ok(cfg) => {
            r.ok(&what_config);
            cfg
        }
        Err(e) => {
            r.fail(&what_config, e);
            for what in [
                "tunnel key",
                "local service",
                "gateway reachable",
                "TLS certificate",
                "handshake",
            ] {
                r.skip(what, "the config is invalid");
            }
            return EXIT_FAILED;
        }
    };

    let what_key = format!("tunnel key {}", cfg.tunnel.key_file.display());
    let key = match crate::keystore::load_key(&cfg.tunnel) {
        Ok(key) => {
            r.ok(&format!("{what_key} decrypts"));
            Some(key)
        }
        Err(e) => {
            r.fail(&what_key, e);
            None
        }
    };

    // Validated with the config: these cannot fail here.
    let local = cfg.local_target().expect("validated");
    let url = cfg.gateway_url().expect("validated");
    let proxy = cfg.proxy().expect("validated");

    let what_local = format!("local service {}:{}", local.0, local.1);
    let local_limit = cfg.local.connect_timeout;
    match within(
        local_limit,
        crate::session::connect_to_local(&local, cfg.local.allow_remote),
    )
    .await
    {
        Ok(_) => r.ok(&format!("{what_local} accepts connections")),
        Err(e) => r.fail(&what_local, e),
    }

    let limit = cfg.gateway.connect_timeout;
    let route = match &proxy {
        Some(p) => format!("through proxy {p} (from {})", p.source),
        None => "directly".to_string(),
    };
    let what_gateway = format!("gateway {}:{} {route}", url.host, url.port);
    let what_tls = format!("TLS certificate valid for {}", url.host);
    let tcp = match within(limit, open_transport(&url, proxy.as_ref())).await {
        Ok(tcp) => {
            r.ok(&format!("{what_gateway}: reachable"));
            tcp
        }
        Err(e) => {
            r.fail(&what_gateway, e);
            r.skip(&what_tls, "the gateway is not reachable");
            r.skip("handshake", "the gateway is not reachable");
            return EXIT_FAILED;
        }
    };

    let tls = match tls_config(&cfg) {
        Ok(tls) => within(limit, tls_connect(&url, tls, tcp)).await,
        Err(e) => Err(format!("{e:#}")),
    };
    let tls = match tls {
        Ok(tls) => {
            r.ok(&what_tls);
            tls
        }
        Err(e) => {
            r.fail(&what_tls, e);
            r.skip("handshake", "no trusted TLS connection");
            return EXIT_FAILED;
        }
    };

    let Some(key) = key else {
        r.skip("handshake", "no usable tunnel key");
        return EXIT_FAILED;
    };
    let deadline = tokio::time::Instant::now() + limit;
    match tokio::time::timeout_at(deadline, authenticate(&cfg, &url, tls, &key, deadline)).await {
        Ok(Ok((mut ws, welcome))) => {
            r.ok(&format!(
                "handshake accepted: tunnel {} ({}) as agent {}",
                cfg.tunnel.id,
                welcome.tunnel_name,
                cfg.agent_name()
            ));
            // Leave before serving: a close frame, then the connection ends.
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }
        Ok(Err(DialError::Rejected(reason))) => r.fail(
            "handshake",
            format!(
                "the gateway refused this agent ({reason}): check tunnel.id and the key stored with `agent key set`"
            ),
        ),
        Ok(Err(DialError::Timeout(_))) | Err(_) => {
            r.fail("handshake", format!("no answer within {limit:?}"))
        }
        Ok(Err(e)) => r.fail("handshake", e),
    }
    if r.failed {
        EXIT_FAILED
    } else {
        0
    }
}
