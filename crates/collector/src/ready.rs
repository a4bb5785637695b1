//! Readiness: connected, the subscriptions confirmed by SUBACK, every store
//! writable. [`ReadyState`] holds the condition once; the readiness file
//! ([`ReadyFile`], present exactly while ready, so a script can start devices only
//! once nothing they publish can be dropped for want of a session) and the
//! `/readyz` endpoint both read it.

use crate::store::StoreHealth;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

const DOWN: u8 = 0;
const CONNECTED: u8 = 1;
const SUBSCRIBED: u8 = 2;

/// The readiness condition, shared: ingest updates the connection's part, the
/// stores' retries their health, and whoever asks reads both at that moment.
#[derive(Debug, Clone, Default)]
pub struct ReadyState {
    link: Arc<AtomicU8>,
    health: StoreHealth,
}

impl ReadyState {
    /// Not connected yet; follows `health` for the stores' part.
    pub fn new(health: StoreHealth) -> ReadyState {
        ReadyState {
            link: Arc::default(),
            health,
        }
    }

    /// `Ok` when ready, else why not (the body of a 503 from `/readyz`).
    pub fn check(&self) -> Result<(), &'static str> {
        match self.link.load(Ordering::Relaxed) {
            DOWN => Err("not connected to the broker"),
            CONNECTED => {
                Err("connected, but the broker has not yet confirmed the subscriptions (no SUBACK)")
            }
            _ if !self.health.writable() => {
                Err("a store is not writable; its writes are being retried")
            }
            _ => Ok(()),
        }
    }

    fn set_link(&self, link: u8) {
        self.link.store(link, Ordering::Relaxed);
    }
}

/// Creates and removes the file as [`ReadyState`] changes; removes it when dropped.
#[derive(Debug)]
pub struct ReadyFile {
    path: Option<PathBuf>,
    ready: bool,
    state: ReadyState,
}

impl ReadyFile {
    /// A readiness file at `path`, or none. A file left by an earlier run is removed:
    /// it says nothing about this one.
    pub fn new(path: Option<PathBuf>) -> std::io::Result<ReadyFile> {
        ReadyFile::with_state(path, ReadyState::default())
    }

    /// As [`ReadyFile::new`], over a state others read too.
    pub fn with_state(path: Option<PathBuf>, state: ReadyState) -> std::io::Result<ReadyFile> {
        if let Some(p) = &path {
            remove(p)?;
        }
        state.set_link(DOWN);
        Ok(ReadyFile {
            path,
            ready: false,
            state,
        })
    }

    /// The shared condition.
    pub fn state(&self) -> &ReadyState {
        &self.state
    }

    /// Records a live connection whose subscriptions are not confirmed yet.
    pub fn connected(&mut self) {
        self.state.set_link(CONNECTED);
        self.refresh();
    }

    /// Records whether the subscriptions are confirmed on a live connection
    /// (false: the connection is gone).
    pub fn set(&mut self, subscribed: bool) {
        self.state
            .set_link(if subscribed { SUBSCRIBED } else { DOWN });
        self.refresh();
    }

    /// Looks at the stores' health again (called as time passes).
    pub fn refresh(&mut self) {
        let ready = self.state.check().is_ok();
        if ready == self.ready {
            return;
        }
        self.ready = ready;
        let Some(path) = &self.path else { return };
        let result = if ready { write(path) } else { remove(path) };
        if let Err(e) = result {
            tracing::warn!("cannot update the readiness file {}: {e}", path.display());
        }
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        self.set(false);
    }
}

fn write(path: &Path) -> std::io::Result<()> {
    // Written whole, then renamed: a reader never sees a half-written file.
    let tmp = path.with_extension("tmp-ready");
    std::fs::write(&tmp, format!("subscribed\npid {}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_only_while_ready_and_gone_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("collector.ready");
        std::fs::write(&path, "stale").unwrap();
        let mut ready = ReadyFile::new(Some(path.clone())).unwrap();
        assert!(!path.exists(), "a file of an earlier run is removed");
        ready.set(true);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("subscribed"));
        ready.set(false);
        assert!(!path.exists());
        ready.set(true);
        drop(ready);
        assert!(!path.exists());
    }

    #[test]
    fn the_state_says_why_it_is_not_ready() {
        let state = ReadyState::new(StoreHealth::default());
        let mut file = ReadyFile::with_state(None, state.clone()).unwrap();
        assert!(state.check().unwrap_err().contains("not connected"));
        file.connected();
        assert!(state.check().unwrap_err().contains("SUBACK"));
        file.set(true);
        assert_eq!(state.check(), Ok(()));
        file.set(false);
        assert!(state.check().unwrap_err().contains("not connected"));
    }
}
