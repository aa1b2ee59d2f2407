//! The policy plugin SDK: write one type, call one macro.
//!
//! ```ignore
//! use plugin_sdk::{Context, Decision, Denial, Policy, Request};
//!
//! struct NoDeletes;
//!
//! impl Policy for NoDeletes {
//!     fn init(config: &str) -> Result<Self, String> {
//!         if config.trim().is_empty() { Ok(NoDeletes) } else { Err("no-deletes takes no configuration".into()) }
//!     }
//!
//!     fn on_request(&self, _ctx: &Context, req: &Request) -> Decision {
//!         if req.method == "DELETE" {
//!             Denial::new(405, "DELETE is not allowed on this route").into()
//!         } else {
//!             Decision::allow()
//!         }
//!     }
//! }
//!
//! plugin_sdk::export_policy!(NoDeletes);
//! ```
//!
//! - [`Policy`] is the plugin: `init` parses the route's configuration into
//!   the plugin's value, `on_request` judges one request with it.
//! - [`export_policy!`] turns that type into the component the gateway
//!   loads (`wit/policy.wit`): it implements `identify` (the plugin's name
//!   is its package name, its file is `<name>.wasm`), keeps the value `init`
//!   returned in one cell audited here (no plugin needs `unsafe`), and
//!   denies with 500 if a request ever came before a successful `init`.
//! - [`host`] is what the gateway offers: a log, a clock and a replay set.
//!   Natively (in `cargo test`) the same functions reach a fake host the
//!   test controls ([`testing`]).
//! - Helpers on the WIT types: [`Decision::allow`], [`Denial::new`] and its
//!   builders, [`Request::header`], [`Request::path`], [`HeaderEdit::set`].
//!
//! On `wasm32` the plugins are `no_std`: Rust's standard library would make
//! the component import WASI (stdio, environment, exit) even when the code
//! never uses it, and the gateway offers plugins nothing but
//! `tunnel:policy/host`. This crate supplies what `std` would have
//! (`runtime.rs`): a global allocator and a panic handler that traps (the
//! gateway turns a trap into a fail-closed 500). A plugin crate starts with
//! `#![cfg_attr(target_arch = "wasm32", no_std)]` and `extern crate alloc;`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// The bindings below name this crate by its absolute path, so that the
// export macro they generate works from a plugin's crate too.
extern crate self as plugin_sdk;

mod helpers;
pub mod host;
mod runtime;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

use alloc::string::String;
use core::cell::RefCell;

/// Bindings generated from `wit/policy.wit`, once for every plugin.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "policy",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "::plugin_sdk::bindings",
        runtime_path: "::plugin_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq, Eq],
    });
}

pub use bindings::tunnel::policy::host::Level;
pub use bindings::tunnel::policy::types::{
    Context, Decision, Denial, Header, HeaderEdit, PluginIdentity, Request,
};
pub use helpers::status_phrase;

/// A policy plugin.
///
/// The gateway makes a sandbox for one route's use of the plugin, calls
/// [`Policy::init`] once in it with that route's configuration, then
/// [`Policy::on_request`] for up to `plugins.max_requests_per_sandbox`
/// requests of that route, one at a time. Keep in `Self` only what `init`
/// parsed: memory carries over between the requests a sandbox serves, and
/// one request's data must not decide another's.
pub trait Policy: Sized + 'static {
    /// Parses and validates the route's configuration (the text of the
    /// route's `config`, empty when it has none). An error refuses the
    /// plugin at load with this message, so name the field and what is
    /// wrong with it.
    fn init(config: &str) -> Result<Self, String>;

    /// Judges one request. A panic traps, and the gateway denies the
    /// request with 500 (fail closed).
    fn on_request(&self, ctx: &Context, req: &Request) -> Decision;
}

/// Exports a [`Policy`] type as the plugin component.
///
/// ```ignore
/// plugin_sdk::export_policy!(MyPolicy);
/// // or, to identify under another name than the package's:
/// plugin_sdk::export_policy!(MyPolicy, name = "my-policy");
/// ```
///
/// Call it once, at the crate root of a `cdylib` crate. The plugin names
/// itself with its package name (`CARGO_PKG_NAME`) and version: the
/// gateway loads the crate `my-policy` from `my-policy.wasm` and refuses a
/// file that holds another plugin.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        $crate::export_policy!($policy, name = ::core::env!("CARGO_PKG_NAME"));
    };
    ($policy:ty, name = $name:expr) => {
        /// The component's exports, made by `plugin_sdk::export_policy!`.
        struct __PolicyComponent;

        const _: () = {
            // One cell per instance. A wasm32 component instance has one
            // thread; natively (`cargo test`) each thread has its own.
            #[cfg(target_arch = "wasm32")]
            static STATE: $crate::__private::State<$policy> = $crate::__private::State::new();
            #[cfg(target_arch = "wasm32")]
            fn with_state<R>(f: impl FnOnce(&$crate::__private::State<$policy>) -> R) -> R {
                f(&STATE)
            }
            #[cfg(not(target_arch = "wasm32"))]
            ::std::thread_local! {
                static STATE: $crate::__private::State<$policy> =
                    const { $crate::__private::State::new() };
            }
            #[cfg(not(target_arch = "wasm32"))]
            fn with_state<R>(f: impl FnOnce(&$crate::__private::State<$policy>) -> R) -> R {
                STATE.with(f)
            }

            impl $crate::bindings::Guest for __PolicyComponent {
                fn identify() -> $crate::PluginIdentity {
                    $crate::__private::identity($name, ::core::env!("CARGO_PKG_VERSION"))
                }

                fn init(
                    config: $crate::__private::String,
                ) -> Result<(), $crate::__private::String> {
                    with_state(|state| state.init(&config))
                }

                fn on_request(ctx: $crate::Context, req: $crate::Request) -> $crate::Decision {
                    with_state(|state| state.on_request($name, &ctx, &req))
                }
            }
        };

        $crate::bindings::export!(__PolicyComponent);
    };
}

/// Used by [`export_policy!`]'s expansion; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use alloc::string::String;
    pub use wit_bindgen;

    pub use crate::State;
    use crate::{Denial, PluginIdentity};

    pub fn identity(name: &str, version: &str) -> PluginIdentity {
        PluginIdentity {
            name: name.into(),
            version: version.into(),
        }
    }

    /// What `on-request` answers when no configuration is in force.
    pub fn not_initialized(plugin: &str) -> Denial {
        Denial::new(
            500,
            alloc::format!("{plugin}: on-request without a successful init (fail closed)"),
        )
    }
}

/// The value `init` returned, for the requests of the same sandbox.
#[doc(hidden)]
pub struct State<P>(RefCell<Option<P>>);

// SAFETY: on wasm32 a component instance runs on exactly one thread (the
// runtime module refuses to build for wasm32 with atomics), so nothing can
// reach the cell concurrently. Natively the macro keeps it in a
// `thread_local!` instead, which needs no `Sync`.
#[cfg(target_arch = "wasm32")]
unsafe impl<P> Sync for State<P> {}

impl<P: Policy> State<P> {
    pub const fn new() -> Self {
        State(RefCell::new(None))
    }

    /// Runs [`Policy::init`]. A refused configuration clears the one in
    /// force, so the sandbox's requests fail closed rather than run under
    /// an earlier configuration.
    pub fn init(&self, config: &str) -> Result<(), String> {
        *self.0.borrow_mut() = None;
        #[cfg(not(target_arch = "wasm32"))]
        let policy = testing::init::<P>(config)?;
        #[cfg(target_arch = "wasm32")]
        let policy = P::init(config)?;
        *self.0.borrow_mut() = Some(policy);
        Ok(())
    }

    /// Runs [`Policy::on_request`], or denies with 500 when no `init`
    /// succeeded.
    pub fn on_request(&self, plugin: &str, ctx: &Context, req: &Request) -> Decision {
        match &*self.0.borrow() {
            Some(policy) => policy.on_request(ctx, req),
            None => __private::not_initialized(plugin).into(),
        }
    }
}

impl<P: Policy> Default for State<P> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allows GET only; refuses any configuration but "get-only".
    struct GetOnly;

    impl Policy for GetOnly {
        fn init(config: &str) -> Result<Self, String> {
            match config {
                "get-only" => Ok(GetOnly),
                other => Err(alloc::format!("unknown mode {other:?}")),
            }
        }

        fn on_request(&self, _ctx: &Context, req: &Request) -> Decision {
            if req.method == "GET" {
                Decision::allow()
            } else {
                Denial::new(405, "only GET").into()
            }
        }
    }

    fn status(d: &Decision) -> Option<u16> {
        match d {
            Decision::Allow(_) => None,
            Decision::Deny(d) => Some(d.status),
        }
    }

    #[test]
    fn requests_before_init_and_after_a_refused_init_fail_closed() {
        let state = State::<GetOnly>::new();
        let ctx = testing::context();
        let get = testing::request("GET", "/");
        let d = state.on_request("get-only", &ctx, &get);
        assert_eq!(status(&d), Some(500));
        let Decision::Deny(denial) = d else {
            unreachable!()
        };
        assert!(denial.reason.contains("get-only") && denial.reason.contains("init"));

        state.init("get-only").unwrap();
        assert_eq!(status(&state.on_request("p", &ctx, &get)), None);
        let post = testing::request("POST", "/");
        assert_eq!(status(&state.on_request("p", &ctx, &post)), Some(405));

        let e = state.init("anything").unwrap_err();
        assert!(e.contains("unknown mode"), "{e}");
        assert_eq!(status(&state.on_request("p", &ctx, &get)), Some(500));
    }
}
