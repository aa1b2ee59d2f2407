//! A budget of failed caller credentials per source address.
//!
//! Unknown tokens already cost only a hash lookup (the token table is in
//! memory), but a source that keeps guessing is still guessing: once it
//! has had `per_minute` 401s in the current minute, its requests are
//! answered 429 before any lookup until the minute is over. IPv6 sources
//! are counted per /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// IPv4 addresses (IPv4-mapped ones too) as they are; IPv6 by their /64.
use crate::per_source::source_of as key;

/// The counting window.
const WINDOW: Duration = Duration::from_secs(60);

/// Most sources tracked at once. Past it, expired windows are dropped; a
/// new source that still finds no room is not tracked (it costs a hash
/// lookup per try like any other, it just is not slowed down).
const MAX_SOURCES: usize = 65_536;

/// Failed credentials per source in the current window.
#[derive(Debug)]
pub struct FailureBudget {
    /// Changed by a live reload ([`FailureBudget::set_per_minute`]).
    per_window: AtomicU32,
    sources: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureBudget {
    /// A budget of `per_minute` failures per source and minute.
    pub fn new(per_minute: u32) -> Self {
        FailureBudget {
            per_window: AtomicU32::new(per_minute),
            sources: Mutex::default(),
        }
    }

    /// If `ip` has spent its budget: the time until its window ends.
    pub fn exhausted(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.sources.lock().expect("lock");
        let (start, n) = map.get(&key(ip))?;
        let left = WINDOW.checked_sub(start.elapsed())?;
        (*n >= self.per_window.load(Ordering::Relaxed)).then_some(left)
    }

    /// A new budget per source and minute; counts so far are kept.
    pub fn set_per_minute(&self, per_minute: u32) {
        self.per_window.store(per_minute, Ordering::Relaxed);
    }

    /// Counts one failed credential from `ip`.
    pub fn record(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut map = self.sources.lock().expect("lock");
        if map.len() >= MAX_SOURCES && !map.contains_key(&key(ip)) {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if map.len() >= MAX_SOURCES {
                return;
            }
        }
        let entry = map.entry(key(ip)).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_stopped_after_its_budget_and_others_are_not() {
        let b = FailureBudget::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(b.exhausted(a).is_none());
            b.record(a);
        }
        let left = b.exhausted(a).expect("budget spent");
        assert!(left <= WINDOW && left > WINDOW - Duration::from_secs(5));
        assert!(b.exhausted(other).is_none());
    }

    #[test]
    fn ipv6_sources_count_per_slash_64() {
        let b = FailureBudget::new(2);
        b.record("2001:db8::1".parse().unwrap());
        b.record("2001:db8::ffff:2".parse().unwrap());
        assert!(b.exhausted("2001:db8::3".parse().unwrap()).is_some());
        assert!(b.exhausted("2001:db8:0:1::3".parse().unwrap()).is_none());
    }
}
