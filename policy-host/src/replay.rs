//! The TTL set behind the host import `insert-if-absent` (replay
//! detection, e.g. OAuth 1.0a nonces): one per plugin, bounded.
//!
//! Two rules keep one tenant from hurting another through it:
//!
//! - The host scopes every key to the request's route and tunnel, so a
//!   plugin judging one route can neither read nor pre-fill another
//!   route's keys, whatever key it passes.
//! - Each caller organization may hold at most a share of the capacity
//!   (`plugins.replay_share_per_org`). An organization at its share has
//!   its own inserts refused (fail closed), while other organizations keep
//!   room for theirs; a flood of fresh nonces from one tenant no longer
//!   makes every tenant's OAuth requests fail.
//!
//! Refusals for lack of room are counted by plugin, organization and
//! limit (`plugin_replay_refusals_total`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest replay-set key and TTL (twice OAuth 1.0a's longest window). A
/// longer TTL is refused rather than shortened: shortening would let a key
/// be reused while its owner still considers it live.
pub const MAX_REPLAY_KEY: usize = 512;
pub const MAX_REPLAY_TTL_SECS: u32 = 48 * 3600;

/// Where a key is inserted from: the request being judged.
#[derive(Debug, Default, Clone)]
pub struct Scope {
    /// Route name (never empty during a request).
    pub route: String,
    /// Tunnel id.
    pub tunnel_id: String,
    /// The caller's organization: whose share the key counts against.
    pub caller_org: String,
}

/// A TTL set shared by every sandbox of one plugin.
pub struct ReplaySet {
    plugin: Arc<str>,
    inner: Mutex<Inner>,
    capacity: usize,
    per_org: usize,
}

struct Inner {
    entries: HashMap<Box<str>, Entry>,
    /// Live-or-not-yet-purged entries per organization.
    orgs: HashMap<Arc<str>, usize>,
    last_purge: Instant,
}

struct Entry {
    expires: Instant,
    org: Arc<str>,
}

/// Why an insert found no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The whole set holds `capacity` live keys.
    Set,
    /// The caller's organization holds its share.
    OrgShare,
}

impl Inner {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.release(&e.org);
        }
    }

    fn release(&mut self, org: &Arc<str>) {
        if let Some(n) = self.orgs.get_mut(org) {
            *n -= 1;
            if *n == 0 {
                self.orgs.remove(org);
            }
        }
    }

    fn purge(&mut self, now: Instant) {
        let mut freed: Vec<Arc<str>> = Vec::new();
        self.entries.retain(|_, e| {
            let live = e.expires > now;
            if !live {
                freed.push(e.org.clone());
            }
            live
        });
        for org in &freed {
            self.release(org);
        }
        self.last_purge = now;
    }

    fn full(&self, org: &str, capacity: usize, per_org: usize) -> Option<Full> {
        if self.entries.len() >= capacity {
            Some(Full::Set)
        } else if self.orgs.get(org).copied().unwrap_or(0) >= per_org {
            Some(Full::OrgShare)
        } else {
            None
        }
    }
}

/// `key` scoped to route and tunnel; the lengths make it unambiguous.
fn scoped(scope: &Scope, key: &str) -> Box<str> {
    format!(
        "{}:{}{}:{}{key}",
        scope.route.len(),
        scope.route,
        scope.tunnel_id.len(),
        scope.tunnel_id
    )
    .into()
}

impl ReplaySet {
    /// An empty set of `plugin` holding at most `capacity` live keys, of
    /// which one organization holds at most `share` (0 < share <= 1).
    pub fn new(plugin: Arc<str>, capacity: usize, share: f64) -> Self {
        let per_org = ((capacity as f64 * share).floor() as usize).clamp(1, capacity.max(1));
        ReplaySet {
            plugin,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                orgs: HashMap::new(),
                last_purge: Instant::now(),
            }),
            capacity,
            per_org,
        }
    }

    /// True when `key` was absent (or expired) in `scope` and is now held
    /// for `ttl_secs`. Fails closed (false) outside a request, on an
    /// oversized key, a zero or too long TTL, or when the set or the
    /// caller organization's share is full of live keys.
    pub fn insert_if_absent(&self, scope: &Scope, key: &str, ttl_secs: u32) -> bool {
        if scope.route.is_empty()
            || key.len() > MAX_REPLAY_KEY
            || ttl_secs == 0
            || ttl_secs > MAX_REPLAY_TTL_SECS
        {
            return false;
        }
        let now = Instant::now();
        let expires = now + Duration::from_secs(ttl_secs.into());
        let full_key = scoped(scope, key);
        let org = scope.caller_org.as_str();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.entries.get(&full_key) {
            Some(e) if e.expires > now => return false,
            Some(_) => inner.remove(&full_key),
            None => {}
        }
        if inner.full(org, self.capacity, self.per_org).is_some() {
            // Purging scans the whole set: at most once a second.
            if now.duration_since(inner.last_purge) >= Duration::from_secs(1) {
                inner.purge(now);
            }
            if let Some(full) = inner.full(org, self.capacity, self.per_org) {
                drop(inner);
                self.refused(org, full);
                return false;
            }
        }
        let org: Arc<str> = match inner.orgs.get_key_value(org) {
            Some((k, _)) => k.clone(),
            None => org.into(),
        };
        *inner.orgs.entry(org.clone()).or_insert(0) += 1;
        inner.entries.insert(full_key, Entry { expires, org });
        true
    }

    fn refused(&self, org: &str, full: Full) {
        let limit = match full {
            Full::Set => "set",
            Full::OrgShare => "org_share",
        };
        crate::metrics::replay_refused(&self.plugin, org, limit);
        tracing::debug!(plugin = %self.plugin, org, limit, "replay set full: insert refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(route: &str, tunnel: &str, org: &str) -> Scope {
        Scope {
            route: route.into(),
            tunnel_id: tunnel.into(),
            caller_org: org.into(),
        }
    }

    fn set(capacity: usize, share: f64) -> ReplaySet {
        ReplaySet::new("test".into(), capacity, share)
    }

    #[test]
    fn refuses_a_key_until_it_expires() {
        let s = set(10, 1.0);
        let a = scope("r", "t", "acme");
        assert!(s.insert_if_absent(&a, "a", 60));
        assert!(!s.insert_if_absent(&a, "a", 60));
        assert!(s.insert_if_absent(&a, "b", 60));
    }

    #[test]
    fn fails_closed() {
        let s = set(2, 1.0);
        let a = scope("r", "t", "acme");
        assert!(!s.insert_if_absent(&a, "k", 0), "zero ttl");
        assert!(!s.insert_if_absent(&a, &"x".repeat(MAX_REPLAY_KEY + 1), 5));
        assert!(
            !s.insert_if_absent(&a, "k", MAX_REPLAY_TTL_SECS + 1),
            "a TTL over the maximum is refused, not shortened"
        );
        assert!(
            !s.insert_if_absent(&Scope::default(), "k", 5),
            "outside a request"
        );
        assert!(s.insert_if_absent(&a, "1", MAX_REPLAY_TTL_SECS));
        assert!(s.insert_if_absent(&a, "2", 60));
        assert!(!s.insert_if_absent(&a, "3", 60), "full of live keys");
    }

    #[test]
    fn keys_are_scoped_by_route_and_tunnel() {
        let s = set(100, 1.0);
        assert!(s.insert_if_absent(&scope("r1", "t", "acme"), "n", 60));
        assert!(s.insert_if_absent(&scope("r2", "t", "acme"), "n", 60));
        assert!(s.insert_if_absent(&scope("r1", "t2", "acme"), "n", 60));
        // No key spelling reaches another scope.
        assert!(s.insert_if_absent(&scope("r", "1t", "acme"), "n", 60));
        assert!(s.insert_if_absent(&scope("r1", "", "acme"), "1:tn", 60));
        assert!(!s.insert_if_absent(&scope("r1", "t", "globex"), "n", 60));
    }

    #[test]
    fn one_organization_cannot_take_the_whole_set() {
        let s = set(8, 0.25);
        let a = scope("ra", "ta", "acme");
        let b = scope("rb", "tb", "globex");
        assert!(s.insert_if_absent(&a, "1", 60));
        assert!(s.insert_if_absent(&a, "2", 60));
        assert!(!s.insert_if_absent(&a, "3", 60), "acme's share is 2");
        assert!(
            !s.insert_if_absent(&scope("other", "route", "acme"), "3", 60),
            "the share is the organization's, on every route"
        );
        assert!(s.insert_if_absent(&b, "1", 60), "globex still has room");
        assert!(s.insert_if_absent(&b, "2", 60));
    }

    #[test]
    fn expired_keys_give_their_room_back() {
        let s = set(2, 0.5);
        let a = scope("r", "t", "acme");
        assert!(s.insert_if_absent(&a, "1", 1));
        assert!(!s.insert_if_absent(&a, "2", 60));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(
            s.insert_if_absent(&a, "2", 60),
            "the expired key was purged"
        );
        assert!(s.insert_if_absent(&scope("r", "t", "globex"), "1", 60));
    }
}
