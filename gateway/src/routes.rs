//! Route resolution: an explicit route by host then longest path prefix
//! (on whole segments, see [`under_prefix`]), else
//! `<tunnel-name>.<base_domain>` when a base domain is configured. Paths
//! and hosts come judged ([`crate::judgement`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::GatewayConfig;
use crate::judgement::under_prefix;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Route name for logs (`*wildcard*` for base-domain routing).
    pub route: Arc<str>,
    /// Tunnel name.
    pub tunnel: Arc<str>,
    /// Body limit for this route.
    pub max_body_bytes: u64,
    /// Index of the route in the config (its plugin chain); `None` for
    /// wildcard requests, which use `routing.plugins`.
    pub index: Option<usize>,
    /// Form body bytes shown to plugins (`form_body_bytes`).
    pub form_body_bytes: usize,
    /// `;params` in path segments are let through (`allow_path_params`).
    pub allow_path_params: bool,
    /// `%2F` in path segments is let through (`allow_encoded_slash`).
    pub allow_encoded_slash: bool,
    /// Callers of other organizations may reach the tunnel (`cross_org`).
    pub cross_org: bool,
}

/// The routing table, built once from config.
#[derive(Debug, Clone)]
pub struct Routes {
    by_host: HashMap<String, Vec<(String, Resolved)>>,
    /// Tunnels that explicit routes name: reachable only through them, so
    /// the wildcard cannot skip their plugin chains.
    routed_tunnels: std::collections::HashSet<String>,
    base_domain: Option<String>,
    default_body: u64,
    wildcard_cross_org: bool,
}

impl Routes {
    /// Builds the table; prefixes of a host are tried longest first.
    pub fn new(cfg: &GatewayConfig) -> Self {
        let mut by_host: HashMap<String, Vec<(String, Resolved)>> = HashMap::new();
        for (index, r) in cfg.routes.iter().enumerate() {
            by_host
                .entry(r.host.to_ascii_lowercase())
                .or_default()
                .push((
                    r.path_prefix.clone(),
                    Resolved {
                        route: r.name.as_str().into(),
                        tunnel: r.tunnel.as_str().into(),
                        max_body_bytes: r.max_body_bytes.unwrap_or(cfg.public.max_body_bytes),
                        index: Some(index),
                        form_body_bytes: r.form_body_bytes,
                        allow_path_params: r.allow_path_params,
                        allow_encoded_slash: r.allow_encoded_slash,
                        cross_org: r.cross_org,
                    },
                ));
        }
        for list in by_host.values_mut() {
            list.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.trim_end_matches('/').len()));
        }
        Routes {
            routed_tunnels: cfg.routes.iter().map(|r| r.tunnel.clone()).collect(),
            by_host,
            base_domain: cfg
                .routing
                .base_domain
                .as_ref()
                .map(|d| d.to_ascii_lowercase()),
            default_body: cfg.public.max_body_bytes,
            wildcard_cross_org: cfg.routing.cross_org,
        }
    }

    /// Resolves a judged host (lower-case, port-less) and a judged path.
    pub fn resolve(&self, host: &str, path: &str) -> Option<Resolved> {
        if let Some(list) = self.by_host.get(host) {
            // A host with explicit routes never falls through to the
            // wildcard: a path outside its prefixes has no route.
            return list
                .iter()
                .find(|(p, _)| under_prefix(path, p))
                .map(|(_, r)| r.clone());
        }
        let base = self.base_domain.as_deref()?;
        let label = host.strip_suffix(base)?.strip_suffix('.')?;
        if label.is_empty() || label.contains('.') || self.routed_tunnels.contains(label) {
            return None;
        }
        Some(Resolved {
            route: "*wildcard*".into(),
            tunnel: label.into(),
            max_body_bytes: self.default_body,
            index: None,
            form_body_bytes: 0,
            allow_path_params: false,
            allow_encoded_slash: false,
            cross_org: self.wildcard_cross_org,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let text = r#"
[public]
listen = "127.0.0.1:0"
max_body_bytes = 100
[agents]
listen = "127.0.0.1:0"
tls_cert = "c"
tls_key = "k"
[store]
path = "db"
kek_file = "kek"
[routing]
base_domain = "tunnels.test"
[[routes]]
name = "wiki"
host = "Wiki.Test"
tunnel = "wiki"
[[routes]]
name = "wiki-api"
host = "wiki.test"
path_prefix = "/api/"
tunnel = "wiki-api"
max_body_bytes = 5
"#;
        let cfg: GatewayConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        Routes::new(&cfg)
    }

    #[test]
    fn host_then_longest_prefix() {
        let r = routes();
        assert_eq!(&*r.resolve("wiki.test", "/page").unwrap().tunnel, "wiki");
        let api = r.resolve("wiki.test", "/api/x").unwrap();
        assert_eq!(&*api.tunnel, "wiki-api");
        assert_eq!(api.max_body_bytes, 5);
        assert!(r.resolve("other.test", "/").is_none());
    }

    #[test]
    fn wildcard_takes_one_label() {
        let r = routes();
        let w = r.resolve("jira.tunnels.test", "/").unwrap();
        assert_eq!(&*w.tunnel, "jira");
        assert_eq!(w.max_body_bytes, 100);
        assert!(r.resolve("a.b.tunnels.test", "/").is_none());
        assert!(r.resolve("tunnels.test", "/").is_none());
        assert!(r.resolve("xtunnels.test", "/").is_none());
    }

    #[test]
    fn the_wildcard_never_skips_an_explicit_route() {
        let r = routes();
        // `wiki` has explicit routes (with their own plugin chains).
        assert!(r.resolve("wiki.tunnels.test", "/").is_none());
        assert!(r.resolve("wiki-api.tunnels.test", "/").is_none());
        // A host with routes but no matching prefix: no route, no wildcard.
        let only_api = {
            let mut r = routes();
            r.by_host
                .get_mut("wiki.test")
                .unwrap()
                .retain(|(p, _)| p == "/api/");
            r
        };
        assert!(only_api.resolve("wiki.test", "/page").is_none());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let r = routes();
        // `/api/` covers `/api` and `/API/x`, never `/apix`.
        assert_eq!(&*r.resolve("wiki.test", "/api").unwrap().tunnel, "wiki-api");
        assert_eq!(
            &*r.resolve("wiki.test", "/API/x").unwrap().tunnel,
            "wiki-api"
        );
        assert_eq!(&*r.resolve("wiki.test", "/apix").unwrap().tunnel, "wiki");
    }
}
