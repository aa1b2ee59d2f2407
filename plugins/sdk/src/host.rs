//! What the gateway offers a plugin (`tunnel:policy/host`): a log, a clock
//! and a replay set. In a component these call the gateway; natively (in
//! `cargo test`) they reach the calling thread's fake host, which the test
//! sets up and reads through [`crate::testing`].

pub use crate::Level;

/// Writes a line to the gateway's log, tagged with the plugin's name and
/// the request's trace id. The gateway keeps a few lines per sandbox and
/// clips long ones. Never log secrets: tokens, keys, signatures.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::tunnel::policy::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_host(|h| h.log(level, message));
}

/// Seconds and nanoseconds since the Unix epoch, from the gateway's clock.
pub fn now() -> (u64, u32) {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::tunnel::policy::host::now();
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_host(|h| h.now());
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now().0
}

/// Records `key` for `ttl_secs` seconds in a set shared by every sandbox
/// of this plugin on the same route and tunnel. True when the key was
/// absent and is now recorded; false when it was already there, when the
/// set (or the caller organization's share of it) is full, or outside a
/// request (in `init`). Treat false as "seen": refuse the request.
pub fn insert_if_absent(key: &str, ttl_secs: u32) -> bool {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::tunnel::policy::host::insert_if_absent(key, ttl_secs);
    #[cfg(not(target_arch = "wasm32"))]
    return crate::testing::with_host(|h| h.insert_if_absent(key, ttl_secs));
}
