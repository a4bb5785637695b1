//! Locates the workspace's binaries, building them once per test run so a test
//! never runs a stale binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace root")
        .to_path_buf()
}

/// The directory holding the binaries of the profile this test was built with.
fn profile_dir() -> PathBuf {
    // target/<profile>/deps/e2e-<hash>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

/// Path of a workspace binary (`collector`, `device-sim`), built on first use.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root()).args([
            "build",
            "--quiet",
            "-p",
            "collector",
            "-p",
            "device-sim",
            "--bins",
        ]);
        if profile_dir().file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of the binaries failed: {s}")),
            Err(e) => Err(format!("cannot run cargo to build the binaries: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    let path = profile_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A command for a workspace binary that runs in `dir` (so no stray `.env` is read),
/// with no MQTT_* variable inherited from the developer's shell, and `env` set.
pub fn command(name: &str, dir: &std::path::Path, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("MQTT_") || k == "COLLECTOR_DB" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}
