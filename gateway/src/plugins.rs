//! The policy plugin host is the crate `policy-host` (wasmtime, sandboxes,
//! chains, reloads), re-exported here; this module gives it what the
//! gateway's configuration says: every configuration each plugin is given
//! by the routes, and the warning for routes open to every organization.

use std::collections::HashMap;
use std::sync::Arc;

pub use policy_host::*;

use crate::config::GatewayConfig;

/// Compiles and checks every plugin the routes of `cfg` name (see
/// [`Plugins::load`]).
pub fn load(cfg: &GatewayConfig) -> Result<Arc<Plugins>, LoadError> {
    warn_cross_org(cfg);
    Plugins::load(&cfg.plugins, chain_configs(cfg))
}

/// A host for the new configuration `cfg`, beside `running` (see
/// [`Plugins::reconfigure`]).
pub async fn reconfigure(
    running: &Plugins,
    cfg: &GatewayConfig,
) -> Result<Arc<Plugins>, LoadError> {
    let host = running
        .reconfigure(&cfg.plugins, chain_configs(cfg))
        .await?;
    warn_cross_org(cfg);
    Ok(host)
}

/// Every configuration text each plugin is given, by plugin name.
pub fn chain_configs(cfg: &GatewayConfig) -> HashMap<String, Vec<String>> {
    let mut configs: HashMap<String, Vec<String>> = HashMap::new();
    let chains = cfg
        .routes
        .iter()
        .map(|r| &r.plugins)
        .chain(std::iter::once(&cfg.routing.plugins));
    for chain in chains {
        for p in chain {
            let list = configs.entry(p.name.clone()).or_default();
            let text = p.config_text();
            if !list.contains(&text) {
                list.push(text);
            }
        }
    }
    configs
}

/// The configurations the routes of `cfg` give plugin `name` (each once).
pub fn route_configs(cfg: &GatewayConfig, name: &str) -> Vec<String> {
    chain_configs(cfg).remove(name).unwrap_or_default()
}

/// The host keeps organizations apart itself; only an explicit opt-out
/// leaves that to the chain, which is worth a warning.
pub fn warn_cross_org(cfg: &GatewayConfig) {
    let opted_out = cfg
        .routes
        .iter()
        .filter(|r| r.cross_org)
        .map(|r| (r.name.as_str(), &r.plugins))
        .chain(
            cfg.routing
                .cross_org
                .then_some(("*wildcard*", &cfg.routing.plugins)),
        );
    for (route, chain) in opted_out {
        tracing::warn!(
            route,
            org_check = chain.iter().any(|p| p.name == "org-check"),
            "cross_org = true: callers of any organization reach this route's tunnel \
             unless its plugin chain refuses them"
        );
    }
}
