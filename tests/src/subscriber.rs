//! A real `mosquitto_sub` that records what it receives.

use crate::broker::Broker;
use crate::process::ChildGuard;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

type Received = Arc<(Mutex<Vec<(String, String)>>, Condvar)>;

/// `mosquitto_sub -q 1 -v` on the broker's plain listener.
pub struct Subscriber {
    received: Received,
    probe_topic: String,
    _child: ChildGuard,
}

impl Subscriber {
    /// Subscribes anonymously to `filters`; returns once the subscription is live.
    pub fn start(broker: &Broker, filters: &[&str]) -> Subscriber {
        Self::start_with(broker, filters, &[])
    }

    /// The same with extra `mosquitto_sub` arguments (for example `-u`, `-P`).
    /// Ready means a probe published on a private topic came back through the broker.
    pub fn start_with(broker: &Broker, filters: &[&str], extra: &[&str]) -> Subscriber {
        let probe_topic = format!("e2e/probe/{}-{}", std::process::id(), rand_suffix());
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.plain_port.to_string(),
            "-q",
            "1",
            "-v",
        ])
        .args(extra)
        .args(["-t", &probe_topic]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed (apt-get install mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let received: Received = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let r = received.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (topic, payload) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let (lock, cv) = &*r;
                lock.lock()
                    .unwrap()
                    .push((topic.to_string(), payload.to_string()));
                cv.notify_all();
            }
        });
        let sub = Subscriber {
            received,
            probe_topic,
            _child: ChildGuard { child: Some(child) },
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut publ = Command::new("mosquitto_pub");
            publ.args([
                "-h",
                "127.0.0.1",
                "-p",
                &broker.plain_port.to_string(),
                "-t",
                &sub.probe_topic,
                "-m",
                "probe",
            ])
            .args(probe_args(extra))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            let _ = publ.status();
            if sub.wait_raw(
                |v| v.iter().any(|(t, _)| *t == sub.probe_topic),
                Duration::from_millis(300),
            ) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub did not become ready within 10 s"
            );
        }
        sub
    }

    fn wait_raw(&self, cond: impl Fn(&Vec<(String, String)>) -> bool, timeout: Duration) -> bool {
        let (lock, cv) = &*self.received;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv.wait_timeout_while(guard, timeout, |v| !cond(v)).unwrap();
        cond(&guard)
    }

    /// Everything received so far except probes: (topic, payload).
    pub fn messages(&self) -> Vec<(String, String)> {
        let (lock, _) = &*self.received;
        lock.lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t != self.probe_topic)
            .cloned()
            .collect()
    }

    /// Waits until at least `n` messages arrived or `timeout` passed; returns what arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<(String, String)> {
        let probe = self.probe_topic.clone();
        self.wait_raw(
            |v| v.iter().filter(|(t, _)| *t != probe).count() >= n,
            timeout,
        );
        self.messages()
    }

    /// Waits until `cond` holds on the messages received so far, or `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&[(String, String)]) -> bool,
    ) -> bool {
        let probe = self.probe_topic.clone();
        self.wait_raw(
            |v| {
                let msgs: Vec<_> = v.iter().filter(|(t, _)| *t != probe).cloned().collect();
                cond(&msgs)
            },
            timeout,
        )
    }
}

/// The subscriber's arguments that also suit the probe publisher: credentials and
/// TLS, but not its session flags (`-c`, `-i ID`).
fn probe_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        match *a {
            "-c" | "--disable-clean-session" => {}
            "-i" | "--id" => {
                it.next();
            }
            other => out.push(other),
        }
    }
    out
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Per device id, the `seq` values received (sorted, duplicates kept).
pub fn seqs(msgs: &[(String, String)]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (topic, payload) in msgs {
        let v: serde_json::Value = match serde_json::from_str(payload) {
            Ok(v) => v,
            Err(e) => panic!("payload on {topic} is not JSON ({e}): {payload}"),
        };
        let id = v["device_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no device_id: {payload}"));
        let seq = v["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no seq: {payload}"));
        out.entry(id.to_string()).or_default().push(seq);
    }
    for v in out.values_mut() {
        v.sort_unstable();
    }
    out
}
