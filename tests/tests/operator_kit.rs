//! The operator kit: `collector certgen` on real openssl and a real Mosquitto, the
//! shipped broker configuration (mosquitto.conf, acl, the compose init script and
//! its password file), the compose file, and the env examples against the code.

use e2e::{command, free_port, run_with_timeout, Broker};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `collector certgen ARGS` run in `cwd`.
fn certgen(cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = command("collector", cwd, &[]);
    cmd.arg("certgen").args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(30))
}

/// A tool the test cannot do without: a clear failure, never a silent skip.
fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not on PATH: install it (.ci/run does: apt-get install mosquitto mosquitto-clients openssl docker-compose)"
    );
    Command::new(name)
}

fn openssl(args: &[&str]) -> String {
    let out = tool("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
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

/// Runs `mosquitto_pub` and returns its output.
fn mosquitto_pub(args: &[&str]) -> Output {
    let mut cmd = tool("mosquitto_pub");
    cmd.args(args);
    run_with_timeout(&mut cmd, Duration::from_secs(15))
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

/// `mosquitto_sub -d -v` that records the messages it receives and whether its SUBACK came.
struct Watcher {
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    _child: e2e::ChildGuard,
}

impl Watcher {
    fn start(args: &[&str]) -> Watcher {
        // Line buffering, or the debug lines that report the SUBACK stay in stdio's buffer.
        let _ = tool("mosquitto_sub");
        let mut cmd = tool("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "-d", "-v", "-q", "1"])
            .args(args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*l;
                lock.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let w = Watcher {
            lines,
            _child: e2e::ChildGuard { child: Some(child) },
        };
        assert!(
            w.wait(Duration::from_secs(10), |l| l
                .iter()
                .any(|s| s.starts_with("Subscribed"))),
            "mosquitto_sub {args:?} did not subscribe: {:?}",
            w.lines.0.lock().unwrap()
        );
        w
    }

    fn wait(&self, timeout: Duration, cond: impl Fn(&[String]) -> bool) -> bool {
        let (lock, cv) = &*self.lines;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv.wait_timeout_while(guard, timeout, |l| !cond(l)).unwrap();
        cond(&guard)
    }

    /// Received messages as "topic payload" lines.
    fn messages(&self) -> Vec<String> {
        self.lines
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| is_message(l))
            .cloned()
            .collect()
    }

    fn wait_message(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        self.wait(timeout, |l| {
            l.iter().filter(|s| is_message(s)).any(|s| pred(s))
        })
    }
}

/// mosquitto_sub's debug lines start with "Client " or "Subscribed"; the rest are messages.
fn is_message(line: &str) -> bool {
    !line.starts_with("Client ") && !line.starts_with("Subscribed")
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The value of `key` in a KEY=value file.
fn env_value(file: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{} sets no {key}", file.display()))
        .to_string()
}

#[test]
fn shipped_broker_config_enforces_tls_passwords_and_the_acl() {
    let root = repo();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for d in ["certs", "mosquitto/secrets", "mosquitto/data", "client-ca"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }

    // The compose init service's own script: certificates, password file
    // (mosquitto_passwd -c -b from the compose env files), broker copies.
    let collector_bin = e2e::bin("collector");
    let path = format!(
        "{}:{}",
        collector_bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let uid = unsafe { libc::getuid() }.to_string();
    let mut init = Command::new("sh");
    init.arg(root.join("docker/mosquitto/init.sh"))
        .env("PATH", &path)
        .env("CERTS", t.join("certs"))
        .env("SECRETS", t.join("mosquitto/secrets"))
        .env("CLIENT_CA", t.join("client-ca"))
        .env("ENV_DIR", root.join("docker"))
        .env("ACL", root.join("docker/mosquitto/config/acl"))
        .env("BROKER_UID", &uid)
        .env("CERTGEN_HOSTS", "");
    let out = run_with_timeout(&mut init, Duration::from_secs(30));
    assert!(out.status.success(), "init.sh failed: {}", text(&out));
    let secrets = t.join("mosquitto/secrets");
    for (f, m) in [
        ("passwd", 0o600),
        ("server.key", 0o600),
        ("acl", 0o600),
        ("healthcheck.password", 0o600),
        ("ca.crt", 0o644),
    ] {
        assert_eq!(mode(&secrets.join(f)), m, "{f}");
    }
    assert!(t.join("client-ca/ca.crt").is_file());
    assert!(
        !t.join("client-ca/ca.key").exists(),
        "the CA key must not reach the clients"
    );

    // The shipped mosquitto.conf with its paths moved into the temporary copy and
    // its listeners onto free loopback ports.
    let (plain, tls) = (free_port(), free_port());
    let shipped =
        std::fs::read_to_string(root.join("docker/mosquitto/config/mosquitto.conf")).unwrap();
    for needed in [
        "allow_anonymous false",
        "password_file",
        "acl_file",
        "persistence true",
        "#require_certificate true",
        "#use_identity_as_username true",
    ] {
        assert!(shipped.contains(needed), "mosquitto.conf lacks {needed:?}");
    }
    for limit in [
        "max_connections",
        "max_queued_messages",
        "max_inflight_messages",
        "persistent_client_expiration",
        "max_packet_size",
    ] {
        let lines: Vec<&str> = shipped.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.starts_with(&format!("{limit} ")))
            .unwrap_or_else(|| panic!("mosquitto.conf does not set {limit}"));
        assert!(
            i > 0 && lines[i - 1].starts_with('#'),
            "{limit} has no comment above it"
        );
    }
    let mut conf = format!("user root\n{}", shipped)
        .replace("/mosquitto/", &format!("{}/mosquitto/", t.display()))
        .replace("listener 1883\n", &format!("listener {plain} 127.0.0.1\n"))
        .replace("listener 8883\n", &format!("listener {tls} 127.0.0.1\n"))
        .replace(
            "log_dest stdout",
            &format!("log_dest file {}/mosquitto.log", t.display()),
        );
    conf.push('\n');
    assert!(
        conf.lines().filter(|l| l.starts_with("listener ")).count() == 2
            && conf.contains(&format!("listener {tls} 127.0.0.1")),
        "the shipped listeners are not `listener 1883` and `listener 8883`:\n{conf}"
    );
    let _broker = Broker::start_raw(&conf, &[plain, tls]);

    let ca = secrets.join("ca.crt").display().to_string();
    let tls_port = tls.to_string();
    let collector_env = root.join("docker/collector.env");
    let device_env = root.join("docker/device-sim.env");
    let (c_user, c_pass) = (
        env_value(&collector_env, "MQTT_USERNAME"),
        env_value(&collector_env, "MQTT_PASSWORD"),
    );
    let (d_user, d_pass) = (
        env_value(&device_env, "MQTT_USERNAME"),
        env_value(&device_env, "MQTT_PASSWORD"),
    );
    let tls_args = |user: &str, pass: &str, id: &str| -> Vec<String> {
        [
            "-h",
            "localhost",
            "-p",
            &tls_port,
            "--cafile",
            &ca,
            "-u",
            user,
            "-P",
            pass,
            "-i",
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // The real collector with docker/collector.env, pointed at this broker.
    let mut collector_env: Vec<(String, String)> = std::fs::read_to_string(&collector_env)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let db = t.join("collector.db");
    for (k, v) in [
        ("MQTT_BROKER_HOST", "localhost".to_string()),
        ("MQTT_BROKER_PORT", tls_port.clone()),
        ("MQTT_CA_CERTS", ca.clone()),
        ("COLLECTOR_DB", db.display().to_string()),
    ] {
        collector_env.retain(|(key, _)| key != k);
        collector_env.push((k.to_string(), v));
    }
    let mut real_collector = e2e::spawn(&mut command("collector", t, &collector_env));
    let rows = |sql: &str| -> i64 {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
            .unwrap_or(0)
    };
    // Ready once a probe published by a device reaches the collector's database.
    let probe = tls_args(&d_user, &d_pass, "probe_01");
    let mut args = strs(&probe);
    args.extend([
        "-q",
        "1",
        "-t",
        "device/data/probe_01",
        "-m",
        r#"{"speed": 1.0}"#,
    ]);
    assert!(
        e2e::wait_until(Duration::from_secs(20), || {
            assert!(real_collector.is_running(), "the collector exited");
            mosquitto_pub(&args);
            e2e::wait_until(Duration::from_millis(300), || {
                rows("SELECT count(*) FROM telemetry WHERE device_id = 'probe_01'") > 0
            })
        }),
        "the collector with docker/collector.env stored nothing"
    );

    // The collector's view, through TLS with its password.
    let collector_args = tls_args(&c_user, &c_pass, "kit-collector");
    let mut args = strs(&collector_args);
    args.extend(["-t", "device/data/+", "-t", "vehicle/speed/+"]);
    let collector = Watcher::start(&args);
    // Another authenticated user (a device) trying to read every device's topics.
    let eaves_args = tls_args(&d_user, &d_pass, "eavesdropper_01");
    let mut args = strs(&eaves_args);
    args.extend(["-t", "device/data/+", "-t", "vehicle/speed/+"]);
    let eavesdropper = Watcher::start(&args);

    // device-sim through the TLS listener with the compose credentials.
    let env: Vec<(String, String)> = [
        ("MQTT_USE_TLS", "true"),
        ("MQTT_CA_CERTS", ca.as_str()),
        ("MQTT_BROKER_HOST", "localhost"),
        ("MQTT_BROKER_PORT", tls_port.as_str()),
        ("MQTT_USERNAME", d_user.as_str()),
        ("MQTT_PASSWORD", d_pass.as_str()),
        ("MQTT_RECONNECT_MIN_DELAY", "0.2"),
        ("MQTT_RECONNECT_MAX_DELAY", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sim_dir = tempfile::tempdir().unwrap();
    let mut sim = command("device-sim", sim_dir.path(), &env);
    sim.args(["--count", "2", "--messages", "3", "--interval", "50ms"]);
    let out = run_with_timeout(&mut sim, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "device-sim through the shipped config: {}",
        text(&out)
    );
    assert!(
        collector.wait(Duration::from_secs(10), |l| l
            .iter()
            .filter(|s| is_message(s))
            .count()
            >= 6),
        "the collector user did not get 2 x 3 readings: {:?}",
        collector.messages()
    );
    assert!(
        e2e::wait_until(Duration::from_secs(10), || rows(
            "SELECT count(*) FROM telemetry WHERE device_id IN ('vehicle_01', 'vehicle_02')"
        ) == 6),
        "the collector did not store 2 x 3 readings"
    );
    for m in collector.messages() {
        let (topic, payload) = m.split_once(' ').unwrap();
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            topic,
            format!("device/data/{}", v["device_id"].as_str().unwrap())
        );
    }

    // vehicle_01 forges readings for vehicle_02 on both topics, then publishes its own marker.
    let forger = tls_args(&d_user, &d_pass, "vehicle_01");
    for topic in ["device/data/vehicle_02", "vehicle/speed/vehicle_02"] {
        let mut args = strs(&forger);
        args.extend(["-q", "1", "-t", topic, "-m", "FORGED"]);
        let out = mosquitto_pub(&args);
        assert!(out.status.success(), "{}", text(&out));
    }
    let mut args = strs(&forger);
    args.extend(["-q", "1", "-t", "device/data/vehicle_01", "-m", "MARKER"]);
    let out = mosquitto_pub(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        collector.wait_message(Duration::from_secs(10), |l| l.ends_with(" MARKER")),
        "a device's publish to its own topic did not arrive: {:?}",
        collector.messages()
    );
    // Both forged messages were handled before the marker, which came later from the same client.
    assert!(
        !collector.messages().iter().any(|m| m.ends_with(" FORGED")),
        "a device published to another device's topic: {:?}",
        collector.messages()
    );
    assert!(
        e2e::wait_until(Duration::from_secs(10), || rows(
            "SELECT count(*) FROM rejected WHERE CAST(payload AS TEXT) = 'MARKER'"
        ) == 1),
        "the collector did not keep the (non-JSON) marker aside"
    );
    assert_eq!(
        rows("SELECT (SELECT count(*) FROM telemetry WHERE device_id = 'vehicle_02') + (SELECT count(*) FROM rejected WHERE CAST(payload AS TEXT) = 'FORGED')"),
        3,
        "the collector received a forged message"
    );
    real_collector.signal(libc::SIGTERM);
    let out = real_collector.wait_output(Duration::from_secs(20)).unwrap();
    assert!(
        out.status.success(),
        "collector after SIGTERM: {}",
        text(&out)
    );
    // The broker handed the marker to every subscriber at once; give a wrong copy a moment to show up.
    assert!(
        !eavesdropper.wait_message(Duration::from_millis(500), |_| true),
        "a user other than the collector read device topics: {:?}",
        eavesdropper.messages()
    );

    // Anonymous clients are refused on both listeners.
    let anon_tls = mosquitto_pub(&[
        "-h",
        "localhost",
        "-p",
        &tls_port,
        "--cafile",
        &ca,
        "-t",
        "device/data/x",
        "-m",
        "1",
    ]);
    assert!(
        !anon_tls.status.success(),
        "anonymous TLS client accepted: {}",
        text(&anon_tls)
    );
    assert!(
        text(&anon_tls).contains("not authorised"),
        "{}",
        text(&anon_tls)
    );
    let anon_plain = mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &plain.to_string(),
        "-t",
        "device/data/x",
        "-m",
        "1",
    ]);
    assert!(
        !anon_plain.status.success(),
        "anonymous plain client accepted: {}",
        text(&anon_plain)
    );
    let wrong = mosquitto_pub(&[
        "-h",
        "localhost",
        "-p",
        &tls_port,
        "--cafile",
        &ca,
        "-u",
        &c_user,
        "-P",
        "wrong",
        "-t",
        "x",
        "-m",
        "1",
    ]);
    assert!(!wrong.status.success(), "a wrong password was accepted");

    // The compose file's health check of the broker: a TLS login as `healthcheck`.
    let hc_pass = std::fs::read_to_string(secrets.join("healthcheck.password")).unwrap();
    let mut hc = tool("mosquitto_sub");
    hc.args([
        "-h",
        "localhost",
        "-p",
        &tls_port,
        "--cafile",
        &ca,
        "-u",
        "healthcheck",
        "-P",
        hc_pass.trim(),
    ])
    .args(["-t", "$SYS/broker/version", "-C", "1", "-W", "5"]);
    let out = run_with_timeout(&mut hc, Duration::from_secs(15));
    assert!(
        out.status.success(),
        "the broker health check fails: {}",
        text(&out)
    );
    let compose = std::fs::read_to_string(root.join("docker/docker-compose.yml")).unwrap();
    assert!(
        compose.contains("-u healthcheck") && compose.contains("$$SYS/broker/version"),
        "the compose health check is not the one tested here"
    );
}

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

#[test]
fn compose_file_passes_docker_compose_config_and_mounts_only_what_exists() {
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
    let config = String::from_utf8_lossy(&out.stdout).into_owned();
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

/// Variables the sources of `crate_dir` read: a whole string literal of an
/// upper-case name right after `get(`, `bool(`, `parse(`, `parse::<T>(`,
/// `seconds(env, `, `var(`, `var_os(` or clap's `env = `. Test modules are left out.
fn vars_read_by(crate_dir: &Path) -> BTreeSet<String> {
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
    walk(&crate_dir.join("src"), &mut files);
    let mut vars = BTreeSet::new();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let src = src.split("#[cfg(test)]").next().unwrap();
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
                || (before.ends_with(">(") && before.contains("parse::<"));
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
