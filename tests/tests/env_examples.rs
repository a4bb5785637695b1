//! The env examples (env.example, env.example.device, env.example.universal) and
//! the compose env files list exactly the variables the binaries read, each with
//! its default, and the examples load as a working configuration.

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
        ("docker/collector-postgres.env", &collector),
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
