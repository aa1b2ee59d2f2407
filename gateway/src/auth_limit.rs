//! A budget of failed caller credentials per source address.
//!
//! Unknown tokens already cost only a hash lookup (the token table is in
//! memory), but a source that keeps guessing is still guessing: once it
//! has had `per_minute` 401s in the current minute, its requests are
//! answered 429 before any lookup until the minute is over. IPv6 sources
//! are counted per /64, the block one subscriber usually holds.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

// IPv4 addresses (IPv4-mapped ones too) as they are; IPv6 by their /64.
use crate::per_source::source_of as key;

/// The counting window: a source's count is forgotten this long after its
/// first failure.
const WINDOW: Duration = Duration::from_secs(60);

/// Most sources tracked at once. Past it the cache evicts by its admission
/// policy (TinyLFU), which keeps the sources that fail often: a flood of
/// one-off addresses cannot push out the one that keeps guessing.
const MAX_SOURCES: u64 = 65_536;

/// One source's window: when it started and the failures in it.
#[derive(Debug)]
struct Window {
    start: Instant,
    failures: AtomicU32,
}

/// Failed credentials per source in the current window.
#[derive(Debug)]
pub struct FailureBudget {
    /// Changed by a live reload ([`FailureBudget::set_per_minute`]).
    per_window: AtomicU32,
    /// Windows expire `window` after they were created.
    sources: Cache<IpAddr, Arc<Window>>,
    window: Duration,
}

impl FailureBudget {
    /// A budget of `per_minute` failures per source and minute.
    pub fn new(per_minute: u32) -> Self {
        Self::with(per_minute, WINDOW, MAX_SOURCES)
    }

    fn with(per_window: u32, window: Duration, max_sources: u64) -> Self {
        FailureBudget {
            per_window: AtomicU32::new(per_window),
            sources: Cache::builder()
                .max_capacity(max_sources)
                .time_to_live(window)
                .build(),
            window,
        }
    }

    /// If `ip` has spent its budget: the time until its window ends.
    pub fn exhausted(&self, ip: IpAddr) -> Option<Duration> {
        let window = self.sources.get(&key(ip))?;
        let left = self.window.checked_sub(window.start.elapsed())?;
        let spent =
            window.failures.load(Ordering::Relaxed) >= self.per_window.load(Ordering::Relaxed);
        spent.then_some(left)
    }

    /// A new budget per source and minute; counts so far are kept.
    pub fn set_per_minute(&self, per_minute: u32) {
        self.per_window.store(per_minute, Ordering::Relaxed);
    }

    /// Counts one failed credential from `ip`.
    pub fn record(&self, ip: IpAddr) {
        let window = self.sources.get_with(key(ip), || {
            Arc::new(Window {
                start: Instant::now(),
                failures: AtomicU32::new(0),
            })
        });
        // Saturating: a count at the top stays there.
        let _ = window
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
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

    #[test]
    fn counts_carry_over_a_new_budget() {
        let b = FailureBudget::new(5);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        b.record(a);
        b.record(a);
        assert!(b.exhausted(a).is_none());
        b.set_per_minute(2);
        assert!(
            b.exhausted(a).is_some(),
            "the two failures count against the new budget"
        );
    }

    #[test]
    fn a_window_ends_and_the_sources_tracked_are_bounded() {
        let b = FailureBudget::with(1, Duration::from_millis(300), 100);
        let a: IpAddr = "192.0.2.9".parse().unwrap();
        b.record(a);
        assert!(b.exhausted(a).is_some());
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            b.exhausted(a).is_none(),
            "a window past its end is forgotten"
        );
        b.record(a);
        assert!(
            b.exhausted(a).is_some(),
            "a new window starts at the next failure"
        );

        for i in 0..5_000u32 {
            b.record(IpAddr::from(i.to_be_bytes()));
        }
        b.sources.run_pending_tasks();
        let tracked = b.sources.entry_count();
        assert!(
            tracked <= 100,
            "{tracked} sources tracked, more than the 100 allowed"
        );
    }
}
