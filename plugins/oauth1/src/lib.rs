//! `oauth1`: verifies OAuth 1.0a (RFC 5849) requests at the gateway.
//!
//! Services such as Confluence and Jira authenticate each other through
//! "application links": every request is signed with OAuth 1.0a (RSA-SHA1,
//! usually two-legged). This plugin checks those requests before they enter
//! the tunnel: the protocol parameters, the signature method, the timestamp
//! window, the signature itself (when consumers are configured) and nonce
//! replay. A request that passes goes on untouched, Authorization header
//! included, so the service can verify it again.
//!
//! The logic lives in [`Policy`] and reaches the gateway only through the
//! [`Host`] trait, so it runs natively in unit tests with a fake clock and
//! nonce set; the WebAssembly glue at the bottom of this file is the only
//! code that calls the host's imports.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub use plugin_sdk::{Context, Decision, Denial, Header, Request};

pub mod config;
pub mod encoding;
pub mod header;
mod policy;
pub mod signature;

pub use policy::{nonce_key, Policy, Problem, Refusal, Verdict, MAX_AUTHORIZATION_BYTES};

/// What the decision needs from the gateway. The WIT imports cannot be
/// called outside a component (natively they are unreachable stubs), so
/// the logic asks this trait and tests supply a fake.
pub trait Host {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
    /// Records `key` for `ttl_secs`; false when it was already there (or
    /// the shared set is full, which the host treats as "seen").
    fn insert_if_absent(&mut self, key: &str, ttl_secs: u32) -> bool;
}

/// The gateway's clock and replay set, through the SDK (natively, the
/// test thread's fake host).
struct SdkHost;

impl Host for SdkHost {
    fn now(&self) -> u64 {
        plugin_sdk::host::now_secs()
    }

    fn insert_if_absent(&mut self, key: &str, ttl_secs: u32) -> bool {
        plugin_sdk::host::insert_if_absent(key, ttl_secs)
    }
}

/// The plugin as the gateway runs it: the configuration `init` checked.
pub struct OAuth1(pub Policy);

impl plugin_sdk::Policy for OAuth1 {
    fn init(config: &str) -> Result<Self, alloc::string::String> {
        Policy::new(config).map(OAuth1)
    }

    fn on_request(&self, _ctx: &Context, req: &Request) -> Decision {
        match self.0.evaluate(req, &mut SdkHost) {
            // Denials carry their reason to the gateway's log already;
            // only an allowed request would leave no trace of who it was.
            Ok(Verdict::Verified { consumer }) => {
                plugin_sdk::host::log(
                    plugin_sdk::Level::Debug,
                    &alloc::format!("oauth1: verified request of consumer {consumer:?}"),
                );
                Decision::allow()
            }
            Ok(_) => Decision::allow(),
            Err(refusal) => self.0.denial(refusal).into(),
        }
    }
}

plugin_sdk::export_policy!(OAuth1);

#[cfg(test)]
mod tests;
