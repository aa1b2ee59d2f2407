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

use plugin_sdk as _;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

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

#[cfg(target_arch = "wasm32")]
mod component {
    use alloc::{format, string::String};
    use core::cell::RefCell;

    use crate::tunnel::policy::host::{insert_if_absent, log, now, Level};
    use crate::tunnel::policy::types::{Denial, Header};
    use crate::{Context, Decision, Guest, Host, Policy, Request, Verdict};

    /// The host's clock and nonce set.
    struct WasmHost;

    impl Host for WasmHost {
        fn now(&self) -> u64 {
            now().0
        }

        fn insert_if_absent(&mut self, key: &str, ttl_secs: u32) -> bool {
            insert_if_absent(key, ttl_secs)
        }
    }

    /// The configuration `init` checked, for `on-request` in the same
    /// sandbox.
    struct Loaded(RefCell<Option<Policy>>);

    // SAFETY: a wasm32 component instance has exactly one thread; nothing
    // can reach this static concurrently.
    unsafe impl Sync for Loaded {}

    static LOADED: Loaded = Loaded(RefCell::new(None));

    struct OAuth1;

    impl Guest for OAuth1 {
        plugin_sdk::identify!();

        fn init(config: String) -> Result<(), String> {
            let policy = Policy::new(&config)?;
            *LOADED.0.borrow_mut() = Some(policy);
            Ok(())
        }

        fn on_request(_ctx: Context, req: Request) -> Decision {
            let loaded = LOADED.0.borrow();
            let Some(policy) = loaded.as_ref() else {
                // The gateway always calls init first; if it did not, fail
                // closed rather than let an unchecked request through.
                return Decision::Deny(Denial {
                    status: 500,
                    headers: alloc::vec![Header {
                        name: String::from("content-type"),
                        value: b"text/plain; charset=utf-8".to_vec(),
                    }],
                    body: b"500 Internal Server Error\n".to_vec(),
                    reason: String::from("oauth1 was not initialized"),
                });
            };
            match policy.evaluate(&req, &mut WasmHost) {
                // Denials carry their reason to the gateway's log already;
                // only an allowed request would leave no trace of who it was.
                Ok(verdict) => {
                    if let Verdict::Verified { consumer } = &verdict {
                        log(
                            Level::Debug,
                            &format!("oauth1: verified request of consumer {consumer:?}"),
                        );
                    }
                    Decision::Allow(alloc::vec::Vec::new())
                }
                Err(refusal) => Decision::Deny(policy.denial(refusal)),
            }
        }
    }

    crate::export!(OAuth1 with_types_in crate);
}

#[cfg(test)]
mod tests;
