//! The programs under test and the peers: the release binaries of collector and
//! device-sim (built first unless told not to), mosquitto_sub, and python3 with
//! paho-mqtt for the stand-in of the replaced collector.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where each program is, or why it cannot be used.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The collector binary.
    pub collector: Result<PathBuf, String>,
    /// The device-sim binary.
    pub device_sim: Result<PathBuf, String>,
    /// mosquitto_sub.
    pub mosquitto_sub: Result<PathBuf, String>,
    /// The paho stand-in script (python3 is run with it).
    pub paho: Result<PathBuf, String>,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// The directory of this binary: target/release when run by `cargo run --release`.
fn own_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Programs {
    /// Builds (unless `no_build`) and finds everything.
    pub fn locate(no_build: bool) -> Programs {
        let built = if no_build { Ok(()) } else { build() };
        let ours = |name: &str| -> Result<PathBuf, String> {
            if let Err(e) = &built {
                return Err(e.clone());
            }
            let path = own_dir().join(name);
            if !path.is_file() {
                return Err(format!("{} does not exist", path.display()));
            }
            // A binary that is still a stub prints no help.
            match Command::new(&path).arg("--help").output() {
                Ok(o) if o.status.success() && !o.stdout.is_empty() => Ok(path),
                Ok(_) => Err(format!("{} --help fails: not usable yet", path.display())),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        };
        Programs {
            collector: ours("collector"),
            device_sim: ours("device-sim"),
            mosquitto_sub: which("mosquitto_sub").ok_or_else(|| {
                "mosquitto_sub is not on PATH (apt-get install mosquitto-clients)".into()
            }),
            paho: paho_script(),
        }
    }
}

fn build() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "collector",
        "-p",
        "device-sim",
        "--bins",
    ]);
    eprintln!("bench: building collector and device-sim: cargo build --release -p collector -p device-sim");
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "cargo build --release of collector and device-sim failed ({s})"
        )),
        Err(e) => Err(format!("cannot run cargo: {e}")),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn paho_script() -> Result<PathBuf, String> {
    let script = workspace_root().join("bench/paho_collector.py");
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let ok = Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(script)
    } else {
        Err(
            "python3 cannot import paho.mqtt: run `pip install paho-mqtt` (or bench/setup.sh)"
                .into(),
        )
    }
}
