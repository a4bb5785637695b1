//! Documentation against the code: the env examples list exactly the variables
//! the binaries read, and the troubleshooting table quotes real messages.

use crate::kit::{repo, vars_read_by};
use std::collections::BTreeSet;
use std::path::Path;

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
