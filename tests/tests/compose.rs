//! The compose files (`docker-compose config`), the Dockerfile and what they
//! mount; the collector's health check against its metrics address; the monitoring
//! addition (Prometheus config through `promtool check config`, Grafana's
//! provisioning) and the dashboard's queries against the metrics the real binaries
//! expose, run on a real Prometheus.

use crate::kit::{repo, text, tool};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

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

/// Every bind-mount source is inside the repository, exists and is tracked by git
/// (a fresh clone has it), except what the init service makes (`made_by_init`).
fn assert_mounts_exist(mounts: &[PathBuf], made_by_init: &[PathBuf]) {
    let root = repo();
    for m in mounts {
        assert!(
            m.starts_with(&root),
            "{} is outside the repository",
            m.display()
        );
        if made_by_init.contains(m) {
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
}

/// The value of `KEY` in a service's `environment:` (as `docker-compose config`
/// prints it, quotes removed).
fn env_of<'a>(svc: &[&'a str], key: &str) -> Option<&'a str> {
    let prefix = format!("{key}: ");
    svc.iter()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"'))
}

/// The port of a `HOST:PORT` address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not HOST:PORT"))
}

/// The `docker-compose config` line of a service's volume whose source is
/// `docker/<rel>` of the repository: its target in the container.
fn mount_target(svc: &[&str], rel: &str) -> String {
    let source = repo().join("docker").join(rel).display().to_string();
    list(svc, "volumes")
        .iter()
        .find_map(|v| {
            let mut parts = v.split(':');
            (parts.next() == Some(source.as_str())).then(|| parts.next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("no volume from {source}: {svc:?}"))
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
    assert_mounts_exist(&mounts, &made_by_init);
    // The directory certgen writes into exists in a fresh checkout, so Docker does not create it as root.
    assert!(root
        .join("docker/mosquitto/config/certs/.gitignore")
        .is_file());
}

#[test]
fn collector_is_healthy_once_its_readyz_answers_and_the_images_build_without_buildkit() {
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

    // The collector's health check is `collector probe` on /readyz at the port of
    // its COLLECTOR_METRICS_ADDR (the image has no curl).
    let config = compose_config();
    let collector = service(&config, "collector");
    let collector_text = collector.join("\n");
    let addr = env_of(&collector, "COLLECTOR_METRICS_ADDR").unwrap_or_else(|| {
        panic!("the collector has no COLLECTOR_METRICS_ADDR:\n{collector_text}")
    });
    let port = port_of(addr);
    let test = list(&collector, "test");
    assert_eq!(
        test,
        [
            "CMD".to_string(),
            "collector".into(),
            "probe".into(),
            format!("http://127.0.0.1:{port}/readyz")
        ],
        "the collector's health check is not `collector probe` on its /readyz:\n{collector_text}"
    );
    // The endpoint is for the compose network: never published on every interface
    // of the host (loopback at most).
    for p in list(&collector, "ports") {
        assert!(
            p.starts_with("127.0.0.1:"),
            "the collector publishes {p} beyond this machine"
        );
    }
    // The ready file stays a second mechanism, for scripts watching the volume.
    let command = list(&collector, "command");
    let ready = command
        .iter()
        .position(|a| *a == "--ready-file")
        .map(|i| command[i + 1])
        .or_else(|| env_of(&collector, "COLLECTOR_READY_FILE"))
        .unwrap_or_else(|| panic!("the collector is given no ready file: {command:?}"));
    assert!(ready.starts_with('/'), "{ready}");
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
    // device-sim's own health check, when it has one, probes its own endpoint.
    let sim_test = list(&sim, "test");
    if !sim_test.is_empty() {
        let addr = env_of(&sim, "DEVICE_SIM_METRICS_ADDR")
            .expect("device-sim has a health check but no DEVICE_SIM_METRICS_ADDR");
        assert_eq!(
            sim_test,
            [
                "CMD".to_string(),
                "collector".into(),
                "probe".into(),
                format!("http://127.0.0.1:{}/readyz", port_of(addr))
            ]
        );
    }
    for p in list(&sim, "ports") {
        assert!(
            p.starts_with("127.0.0.1:"),
            "device-sim publishes {p} beyond this machine"
        );
    }
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

/// The services of `docker-compose config` output.
fn services(config: &str) -> Vec<&str> {
    config
        .lines()
        .skip_while(|l| *l != "services:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|n| !n.starts_with(' '))
        .collect()
}

#[test]
fn monitoring_addition_merges_on_loopback_mounts_what_exists_and_scrapes_the_metrics_ports() {
    let root = repo();
    let config = compose_config_of(&[
        "docker/docker-compose.yml",
        "docker/docker-compose.monitoring.yml",
    ]);
    let names = services(&config);
    for want in [
        "prometheus",
        "grafana",
        "collector",
        "device-sim",
        "mosquitto",
    ] {
        assert!(names.contains(&want), "no {want} service: {names:?}");
    }
    let prometheus = service(&config, "prometheus");
    let grafana = service(&config, "grafana");
    assert!(
        prometheus
            .iter()
            .any(|l| l.trim().starts_with("image: prom/prometheus:")),
        "{prometheus:?}"
    );
    assert!(
        grafana
            .iter()
            .any(|l| l.trim().starts_with("image: grafana/grafana:")),
        "{grafana:?}"
    );
    // Nothing of the monitoring stack, nor a metrics endpoint, is published beyond
    // this machine.
    for name in ["prometheus", "grafana", "collector", "device-sim"] {
        for p in list(&service(&config, name), "ports") {
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p} on every interface of the host"
            );
        }
    }
    assert!(
        list(&prometheus, "ports").contains(&"127.0.0.1:9090:9090/tcp")
            && list(&grafana, "ports").contains(&"127.0.0.1:3000:3000/tcp"),
        "Prometheus and Grafana are not on 127.0.0.1:9090 and 127.0.0.1:3000"
    );
    // Every file it mounts is in the repository.
    let mounts = bind_mounts(&config);
    for want in [
        "docker/prometheus/prometheus.yml",
        "docker/grafana/dashboards",
        "docker/grafana/provisioning/datasources",
        "docker/grafana/provisioning/dashboards",
    ] {
        assert!(
            mounts.contains(&root.join(want)),
            "{want} is not mounted: {mounts:?}"
        );
    }
    assert_mounts_exist(&mounts, &[root.join("docker/mosquitto/config/certs")]);

    // Prometheus reads the mounted file, which promtool accepts, and scrapes the
    // ports the binaries serve on in compose.
    let config_file = mount_target(&prometheus, "prometheus/prometheus.yml");
    assert!(
        list(&prometheus, "command").contains(&format!("--config.file={config_file}").as_str()),
        "Prometheus is not started with {config_file}"
    );
    let prom_yml = root.join("docker/prometheus/prometheus.yml");
    let out = tool("promtool")
        .args(["check", "config"])
        .arg(&prom_yml)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config docker/prometheus/prometheus.yml (apt-get install prometheus): {}",
        text(&out)
    );
    let prom_text = std::fs::read_to_string(&prom_yml).unwrap();
    for (svc, var) in [
        ("collector", "COLLECTOR_METRICS_ADDR"),
        ("device-sim", "DEVICE_SIM_METRICS_ADDR"),
    ] {
        let addr =
            env_of(&service(&config, svc), var).unwrap_or_else(|| panic!("{svc} has no {var}"));
        let target = format!("\"{svc}:{}\"", port_of(addr));
        assert!(
            prom_text.contains(&target),
            "docker/prometheus/prometheus.yml does not scrape {target} ({var}={addr})"
        );
    }

    // Grafana: the data source is the prometheus service, the provider loads the
    // mounted dashboards directory, and the home dashboard is one of its files.
    let datasource = std::fs::read_to_string(
        root.join("docker/grafana/provisioning/datasources/prometheus.yml"),
    )
    .unwrap();
    assert!(
        datasource.contains("url: http://prometheus:9090")
            && datasource.contains("type: prometheus"),
        "the Grafana data source is not the prometheus service:\n{datasource}"
    );
    let provisioning = mount_target(&grafana, "grafana/provisioning/datasources");
    assert_eq!(provisioning, "/etc/grafana/provisioning/datasources");
    assert_eq!(
        mount_target(&grafana, "grafana/provisioning/dashboards"),
        "/etc/grafana/provisioning/dashboards"
    );
    let dashboards = mount_target(&grafana, "grafana/dashboards");
    let provider = std::fs::read_to_string(
        root.join("docker/grafana/provisioning/dashboards/mqtt-telemetry.yml"),
    )
    .unwrap();
    assert!(
        provider.contains(&format!("path: {dashboards}\n")),
        "the dashboard provider does not read {dashboards}:\n{provider}"
    );
    let home =
        env_of(&grafana, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH").expect("no home dashboard");
    let home_file = Path::new(home)
        .strip_prefix(&dashboards)
        .unwrap_or_else(|_| panic!("{home} is not under {dashboards}"));
    assert!(root
        .join("docker/grafana/dashboards")
        .join(home_file)
        .is_file());
    // The dashboard's data source variable defaults to the provisioned uid.
    let uid = datasource
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid: "))
        .expect("the data source has a fixed uid");
    let dash = dashboard();
    let var = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(var["current"]["value"], uid, "{var}");
    assert_eq!(var["query"], "prometheus");
    // The Grafana password comes from its env file, which says to change it.
    let env = std::fs::read_to_string(root.join("docker/grafana.env")).unwrap();
    assert!(env.contains("GF_SECURITY_ADMIN_PASSWORD=") && env.contains("CHANGE THE PASSWORD"));
}

/// docker/grafana/dashboards/mqtt-collector.json, parsed.
fn dashboard() -> serde_json::Value {
    let path = repo().join("docker/grafana/dashboards/mqtt-collector.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The PromQL of every panel of the dashboard (rows' nested panels included).
fn dashboard_queries(dash: &serde_json::Value) -> Vec<String> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("no expr: {t}"));
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "{}: not on the dashboard's data source variable",
                    p["title"]
                );
                out.push(expr.to_string());
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// The metric names a PromQL expression reads: the identifiers left once label
/// matchers (`{…}`), ranges (`[…]`), numbers, function calls, operators,
/// aggregations and the label lists of `by`/`without`/`on`/`ignoring` are taken out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, and the aggregations, whose `by (…)` may come before the parenthesis.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut cleaned = String::new();
    let mut depth = 0;
    for c in expr.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth -= 1;
                cleaned.push(' ');
            }
            _ if depth == 0 => cleaned.push(c),
            _ => {}
        }
    }
    let chars: Vec<char> = cleaned.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            if call && GROUPING.contains(&word.as_str()) {
                // Skip the label list.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_reads_promql() {
    let q =
        "histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{x=\"y\"}[$__rate_interval])))";
    assert_eq!(
        metric_names(q),
        BTreeSet::from(["a_seconds_bucket".to_string()])
    );
    let q =
        "sum without (instance) (rate(b_total[5m])) / on (job) group_left (x) c * 1e3 offset 5m";
    assert_eq!(
        metric_names(q),
        BTreeSet::from(["b_total".to_string(), "c".to_string()])
    );
}

/// The sample names and the `# TYPE` families of a Prometheus text exposition.
fn exposed(text: &str) -> (BTreeSet<String>, Vec<(String, String)>) {
    let mut samples = BTreeSet::new();
    let mut families = Vec::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            families.push((name.to_string(), kind.to_string()));
        } else if !l.starts_with('#') && !l.is_empty() {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            samples.insert(l[..end].to_string());
        }
    }
    (samples, families)
}

#[test]
fn dashboard_queries_only_metrics_the_binaries_expose_and_prometheus_answers_each() {
    let dash = dashboard();
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 15, "{queries:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "no metric in {q}");
        used.extend(names);
    }

    // The real binaries' /metrics, read with `collector probe` (the compose health
    // check's client).
    let mut stack = e2e::stack::Stack::new(e2e::BrokerConfig::new());
    let collector_port = e2e::free_port();
    stack.start_collector_with(|c| {
        c.args(["--metrics-addr", &format!("127.0.0.1:{collector_port}")]);
    });
    let sim_port = e2e::free_port();
    let _sim = stack.sim(&[
        "--count",
        "2",
        "--interval",
        "100ms",
        "--metrics-addr",
        &format!("127.0.0.1:{sim_port}"),
    ]);
    let scrape = |port: u16| -> String {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let mut last = None;
        let ok = e2e::wait_until(Duration::from_secs(20), || {
            let out = e2e::run_with_timeout(
                e2e::command("collector", stack.dir.path(), &[]).args(["probe", &url]),
                Duration::from_secs(10),
            );
            let success = out.status.success();
            last = Some(out);
            success
        });
        let out = last.unwrap();
        assert!(ok, "collector probe {url}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut samples = BTreeSet::new();
    let mut families = Vec::new();
    for port in [collector_port, sim_port] {
        let (s, f) = exposed(&scrape(port));
        samples.extend(s);
        families.extend(f);
    }
    // The contract's names (section 8) are all there, so the scrape is the real one.
    for name in [
        "mqtt_collector_messages_stored_total",
        "mqtt_collector_publish_to_commit_seconds_bucket",
        "device_sim_queue_depth",
        "device_sim_publish_to_ack_seconds_bucket",
    ] {
        assert!(samples.contains(name), "{name} not exposed: {samples:?}");
    }
    let unknown: Vec<_> = used.difference(&samples).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the binaries do not expose: {unknown:?}\nexposed: {samples:?}"
    );
    // And it shows every metric they expose (a histogram through its buckets).
    let unshown: Vec<String> = families
        .iter()
        .map(|(name, kind)| match kind.as_str() {
            "histogram" => format!("{name}_bucket"),
            _ => name.clone(),
        })
        .filter(|n| !used.contains(n))
        .collect();
    assert!(
        unshown.is_empty(),
        "the dashboard has no panel for {unshown:?}"
    );

    // A real Prometheus scraping both accepts every query and has data for it, with
    // Grafana's $__rate_interval and $__range as plain durations.
    let prometheus = testkit::prometheus::Prometheus::start(&[
        format!("127.0.0.1:{collector_port}"),
        format!("127.0.0.1:{sim_port}"),
    ]);
    for q in &queries {
        let promql = q
            .replace("$__rate_interval", "30s")
            .replace("$__range", "5m");
        let mut data = serde_json::Value::Null;
        let answered = e2e::wait_until(Duration::from_secs(20), || {
            data = prometheus.query(&promql);
            data["result"].as_array().is_some_and(|r| !r.is_empty())
        });
        assert!(
            answered,
            "Prometheus has no series for the dashboard's {q}: {data}\n{}",
            prometheus.log()
        );
    }
}

#[test]
fn scale_addition_runs_three_collectors_in_one_share_group_on_postgres_only() {
    let config = compose_config_of(&[
        "docker/docker-compose.yml",
        "docker/docker-compose.postgres.yml",
        "docker/docker-compose.scale.yml",
    ]);
    let collectors: Vec<&str> = services(&config)
        .into_iter()
        .filter(|s| s.starts_with("collector"))
        .collect();
    assert_eq!(
        collectors,
        ["collector", "collector-2", "collector-3"],
        "three collector services expected:\n{config}"
    );
    let mut ids = BTreeSet::new();
    for name in &collectors {
        let svc = service(&config, name);
        let text = svc.join("\n");
        assert_eq!(
            env_of(&svc, "COLLECTOR_SHARE_GROUP"),
            Some("collectors"),
            "{name} is not in the share group:\n{text}"
        );
        let id = env_of(&svc, "MQTT_CLIENT_ID")
            .unwrap_or_else(|| panic!("{name} has no MQTT_CLIENT_ID:\n{text}"));
        assert!(ids.insert(id.to_string()), "{name} reuses client id {id}");
        let url = env_of(&svc, "COLLECTOR_POSTGRES")
            .unwrap_or_else(|| panic!("{name} has no COLLECTOR_POSTGRES:\n{text}"));
        assert!(url.contains("@postgres:5432/"), "{name}: {url}");
        assert_eq!(
            env_of(&svc, "COLLECTOR_DB"),
            Some(""),
            "{name} must not write a local SQLite:\n{text}"
        );
        assert!(
            text.contains("postgres:") && text.contains("condition: service_healthy"),
            "{name} must wait for a healthy postgres:\n{text}"
        );
    }
}
