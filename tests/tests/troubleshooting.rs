//! MQTT_TLS_SETUP.md's troubleshooting table quotes the messages the code prints,
//! and explains every failure the connection layer can report about the broker.

use crate::kit::repo;

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
