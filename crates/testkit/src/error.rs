//! Why a broker or the test certificates could not be set up. Test code meets these
//! as panic messages; the benchmark gets them as values.

use std::path::PathBuf;
use std::process::ExitStatus;

/// A setup failure, naming the cause and what to do about it.
// The #[error] text of each variant says what every field holds.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be made.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A program could not be started at all.
    #[error("cannot run {program}: {source}; install it (apt-get install mosquitto)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// `mosquitto_passwd -U` failed.
    #[error("mosquitto_passwd -U {file} failed: {status}")]
    Passwd { file: PathBuf, status: ExitStatus },
    /// Mosquitto ended before its listeners came up (usually a configuration error).
    #[error("mosquitto exited at start ({status}): {stderr}\nlog:\n{log}\nconfig:\n{config}")]
    Exited {
        status: ExitStatus,
        stderr: String,
        log: String,
        config: String,
    },
    /// Mosquitto runs but does not accept connections on every port.
    #[error("mosquitto did not listen on {ports:?} within 10 s; log:\n{log}")]
    NotListening { ports: Vec<u16>, log: String },
    /// Certificate generation failed.
    #[error("generating test certificates: {0}")]
    Certgen(#[from] mqtt_core::certgen::CertgenError),
}

/// The result of a setup step.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an I/O error on `path` to [`Error::Write`].
pub(crate) fn write_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Write { path, source }
}
