//! The consumers compared in the throughput scenario — the collector, mosquitto_sub
//! and the paho stand-in — each started on a persistent session that already holds
//! N queued messages, and timed until all N are stored (or received).

use crate::binaries::Programs;
use crate::broker::Endpoint;
use crate::procstat::{self, Ended};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Who drains the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// Ours: stores into SQLite, PUBACK after commit.
    Collector,
    /// Ours with `--sync full`: every commit also survives a power loss.
    CollectorSyncFull,
    /// C, discards everything: the practical ceiling.
    MosquittoSub,
    /// Python, acks on arrival, batches of 250 into SQLite.
    Paho,
}

impl Consumer {
    /// Label in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Consumer::Collector => "collector",
            Consumer::CollectorSyncFull => "collector --sync full",
            Consumer::MosquittoSub => "mosquitto_sub",
            Consumer::Paho => "paho",
        }
    }

    /// Client id and file names.
    pub fn slug(self) -> &'static str {
        match self {
            Consumer::Collector => "collector",
            Consumer::CollectorSyncFull => "collector-sync-full",
            Consumer::MosquittoSub => "mosquitto-sub",
            Consumer::Paho => "paho",
        }
    }
}

/// The result of one drain.
#[derive(Debug, Clone)]
pub struct Drained {
    /// Messages stored/received.
    pub messages: u64,
    /// From the process start to the last message stored (start-up and connect included).
    pub elapsed: Duration,
    /// CPU seconds of the consumer process.
    pub cpu: f64,
    /// Peak resident memory, KiB.
    pub max_rss_kib: u64,
    /// Messages the collector's store holds once it has stopped, counted exactly
    /// (None for consumers that store nothing).
    pub stored: Option<u64>,
}

impl Drained {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Where a collector stores, for the benchmark: the arguments that name the store
/// and how to count what it holds.
pub struct Sink<'a> {
    /// Collector arguments, e.g. `--db PATH` or `--postgres URL`.
    pub args: Vec<String>,
    /// Polled while draining, every `poll`: reaches the expected count only once
    /// that many messages are stored; may be cheaper than exact below it.
    pub progress: Box<dyn FnMut() -> u64 + 'a>,
    /// Stored messages, counted exactly (after the collector has stopped).
    pub count: Box<dyn FnMut() -> Result<u64> + 'a>,
    /// How often `progress` is polled.
    pub poll: Duration,
}

impl<'a> Sink<'a> {
    /// The collector's default store: the SQLite file `db` (polled by its largest
    /// rowid every 5 ms, counted with count(*)).
    pub fn sqlite(db: &Path) -> Sink<'a> {
        let (path, exact) = (db.to_path_buf(), db.to_path_buf());
        let mut conn = None;
        Sink {
            args: vec!["--db".to_string(), db.display().to_string()],
            progress: Box::new(move || {
                if conn.is_none() {
                    conn = open_reader(&path);
                }
                conn.as_ref().map(stored_rows).unwrap_or(0)
            }),
            count: Box::new(move || {
                let conn = open_reader(&exact)
                    .with_context(|| format!("{} does not exist", exact.display()))?;
                let n: i64 = conn.query_row("SELECT count(*) FROM telemetry", [], |r| r.get(0))?;
                Ok(n.max(0) as u64)
            }),
            poll: Duration::from_millis(5),
        }
    }
}

/// A prepared consumer run: its command, for the report, and how to run it.
pub struct Run<'a> {
    consumer: Consumer,
    cmd: Command,
    /// The command line as a shell would take it.
    pub line: String,
    sink: Option<Sink<'a>>,
    expected: u64,
}

fn shell_line(env: &[(String, String)], program: &Path, args: &[String], tail: &str) -> String {
    let mut words: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    words.push(program.display().to_string());
    words.extend(args.iter().cloned());
    let mut line = words.join(" ");
    line.push_str(tail);
    line
}

/// Starts device-sim with `args`, its summary in `dir/device-sim.out` and its log in
/// `dir/device-sim.log`.
pub fn spawn_device_sim(
    sim: &Path,
    dir: &Path,
    env: &[(String, String)],
    args: &[String],
) -> anyhow::Result<std::process::Child> {
    use anyhow::Context;
    our_command(sim, dir, env)
        .args(args)
        .stdout(std::fs::File::create(dir.join("device-sim.out"))?)
        .stderr(std::fs::File::create(dir.join("device-sim.log"))?)
        .spawn()
        .context("starting device-sim")
}

/// A command for one of our binaries running in `dir` with only the given MQTT_* variables.
pub fn our_command(program: &Path, dir: &Path, env: &[(String, String)]) -> Command {
    let mut cmd = procstat::child_command(program);
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("MQTT_") || k == "COLLECTOR_DB" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().cloned());
    cmd.env(
        "RUST_LOG",
        std::env::var("BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
    );
    cmd
}

impl<'a> Run<'a> {
    /// Prepares `consumer` on `ep` with persistent client id `client_id`, to stop after `n`.
    /// A collector stores into `sink`, or a fresh SQLite file in `dir` when None.
    pub fn prepare(
        consumer: Consumer,
        programs: &Programs,
        ep: &Endpoint,
        client_id: &str,
        n: u64,
        dir: &Path,
        sink: Option<Sink<'a>>,
    ) -> Result<Run<'a>> {
        std::fs::create_dir_all(dir)?;
        let db = dir.join(format!("{}.db", consumer.slug()));
        let _ = std::fs::remove_file(&db);
        let mut sink = sink;
        let (cmd, line) = match consumer {
            Consumer::Collector | Consumer::CollectorSyncFull => {
                let sink = sink.get_or_insert_with(|| Sink::sqlite(&db));
                let mut args = sink.args.clone();
                if consumer == Consumer::CollectorSyncFull {
                    args.extend(["--sync".to_string(), "full".to_string()]);
                }
                collector_command(programs, ep, client_id, &args, dir)?
            }
            Consumer::MosquittoSub => {
                let bin = programs.mosquitto_sub.clone().map_err(|e| anyhow!(e))?;
                let mut args = ep.mosquitto_args();
                args.extend(
                    [
                        "-q",
                        "1",
                        "-c",
                        "-i",
                        client_id,
                        "-t",
                        "device/data/+",
                        "-C",
                    ]
                    .map(String::from),
                );
                args.push(n.to_string());
                let mut cmd = procstat::child_command(&bin);
                cmd.args(&args)
                    .stdout(Stdio::null())
                    .stderr(log_file(dir, "mosquitto_sub")?);
                (cmd, shell_line(&[], &bin, &args, " > /dev/null"))
            }
            Consumer::Paho => {
                let script = programs.paho.clone().map_err(|e| anyhow!(e))?;
                let mut args = vec![
                    script.display().to_string(),
                    "--host".into(),
                    Endpoint::HOST.into(),
                    "--port".into(),
                    ep.port.to_string(),
                    "--client-id".into(),
                    client_id.into(),
                    "--topic".into(),
                    "device/data/+".into(),
                    "--count".into(),
                    n.to_string(),
                    "--db".into(),
                    db.display().to_string(),
                ];
                if let Some(ca) = &ep.tls_ca {
                    args.push("--cafile".into());
                    args.push(ca.display().to_string());
                }
                let mut cmd = procstat::child_command("python3");
                cmd.args(&args)
                    .stdout(Stdio::null())
                    .stderr(log_file(dir, "paho")?);
                (cmd, shell_line(&[], Path::new("python3"), &args, ""))
            }
        };
        Ok(Run {
            consumer,
            cmd,
            line,
            sink,
            expected: n,
        })
    }

    /// Starts the consumer and waits until all messages are in (or `timeout`).
    pub fn drain(mut self, timeout: Duration) -> Result<Drained> {
        let start = Instant::now();
        let deadline = start + timeout;
        let child = self
            .cmd
            .spawn()
            .with_context(|| format!("starting {}", self.consumer.name()))?;
        match (self.consumer, self.sink.as_mut()) {
            (Consumer::Collector | Consumer::CollectorSyncFull, Some(sink)) => {
                let done = wait_for_count(
                    &[&child],
                    self.expected,
                    deadline,
                    sink.poll,
                    &mut sink.progress,
                )?;
                let elapsed = done.duration_since(start);
                let cpu = procstat::cpu_seconds(child.id()).unwrap_or(f64::NAN);
                let ended = procstat::terminate(&child, Duration::from_secs(10))?;
                if ended.code != 0 {
                    tracing::warn!("collector exited with {} after SIGTERM", ended.code);
                }
                let stored = (sink.count)().context("counting the stored messages")?;
                Ok(Drained {
                    messages: self.expected,
                    elapsed,
                    cpu,
                    max_rss_kib: ended.max_rss_kib,
                    stored: Some(stored),
                })
            }
            _ => {
                let ended = wait_exit(&child, deadline, self.consumer.name())?;
                if ended.code != 0 {
                    bail!("{} exited with code {}", self.consumer.name(), ended.code);
                }
                Ok(Drained {
                    messages: self.expected,
                    elapsed: ended.at.duration_since(start),
                    cpu: ended.cpu,
                    max_rss_kib: ended.max_rss_kib,
                    stored: None,
                })
            }
        }
    }
}

/// The collector on `ep` as persistent client `client_id` with `args`, running in
/// `dir` (its log in `dir/collector.log`); and its command line.
pub fn collector_command(
    programs: &Programs,
    ep: &Endpoint,
    client_id: &str,
    args: &[String],
    dir: &Path,
) -> Result<(Command, String)> {
    let bin = programs.collector.clone().map_err(|e| anyhow!(e))?;
    let env = ep.env(Some(client_id));
    let mut cmd = our_command(&bin, dir, &env);
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(log_file(dir, "collector")?);
    Ok((cmd, shell_line(&env, &bin, args, "")))
}

fn log_file(dir: &Path, name: &str) -> Result<Stdio> {
    Ok(std::fs::File::create(dir.join(format!("{name}.log")))?.into())
}

fn wait_exit(child: &Child, deadline: Instant, name: &str) -> Result<Ended> {
    match procstat::wait_until(child, deadline)? {
        Some(e) => Ok(e),
        None => {
            let _ = procstat::terminate(child, Duration::from_secs(2));
            bail!("{name} did not finish in time")
        }
    }
}

/// Rows in a collector database's `telemetry` table (0 while it does not exist yet).
pub fn stored_rows(conn: &rusqlite::Connection) -> u64 {
    // max(rowid) reads one page; count(*) would scan the table at every poll.
    conn.query_row("SELECT coalesce(max(rowid), 0) FROM telemetry", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v.max(0) as u64)
    .unwrap_or(0)
}

/// Opens a database another process writes, read-only, once it exists.
pub fn open_reader(db: &Path) -> Option<rusqlite::Connection> {
    if !db.exists() {
        return None;
    }
    rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .ok()
}

/// Polls `db` until it holds `n` rows; the instant they were seen. Fails if the
/// process ends first or time runs out.
pub fn wait_for_rows(child: &Child, db: &Path, n: u64, deadline: Instant) -> Result<Instant> {
    let mut sink = Sink::sqlite(db);
    wait_for_count(&[child], n, deadline, sink.poll, &mut sink.progress)
}

/// Polls `progress` every `poll` until it reaches `n`; the instant it did. Fails if
/// one of the processes ends first or time runs out (then all are stopped).
pub fn wait_for_count(
    children: &[&Child],
    n: u64,
    deadline: Instant,
    poll: Duration,
    progress: &mut dyn FnMut() -> u64,
) -> Result<Instant> {
    let stop = |except: Option<u32>| {
        for c in children.iter().filter(|c| Some(c.id()) != except) {
            let _ = procstat::terminate(c, Duration::from_secs(5));
        }
    };
    loop {
        let last = progress();
        if last >= n {
            return Ok(Instant::now());
        }
        for child in children {
            if let Some(e) = procstat::wait_until(child, Instant::now())? {
                stop(Some(child.id()));
                bail!(
                    "process {} exited with code {} after {last} of {n} messages stored",
                    child.id(),
                    e.code
                );
            }
        }
        if Instant::now() > deadline {
            stop(None);
            bail!("only {last} of {n} messages stored in time");
        }
        std::thread::sleep(poll);
    }
}
