//! Documentation against the code: nothing points outside the repository, the
//! reference (docs/reference.md) names every variable, flag and column, and the
//! README keeps its operator sections (prerequisites, data export, Docker,
//! dependencies). The env examples and the troubleshooting table have files of
//! their own (env_examples.rs, troubleshooting.rs).

use crate::kit::{
    repo, rust_files, section, text, tracked_files, vars_read_by, without_test_items, words,
};
use std::collections::BTreeSet;
use std::time::Duration;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn no_file_in_the_repository_points_outside_it() {
    // Spelled in two parts so this file does not trip its own check.
    let outside = format!("..{}", "/shared");
    let root = repo();
    let mut files = tracked_files();
    // Files not committed yet count too.
    let untracked = std::process::Command::new("git")
        .args(["ls-files", "--others", "--exclude-standard"])
        .current_dir(&root)
        .output()
        .unwrap();
    files.extend(
        String::from_utf8_lossy(&untracked.stdout)
            .lines()
            .map(std::path::PathBuf::from),
    );
    let mut checked = 0;
    let mut offenders = Vec::new();
    for f in files {
        let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !["md", "rs", "sh", "yml", "yaml", "toml"].contains(&ext) {
            continue;
        }
        let Ok(body) = std::fs::read_to_string(root.join(&f)) else {
            continue; // deleted in the work tree
        };
        checked += 1;
        for (n, line) in body.lines().enumerate() {
            if line.contains(&outside) {
                offenders.push(format!("{}:{}: {line}", f.display(), n + 1));
            }
        }
    }
    assert!(checked > 50, "only {checked} files checked");
    assert!(
        offenders.is_empty(),
        "these point at a file outside the repository (dead in a clone); use docs/reference.md:\n{}",
        offenders.join("\n")
    );
}

/// The sources of the collector's store (`store.rs`, or a `store/` module with
/// its submodules) whose path relative to `src/` passes `keep`, each without its
/// test module, joined.
fn store_sources(keep: impl Fn(&str) -> bool) -> String {
    let src = repo().join("crates/collector/src");
    let mut files = rust_files(&src);
    files.retain(|f| {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        (rel == "store.rs" || rel.starts_with("store/")) && !rel.ends_with("tests.rs") && keep(&rel)
    });
    files.sort();
    assert!(
        !files.is_empty(),
        "no store sources under {}",
        src.display()
    );
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.split("#[cfg(test)]").next().unwrap().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The SQL stores: the SQLite store (every store source outside `store/postgres/`
/// and `store/influx/`) and the PostgreSQL store (`store/postgres/`), each with the heading prefix under
/// which docs/reference.md describes its tables.
const SQL_STORES: [(&str, &str); 2] = [
    ("SQLite", "### Table `"),
    ("PostgreSQL", "### PostgreSQL table `"),
];

fn is_store_file(store: &str, rel: &str) -> bool {
    match store {
        "PostgreSQL" => rel.starts_with("store/postgres/"),
        _ => !rel.starts_with("store/postgres/") && !rel.starts_with("store/influx/"),
    }
}

/// Every `CREATE TABLE` of one SQL store (see [`SQL_STORES`]) with its column
/// names, plus any column added later with `ALTER TABLE … ADD COLUMN`. A
/// `CREATE TABLE` in prose (a comment) is not a statement and is skipped.
fn store_tables(store: &str) -> Vec<(String, Vec<String>)> {
    let src = store_sources(|rel| is_store_file(store, rel));
    let src = src.as_str();
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("CREATE TABLE") {
        let after = &rest[i + "CREATE TABLE".len()..];
        let Some(open) = after.find('(') else { break };
        let head: Vec<&str> = after[..open].split_whitespace().collect();
        let name = match head.as_slice() {
            [name] | ["IF", "NOT", "EXISTS", name] => name.trim_matches('"').to_string(),
            _ => {
                rest = after;
                continue;
            }
        };
        let body = &after[open + 1..];
        let mut depth = 1;
        let close = body
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .unwrap()
            .0;
        let mut columns = Vec::new();
        let mut depth = 0;
        let mut item = String::new();
        for c in body[..close].chars().chain([',']) {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    let word = item.split_whitespace().next().unwrap_or("").to_string();
                    let keyword = ["PRIMARY", "UNIQUE", "FOREIGN", "CHECK", "CONSTRAINT"]
                        .contains(&word.to_ascii_uppercase().as_str());
                    if !word.is_empty() && !keyword {
                        columns.push(word.trim_matches('"').to_string());
                    }
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        tables.push((name, columns));
        rest = &body[close..];
    }
    let mut rest = src;
    while let Some(i) = rest.find("ALTER TABLE") {
        let words: Vec<&str> = rest[i..].split_whitespace().take(6).collect();
        if words.len() == 6 && words[3] == "ADD" && words[4] == "COLUMN" {
            let (table, column) = (
                words[2],
                words[5].trim_matches(|c: char| !c.is_alphanumeric() && c != '_'),
            );
            if let Some(t) = tables.iter_mut().find(|(n, _)| n == table) {
                if !t.1.iter().any(|c| c == column) {
                    t.1.push(column.to_string());
                }
            }
        }
        rest = &rest[i + 1..];
    }
    tables
}

#[test]
fn reference_names_every_variable_flag_table_and_column() {
    let root = repo();
    let reference = read("docs/reference.md");
    let readme = read("README.md");
    assert!(
        readme.contains("](docs/reference.md)"),
        "README.md does not link docs/reference.md"
    );

    // Variables: everything any binary reads.
    let mut vars = BTreeSet::new();
    for krate in ["mqtt-core", "collector", "device-sim"] {
        vars.extend(vars_read_by(&root.join("crates").join(krate)));
    }
    for must in [
        "COLLECTOR_DB",
        "MQTT_TOPICS",
        "MQTT_BROKER_HOST",
        "RUST_LOG",
    ] {
        assert!(
            vars.contains(must),
            "the scan no longer finds {must}: {vars:?}"
        );
    }
    // The scan must still see every variable the crates declare they read.
    for krate in ["mqtt-core", "collector"] {
        let dir = root.join("crates").join(krate);
        let declared = crate::kit::declared_vars(&dir);
        assert!(!declared.is_empty(), "{krate}: no VARIABLES constant found");
        let unseen: Vec<_> = declared.difference(&vars).collect();
        assert!(
            unseen.is_empty(),
            "the scan (kit::vars_read_by) does not see {krate} read {unseen:?}: teach it the new pattern"
        );
    }
    let missing: Vec<_> = vars
        .iter()
        .filter(|v| !reference.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md does not name these variables the code reads: {missing:?}"
    );
    // The ready file is part of the interface even before the scan can see it.
    assert!(reference.contains("`COLLECTOR_READY_FILE`") && reference.contains("`--ready-file"));

    // Flags: every long option each command's --help lists.
    for (bin, args) in [
        ("collector", &[][..]),
        ("collector", &["stats"][..]),
        ("collector", &["certgen"][..]),
        ("collector", &["probe"][..]),
        ("device-sim", &[][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = e2e::command(bin, dir.path(), &[]);
        cmd.args(args).arg("--help");
        let out = e2e::run_with_timeout(&mut cmd, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "{bin} {args:?} --help: {}",
            text(&out)
        );
        let help = String::from_utf8_lossy(&out.stdout);
        let flags: BTreeSet<&str> = help
            .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == '=')
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
            .collect();
        assert!(flags.contains("--help"), "{help}");
        let heading = format!(
            "### `{bin}{}`",
            args.iter().map(|a| format!(" {a}")).collect::<String>()
        );
        let part = section(&reference, &heading);
        for flag in flags {
            assert!(
                part.contains(&format!("`{flag}")),
                "docs/reference.md, section {heading}, does not describe {flag} of `{bin} {}`",
                args.join(" ")
            );
        }
    }

    // Tables and columns: each table of each SQL store has its own section
    // naming every column.
    for (store, heading) in SQL_STORES {
        let tables = store_tables(store);
        let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["telemetry", "rejected", "counters"] {
            assert!(
                names.contains(&want),
                "the {store} store has no table {want}: {names:?}"
            );
        }
        for (table, columns) in &tables {
            assert!(
                columns.len() >= 2,
                "{store} {table}: columns not found: {columns:?}"
            );
            let part = section(&reference, &format!("{heading}{table}`"));
            for c in columns {
                assert!(
                    part.contains(&format!("| `{c}` |")),
                    "docs/reference.md, {store} table `{table}`, does not describe column `{c}`"
                );
            }
        }
    }
    // The InfluxDB point: measurement, tags and the fields the collector adds.
    let influx = section(&reference, "## 10. The InfluxDB store");
    for name in [
        "`device_data`",
        "`device_id`",
        "`collector`",
        "`detection_label`",
        "`seq`",
        "`publish_timestamp`",
        "`collector_receive_time`",
        "-dedup.minScrapeInterval",
    ] {
        assert!(
            influx.contains(name),
            "docs/reference.md, InfluxDB store, does not describe {name}"
        );
    }
    for topic in ["device/data/{device_id}", "vehicle/speed/{device_id}"] {
        assert!(
            reference.contains(topic),
            "the reference does not name {topic}"
        );
    }
    // The duplicate rules, including the one for messages without seq.
    let dups = section(&reference, "### 5.4 Duplicates");
    for rule in [
        "`(device_id, seq)`",
        "without `seq`",
        "same payload bytes",
        "rejected",
    ] {
        assert!(
            dups.contains(rule),
            "the duplicate rules do not cover {rule}"
        );
    }
    // Exit codes.
    let exits = section(&reference, "## 7. Exit codes");
    for code in ["| `0` |", "| `1` |", "| `2` |", "| `3` |"] {
        assert!(exits.contains(code), "exit code {code} is not described");
    }
    // collector stats, both forms.
    let stats = section(&reference, "## 6. `collector stats`");
    for key in [
        "`total`",
        "`devices[]`",
        "`latency`",
        "`duplicates`",
        "`rejected`",
        "`gaps`",
        "--json",
    ] {
        assert!(
            stats.contains(key),
            "collector stats: {key} is not described"
        );
    }
}

#[test]
fn readme_has_prerequisites_data_export_docker_and_dependencies() {
    let root = repo();
    let readme = read("README.md");
    let cargo = read("Cargo.toml");

    // Prerequisites: the workspace's minimum Rust through rustup, and a C compiler.
    let msrv = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    let pre = section(&readme, "## Prerequisites");
    for needed in [
        format!("Rust {msrv}"),
        "rustup".into(),
        "C compiler".into(),
        "build-essential".into(),
        "mosquitto mosquitto-clients".into(),
    ] {
        assert!(
            pre.contains(&needed),
            "README Prerequisites lacks {needed:?}"
        );
    }
    assert!(
        pre.lines()
            .any(|l| l.starts_with("apt-get update && apt-get install -y ")),
        "README Prerequisites has no apt-get command"
    );

    // Getting the data out.
    let out = section(&readme, "## Getting your data out");
    for needed in [
        "sqlite3 -header -csv",
        "json_extract(payload",
        "collector stats --db",
        "collector stats --postgres",
        "--json",
        "PostgreSQL",
        "InfluxDB",
    ] {
        assert!(out.contains(needed), "README data section lacks {needed:?}");
    }

    // Docker: the command, and that no engine was available to try it.
    let docker = section(&readme, "## Docker");
    for needed in [
        "docker compose -f docker/docker-compose.yml up --build",
        "docker-compose",
        "no Docker\nengine",
    ] {
        assert!(
            words(docker).contains(&words(needed)),
            "README Docker section lacks {needed:?}"
        );
    }

    // Dependencies: every direct dependency of every workspace crate, one line each.
    let deps_section = section(&readme, "## Dependencies");
    let mut deps: BTreeSet<String> = BTreeSet::new();
    let mut manifests = vec![root.join("Cargo.toml"), root.join("tests/Cargo.toml")];
    for e in std::fs::read_dir(root.join("crates")).unwrap() {
        let m = e.unwrap().path().join("Cargo.toml");
        if m.is_file() {
            manifests.push(m);
        }
    }
    for m in &manifests {
        let body = std::fs::read_to_string(m).unwrap();
        let mut in_deps = false;
        for l in body.lines().map(str::trim) {
            if l.starts_with('[') {
                in_deps = l.ends_with("dependencies]");
                continue;
            }
            if !in_deps || l.is_empty() || l.starts_with('#') {
                continue;
            }
            let key = l.split(['=', '.']).next().unwrap().trim().to_string();
            // A renamed dependency is known by its package name too.
            let package = l
                .split("package = \"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string);
            deps.insert(package.unwrap_or(key));
        }
    }
    assert!(deps.len() > 15, "dependencies not found: {deps:?}");
    let undocumented: Vec<_> = deps
        .iter()
        .filter(|d| !deps_section.contains(&format!("`{d}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "README Dependencies does not explain {undocumented:?}"
    );
    let advisory = "we parse PEM with `rustls-pki-types` because rustls-pemfile is unmaintained (RUSTSEC-2025-0134)";
    assert!(
        words(deps_section).contains(advisory),
        "README Dependencies must say why rustls-pemfile is not used"
    );
    let pki_line = cargo
        .lines()
        .position(|l| l.starts_with("rustls-pki-types ="))
        .expect("rustls-pki-types in [workspace.dependencies]");
    let comment: String = cargo.lines().collect::<Vec<_>>()[..pki_line]
        .iter()
        .rev()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        comment.contains("rustls-pemfile") && words(&comment).contains(advisory),
        "the root Cargo.toml has no comment above rustls-pki-types saying why: {comment:?}"
    );
}

#[test]
fn the_docs_scan_leaves_out_test_items_only() {
    let src = r##"
fn before() { get("A_VAR"); }
#[cfg(test)]
mod tests {
    fn t() { let c = '}'; let s = "}{"; let r = r#"{"x": "}"}"#; get("TEST_VAR"); }
    // a comment with a brace }
}
#[cfg(test)]
mod props;
#[cfg(test)]
use std::{fmt, io};
fn after<'a>(x: &'a str) { get("LATER_VAR"); }
"##;
    let kept = without_test_items(src);
    assert!(
        kept.contains("A_VAR") && kept.contains("LATER_VAR"),
        "{kept}"
    );
    assert!(
        !kept.contains("TEST_VAR") && !kept.contains("props") && !kept.contains("fmt"),
        "{kept}"
    );
}

#[test]
fn readme_monitoring_names_the_endpoints_and_its_scrape_config_passes_promtool() {
    let readme = read("README.md");
    let part = section(&readme, "## Monitoring");
    for needed in [
        "--metrics-addr",
        "COLLECTOR_METRICS_ADDR",
        "DEVICE_SIM_METRICS_ADDR",
        "/metrics",
        "/healthz",
        "/readyz",
        "collector probe",
        "docker/docker-compose.monitoring.yml",
        "docker/grafana/dashboards/mqtt-collector.json",
        "no passwords",
        "device id",
        "warning",
    ] {
        assert!(
            words(part).contains(&words(needed)),
            "README Monitoring lacks {needed:?}"
        );
    }
    // Every metric name of the contract (section 8), as the binaries expose it.
    for name in [
        "mqtt_collector_connected",
        "mqtt_collector_messages_received_total",
        "mqtt_collector_messages_stored_total",
        "mqtt_collector_messages_duplicate_total",
        "mqtt_collector_messages_rejected_total",
        "mqtt_collector_store_errors_total",
        "mqtt_collector_commit_duration_seconds",
        "mqtt_collector_publish_to_commit_seconds",
        "mqtt_collector_reconnects_total",
        "device_sim_devices_connected",
        "device_sim_messages_generated_total",
        "device_sim_messages_acked_total",
        "device_sim_messages_evicted_total",
        "device_sim_queue_depth",
        "device_sim_reconnects_total",
        "device_sim_publish_to_ack_seconds",
    ] {
        assert!(
            part.contains(&format!("`{name}")),
            "README Monitoring does not name {name}"
        );
    }
    // The scrape_configs snippet is a configuration Prometheus accepts.
    let yaml = part
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README Monitoring has a ```yaml prometheus.yml snippet");
    assert!(yaml.contains("scrape_configs:"), "{yaml}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, yaml).unwrap();
    let out = crate::kit::tool("promtool")
        .args(["check", "config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check config on README's snippet: {}",
        text(&out)
    );
}
