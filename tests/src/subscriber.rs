//! A real `mosquitto_sub` that records what it receives.

use crate::{Broker, ChildGuard};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    messages: Vec<(String, String)>,
    /// Granted QoS per filter from the SUBACK (128: refused), once it arrived.
    granted: Option<Vec<u8>>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// `mosquitto_sub -q 1 -v` on the broker's plain listener.
pub struct Subscriber {
    shared: Shared,
    _child: ChildGuard,
}

impl Subscriber {
    /// Subscribes anonymously to `filters`; returns once the broker answered the SUBSCRIBE.
    pub fn start(broker: &Broker, filters: &[&str]) -> Subscriber {
        Self::start_with(broker, filters, &[])
    }

    /// The same with extra `mosquitto_sub` arguments (`-u`, `-P`, `-c -i ID`, ...).
    /// Ready means the SUBACK arrived (its debug output, `-d`, says so), so whatever is
    /// published afterwards reaches this subscriber.
    pub fn start_with(broker: &Broker, filters: &[&str], extra: &[&str]) -> Subscriber {
        // Line-buffered, so the debug line that reports the SUBACK is not held back.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub"])
            .args([
                "-d",
                "-h",
                "127.0.0.1",
                "-p",
                &broker.plain_port.to_string(),
                "-q",
                "1",
                "-v",
            ])
            .args(extra);
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
        let shared: Shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let r = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*r;
                let mut st = lock.lock().unwrap();
                if let Some(rest) = line.strip_prefix("Subscribed (mid: ") {
                    let codes = rest.split_once("): ").map(|(_, c)| c).unwrap_or("");
                    st.granted = Some(
                        codes
                            .split(", ")
                            .filter_map(|c| c.trim().parse().ok())
                            .collect(),
                    );
                } else if line.starts_with("Client ") {
                    // mosquitto_sub's debug lines (packets sent and received).
                } else {
                    let (topic, payload) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    st.messages.push((topic.to_string(), payload.to_string()));
                }
                cv.notify_all();
            }
        });
        let sub = Subscriber {
            shared,
            _child: ChildGuard { child: Some(child) },
        };
        assert!(
            sub.wait_state(|st| st.granted.is_some(), Duration::from_secs(10)),
            "mosquitto_sub got no SUBACK within 10 s"
        );
        sub
    }

    fn wait_state(&self, cond: impl Fn(&State) -> bool, timeout: Duration) -> bool {
        let (lock, cv) = &*self.shared;
        let guard = lock.lock().unwrap();
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |st| !cond(st))
            .unwrap();
        cond(&guard)
    }

    /// The QoS the broker granted per filter (128 means refused, e.g. by the ACL).
    pub fn granted(&self) -> Vec<u8> {
        self.shared
            .0
            .lock()
            .unwrap()
            .granted
            .clone()
            .unwrap_or_default()
    }

    /// Everything received so far: (topic, payload).
    pub fn messages(&self) -> Vec<(String, String)> {
        self.shared.0.lock().unwrap().messages.clone()
    }

    /// Waits until at least `n` messages arrived or `timeout` passed; returns what arrived.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<(String, String)> {
        self.wait_state(|st| st.messages.len() >= n, timeout);
        self.messages()
    }

    /// Waits until `cond` holds on the messages received so far, or `timeout`.
    pub fn wait_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&[(String, String)]) -> bool,
    ) -> bool {
        self.wait_state(|st| cond(&st.messages), timeout)
    }
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
