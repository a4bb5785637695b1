//! The compose file (`docker-compose config`), the Dockerfile and what they mount.

use crate::kit::{repo, text, tool};
use std::path::PathBuf;
use std::process::Command;

/// Bind-mount sources of the services in `docker-compose config` output: the
/// items of each service's `volumes:` list that start with an absolute path.
fn bind_mounts(config: &str) -> Vec<PathBuf> {
    let mut in_volumes = false;
    let mut out = Vec::new();
    for line in config.lines() {
        if line == "    volumes:" {
            in_volumes = true;
        } else if in_volumes && line.starts_with("    - ") {
            let item = &line["    - ".len()..];
            if item.starts_with('/') {
                out.push(PathBuf::from(item.split(':').next().unwrap()));
            }
        } else {
            in_volumes = false;
        }
    }
    out
}

/// `docker-compose config` of the shipped compose file: the file as Compose reads it.
fn compose_config() -> String {
    let root = repo();
    let file = root.join("docker/docker-compose.yml");
    let out = tool("docker-compose")
        .arg("-f")
        .arg(&file)
        .arg("config")
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of one service in `docker-compose config` output (two-space indent).
fn service<'a>(config: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    config
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .collect()
}

/// The items of the first YAML list under `key:` in a service's lines, in order
/// (Compose prints the items at the key's own indentation).
fn list<'a>(svc: &[&'a str], key: &str) -> Vec<&'a str> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let header = format!("{key}:");
    let Some(i) = svc.iter().position(|l| l.trim_start() == header) else {
        return Vec::new();
    };
    let at = indent(svc[i]);
    svc[i + 1..]
        .iter()
        .take_while(|l| indent(l) >= at && l.trim_start().starts_with("- "))
        .map(|l| &l.trim_start()[2..])
        .collect()
}

#[test]
fn compose_file_passes_docker_compose_config_and_mounts_only_what_exists() {
    let root = repo();
    let config = compose_config();
    for needed in [
        "image: eclipse-mosquitto:2",
        "1883",
        "8883",
        "condition: service_completed_successfully",
        "condition: service_healthy",
        "healthcheck:",
        "MQTT_USE_TLS: \"true\"",
        "MQTT_CA_CERTS: /certs/ca.crt",
    ] {
        assert!(
            config.contains(needed),
            "compose config lacks {needed:?}:\n{config}"
        );
    }
    assert!(
        config.contains("- device-sim")
            && config.contains("- --count")
            && config.contains("- '10'"),
        "device-sim must run 10 devices:\n{config}"
    );
    for volume in ["broker-data:", "collector-data:", "device-sim-queue:"] {
        assert!(config.contains(volume), "no volume {volume}\n{config}");
    }

    // What the one-shot service makes; everything else must be in the repository.
    let init = std::fs::read_to_string(root.join("docker/mosquitto/init.sh")).unwrap();
    assert!(
        init.contains("certgen --out \"$CERTS\" $hosts --if-missing")
            && init.contains("mosquitto_passwd $first -b"),
        "init.sh must run certgen --if-missing and mosquitto_passwd"
    );
    let made_by_init = [root.join("docker/mosquitto/config/certs")];
    let mounts = bind_mounts(&config);
    assert!(mounts.len() >= 5, "no bind mounts found in:\n{config}");
    for m in mounts {
        assert!(
            m.starts_with(&root),
            "{} is outside the repository",
            m.display()
        );
        if made_by_init.contains(&m) {
            continue;
        }
        assert!(
            m.exists(),
            "the compose file mounts {}, which does not exist",
            m.display()
        );
        let rel = m.strip_prefix(&root).unwrap();
        let tracked = Command::new("git")
            .args(["ls-files", "--error-unmatch"])
            .arg(rel)
            .current_dir(&root)
            .output()
            .map(|o| o.status.success());
        assert!(
            tracked.unwrap_or(true),
            "{} is mounted but not in the repository (git add it)",
            rel.display()
        );
    }
    // The directory certgen writes into exists in a fresh checkout, so Docker does not create it as root.
    assert!(root
        .join("docker/mosquitto/config/certs/.gitignore")
        .is_file());
}
