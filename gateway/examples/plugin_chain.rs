//! Per-request cost of a plugin chain, in process: loads org-check, authz
//! and oauth1 from a folder (default `target/plugins/dist`, built by
//! `cargo build -p tests`) and runs the chain on one request many times.
//!
//!     cargo run --release -p gateway --example plugin_chain [DIR] [N]

use std::time::Instant;

use gateway::config::GatewayConfig;
use gateway::plugins::{PolicyContext, PolicyRequest, Verdict, WitHeader};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins/dist").into());
    let n: u32 = args.next().map_or(Ok(20_000), |s| s.parse())?;
    let tmp = std::env::temp_dir().join(format!("plugin-chain-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let cfg_path = tmp.join("g.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"
[public]
listen = "127.0.0.1:0"
[agents]
listen = "127.0.0.1:0"
tls_cert = "c"
tls_key = "k"
[store]
path = "db"
kek_file = "kek"
[plugins]
dir = {dir:?}
reload_interval = "0s"
[[routes]]
name = "bench"
host = "bench.test"
tunnel = "bench"
[[routes.plugins]]
name = "org-check"
[[routes.plugins]]
name = "authz"
config = '{{"rules": [{{"methods": ["GET", "HEAD"]}}]}}'
[[routes.plugins]]
name = "oauth1"
config = '{{"allow_unsigned": true}}'
"#
        ),
    )?;
    let cfg = GatewayConfig::load(&cfg_path)?;
    std::fs::remove_dir_all(&tmp)?;
    let plugins = gateway::plugins::load(&cfg)?;
    let chain = plugins.chain(&cfg.routes[0].plugins);
    let ctx = PolicyContext {
        route: "bench".into(),
        tunnel_id: "t".into(),
        tunnel_name: "bench".into(),
        tunnel_org: "acme".into(),
        caller_org: "acme".into(),
        caller_id: "c".into(),
        client_address: "127.0.0.1".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
    };
    let req = PolicyRequest {
        method: "GET".into(),
        scheme: "http".into(),
        authority: "bench.test".into(),
        path_with_query: "/1k".into(),
        headers: vec![
            WitHeader {
                name: "host".into(),
                value: b"bench.test".to_vec(),
            },
            WitHeader {
                name: "user-agent".into(),
                value: b"wrk".to_vec(),
            },
        ],
        body_prefix: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for _ in 0..1000 {
            assert!(matches!(
                plugins
                    .run(&chain, &ctx, &req, &tracing::Span::none())
                    .await,
                Verdict::Allow(_)
            ));
        }
        let t = Instant::now();
        for _ in 0..n {
            assert!(matches!(
                plugins
                    .run(&chain, &ctx, &req, &tracing::Span::none())
                    .await,
                Verdict::Allow(_)
            ));
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!("plugin chain (org-check, authz, oauth1): {per:.1} us per request ({n} runs)");
    });
    Ok(())
}
