//! The machine-readable events a process prints on stdout, one JSON object
//! per line, collected so that a story can wait for them with a deadline.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

/// Every event a process (or its successive restarts) printed, in order.
///
/// Cloning shares the log. A restart appends a `{"event":"_started"}`
/// marker so that "the current process" can be told from earlier ones.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    events: Vec<Value>,
    /// The current process closed its stdout (it exited or was killed).
    closed: bool,
    /// Which process is the current one: [`EventLog::started`] counts up,
    /// and only the current process's end counts as `closed` (an earlier
    /// one's reader may see its end after a restart began).
    generation: u64,
}

/// The name of an event: its `"event"` field.
pub fn kind(event: &Value) -> &str {
    event["event"].as_str().unwrap_or("")
}

/// Index of the first event after the last `_started` marker.
pub fn current_start(events: &[Value]) -> usize {
    events
        .iter()
        .rposition(|e| kind(e) == "_started")
        .map_or(0, |i| i + 1)
}

impl EventLog {
    /// An empty log for the process called `name` (used in failure messages).
    pub fn new(name: &str) -> Self {
        EventLog {
            inner: Arc::new(Inner {
                name: name.to_string(),
                state: Mutex::new(State::default()),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// Appends one line of stdout: JSON if it parses, otherwise kept as text.
    pub(crate) fn push_line(&self, line: &str) {
        let event = serde_json::from_str(line).unwrap_or_else(|_| Value::String(line.to_string()));
        self.update(|s| s.events.push(event));
    }

    /// A new process starts writing into this log; pass what it returns
    /// to [`EventLog::closed`] when its stdout ends.
    pub(crate) fn started(&self) -> u64 {
        let mut generation = 0;
        self.update(|s| {
            s.generation += 1;
            generation = s.generation;
            s.closed = false;
            s.events.push(serde_json::json!({"event": "_started"}));
        });
        generation
    }

    /// The stdout of the process `generation` reached its end; nothing
    /// changes when a later process has started since.
    pub(crate) fn closed(&self, generation: u64) {
        self.update(|s| {
            if s.generation == generation {
                s.closed = true;
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.inner.state.lock().unwrap());
        self.inner.changed.send_modify(|n| *n += 1);
    }

    /// A copy of every event so far.
    pub fn snapshot(&self) -> Vec<Value> {
        self.inner.state.lock().unwrap().events.clone()
    }

    /// How many events were logged so far: pass it to [`EventLog::wait_after`]
    /// to wait only for later ones.
    pub fn mark(&self) -> usize {
        self.inner.state.lock().unwrap().events.len()
    }

    /// Index of the first event of the current process (after the last
    /// restart marker).
    pub fn current_start(&self) -> usize {
        let state = self.inner.state.lock().unwrap();
        current_start(&state.events)
    }

    /// Events of the current process only.
    pub fn current(&self) -> Vec<Value> {
        let state = self.inner.state.lock().unwrap();
        state.events[current_start(&state.events)..].to_vec()
    }

    /// Waits for the first event (since the start) matching `pred`.
    pub async fn wait(
        &self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        self.wait_after(0, what, pred, timeout).await
    }

    /// Waits for an event at index `mark` or later matching `pred`.
    ///
    /// Panics after `timeout`, or as soon as the process has exited without
    /// printing it, with every event seen in the message.
    pub async fn wait_after(
        &self,
        mark: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        self.wait_until(
            what,
            |events| events.iter().skip(mark).find(|e| pred(e)).cloned(),
            timeout,
        )
        .await
    }

    /// Waits until `check` (run on the whole log after each new event)
    /// returns something, with the same failure rules as [`EventLog::wait_after`].
    pub async fn wait_until<T>(
        &self,
        what: &str,
        check: impl Fn(&[Value]) -> Option<T>,
        timeout: Duration,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.inner.changed.subscribe();
        loop {
            rx.borrow_and_update();
            let closed = {
                let state = self.inner.state.lock().unwrap();
                if let Some(found) = check(&state.events) {
                    return found;
                }
                state.closed
            };
            if closed {
                panic!("{} exited before: {what}\n{}", self.inner.name, self.dump());
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!(
                    "{} did not report within {timeout:?}: {what}\n{}",
                    self.inner.name,
                    self.dump()
                );
            }
        }
    }

    /// Every event, one per line, for failure messages.
    pub fn dump(&self) -> String {
        let events = self.snapshot();
        let mut out = format!("events of {} ({}):\n", self.inner.name, events.len());
        for e in events {
            out.push_str("  ");
            out.push_str(&e.to_string());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_see_events_pushed_later_and_restarts_reset_current() {
        let log = EventLog::new("test");
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.push_line(r#"{"event":"ready","public":"127.0.0.1:1"}"#);
            writer.push_line("plain text");
        });
        let ready = log
            .wait("ready", |e| kind(e) == "ready", Duration::from_secs(5))
            .await;
        assert_eq!(ready["public"], "127.0.0.1:1");
        let mark = log.mark();
        log.started();
        log.push_line(r#"{"event":"ready","public":"127.0.0.1:2"}"#);
        let again = log
            .wait_after(
                mark,
                "ready",
                |e| kind(e) == "ready",
                Duration::from_secs(5),
            )
            .await;
        assert_eq!(again["public"], "127.0.0.1:2");
        assert_eq!(log.current().len(), 1);
    }

    #[tokio::test]
    #[should_panic(expected = "exited before")]
    async fn a_closed_log_fails_the_wait_at_once() {
        let log = EventLog::new("test");
        let first = log.started();
        log.closed(first);
        log.wait("never", |_| false, Duration::from_secs(60)).await;
    }

    #[tokio::test]
    async fn an_earlier_process_ending_after_a_restart_does_not_close_the_log() {
        let log = EventLog::new("test");
        let old = log.started();
        let _new = log.started();
        // The old process's reader sees its end only now.
        log.closed(old);
        let writer = log.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            writer.push_line(r#"{"event":"ready"}"#);
        });
        let ready = log
            .wait("ready", |e| kind(e) == "ready", Duration::from_secs(10))
            .await;
        assert_eq!(kind(&ready), "ready");
    }
}
