//! Counting what one network source holds at once (connections, pending
//! handshakes), so one host cannot take a budget meant for everyone.
//!
//! A source is an IPv4 address, or an IPv6 /64: one IPv6 host usually
//! owns a whole /64, so counting single IPv6 addresses would give it 2^64
//! budgets. An IPv4-mapped IPv6 address counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Live counts per source, each bounded by `max`.
#[derive(Debug)]
pub struct PerSource {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One unit held by a source, released when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl PerSource {
    /// At most `max` units per source.
    pub fn new(max: usize) -> Self {
        PerSource {
            max,
            counts: Arc::default(),
        }
    }

    /// Takes one unit for the source of `ip`, unless it already holds `max`.
    pub fn try_acquire(&self, ip: IpAddr) -> Option<SourceSlot> {
        let source = source_of(ip);
        let mut counts = self.counts.lock().expect("lock");
        let n = counts.entry(source).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            counts: self.counts.clone(),
            source,
        })
    }

    /// Sources holding at least one unit (entries are removed at zero, so
    /// the map never outgrows what is live).
    pub fn sources(&self) -> usize {
        self.counts.lock().expect("lock").len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("lock");
        if let Some(n) = counts.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// The source an address counts against.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_source_has_its_own_budget() {
        let limit = PerSource::new(2);
        let a1 = limit.try_acquire(ip("192.0.2.1")).unwrap();
        let _a2 = limit.try_acquire(ip("192.0.2.1")).unwrap();
        assert!(limit.try_acquire(ip("192.0.2.1")).is_none());
        let _b = limit.try_acquire(ip("192.0.2.2")).unwrap();
        drop(a1);
        assert!(limit.try_acquire(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn released_sources_leave_no_entry() {
        let limit = PerSource::new(1);
        let slots: Vec<_> = (1..=50)
            .map(|i| limit.try_acquire(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(limit.sources(), 50);
        drop(slots);
        assert_eq!(limit.sources(), 0);
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let limit = PerSource::new(1);
        let _a = limit.try_acquire(ip("2001:db8:1:2::1")).unwrap();
        assert!(limit.try_acquire(ip("2001:db8:1:2:ffff::9")).is_none());
        assert!(limit.try_acquire(ip("2001:db8:1:3::1")).is_some());
        // IPv4 over an IPv6 socket counts as the IPv4 address.
        let _v4 = limit.try_acquire(ip("192.0.2.7")).unwrap();
        assert!(limit.try_acquire(ip("::ffff:192.0.2.7")).is_none());
    }
}
