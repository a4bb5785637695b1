//! Helpers shared by the operator-kit tests (certgen, broker_config, compose,
//! docs, env_examples, troubleshooting, demo, tls_guide): the repository root,
//! tools that must be installed, process output for messages, the scan of which
//! variables the code reads, tracked files, and Markdown sections.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Exit status, stdout and stderr of a finished process, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tool the test cannot do without: a clear failure, never a silent skip.
pub fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not on PATH: install it (.ci/run does: apt-get install mosquitto mosquitto-clients openssl docker-compose)"
    );
    Command::new(name)
}

/// `openssl ARGS`; its stdout (fails the test when openssl fails).
pub fn openssl(args: &[&str]) -> String {
    let out = tool("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Permission bits of a file.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs `mosquitto_pub` and returns its output.
pub fn mosquitto_pub(args: &[&str]) -> Output {
    let mut cmd = tool("mosquitto_pub");
    cmd.args(args);
    e2e::run_with_timeout(&mut cmd, Duration::from_secs(15))
}

/// Every `.rs` file below `dir`.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files
}

/// Variables the sources of `crate_dir` read: a whole string literal of an
/// upper-case name right after `get(`, `bool(`, `parse(`, `parse::<T>(`,
/// `seconds(env, `, `var(`, `var_os(` or clap's `env = `. Test items are left out
/// (see [`without_test_items`]).
pub fn vars_read_by(crate_dir: &Path) -> BTreeSet<String> {
    let files = rust_files(&crate_dir.join("src"));
    let mut vars = BTreeSet::new();
    for f in files {
        let src = without_test_items(&std::fs::read_to_string(&f).unwrap());
        let src = src.as_str();
        let mut rest = src;
        while let Some(i) = rest.find('"') {
            let after = &rest[i + 1..];
            let Some(j) = after.find('"') else { break };
            let lit = &after[..j];
            let before: String = rest[..i]
                .chars()
                .rev()
                .take(40)
                .collect::<String>()
                .chars()
                .rev()
                .collect();
            let before = before.trim_end();
            let reads = [
                "get(", "bool(", "parse(", "var(", "var_os(", "env =", "env,",
            ]
            .iter()
            .any(|p| before.ends_with(p))
                || (before.ends_with(">(") && before.contains("parse::<"))
                || flag_then_variable(before);
            if reads
                && lit.len() > 2
                && lit.contains('_')
                && lit
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                vars.insert(lit.to_string());
            }
            rest = &after[j + 1..];
        }
        if src.contains("from_default_env") {
            // tracing-subscriber's EnvFilter reads RUST_LOG.
            vars.insert("RUST_LOG".into());
        }
    }
    vars
}

/// Rust source without its `#[cfg(test)]` items: each attribute and the item it
/// marks (`mod tests { … }`, `mod props;`, a test-only `fn` or `use`), found by
/// matching braces outside string and character literals and comments. Code after
/// a test module stays: a function placed below `mod tests` is still read.
pub fn without_test_items(src: &str) -> String {
    const ATTR: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find(ATTR) {
        out.push_str(&rest[..i]);
        let item = &rest[i + ATTR.len()..];
        let b = item.as_bytes();
        let (mut j, mut depth) = (0, 0usize);
        let end = loop {
            if j >= b.len() {
                break b.len();
            }
            match b[j] {
                b'r' if item[j..].starts_with("r#\"") => {
                    j += item[j..].find("\"#").unwrap_or(b.len() - j) + 1;
                }
                b'"' => {
                    j += 1;
                    while j < b.len() && b[j] != b'"' {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                }
                b'\'' if j + 2 < b.len() && (b[j + 2] == b'\'' || b[j + 1] == b'\\') => {
                    // A character literal ('{', '"', '\''); a lifetime has no closing quote.
                    j += if b[j + 1] == b'\\' { 3 } else { 2 };
                }
                b'/' if b.get(j + 1) == Some(&b'/') => {
                    while j < b.len() && b[j] != b'\n' {
                        j += 1;
                    }
                }
                b';' if depth == 0 => break j + 1,
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        let after = item[j + 1..].trim_start();
                        break if after.starts_with(';') {
                            item.len() - after.len() + 1
                        } else {
                            j + 1
                        };
                    }
                }
                _ => {}
            }
            j += 1;
        };
        rest = &item[end.min(item.len())..];
    }
    out.push_str(rest);
    out
}

/// Whether the text before a literal ends with `&args.FIELD,`: the collector's
/// store settings are read as `pick(&args.postgres, "COLLECTOR_POSTGRES")`, the flag
/// first, then the variable (also in `(&args.influx_db, "INFLUXDB_DB")` pairs).
fn flag_then_variable(before: &str) -> bool {
    let Some(head) = before.strip_suffix(',') else {
        return false;
    };
    let field_start = head
        .rfind(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .map_or(0, |i| i + 1);
    field_start < head.len() && head[..field_start].ends_with("&args.")
}

/// The names in the `VARIABLES` constants (`const VARIABLES: &[&str] = &[…];`) of
/// the sources of `crate_dir`: the variables a crate says it reads, so a test can
/// check that [`vars_read_by`] still finds each of them.
pub fn declared_vars(crate_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![crate_dir.join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let src = without_test_items(&std::fs::read_to_string(&p).unwrap());
            let mut rest = src.as_str();
            while let Some(i) = rest.find("const VARIABLES: &[&str] = &[") {
                let body = &rest[i..];
                let end = body.find("];").unwrap_or(body.len());
                for lit in body[..end].split('"').skip(1).step_by(2) {
                    out.insert(lit.to_string());
                }
                rest = &body[end..];
            }
        }
    }
    out
}

/// The files git tracks in the repository, relative to its root.
pub fn tracked_files() -> Vec<PathBuf> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(repo())
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git ls-files: {}", text(&out));
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
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
pub fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
