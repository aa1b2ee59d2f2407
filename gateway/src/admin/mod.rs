//! Operating the gateway: tunnels, callers, agents, admin tokens, the
//! audit log and the KEK, through one set of operations ([`ops`]) that two
//! surfaces share:
//!
//! - the HTTP JSON admin API on the admin listener ([`api`]), authenticated
//!   with admin tokens and described by `docs/openapi.json`;
//! - the dashboard at `/ui/` ([`ui`]), a page in the browser over the
//!   same API, signed in with an admin token;
//! - the CLI, which sends the same operations to a running gateway through
//!   that API ([`client`], found through the runtime file the gateway
//!   writes beside its store, [`runtime`]) so the gateway learns of every
//!   change at once, and runs them on the store directly when no gateway
//!   is running.

pub mod api;
pub mod client;
pub mod ops;
pub mod runtime;
pub mod ui;

pub use ops::{Op, OpError};
