//! The shipped broker configuration (docker/mosquitto/config/mosquitto.conf and
//! acl, the compose init script and its password file) on a real Mosquitto, with
//! the real collector and device-sim using the compose credentials.

use crate::kit::{mode, mosquitto_pub, repo, text, tool};
use e2e::{command, free_port, run_with_timeout, Broker};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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

/// Read (subscribe) or write (publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// One row of the ACL table: a user of the compose kit, the client id it connects
/// with, what it does on which topic or filter, and whether the shipped ACL allows it.
#[derive(Debug)]
struct AclCase {
    user: &'static str,
    client_id: &'static str,
    access: Access,
    topic: &'static str,
    allowed: bool,
}

const fn case(
    user: &'static str,
    client_id: &'static str,
    access: Access,
    topic: &'static str,
    allowed: bool,
) -> AclCase {
    AclCase {
        user,
        client_id,
        access,
        topic,
        allowed,
    }
}

/// What docker/mosquitto/config/acl must allow and deny, checked on a real broker.
/// Users are those of docker/collector.env and docker/device-sim.env, plus the
/// broker's own health check; every client id is distinct (the broker would
/// disconnect a second client with the same id).
const ACL: &[AclCase] = &[
    // The collector's user reads every device's topics.
    case(
        "collector",
        "kit-collector-1",
        Access::Read,
        "device/data/+",
        true,
    ),
    case(
        "collector",
        "kit-collector-2",
        Access::Read,
        "vehicle/speed/+",
        true,
    ),
    // Another authenticated user (a device) cannot read them.
    case(
        "device",
        "eavesdropper_01",
        Access::Read,
        "device/data/+",
        false,
    ),
    case(
        "device",
        "eavesdropper_02",
        Access::Read,
        "vehicle/speed/+",
        false,
    ),
    // The health check reads the broker's version and nothing else.
    case(
        "healthcheck",
        "kit-health-1",
        Access::Read,
        "$SYS/broker/version",
        true,
    ),
    case(
        "healthcheck",
        "kit-health-2",
        Access::Read,
        "device/data/+",
        false,
    ),
    // A device publishes to its own topics (client id = device id) and no other device's.
    case(
        "device",
        "vehicle_01",
        Access::Write,
        "device/data/vehicle_02",
        false,
    ),
    case(
        "device",
        "vehicle_01",
        Access::Write,
        "vehicle/speed/vehicle_02",
        false,
    ),
    case(
        "device",
        "vehicle_01",
        Access::Write,
        "device/data/vehicle_01",
        true,
    ),
    case(
        "device",
        "vehicle_01",
        Access::Write,
        "vehicle/speed/vehicle_01",
        true,
    ),
];

/// Runs the compose init service's own script with its paths moved into `t`;
/// returns the broker's secrets directory it filled.
fn run_init(t: &Path) -> PathBuf {
    let root = repo();
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
    secrets
}

/// The shipped mosquitto.conf with its paths moved into `t` and its listeners onto
/// the loopback ports `plain` and `tls`, after checking what it must contain.
fn shipped_conf(t: &Path, plain: u16, tls: u16) -> String {
    let root = repo();
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
            "log_dest stderr",
            &format!("log_dest file {}/mosquitto.log", t.display()),
        );
    conf.push('\n');
    assert!(
        conf.lines().filter(|l| l.starts_with("listener ")).count() == 2
            && conf.contains(&format!("listener {tls} 127.0.0.1")),
        "the shipped listeners are not `listener 1883` and `listener 8883`:\n{conf}"
    );
    conf
}

#[test]
fn shipped_broker_config_enforces_tls_passwords_and_the_acl() {
    let root = repo();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    let secrets = run_init(t);
    let (plain, tls) = (free_port(), free_port());
    let conf = shipped_conf(t, plain, tls);
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
        // The container's 0.0.0.0:9464 may be taken on a test machine.
        (
            "COLLECTOR_METRICS_ADDR",
            format!("127.0.0.1:{}", e2e::free_port()),
        ),
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

    // One watcher per read row of the ACL table, subscribed before anything is published.
    let hc_pass = std::fs::read_to_string(secrets.join("healthcheck.password")).unwrap();
    let password = |user: &str| -> String {
        match user {
            u if u == c_user => c_pass.clone(),
            u if u == d_user => d_pass.clone(),
            "healthcheck" => hc_pass.trim().to_string(),
            u => panic!("the ACL table names {u:?}, who is in no compose env file"),
        }
    };
    let readers: Vec<(usize, Watcher)> = ACL
        .iter()
        .enumerate()
        .filter(|(_, r)| r.access == Access::Read)
        .map(|(i, r)| {
            let login = tls_args(r.user, &password(r.user), r.client_id);
            let mut args = strs(&login);
            args.extend(["-t", r.topic]);
            (i, Watcher::start(&args))
        })
        .collect();
    let reader = |filter: &str| -> &Watcher {
        &readers
            .iter()
            .find(|(i, _)| ACL[*i].user == c_user && ACL[*i].topic == filter)
            .unwrap_or_else(|| panic!("the ACL table has no allowed collector row for {filter}"))
            .1
    };
    let collector = reader("device/data/+");

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
    for m in collector
        .messages()
        .into_iter()
        .chain(reader("vehicle/speed/+").messages())
    {
        let (topic, payload) = m.split_once(' ').unwrap();
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(
            topic,
            format!("device/data/{}", v["device_id"].as_str().unwrap())
        );
    }

    // Every write row of the table publishes `ACL-<row>` (not JSON: the collector keeps
    // it in `rejected`), in table order; then vehicle_01 publishes a marker to its own
    // topic, which the broker handles after every row before it.
    for (i, r) in ACL
        .iter()
        .enumerate()
        .filter(|(_, r)| r.access == Access::Write)
    {
        let login = tls_args(r.user, &password(r.user), r.client_id);
        let payload = format!("ACL-{i}");
        let mut args = strs(&login);
        args.extend(["-q", "1", "-t", r.topic, "-m", &payload]);
        let out = mosquitto_pub(&args);
        assert!(out.status.success(), "row {i} {r:?}: {}", text(&out));
    }
    let forger = tls_args(&d_user, &d_pass, "vehicle_01");
    let mut args = strs(&forger);
    args.extend(["-q", "1", "-t", "device/data/vehicle_01", "-m", "MARKER"]);
    let out = mosquitto_pub(&args);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        collector.wait_message(Duration::from_secs(10), |l| l.ends_with(" MARKER")),
        "a device's publish to its own topic did not arrive: {:?}",
        collector.messages()
    );
    assert!(
        e2e::wait_until(Duration::from_secs(10), || rows(
            "SELECT count(*) FROM rejected WHERE CAST(payload AS TEXT) = 'MARKER'"
        ) == 1),
        "the collector did not keep the (non-JSON) marker aside"
    );
    for (i, r) in ACL
        .iter()
        .enumerate()
        .filter(|(_, r)| r.access == Access::Write)
    {
        let line = format!("{} ACL-{i}", r.topic);
        let sql = format!("SELECT count(*) FROM rejected WHERE CAST(payload AS TEXT) = 'ACL-{i}'");
        if r.allowed {
            assert!(
                readers
                    .iter()
                    .any(|(_, w)| w.wait_message(Duration::from_secs(10), |m| m == line)),
                "row {i}: an allowed publish {r:?} reached no subscriber"
            );
            assert!(
                e2e::wait_until(Duration::from_secs(10), || rows(&sql) == 1),
                "row {i}: the collector did not store the allowed publish {r:?}"
            );
        } else {
            // The marker came later from the same client, so a wrong copy would be here already.
            for (_, w) in &readers {
                assert!(
                    !w.messages()
                        .iter()
                        .any(|m| m.ends_with(&format!(" ACL-{i}"))),
                    "row {i}: a forbidden publish {r:?} was delivered: {:?}",
                    w.messages()
                );
            }
            assert_eq!(
                rows(&sql),
                0,
                "row {i}: the collector received a forbidden publish {r:?}"
            );
        }
    }
    assert_eq!(
        rows("SELECT count(*) FROM telemetry WHERE device_id = 'vehicle_02'"),
        3,
        "vehicle_02 has readings that device-sim did not publish"
    );
    real_collector.signal(libc::SIGTERM);
    let out = real_collector.wait_output(Duration::from_secs(20)).unwrap();
    assert!(
        out.status.success(),
        "collector after SIGTERM: {}",
        text(&out)
    );
    // Every read row: an allowed subscription got something, a forbidden one nothing.
    // The broker handed the marker to every subscriber at once; give a wrong copy a moment to show up.
    std::thread::sleep(Duration::from_millis(500));
    for (i, w) in &readers {
        let r = &ACL[*i];
        if r.allowed {
            assert!(
                w.wait_message(Duration::from_secs(10), |_| true),
                "row {i}: {r:?} received nothing"
            );
        } else {
            assert!(
                w.messages().is_empty(),
                "row {i}: {r:?} read what it may not: {:?}",
                w.messages()
            );
        }
    }

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
