//! What the dashboard shows live, kept in memory by the proxy: per tunnel,
//! requests and errors for each of the last [`SECONDS`] seconds and the
//! last error; and the last [`MAX_REFUSALS`] refused requests.
//!
//! Nothing here holds a credential, a query string or a header value: a
//! refusal keeps the route, the tunnel, the caller's organization, the
//! status, the plugin that refused and a reason in the gateway's own words
//! (or the plugin's).

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Seconds of history kept per tunnel.
pub const SECONDS: usize = 300;
/// Refusals kept.
pub const MAX_REFUSALS: usize = 500;
/// Tunnels followed at once; past this, tunnels idle for [`SECONDS`] are
/// forgotten first, and a new one is not followed until there is room.
const MAX_TUNNELS: usize = 10_000;
/// Longest reason kept, in characters.
const MAX_REASON_CHARS: usize = 200;

/// The last error of a tunnel.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    /// Unix seconds.
    pub at: u64,
    /// The status the caller got (0: none, the caller went away).
    pub status: u16,
    pub reason: String,
}

/// One tunnel's recent seconds.
struct Series {
    /// The unix second last recorded.
    last: u64,
    requests: [u32; SECONDS],
    errors: [u32; SECONDS],
    last_error: Option<LastError>,
}

impl Series {
    fn new(now: u64) -> Self {
        Series {
            last: now,
            requests: [0; SECONDS],
            errors: [0; SECONDS],
            last_error: None,
        }
    }

    /// Clears the slots of the seconds between the last one recorded and
    /// `now`, so they read as idle.
    fn advance(&mut self, now: u64) {
        if now <= self.last {
            return;
        }
        let gap = (now - self.last).min(SECONDS as u64);
        for s in (now + 1 - gap)..=now {
            let i = (s % SECONDS as u64) as usize;
            self.requests[i] = 0;
            self.errors[i] = 0;
        }
        self.last = now;
    }

    /// The seconds `now - SECONDS + 1 ..= now`, oldest first.
    fn window(&self, now: u64) -> (Vec<u32>, Vec<u32>) {
        let mut requests = Vec::with_capacity(SECONDS);
        let mut errors = Vec::with_capacity(SECONDS);
        for s in (now + 1).saturating_sub(SECONDS as u64)..=now {
            let known = s <= self.last && s + (SECONDS as u64) > self.last;
            let i = (s % SECONDS as u64) as usize;
            requests.push(if known { self.requests[i] } else { 0 });
            errors.push(if known { self.errors[i] } else { 0 });
        }
        (requests, errors)
    }
}

/// A refused request.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// Unix milliseconds.
    pub at: u64,
    pub route: Option<String>,
    pub tunnel: Option<String>,
    /// The caller's organization, once its credential was known.
    pub org: Option<String>,
    pub status: u16,
    /// The plugin that denied the request or failed to decide.
    pub plugin: Option<String>,
    pub reason: String,
}

/// One tunnel's activity as the API shows it.
#[derive(Debug, Serialize)]
pub struct TunnelActivity {
    pub requests: Vec<u32>,
    pub errors: Vec<u32>,
    pub last_error: Option<LastError>,
}

/// The process's activity.
#[derive(Default)]
pub struct Activity {
    tunnels: Mutex<HashMap<String, Series>>,
    refusals: Mutex<VecDeque<Refusal>>,
}

/// The activity the proxy records and the admin API reads.
pub static ACTIVITY: LazyLock<Activity> = LazyLock::new(Activity::default);

fn now() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_REASON_CHARS).collect()
}

impl Activity {
    /// Counts a finished request of `tunnel`; `error` (a 5xx, or a request
    /// that failed without an answer) with the reason the log gives.
    pub fn request(&self, tunnel: &str, status: u16, error: Option<&str>) {
        self.request_at(now().as_secs(), tunnel, status, error)
    }

    fn request_at(&self, now: u64, tunnel: &str, status: u16, error: Option<&str>) {
        let mut map = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(tunnel) {
            if map.len() >= MAX_TUNNELS {
                map.retain(|_, s| s.last + SECONDS as u64 > now);
                if map.len() >= MAX_TUNNELS {
                    return;
                }
            }
            map.insert(tunnel.to_string(), Series::new(now));
        }
        let Some(series) = map.get_mut(tunnel) else {
            return;
        };
        series.advance(now);
        // A clock stepped back: count into the latest second.
        let i = (series.last % SECONDS as u64) as usize;
        series.requests[i] = series.requests[i].saturating_add(1);
        if let Some(reason) = error {
            series.errors[i] = series.errors[i].saturating_add(1);
            series.last_error = Some(LastError {
                at: now,
                status,
                reason: clip(reason),
            });
        }
    }

    /// The last [`SECONDS`] seconds, ending at the current one, of every
    /// tunnel with a request in them or a last error (or of `only` that
    /// tunnel); and that second.
    pub fn tunnels(&self, only: Option<&str>) -> (u64, HashMap<String, TunnelActivity>) {
        let now = now().as_secs();
        (now, self.tunnels_at(now, only))
    }

    fn tunnels_at(&self, now: u64, only: Option<&str>) -> HashMap<String, TunnelActivity> {
        // The proxy records under this lock: copy what is shown, and build
        // the series after letting go. Idle tunnels need no copy.
        let mut active: Vec<(String, Box<Series>)> = Vec::new();
        let mut idle: Vec<(String, LastError)> = Vec::new();
        {
            let map = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
            let wanted = |name: &str| only.is_none_or(|o| o == name);
            for (name, s) in map.iter().filter(|(name, _)| wanted(name)) {
                if s.last + SECONDS as u64 > now {
                    active.push((
                        name.clone(),
                        Box::new(Series {
                            last: s.last,
                            requests: s.requests,
                            errors: s.errors,
                            last_error: s.last_error.clone(),
                        }),
                    ));
                } else if let Some(e) = &s.last_error {
                    idle.push((name.clone(), e.clone()));
                }
            }
        }
        let mut shown: HashMap<String, TunnelActivity> = active
            .into_iter()
            .map(|(name, s)| {
                let (requests, errors) = s.window(now);
                let last_error = s.last_error;
                (
                    name,
                    TunnelActivity {
                        requests,
                        errors,
                        last_error,
                    },
                )
            })
            .collect();
        for (name, e) in idle {
            shown.insert(
                name,
                TunnelActivity {
                    requests: vec![0; SECONDS],
                    errors: vec![0; SECONDS],
                    last_error: Some(e),
                },
            );
        }
        shown
    }

    /// Forgets a deleted tunnel, so one made again under its name starts
    /// afresh.
    pub fn forget(&self, tunnel: &str) {
        let mut map = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(tunnel);
    }

    /// Keeps a refused request (the oldest goes past [`MAX_REFUSALS`]).
    pub fn refused(&self, mut r: Refusal) {
        r.at = now().as_millis() as u64;
        r.reason = clip(&r.reason);
        let mut list = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= MAX_REFUSALS {
            list.pop_front();
        }
        list.push_back(r);
    }

    /// The last `limit` refusals, newest first.
    pub fn refusals(&self, limit: usize) -> Vec<Refusal> {
        let list = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_count_where_they_happened_and_age_out() {
        let a = Activity::default();
        let t0 = 1_000_000;
        a.request_at(t0, "wiki", 200, None);
        a.request_at(t0, "wiki", 200, None);
        a.request_at(t0 + 2, "wiki", 502, Some("tunnel `wiki` failed"));
        let w = a.tunnels_at(t0 + 2, None);
        let wiki = &w["wiki"];
        assert_eq!(wiki.requests.len(), SECONDS);
        assert_eq!(&wiki.requests[SECONDS - 3..], &[2, 0, 1]);
        assert_eq!(&wiki.errors[SECONDS - 3..], &[0, 0, 1]);
        let last = wiki.last_error.as_ref().unwrap();
        assert_eq!((last.at, last.status), (t0 + 2, 502));
        // Seen later, the same seconds have moved left; idle seconds are 0.
        let later = a.tunnels_at(t0 + 10, Some("wiki"));
        assert!(a.tunnels_at(t0 + 10, Some("other")).is_empty());
        assert_eq!(
            &later["wiki"].requests[SECONDS - 11..SECONDS - 7],
            &[2, 0, 1, 0]
        );
        // Past the window nothing is left, even in reused slots.
        let end = t0 + 2 + SECONDS as u64;
        a.request_at(end, "wiki", 200, None);
        let w = a.tunnels_at(end, None);
        assert_eq!(w["wiki"].requests.iter().sum::<u32>(), 1);
        assert_eq!(w["wiki"].errors.iter().sum::<u32>(), 0);
        // An idle tunnel is shown only for its last error; a forgotten one
        // not at all.
        a.request_at(end, "quiet", 200, None);
        a.request_at(end, "failed", 502, Some("lost"));
        let later = a.tunnels_at(end + SECONDS as u64, None);
        assert!(!later.contains_key("quiet"), "{:?}", later.keys());
        assert_eq!(later["failed"].last_error.as_ref().unwrap().status, 502);
        a.forget("failed");
        assert!(!a.tunnels_at(end, None).contains_key("failed"));
        // A clock near the epoch does not underflow.
        assert_eq!(a.tunnels_at(3, Some("none")).len(), 0);
        Series::new(3).window(3);
    }

    #[test]
    fn refusals_are_bounded_newest_first_and_clipped() {
        let a = Activity::default();
        for i in 0..MAX_REFUSALS + 5 {
            a.refused(Refusal {
                at: 0,
                route: None,
                tunnel: None,
                org: None,
                status: 401,
                plugin: None,
                reason: format!("{i}{}", "x".repeat(500)),
            });
        }
        let all = a.refusals(usize::MAX);
        assert_eq!(all.len(), MAX_REFUSALS);
        assert!(all[0].reason.starts_with(&(MAX_REFUSALS + 4).to_string()));
        assert_eq!(all[0].reason.chars().count(), MAX_REASON_CHARS);
        assert_eq!(a.refusals(3).len(), 3);
    }
}
