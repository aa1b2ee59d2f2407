//! Native unit tests of a plugin: a fake host and sample inputs.
//!
//! [`crate::host`]'s functions reach the calling thread's [`FakeHost`]
//! when the plugin runs natively (`cargo test`), so a test calls its
//! policy directly and checks what the host saw:
//!
//! ```ignore
//! use plugin_sdk::{testing, Policy};
//!
//! testing::reset();
//! testing::set_now(1_700_000_000);
//! let policy: MyPolicy = testing::init(r#"{"window_secs": 300}"#).unwrap();
//! let mut req = testing::request("GET", "/wiki/");
//! req.headers.push(plugin_sdk::Header::new("x-nonce", "n1"));
//! assert!(policy.on_request(&testing::context(), &req).is_allow());
//! assert!(!policy.on_request(&testing::context(), &req).is_allow()); // replayed
//! assert!(testing::logs().iter().any(|(_, line)| line.contains("replay")));
//! ```
//!
//! Each test thread has its own host; [`reset`] starts it afresh.

use std::cell::RefCell;
use std::collections::HashMap;
use std::string::{String, ToString};
use std::time::{SystemTime, UNIX_EPOCH};
use std::vec::Vec;

use crate::{Context, Level, Request};

/// Keys a fresh fake replay set holds before it refuses, like the
/// gateway's default `plugins.max_replay_keys`.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// The fake host of one test thread.
#[derive(Debug)]
pub struct FakeHost {
    /// Pinned clock; the system clock when `None`.
    now: Option<(u64, u32)>,
    /// Replay keys and the second they expire.
    keys: HashMap<String, u64>,
    capacity: usize,
    logs: Vec<(Level, String)>,
    /// In `init` (through [`init`]): inserts are refused, as by the
    /// gateway, which has no request to scope them to.
    in_init: bool,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            now: None,
            keys: HashMap::new(),
            capacity: DEFAULT_REPLAY_CAPACITY,
            logs: Vec::new(),
            in_init: false,
        }
    }
}

impl FakeHost {
    pub(crate) fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_string()));
    }

    pub(crate) fn now(&self) -> (u64, u32) {
        self.now.unwrap_or_else(|| {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (d.as_secs(), d.subsec_nanos())
        })
    }

    /// The gateway's semantics: false when the key is live, when the set
    /// is full of live keys (fail closed), or in `init`.
    pub(crate) fn insert_if_absent(&mut self, key: &str, ttl_secs: u32) -> bool {
        if self.in_init {
            return false;
        }
        let now = self.now().0;
        self.keys.retain(|_, expires| *expires > now);
        if self.keys.contains_key(key) || self.keys.len() >= self.capacity {
            return false;
        }
        self.keys
            .insert(key.to_string(), now.saturating_add(u64::from(ttl_secs)));
        true
    }
}

std::thread_local! {
    static HOST: RefCell<FakeHost> = RefCell::new(FakeHost::default());
}

pub(crate) fn with_host<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

/// Runs `P::init(config)` as the gateway does: the host's replay set
/// refuses inserts meanwhile (there is no request yet to scope them to).
/// Calling `P::init` directly works too, without that refusal.
pub fn init<P: crate::Policy>(config: &str) -> Result<P, String> {
    with_host(|h| h.in_init = true);
    let policy = P::init(config);
    with_host(|h| h.in_init = false);
    policy
}

/// Starts this thread's fake host afresh: system clock, empty replay set
/// of [`DEFAULT_REPLAY_CAPACITY`], no log lines.
pub fn reset() {
    with_host(|h| *h = FakeHost::default());
}

/// Pins the clock at `secs` since the Unix epoch.
pub fn set_now(secs: u64) {
    with_host(|h| h.now = Some((secs, 0)));
}

/// Moves the pinned clock on by `secs` (pinning it first if needed).
pub fn advance(secs: u64) {
    with_host(|h| {
        let (now, nanos) = h.now();
        h.now = Some((now.saturating_add(secs), nanos));
    });
}

/// Sets how many live keys the replay set holds before it refuses.
pub fn set_replay_capacity(keys: usize) {
    with_host(|h| h.capacity = keys);
}

/// Takes the lines logged since the last call (or [`reset`]).
pub fn logs() -> Vec<(Level, String)> {
    with_host(|h| std::mem::take(&mut h.logs))
}

/// A context as the gateway would give it: route `wiki` of tunnel `wiki`
/// owned by `acme`, caller `caller-1` of `acme`. Change the fields a test
/// is about.
pub fn context() -> Context {
    Context {
        route: "wiki".into(),
        tunnel_id: "tunnel-1".into(),
        tunnel_name: "wiki".into(),
        tunnel_org: "acme".into(),
        caller_org: "acme".into(),
        caller_id: "caller-1".into(),
        client_address: "192.0.2.10".into(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    }
}

/// A request without headers or body to `https://wiki.example`.
pub fn request(method: &str, path_with_query: &str) -> Request {
    Request {
        method: method.into(),
        scheme: "https".into(),
        authority: "wiki.example".into(),
        path_with_query: path_with_query.into(),
        headers: Vec::new(),
        body_prefix: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host;

    #[test]
    fn the_fake_replay_set_refuses_live_keys_and_when_full() {
        reset();
        set_now(1_000);
        assert!(host::insert_if_absent("a", 10));
        assert!(!host::insert_if_absent("a", 10));
        advance(10);
        assert!(host::insert_if_absent("a", 10), "expired keys leave");
        set_replay_capacity(2);
        assert!(host::insert_if_absent("b", 10));
        assert!(!host::insert_if_absent("c", 10), "full: fail closed");
        assert_eq!(host::now(), (1_010, 0));
        reset();
        assert!(host::now_secs() > 1_600_000_000, "system clock after reset");
    }

    #[test]
    fn inserts_are_refused_in_init_as_by_the_gateway() {
        struct Greedy(bool);
        impl crate::Policy for Greedy {
            fn init(_config: &str) -> Result<Self, String> {
                Ok(Greedy(host::insert_if_absent("k", 10)))
            }
            fn on_request(&self, _: &Context, _: &Request) -> crate::Decision {
                crate::Decision::allow()
            }
        }
        reset();
        assert!(!init::<Greedy>("").unwrap().0, "refused in init");
        assert!(host::insert_if_absent("k", 10), "accepted after init");
    }

    #[test]
    fn log_lines_are_kept_in_order_and_taken() {
        reset();
        host::log(Level::Info, "one");
        host::log(Level::Warn, "two");
        assert_eq!(
            logs(),
            [
                (Level::Info, "one".to_string()),
                (Level::Warn, "two".to_string())
            ]
        );
        assert!(logs().is_empty());
    }
}
