//! `collector certgen` on real openssl and a real Mosquitto, and the compose
//! kit's `generate_certs.sh` wrapper around it.

use crate::kit::{mode, mosquitto_pub, openssl, repo, text};
use e2e::{command, free_port, run_with_timeout, Broker};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

/// `collector certgen ARGS` run in `cwd`.
fn certgen(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = command("collector", cwd, &[]);
    cmd.arg("certgen").args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(30))
}

/// Every file of a directory with its contents, mode and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let meta = std::fs::metadata(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (
                    std::fs::read(&p).unwrap(),
                    mode(&p),
                    meta.modified().unwrap(),
                ),
            )
        })
        .collect()
}

#[test]
fn certgen_output_verifies_with_openssl_and_carries_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = certgen(
        dir.path(),
        &[
            "--out",
            "certs",
            "--host",
            "mqtt.example.com",
            "--host",
            "10.1.2.3",
            "--client",
            "vehicle_01",
            "--days",
            "30",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let certs = dir.path().join("certs");
    let names: BTreeSet<String> = snapshot(&certs).into_keys().collect();
    let want: BTreeSet<String> = [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "vehicle_01.crt",
        "vehicle_01.key",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
    for name in &want {
        assert!(
            stdout.contains(name.as_str()),
            "{name} not reported: {stdout}"
        );
        let want_mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&certs.join(name)), want_mode, "{name}");
    }
    assert!(
        stdout.contains("Next steps") && stdout.contains("MQTT_CA_CERTS"),
        "{stdout}"
    );

    let ca = certs.join("ca.crt");
    for leaf in ["server.crt", "vehicle_01.crt"] {
        let leaf = certs.join(leaf);
        let verified = openssl(&[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            leaf.to_str().unwrap(),
        ]);
        assert!(verified.trim_end().ends_with(": OK"), "{verified}");
    }
    let server = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        certs.join("server.crt").to_str().unwrap(),
    ]);
    for san in [
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "DNS:mqtt.example.com",
        "IP Address:10.1.2.3",
        "TLS Web Server Authentication",
    ] {
        assert!(server.contains(san), "{san} missing:\n{server}");
    }
    let client = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        certs.join("vehicle_01.crt").to_str().unwrap(),
    ]);
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    let ca_text = openssl(&["x509", "-noout", "-text", "-in", ca.to_str().unwrap()]);
    assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
    let subjects: BTreeSet<String> = ["ca.crt", "server.crt", "vehicle_01.crt"]
        .iter()
        .map(|f| {
            openssl(&[
                "x509",
                "-noout",
                "-subject",
                "-in",
                certs.join(f).to_str().unwrap(),
            ])
        })
        .collect();
    assert_eq!(subjects.len(), 3, "subjects are not distinct: {subjects:?}");
    // The keys are the certificates' own.
    for (crt, key) in [
        ("server.crt", "server.key"),
        ("vehicle_01.crt", "vehicle_01.key"),
    ] {
        let from_cert = openssl(&[
            "x509",
            "-noout",
            "-pubkey",
            "-in",
            certs.join(crt).to_str().unwrap(),
        ]);
        let from_key = openssl(&["pkey", "-pubout", "-in", certs.join(key).to_str().unwrap()]);
        assert_eq!(from_cert, from_key, "{key} does not belong to {crt}");
    }
}

#[test]
fn certgen_never_overwrites_without_force_and_if_missing_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let first = certgen(dir.path(), &["--out", "certs", "--client", "vehicle_01"]);
    assert!(first.status.success(), "{}", text(&first));
    let before = snapshot(&certs);

    let again = certgen(dir.path(), &["--out", "certs"]);
    assert!(
        !again.status.success(),
        "second run succeeded: {}",
        text(&again)
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("certs/ca.crt") && err.contains("--force"),
        "the refusal must name the existing file and the way out: {err}"
    );
    assert_eq!(snapshot(&certs), before, "a refused run changed files");

    let keep = certgen(
        dir.path(),
        &["--out", "certs", "--if-missing", "--client", "vehicle_01"],
    );
    assert!(keep.status.success(), "{}", text(&keep));
    assert_eq!(
        snapshot(&certs),
        before,
        "--if-missing changed a complete set"
    );
    let keep = certgen(dir.path(), &["--out", "certs", "--if-missing"]);
    assert!(keep.status.success(), "{}", text(&keep));
    assert_eq!(snapshot(&certs), before);

    // A client the set does not have yet cannot be added to it without a new CA.
    let more = certgen(
        dir.path(),
        &["--out", "certs", "--if-missing", "--client", "vehicle_02"],
    );
    assert!(!more.status.success(), "{}", text(&more));
    assert_eq!(snapshot(&certs), before);

    // An incomplete set is not completed with certificates of another CA.
    std::fs::remove_file(certs.join("server.key")).unwrap();
    let partial = snapshot(&certs);
    let broken = certgen(dir.path(), &["--out", "certs", "--if-missing"]);
    assert!(!broken.status.success(), "{}", text(&broken));
    assert_eq!(snapshot(&certs), partial);

    let forced = certgen(dir.path(), &["--out", "certs", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    let after = snapshot(&certs);
    assert!(after.contains_key("server.key"));
    assert_ne!(
        after["ca.crt"].0, before["ca.crt"].0,
        "--force kept the old CA"
    );
    assert_eq!(after["server.key"].1, 0o600);
}

#[test]
fn generate_certs_script_writes_next_to_the_broker_config() {
    // A copy of the script in a scratch tree, so the repository's certs stay untouched.
    let tree = tempfile::tempdir().unwrap();
    let script = tree.path().join("docker/mosquitto/generate_certs.sh");
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    std::fs::copy(repo().join("docker/mosquitto/generate_certs.sh"), &script).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg(&script)
        .args(["--client", "vehicle_01"])
        .env("COLLECTOR", e2e::bin("collector"));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    let certs = tree.path().join("docker/mosquitto/config/certs");
    for f in ["ca.crt", "server.crt", "server.key", "vehicle_01.key"] {
        assert!(certs.join(f).is_file(), "{f} missing");
    }
    let server = openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        certs.join("server.crt").to_str().unwrap(),
    ]);
    assert!(
        server.contains("DNS:mosquitto"),
        "the compose host name is missing:\n{server}"
    );
}

#[test]
fn certgen_certificates_serve_a_real_broker_for_device_sim_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let out = certgen(dir.path(), &["--out", "certs", "--client", "vehicle_01"]);
    assert!(out.status.success(), "{}", text(&out));
    let certs = dir.path().join("certs");
    let p = |f: &str| certs.join(f).display().to_string();
    let (plain, tls, mtls) = (free_port(), free_port(), free_port());
    let conf = format!(
        "user root\nallow_anonymous true\npersistence false\nper_listener_settings false\n\
         log_dest file {log}\nlog_type all\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n\
         listener {mtls} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\nrequire_certificate true\n",
        log = dir.path().join("mosquitto.log").display(),
        ca = p("ca.crt"),
        crt = p("server.crt"),
        key = p("server.key"),
    );
    let broker = Broker::start_raw(&conf, &[plain, tls, mtls]);
    let sub = e2e::Subscriber::start(&broker, &["device/data/+", "kit/mtls"]);

    let env: Vec<(String, String)> = [
        ("MQTT_USE_TLS", "true".to_string()),
        ("MQTT_CA_CERTS", p("ca.crt")),
        ("MQTT_BROKER_HOST", "localhost".into()),
        ("MQTT_BROKER_PORT", tls.to_string()),
        ("MQTT_RECONNECT_MIN_DELAY", "0.2".into()),
        ("MQTT_RECONNECT_MAX_DELAY", "1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let sim_dir = tempfile::tempdir().unwrap();
    let mut sim = command("device-sim", sim_dir.path(), &env);
    sim.args(["--count", "1", "--messages", "3", "--interval", "50ms"]);
    let out = run_with_timeout(&mut sim, Duration::from_secs(30));
    assert!(out.status.success(), "device-sim over TLS: {}", text(&out));
    let msgs = sub.wait_for(3, Duration::from_secs(10));
    assert_eq!(
        e2e::seqs(&msgs).get("vehicle_01"),
        Some(&vec![1, 2, 3]),
        "received: {msgs:?}"
    );

    let port = mtls.to_string();
    let base = [
        "-h",
        "localhost",
        "-p",
        &port,
        "--cafile",
        &p("ca.crt"),
        "-q",
        "1",
        "-t",
        "kit/mtls",
    ];
    let refused = mosquitto_pub(&[&base[..], &["-m", "no-certificate"]].concat());
    assert!(
        !refused.status.success(),
        "a require_certificate listener accepted a client without certificate: {}",
        text(&refused)
    );
    let (crt, key) = (p("vehicle_01.crt"), p("vehicle_01.key"));
    let accepted = mosquitto_pub(
        &[
            &base[..],
            &["--cert", &crt, "--key", &key, "-m", "with-certificate"],
        ]
        .concat(),
    );
    assert!(
        accepted.status.success(),
        "client certificate refused: {}",
        text(&accepted)
    );
    assert!(
        sub.wait_until(Duration::from_secs(10), |m| m
            .iter()
            .any(|(_, v)| v == "with-certificate")),
        "the mutual TLS publish did not arrive: {:?}",
        sub.messages()
    );
    assert!(!sub.messages().iter().any(|(_, v)| v == "no-certificate"));
}
