//! The directory a broker or a PKI writes into: temporary (removed on drop) or one
//! the caller chose (kept, so a benchmark run can be inspected afterwards).

use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A working directory, temporary or given.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    _temp: Option<TempDir>,
}

impl Dir {
    /// A fresh temporary directory, removed when this value is dropped.
    pub(crate) fn temp() -> std::io::Result<Dir> {
        let temp = tempfile::tempdir()?;
        Ok(Dir {
            path: temp.path().to_path_buf(),
            _temp: Some(temp),
        })
    }

    /// `path`, created if missing and kept after use.
    pub(crate) fn given(path: &Path) -> std::io::Result<Dir> {
        std::fs::create_dir_all(path)?;
        Ok(Dir {
            path: path.to_path_buf(),
            _temp: None,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
