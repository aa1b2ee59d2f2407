//! The connection caps: in total and per source.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

// The caller's share of the per-source cap: an IPv4 address (IPv4-mapped
// IPv6 included), or the /64 of an IPv6 address.
use crate::per_source::source_of as source_key;

/// Open connections, in total and per source.
#[derive(Debug)]
pub struct Connections {
    /// Both caps change with a live reload ([`Connections::set_caps`]);
    /// connections already open are kept.
    max_total: AtomicUsize,
    max_per_source: AtomicUsize,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only sources with open connections: at most `max_total` entries.
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `public.max_connections` are open.
    Total,
    /// Its source has `public.max_connections_per_source` open.
    Source,
}

impl Refused {
    /// The metric label of this refusal.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::Source => "max_connections_per_source",
        }
    }
}

/// One open connection's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    conns: Arc<Connections>,
    source: Option<IpAddr>,
}

impl Connections {
    /// Caps of `max_total` connections, `max_per_source` from one source.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Connections {
            max_total: AtomicUsize::new(max_total),
            max_per_source: AtomicUsize::new(max_per_source),
            state: Mutex::new(Counts::default()),
        })
    }

    /// A slot for a connection from `peer` (`None`: not an IP peer, counted
    /// in the total only).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Slot, Refused> {
        let source = peer.map(source_key);
        let mut s = self.state.lock().expect("connection counts lock");
        if s.total >= self.max_total.load(Ordering::Relaxed) {
            return Err(Refused::Total);
        }
        if let Some(src) = source {
            let n = s.per_source.entry(src).or_insert(0);
            if *n >= self.max_per_source.load(Ordering::Relaxed) {
                return Err(Refused::Source);
            }
            *n += 1;
        }
        s.total += 1;
        Ok(Slot {
            conns: self.clone(),
            source,
        })
    }

    /// New caps for connections accepted from now on.
    pub fn set_caps(&self, max_total: usize, max_per_source: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_source.store(max_per_source, Ordering::Relaxed);
    }

    /// Connections open now (total, and from `peer`'s source).
    pub fn open(&self, peer: Option<IpAddr>) -> (usize, usize) {
        let s = self.state.lock().expect("connection counts lock");
        let from = peer
            .and_then(|p| s.per_source.get(&source_key(p)).copied())
            .unwrap_or(0);
        (s.total, from)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.conns.state.lock().expect("connection counts lock");
        s.total -= 1;
        if let Some(src) = self.source {
            if let Some(n) = s.per_source.get_mut(&src) {
                *n -= 1;
                if *n == 0 {
                    s.per_source.remove(&src);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_source_and_in_total_and_free_on_drop() {
        let c = Connections::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = c.admit(Some(a)).unwrap();
        let _a2 = c.admit(Some(a)).unwrap();
        assert_eq!(c.admit(Some(a)).unwrap_err(), Refused::Source);
        let _b1 = c.admit(Some(b)).unwrap();
        assert_eq!(c.admit(Some(b)).unwrap_err(), Refused::Total);
        drop(a1);
        assert_eq!(c.open(Some(a)), (2, 1));
        let _a3 = c.admit(Some(a)).unwrap();
        assert_eq!(c.open(None), (3, 0));
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:10.0.0.1"), k("10.0.0.1"));
    }
}
