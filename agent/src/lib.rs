//! The on-premises side of the application tunnel.
//!
//! - [`config`]: the TOML configuration and its validation;
//! - [`keystore`]: the tunnel key encrypted at rest;
//! - [`dial`]: TCP, TLS 1.3, WebSocket and the key-proof handshake;
//! - [`proxy`]: the way out through an HTTP CONNECT proxy (config or
//!   `HTTPS_PROXY`/`NO_PROXY`), credentials never shown;
//! - [`check`]: `agent check`, the step-by-step diagnostic;
//! - [`session`]: the HTTP/2 server whose `CONNECT` streams reach the local
//!   service, and the drain notice on the control stream;
//! - [`forward`]: each stream's requests forwarded to the local service,
//!   with their spans, metrics and access-log lines;
//! - [`metrics`]: the Prometheus metrics of the admin listener;
//! - [`run`]: the reconnecting actor, signals and exit codes;
//! - [`cli`]: commands; JSON event lines on stdout go through [`protocol::events`].

pub mod check;
pub mod cli;
pub mod config;
pub mod dial;
pub mod exchange;
pub mod forward;
pub mod keystore;
pub mod metrics;
pub mod proxy;
pub mod run;
pub mod session;
