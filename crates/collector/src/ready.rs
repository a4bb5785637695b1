//! The readiness file: present exactly while the broker holds our confirmed
//! subscriptions on a live connection, so a script or a container healthcheck can
//! start devices only once nothing they publish can be dropped for want of a session.

use crate::store::StoreHealth;
use std::path::{Path, PathBuf};

/// Creates and removes the file; removes it when dropped. Ready means: the
/// subscriptions are confirmed on a live connection and every store is writable.
#[derive(Debug)]
pub struct ReadyFile {
    path: Option<PathBuf>,
    ready: bool,
    subscribed: bool,
    health: StoreHealth,
}

impl ReadyFile {
    /// A readiness file at `path`, or none. A file left by an earlier run is removed:
    /// it says nothing about this one.
    pub fn new(path: Option<PathBuf>) -> std::io::Result<ReadyFile> {
        if let Some(p) = &path {
            remove(p)?;
        }
        Ok(ReadyFile {
            path,
            ready: false,
            subscribed: false,
            health: StoreHealth::default(),
        })
    }

    /// Follows the stores' health too: not ready while one is being retried.
    pub fn watch(&mut self, health: StoreHealth) {
        self.health = health;
    }

    /// Records whether the subscriptions are confirmed on a live connection.
    pub fn set(&mut self, subscribed: bool) {
        self.subscribed = subscribed;
        self.refresh();
    }

    /// Looks at the stores' health again (called as time passes).
    pub fn refresh(&mut self) {
        let ready = self.subscribed && self.health.writable();
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
}
