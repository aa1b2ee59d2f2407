//! The file reloader: a replaced plugin file is loaded and checked beside
//! the running version, which it replaces only when it passes.

use std::sync::Arc;

use tokio::sync::watch;

use crate::load::Slot;
use crate::{stamp, Plugins};

impl Plugins {
    /// Starts the thread that reloads replaced plugin files (when
    /// `plugins.reload_interval` is not 0). It watches the plugins of
    /// the host `current` returns at each round: after a live reload of the
    /// configuration ([`Plugins::reconfigure`]), the new host's. It stops
    /// when `stop` turns true (or its sender is dropped): the gateway
    /// flips it when a shutdown begins, so no plugin is swapped while the
    /// last requests drain. Returns the thread, or `None` when reloading
    /// is off.
    pub fn spawn_reloader(
        &self,
        current: impl Fn() -> Arc<Plugins> + Send + 'static,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
        if self.limits.reload_interval.is_zero() {
            return Ok(None);
        }
        let every = self.limits.reload_interval;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("plugin-reload".into())
            .spawn(move || loop {
                let stopped = rt.block_on(async {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => *stop.borrow(),
                        changed = stop.changed() => changed.is_err() || *stop.borrow(),
                    }
                });
                if stopped {
                    tracing::debug!("plugin reloader stopped");
                    return;
                }
                let host = current();
                for slot in host.slots.values() {
                    if *stop.borrow() {
                        break;
                    }
                    rt.block_on(host.check(slot, &stop));
                }
            })?;
        Ok(Some(thread))
    }

    /// Reloads `slot` if its file changed since last looked at.
    /// Nothing is swapped once `stop` is set, even by a check that
    /// started before.
    async fn check(&self, slot: &Slot, stop: &watch::Receiver<bool>) {
        let now = match stamp(&slot.path) {
            Ok(s) => s,
            // A missing file (mid-replacement, or removed): keep serving.
            Err(_) => return,
        };
        let before = {
            let mut seen = slot.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return;
            }
            std::mem::replace(&mut *seen, now)
        };
        match self
            .prepare(&slot.name, &slot.path, &slot.configs, &slot.replay)
            .await
        {
            Ok(v) if v.sha256 == slot.version().sha256 => {}
            Ok(_) if *stop.borrow() => {
                // Shutting down: leave the file to be looked at by the
                // next process.
                *slot.seen.lock().unwrap_or_else(|p| p.into_inner()) = before;
            }
            Ok(v) => {
                let (sha, version) = (v.sha256.clone(), v.version.clone());
                *slot.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(v);
                crate::metrics::plugin_reloaded(&slot.name, "loaded");
                tracing::info!(
                    plugin = %slot.name, version = %version, sha256 = %sha, "plugin reloaded"
                );
                crate::history::loaded(&slot.name, &version, &sha);
            }
            Err(e) => {
                // A busy pool or a slow init under load says nothing about
                // the file: look at it again next time.
                let transient = e.is_transient();
                if transient {
                    *slot.seen.lock().unwrap_or_else(|p| p.into_inner()) = before;
                }
                crate::metrics::plugin_reloaded(&slot.name, "rejected");
                let running = slot.version().sha256.clone();
                tracing::error!(
                    plugin = %slot.name, running = %running,
                    "replacement plugin rejected, previous version keeps serving: {e}"
                );
                // A transient refusal is looked at again next time: it
                // would crowd the history out.
                crate::history::rejected(&slot.name, &e.to_string(), &running, !transient);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::PluginsSection;

    #[test]
    fn the_reloader_stops_when_told_and_when_its_sender_goes() {
        let limits = PluginsSection {
            reload_interval: Duration::from_secs(60),
            max_sandboxes: 2,
            ..PluginsSection::default()
        };
        let host = Plugins::load(&limits, HashMap::new()).unwrap();
        for drop_sender in [false, true] {
            let (tx, rx) = watch::channel(false);
            let watched = host.clone();
            let thread = host
                .spawn_reloader(move || watched.clone(), rx)
                .unwrap()
                .expect("reloading is on");
            let started = Instant::now();
            if drop_sender {
                drop(tx);
            } else {
                tx.send(true).unwrap();
            }
            while !thread.is_finished() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the reloader still runs (sender dropped: {drop_sender})"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            thread.join().unwrap();
        }
        let off = Plugins::load(
            &PluginsSection {
                reload_interval: Duration::ZERO,
                max_sandboxes: 2,
                ..PluginsSection::default()
            },
            HashMap::new(),
        )
        .unwrap();
        let (_tx, rx) = watch::channel(false);
        assert!(off.spawn_reloader(|| unreachable!(), rx).unwrap().is_none());
    }
}
