//! The cloud side of the application tunnel.
//!
//! A tour, in the order a request meets them:
//!
//! - [`config`]: the TOML configuration and its validation;
//! - [`judgement`]: the one judgement of a request's path and Host that
//!   routing, the checks and the plugins share;
//! - [`public_listener`]: the callers' listener around pingora's proxy:
//!   connection caps, TLS, and deadlines for heads, idle and slow callers;
//! - [`proxy`]: the pingora `ProxyHttp` phases of the public listener
//!   (checks, routing via [`routes`], caller credential, agent choice,
//!   header rewriting via [`http_checks`], error statuses; [`retry`]
//!   decides which failed requests are sent again);
//! - [`connector`]: the custom L4 connector that turns "connect upstream"
//!   into "open an HTTP/2 CONNECT stream inside an agent's tunnel", handed
//!   to pingora as a virtual socket;
//! - [`auth_limit`]: the budget of failed caller credentials per source;
//! - [`registry`]: connected agents per tunnel with in-flight counts, and
//!   cached tunnels and callers;
//! - [`agent_listener`]: TLS 1.3 + WebSocket + key-proof handshake for agents;
//! - [`plugins`]: the WebAssembly policy plugin host (the crate
//!   `policy-host`: wasmtime, sandboxes, chains, reloads), given the
//!   routes' plugin configurations, run by the proxy on every request of
//!   a route with plugins;
//! - [`live`] and [`reload`]: the routes, chains and limits each request
//!   reads as one snapshot, and the live reload that swaps it (SIGHUP or
//!   a change of the configuration file);
//! - [`store`]: SQLite storage, tunnel keys encrypted under the KEK;
//! - [`serve`] and [`cli`]: wiring and commands; [`protocol::events`] the JSON event
//!   lines on stdout; [`tls`] certificate loading; [`metrics`] the
//!   Prometheus metrics of the admin listener; [`per_source`] what one
//!   network source holds at once.

pub mod activity;
pub mod admin;
pub mod agent_listener;
/// Framing checks and header rewriting (crate `gateway-judge`).
pub use gateway_judge::http_checks;
/// The one judgement of path and Host (crate `gateway-judge`).
pub use gateway_judge::judgement;
pub mod auth_limit;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod connector;
pub mod counted;
pub mod live;
pub mod metrics;
pub use telemetry::per_source;
pub mod plugins;
pub mod proxy;
pub mod public_listener;
pub mod registry;
pub mod reload;
pub mod retry;
pub mod routes;
pub mod serve;
pub mod store;
pub mod tls;
