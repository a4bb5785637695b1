//! The five scenarios of issue 6, the stores scenario of issue 11, the scale-out
//! scenario of issue 12, and what they share: the run's working directory,
//! the programs, the certificates and the broker limits.

pub mod drain;
pub mod latency;
pub mod queue;
pub mod scale;
pub mod scale_out;
pub mod stores;
pub mod throughput;
pub mod tls;

use crate::binaries::Programs;
use crate::broker::Limits;
use crate::report::Section;
use std::path::{Path, PathBuf};
use testkit::Pki;

/// What every scenario needs.
pub struct Ctx {
    /// Drives the benchmark's own MQTT clients.
    pub rt: tokio::runtime::Runtime,
    /// Binaries and peers.
    pub programs: Programs,
    /// CA and server certificate for every broker of the run.
    pub pki: Pki,
    /// The run's working directory.
    pub dir: PathBuf,
    /// Small loads.
    pub quick: bool,
    /// Broker limits of every broker of the run (unless a scenario says otherwise).
    pub limits: Limits,
    /// Messages per consumer in the throughput and stores scenarios.
    pub messages: u64,
}

impl Ctx {
    /// A fresh subdirectory of the run's directory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::create_dir_all(&d);
        d
    }
}

/// The 1-minute load average, to show how busy the shared machine was.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Messages waiting in device-sim's queue: rows of its `outbox` table, or of the
/// largest table if it has none by that name (0 while the file does not exist).
pub fn queued_rows(db: &Path) -> u64 {
    let Some(conn) = crate::consumers::open_reader(db) else {
        return 0;
    };
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_default();
    let outbox: Vec<String> = tables.iter().filter(|t| *t == "outbox").cloned().collect();
    let tables = if outbox.is_empty() { tables } else { outbox };
    tables
        .iter()
        .filter_map(|t| {
            conn.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
        })
        .max()
        .unwrap_or(0)
        .max(0) as u64
}

/// Runs one scenario body, turning an error into a skipped part instead of ending the run.
pub fn guarded(
    section: &mut Section,
    what: &str,
    f: impl FnOnce(&mut Section) -> anyhow::Result<()>,
) {
    if let Err(e) = f(section) {
        section.skip(format!("{what}: {e:#}"));
    }
}
