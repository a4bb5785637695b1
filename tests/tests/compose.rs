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
    compose_config_of(&["docker/docker-compose.yml"])
}

/// `docker-compose -f A -f B … config`: the files merged as Compose merges them.
fn compose_config_of(files: &[&str]) -> String {
    let root = repo();
    let mut cmd = tool("docker-compose");
    for f in files {
        cmd.arg("-f").arg(root.join(f));
    }
    let out = cmd.arg("config").current_dir(&root).output().unwrap();
    assert!(
        out.status.success(),
        "docker-compose {files:?} config: {}",
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

#[test]
fn collector_is_healthy_once_subscribed_and_the_images_build_without_buildkit() {
    let root = repo();
    // The classic builder (docker-compose 1.29, DOCKER_BUILDKIT=0) knows no `# syntax=`
    // frontend and no `RUN --mount`.
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    for (n, line) in dockerfile.lines().enumerate() {
        let squeezed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            !squeezed.to_ascii_lowercase().starts_with("#syntax="),
            "docker/Dockerfile:{}: a `# syntax=` line fetches a frontend from a registry: {line}",
            n + 1
        );
        assert!(
            !line.contains("--mount"),
            "docker/Dockerfile:{}: RUN --mount needs BuildKit: {line}",
            n + 1
        );
    }
    assert!(
        dockerfile.contains("RUN cargo build --release --locked"),
        "the build stage no longer runs cargo build --release --locked"
    );

    // The broker logs where `docker logs` reads.
    let conf =
        std::fs::read_to_string(root.join("docker/mosquitto/config/mosquitto.conf")).unwrap();
    let dests: Vec<&str> = conf
        .lines()
        .filter(|l| l.starts_with("log_dest "))
        .collect();
    assert_eq!(dests, ["log_dest stderr"], "mosquitto.conf log_dest");

    // The collector's health check tests the ready file the collector is told to write.
    let config = compose_config();
    let collector = service(&config, "collector");
    let command = list(&collector, "command");
    let ready = command
        .iter()
        .position(|a| *a == "--ready-file")
        .map(|i| command[i + 1])
        .or_else(|| {
            collector
                .iter()
                .find_map(|l| l.trim().strip_prefix("COLLECTOR_READY_FILE: "))
        })
        .unwrap_or_else(|| panic!("the collector is given no ready file: {command:?}"));
    assert!(ready.starts_with('/'), "{ready}");
    let test = list(&collector, "test");
    assert_eq!(
        test,
        ["CMD", "test", "-f", ready],
        "the collector's health check is not its ready file:\n{}",
        collector.join("\n")
    );
    // The file's directory is a volume of the collector (writable by its user).
    let volumes = list(&collector, "volumes");
    let dir = std::path::Path::new(ready).parent().unwrap();
    assert!(
        volumes.iter().any(
            |v| v.split(':').nth(1).map(std::path::Path::new) == Some(dir) && !v.ends_with(":ro")
        ),
        "{} is not on a writable volume of the collector: {volumes:?}",
        dir.display()
    );
    // The devices wait for that health.
    let sim = service(&config, "device-sim");
    let depends = sim
        .iter()
        .skip_while(|l| l.trim() != "depends_on:")
        .take_while(|l| {
            !l.starts_with("    ") || l.starts_with("      ") || l.trim() == "depends_on:"
        })
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        depends.contains("collector: condition: service_healthy"),
        "device-sim does not wait for a healthy collector: {depends}"
    );
}

#[test]
fn postgres_addition_merges_and_the_collector_waits_for_a_healthy_postgres() {
    let root = repo();
    let config = compose_config_of(&[
        "docker/docker-compose.yml",
        "docker/docker-compose.postgres.yml",
    ]);
    let pg = service(&config, "postgres");
    assert!(!pg.is_empty(), "no postgres service:\n{config}");
    let pg_text = pg.join("\n");
    for needed in [
        "image: postgres:16",
        "POSTGRES_PASSWORD: ",
        "pg_isready",
        "healthcheck:",
    ] {
        assert!(
            pg_text.contains(needed),
            "the postgres service lacks {needed:?}:\n{pg_text}"
        );
    }
    assert!(
        config.contains("postgres-data:"),
        "no postgres-data volume:\n{config}"
    );
    // The password comes from an env file, not from the compose file itself.
    let override_file =
        std::fs::read_to_string(root.join("docker/docker-compose.postgres.yml")).unwrap();
    assert!(
        !override_file.contains("POSTGRES_PASSWORD") && override_file.contains("env_file"),
        "the password belongs in docker/postgres.env"
    );

    let collector = service(&config, "collector");
    let collector_text = collector.join("\n");
    let depends = collector
        .iter()
        .skip_while(|l| l.trim() != "depends_on:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        depends.contains("postgres: condition: service_healthy")
            && depends.contains("mosquitto: condition: service_healthy"),
        "the collector must wait for a healthy postgres and broker: {depends}"
    );
    let url = collector
        .iter()
        .find_map(|l| l.trim().strip_prefix("COLLECTOR_POSTGRES: "))
        .unwrap_or_else(|| panic!("the collector has no COLLECTOR_POSTGRES:\n{collector_text}"));
    assert!(
        url.starts_with("postgresql://") && url.contains("@postgres:5432/"),
        "COLLECTOR_POSTGRES does not name the postgres service: {url}"
    );
    // The password in the URL is the server's.
    let password = pg
        .iter()
        .find_map(|l| l.trim().strip_prefix("POSTGRES_PASSWORD: "))
        .unwrap()
        .trim_matches(|c| c == '\'' || c == '"');
    let user = pg
        .iter()
        .find_map(|l| l.trim().strip_prefix("POSTGRES_USER: "))
        .unwrap();
    let db = pg
        .iter()
        .find_map(|l| l.trim().strip_prefix("POSTGRES_DB: "))
        .unwrap();
    assert!(
        url.contains(&format!("//{user}:{password}@postgres:5432/{db}")),
        "COLLECTOR_POSTGRES ({url}) does not match the postgres service's user, password and database"
    );
    // SQLite is off in this setup: COLLECTOR_DB empty (an empty value counts as unset).
    assert!(
        collector.iter().any(|l| l.trim() == "COLLECTOR_DB: ''"),
        "COLLECTOR_DB should be empty with PostgreSQL:\n{collector_text}"
    );
    // The rest of the collector is the main file's: the broker settings and the ready file.
    for needed in ["MQTT_USE_TLS: \"true\"", "/data/collector.ready"] {
        assert!(
            collector_text.contains(needed),
            "the merged collector lost {needed:?}:\n{collector_text}"
        );
    }
    // The collector reads every variable of its new env file.
    let env = std::fs::read_to_string(root.join("docker/collector-postgres.env")).unwrap();
    let vars = crate::kit::vars_read_by(&root.join("crates/collector"));
    for l in env
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
    {
        let key = l.split('=').next().unwrap();
        assert!(vars.contains(key), "the collector does not read {key}");
    }
}
