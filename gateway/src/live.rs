//! What of the configuration a request reads: routes, plugin chains and
//! the per-request limits, as one immutable snapshot.
//!
//! The proxy takes the current snapshot once, when a request starts
//! ([`Current::load`]), and keeps it in the request's context until the
//! request is logged: a request never mixes two configurations, and one in
//! flight when the configuration is reloaded ([`crate::reload`]) finishes
//! on the one it started with, even if its route is gone from the new one.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::GatewayConfig;
use crate::plugins::{ChainEntry, Plugins};
use crate::routes::Routes;

/// One configuration's request-path settings.
pub struct Live {
    /// The routing table.
    pub routes: Routes,
    /// The plugin host the chains belong to.
    pub plugins: Arc<Plugins>,
    /// The plugin chain of each configured route, by index.
    pub chains: Vec<Arc<[ChainEntry]>>,
    /// The plugin chain of wildcard (`<tunnel>.<base_domain>`) requests.
    pub wildcard_chain: Arc<[ChainEntry]>,
    /// `public.max_header_bytes`: larger header blocks get 431.
    pub max_header_bytes: usize,
    /// `public.upstream_timeout`.
    pub upstream_timeout: Duration,
    /// `public.keepalive`, for pooled tunnel connections.
    pub pool_idle: Duration,
    /// The routes as the admin API shows them.
    pub route_views: Vec<RouteView>,
    /// `routing.base_domain` and the wildcard chain's plugin names.
    pub wildcard: Option<(String, Vec<String>)>,
}

/// A configured route, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteView {
    pub name: String,
    pub host: String,
    pub path_prefix: String,
    #[serde(skip)]
    pub tunnel: String,
    /// Its plugin chain, in order.
    pub plugins: Vec<String>,
}

impl Live {
    /// The routes that reach tunnel `name`: its configured routes, or the
    /// wildcard `<name>.<base_domain>` when none names it.
    pub fn routes_of(&self, name: &str) -> Vec<RouteView> {
        let explicit: Vec<RouteView> = self
            .route_views
            .iter()
            .filter(|r| r.tunnel == name)
            .cloned()
            .collect();
        if !explicit.is_empty() {
            return explicit;
        }
        self.wildcard
            .iter()
            .map(|(base, plugins)| RouteView {
                name: "*wildcard*".into(),
                host: format!("{name}.{base}"),
                path_prefix: "/".into(),
                tunnel: name.to_string(),
                plugins: plugins.clone(),
            })
            .collect()
    }
}

impl Live {
    /// The snapshot of `cfg`, with chains from `plugins` (which must have
    /// loaded every plugin `cfg` names).
    pub fn new(cfg: &GatewayConfig, plugins: Arc<Plugins>) -> Self {
        Live {
            routes: Routes::new(cfg),
            chains: cfg
                .routes
                .iter()
                .map(|r| plugins.chain(&r.plugins))
                .collect(),
            wildcard_chain: plugins.chain(&cfg.routing.plugins),
            plugins,
            max_header_bytes: cfg.public.max_header_bytes,
            upstream_timeout: cfg.public.upstream_timeout,
            pool_idle: cfg.public.keepalive,
            route_views: cfg
                .routes
                .iter()
                .map(|r| RouteView {
                    name: r.name.clone(),
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    tunnel: r.tunnel.clone(),
                    plugins: r.plugins.iter().map(|p| p.name.clone()).collect(),
                })
                .collect(),
            wildcard: cfg.routing.base_domain.as_ref().map(|base| {
                (
                    base.clone(),
                    cfg.routing.plugins.iter().map(|p| p.name.clone()).collect(),
                )
            }),
        }
    }
}

/// The snapshot in force, swapped atomically by a reload.
pub type Current = Arc<ArcSwap<Live>>;

/// A [`Current`] holding `live`.
pub fn current(live: Live) -> Current {
    Arc::new(ArcSwap::from_pointee(live))
}
