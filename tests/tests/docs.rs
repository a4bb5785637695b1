//! Documentation against the code: nothing points outside the repository, the
//! reference (docs/reference.md) names every variable, flag and column, the README
//! keeps its operator sections, the env examples list exactly the variables the
//! binaries read, and the troubleshooting table quotes real messages.

use crate::kit::{repo, text, tracked_files, vars_read_by};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text of the section of a Markdown document under the heading that starts
/// with `heading` (e.g. `## Docker`), up to the next heading of the same or a higher level.
pub fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .lines()
        .scan(0, |pos, l| {
            let at = *pos;
            *pos += l.len() + 1;
            Some((at, l))
        })
        .find(|(_, l)| l.starts_with(heading))
        .unwrap_or_else(|| panic!("no heading {heading:?}"))
        .0;
    let body = &doc[start..];
    let mut end = body.len();
    let mut pos = body.find('\n').map_or(body.len(), |i| i + 1);
    let mut in_code = false;
    for l in body[pos.min(body.len())..].lines() {
        if l.starts_with("```") {
            in_code = !in_code;
        }
        let hashes = l.chars().take_while(|c| *c == '#').count();
        if !in_code && hashes > 0 && hashes <= level && l[hashes..].starts_with(' ') {
            end = pos;
            break;
        }
        pos += l.len() + 1;
    }
    &body[..end.min(body.len())]
}

/// `s` with every run of whitespace (line breaks, indentation) made one space.
fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
/// its submodules), each without its test module, joined.
fn store_sources() -> String {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = repo().join("crates/collector/src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.retain(|f| {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        (rel == "store.rs" || rel.starts_with("store/")) && !rel.ends_with("tests.rs")
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

/// Every `CREATE TABLE` of the collector's SQLite store with its column names,
/// plus any column added later with `ALTER TABLE … ADD COLUMN`.
fn store_tables() -> Vec<(String, Vec<String>)> {
    let src = store_sources();
    let src = src.as_str();
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("CREATE TABLE") {
        let after = &rest[i + "CREATE TABLE".len()..];
        let open = after.find('(').unwrap();
        let name = after[..open]
            .split_whitespace()
            .last()
            .unwrap()
            .trim_matches('"')
            .to_string();
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

    // Tables and columns: each table has its own section naming every column.
    let tables = store_tables();
    let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["telemetry", "rejected", "counters"] {
        assert!(
            names.contains(&want),
            "store.rs has no table {want}: {names:?}"
        );
    }
    for (table, columns) in &tables {
        assert!(
            columns.len() >= 2,
            "{table}: columns not found: {columns:?}"
        );
        let part = section(&reference, &format!("### Table `{table}`"));
        for c in columns {
            assert!(
                part.contains(&format!("| `{c}` |")),
                "docs/reference.md, table `{table}`, does not describe column `{c}`"
            );
        }
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
        "--json",
        "PostgreSQL",
        "InfluxDB",
        "planned",
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

/// `KEY` of every `KEY=value` or `# KEY=value` line of an env file.
fn env_file_vars(path: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#').trim_start();
            let (k, _) = l.split_once('=')?;
            (!k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
            .then(|| k.to_string())
        })
        .collect()
}

#[test]
fn env_examples_list_every_variable_and_only_variables_the_code_reads() {
    let root = repo();
    let core: BTreeSet<String> = mqtt_core::settings::VARIABLES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let core_read = vars_read_by(&root.join("crates/mqtt-core"));
    assert!(
        core.is_subset(&core_read),
        "the scan of mqtt-core misses variables of VARIABLES: {:?}",
        core.difference(&core_read).collect::<Vec<_>>()
    );
    let collector: BTreeSet<String> = core_read
        .union(&vars_read_by(&root.join("crates/collector")))
        .cloned()
        .collect();
    let device: BTreeSet<String> = core_read
        .union(&vars_read_by(&root.join("crates/device-sim")))
        .cloned()
        .collect();
    for contract_var in ["COLLECTOR_DB", "MQTT_TOPICS"] {
        assert!(
            collector.contains(contract_var),
            "the collector no longer reads {contract_var}"
        );
    }
    let all: BTreeSet<String> = collector.union(&device).cloned().collect();
    // RUST_LOG comes from the process environment only, never from an env file.
    let from_files = |s: &BTreeSet<String>| -> BTreeSet<String> {
        s.iter().filter(|v| *v != "RUST_LOG").cloned().collect()
    };

    let cases = [
        ("env.example", &collector),
        ("env.example.device", &device),
        ("env.example.universal", &all),
    ];
    for (name, reads) in cases {
        let path = root.join(name);
        let listed = env_file_vars(&path);
        let missing: Vec<_> = from_files(reads).difference(&listed).cloned().collect();
        assert!(missing.is_empty(), "{name} does not mention {missing:?}");
        let unknown: Vec<_> = listed.difference(reads).cloned().collect();
        assert!(
            unknown.is_empty(),
            "{name} lists {unknown:?}, which the code does not read"
        );

        mqtt_core::Env::load(Some(&path))
            .unwrap_or_else(|e| panic!("the binaries cannot load {name}: {e}"));
        // As shipped, the example is a working plain-TCP configuration.
        let pairs: Vec<(String, String)> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let settings = mqtt_core::Settings::from_env(&mqtt_core::Env::from_pairs(pairs.clone()))
            .unwrap_or_else(|e| panic!("{name} as shipped is not a valid configuration: {e}"));
        assert!(
            settings.tls.is_none() && settings.port == 1883,
            "{name}: not plain TCP on 1883"
        );
        assert!(
            !pairs
                .iter()
                .any(|(k, _)| k == "MQTT_PASSWORD" || k == "MQTT_CERTFILE"),
            "{name} must not require credentials or certificates"
        );
        // Every variable carries its explanation and default.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let var_of = |l: &str| -> Option<String> {
            let k = l.trim_start_matches('#').trim_start().split_once('=')?.0;
            (!k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
            .then(|| k.to_string())
        };
        for var in &listed {
            let i = lines
                .iter()
                .position(|l| var_of(l).as_ref() == Some(var))
                .unwrap();
            // The comment block above the group of variable lines this one belongs to.
            let comment: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .skip_while(|l| var_of(l).is_some())
                .take_while(|l| l.starts_with('#'))
                .copied()
                .collect();
            assert!(
                comment.iter().any(|l| l.contains("Default")),
                "{name}: {var} has no comment stating its default"
            );
        }
    }
    // device-sim gives every device its own client id; an example that sets one would clash.
    for name in ["env.example.device", "env.example.universal"] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        assert!(
            !text.lines().any(|l| l.starts_with("MQTT_CLIENT_ID=")),
            "{name} sets MQTT_CLIENT_ID for device-sim"
        );
    }
    // The compose env files, too, only hold variables their binary reads.
    for (name, reads) in [
        ("docker/collector.env", &collector),
        ("docker/device-sim.env", &device),
    ] {
        let listed = env_file_vars(&root.join(name));
        let unknown: Vec<_> = listed.difference(reads).cloned().collect();
        assert!(
            unknown.is_empty(),
            "{name} lists {unknown:?}, which the code does not read"
        );
    }
}

/// The string literals of a Rust source, unescaped, with `\`-newline continuations
/// joined and the `{fix_ca}` hint of connection.rs spelled out, as they are printed.
/// Test modules are left out: their expectations are not what the program prints.
fn message_templates(src: &str) -> Vec<String> {
    let src = src.split("#[cfg(test)]").next().unwrap();
    fn literals(src: &str) -> Vec<String> {
        let b: Vec<char> = src.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            // A `'"'` char literal is not the start of a string.
            if b[i] == '"' && !(i > 0 && b[i - 1] == '\'' && b.get(i + 1) == Some(&'\'')) {
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != '"' {
                    if b[i] == '\\' && i + 1 < b.len() {
                        i += 1;
                        match b[i] {
                            'n' => s.push('\n'),
                            '\n' => {
                                while i + 1 < b.len() && b[i + 1].is_whitespace() {
                                    i += 1;
                                }
                            }
                            c => s.push(c),
                        }
                    } else {
                        s.push(b[i]);
                    }
                    i += 1;
                }
                out.push(s);
            }
            i += 1;
        }
        out
    }
    let lits = literals(src);
    let fix_ca = src
        .find("let fix_ca = ")
        .map(|i| literals(&src[i..])[0].clone());
    lits.into_iter()
        .map(|l| match &fix_ca {
            Some(f) => l.replace("{fix_ca}", f),
            None => l,
        })
        .collect()
}

/// Whether `msg` is what the format string `template` prints for some arguments:
/// each `{…}` placeholder matches any text (including the guide's `…`).
fn matches_template(template: &str, msg: &str) -> bool {
    let t = template.replace("{{", "\u{1}").replace("}}", "\u{2}");
    let mut parts = Vec::new();
    let mut rest = t.as_str();
    while let Some(open) = rest.find('{') {
        parts.push(&rest[..open]);
        rest = match rest[open..].find('}') {
            Some(close) => &rest[open + close + 1..],
            None => "",
        };
    }
    parts.push(rest);
    let parts: Vec<String> = parts
        .iter()
        .map(|p| p.replace('\u{1}', "{").replace('\u{2}', "}"))
        .collect();
    let msg = msg.trim();
    let (first, last) = (parts[0].trim_start(), parts[parts.len() - 1].trim_end());
    if parts.len() == 1 {
        return msg == first.trim_end();
    }
    if parts.iter().map(|p| p.trim().len()).sum::<usize>() < 12 {
        return false; // "{}" or "{var}" alone would match anything.
    }
    if !msg.starts_with(first) || !msg.ends_with(last) || msg.len() < first.len() + last.len() {
        return false;
    }
    let mut hay = &msg[first.len()..msg.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match hay.find(p.as_str()) {
            Some(i) => hay = &hay[i + p.len()..],
            None => return false,
        }
    }
    true
}

#[test]
fn troubleshooting_table_quotes_the_real_messages() {
    let root = repo();
    let mut templates = Vec::new();
    for f in ["connection.rs", "settings.rs", "tls.rs", "certgen.rs"] {
        let src = std::fs::read_to_string(root.join("crates/mqtt-core/src").join(f)).unwrap();
        templates.extend(message_templates(&src));
    }
    let known = |msg: &str| templates.iter().any(|t| matches_template(t, msg));

    let guide = std::fs::read_to_string(root.join("MQTT_TLS_SETUP.md")).unwrap();
    let start = guide
        .find("## 5. Troubleshooting")
        .expect("MQTT_TLS_SETUP.md has a troubleshooting section");
    let section = &guide[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut quoted = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cell = &row[2..];
        let ticks = if cell.starts_with("``") { "``" } else { "`" };
        let inner = &cell[ticks.len()..];
        let end = inner.find(ticks).expect("a closed code span");
        quoted.push(inner[..end].trim().to_string());
    }
    assert!(
        quoted.len() >= 25,
        "the table quotes only {} messages",
        quoted.len()
    );
    let mut explained = quoted.clone();
    for msg in &quoted {
        assert!(
            known(msg),
            "MQTT_TLS_SETUP.md quotes a message the code does not print:\n{msg}"
        );
        // The retry line wraps a reason, which must be real too.
        if let Some(inner) = msg.strip_prefix("connection failed: ") {
            let reason = &inner[..inner.rfind("; retrying in ").unwrap()];
            assert!(
                known(reason),
                "unknown retry reason in MQTT_TLS_SETUP.md: {reason}"
            );
            explained.push(reason.to_string());
        }
    }
    let refusal = "docker/mosquitto/config/certs/ca.crt already exists; pass --force to overwrite the whole set (nothing was written)";
    assert!(
        section.contains(refusal) && known(refusal),
        "the certgen refusal is not quoted as printed"
    );
    // Every failure the connection layer can report about the broker is in the table.
    let connection =
        std::fs::read_to_string(root.join("crates/mqtt-core/src/connection.rs")).unwrap();
    for cause in message_templates(&connection)
        .iter()
        .filter(|t| t.starts_with("TLS: the broker") || t.starts_with("the broker "))
    {
        assert!(
            explained.iter().any(|q| matches_template(cause, q)),
            "MQTT_TLS_SETUP.md does not explain {cause:?}"
        );
    }
}
