//! What the drain scenarios (throughput, stores) share: rounds in which each
//! entrant gets its persistent session primed, N messages queued for it by the load
//! generator while it is offline, and is then started and timed until all N are
//! stored (received, for mosquitto_sub); the rows and per-round ratios of the result.

use super::Ctx;
use crate::broker::Endpoint;
use crate::consumers::{Consumer, Drained, Run, Sink};
use crate::loadgen::{self, Load, Published};
use crate::procstat;
use crate::report::Row;
use crate::report::Section;
use anyhow::{bail, Result};
use std::path::Path;
use std::time::Duration;

/// Connections of the load generator.
pub const LOAD_CONNECTIONS: usize = 4;
/// Unacknowledged messages per load connection.
pub const LOAD_WINDOW: u16 = 200;

/// The load of one drain: `n` contract payloads from [`LOAD_CONNECTIONS`] devices.
pub fn load(n: u64) -> Load {
    Load {
        messages: n,
        connections: LOAD_CONNECTIONS,
        window: LOAD_WINDOW,
        prefix: "load_".into(),
    }
}

/// Makes a collector's store for one round (0-based): a fresh one each time.
pub type SinkMaker<'a> = Box<dyn FnMut(usize) -> Result<Sink<'a>> + 'a>;

/// One consumer of a drain scenario and what its rounds measured.
pub struct Entrant<'a> {
    /// Row label.
    pub label: String,
    /// Who drains.
    pub consumer: Consumer,
    /// Client id suffix and folder name.
    pub slug: String,
    /// The collector's store per round; SQLite in its folder when None.
    pub sink: Option<SinkMaker<'a>>,
    /// msg/s per round, NaN for a round that failed.
    pub rates: Vec<f64>,
    /// Messages found stored after each round, for collectors.
    pub stored: Vec<Option<u64>>,
    /// The fastest round.
    pub best: Option<Drained>,
    /// Other processes whose CPU the drain costs (the broker, a database server):
    /// name and process id, the whole process tree counted.
    pub watched: Vec<(String, u32)>,
    /// CPU seconds per message of each watched process, per round (NaN when unknown).
    pub watched_cpu: Vec<Vec<f64>>,
}

impl<'a> Entrant<'a> {
    /// `consumer` under `label`, the collector storing into SQLite.
    pub fn new(label: impl Into<String>, consumer: Consumer) -> Entrant<'a> {
        Entrant {
            label: label.into(),
            consumer,
            slug: consumer.slug().to_string(),
            sink: None,
            rates: Vec::new(),
            stored: Vec::new(),
            best: None,
            watched: Vec::new(),
            watched_cpu: Vec::new(),
        }
    }

    /// Also counts the CPU that the process tree of `pid` spends during each drain.
    pub fn watch(mut self, name: &str, pid: Option<u32>) -> Entrant<'a> {
        if let Some(pid) = pid {
            self.watched.push((name.to_string(), pid));
            self.watched_cpu.push(Vec::new());
        }
        self
    }

    /// The collector storing into what `sink` makes each round, under its own client id.
    pub fn with_sink(mut self, slug: &str, sink: SinkMaker<'a>) -> Entrant<'a> {
        self.slug = format!("{}-{slug}", self.consumer.slug());
        self.sink = Some(sink);
        self
    }

    /// CPU seconds of each watched process tree now, for [`Entrant::record_watched`].
    pub fn watched_now(&self) -> Vec<Option<f64>> {
        self.watched
            .iter()
            .map(|(_, pid)| procstat::tree_cpu_seconds(*pid))
            .collect()
    }

    /// Records the CPU per message each watched process tree spent on `n` messages
    /// since `before` (from [`Entrant::watched_now`]).
    pub fn record_watched(&mut self, before: &[Option<f64>], n: u64) {
        for ((b, a), per_round) in before
            .iter()
            .zip(self.watched_now())
            .zip(&mut self.watched_cpu)
        {
            per_round.push(match (b, a) {
                (Some(b), Some(a)) => (a - b) / n as f64,
                _ => f64::NAN,
            });
        }
    }

    /// Keeps `d` if it is the fastest round so far (then true); its rate.
    pub fn record(&mut self, d: Drained) -> (f64, bool) {
        let rate = d.rate();
        let best = !matches!(&self.best, Some(b) if b.rate() >= rate);
        if best {
            self.best = Some(d);
        }
        (rate, best)
    }

    /// The median of the rounds that succeeded.
    pub fn median(&self) -> Option<f64> {
        median(&self.rates)
    }

    /// The table row: best and median rate, every round, CPU, memory, and for a
    /// collector what its store held after each round.
    pub fn row(&self) -> Option<Row> {
        let d = self.best.as_ref()?;
        let runs = self
            .rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join("/");
        let stored = if self.stored.iter().all(Option::is_none) {
            None
        } else {
            Some(
                self.stored
                    .iter()
                    .map(|s| s.map_or("?".to_string(), |s| s.to_string()))
                    .collect::<Vec<_>>()
                    .join("/"),
            )
        };
        let mut row = Row::new(self.label.clone())
            .set("msg/s", d.rate())
            .set_opt("median msg/s", self.median())
            .set("seconds", d.elapsed.as_secs_f64())
            .set("runs msg/s", runs)
            .set("cpu us/msg", d.cpu * 1e6 / d.messages as f64)
            .set("max RSS MiB", d.max_rss_kib as f64 / 1024.0)
            .set_opt("stored", stored);
        for ((name, _), cpu) in self.watched.iter().zip(&self.watched_cpu) {
            row = row.set_opt(&format!("{name} cpu us/msg"), median(cpu).map(|c| c * 1e6));
        }
        Some(row)
    }
}

/// The median of the finite values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut finite: Vec<f64> = values.iter().copied().filter(|r| r.is_finite()).collect();
    if finite.is_empty() {
        return None;
    }
    finite.sort_by(f64::total_cmp);
    Some(finite[finite.len() / 2])
}

/// `a / b` round by round: the median of the finite ratios and every ratio, printed.
pub fn ratios(a: &[f64], b: &[f64]) -> Option<(f64, String)> {
    let each: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
    let m = median(&each)?;
    let shown = each
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some((m, shown))
}

/// How long a drain of `n` messages may take: 1,000 msg/s after a start-up allowance.
pub fn timeout(n: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_secs_f64(n as f64 / 1000.0)
}

/// Runs `rounds` rounds over `entrants`, interleaved within a round, every one
/// draining `load` queued on `ep`; each round's command lines are recorded in the
/// first round. A failed drain is reported in `s` and counts as NaN; so does a
/// collector whose store holds another count than N afterwards.
pub fn run_rounds(
    ctx: &Ctx,
    s: &mut Section,
    ep: &Endpoint,
    load: &Load,
    dir: &Path,
    entrants: &mut [Entrant<'_>],
    rounds: usize,
) -> Vec<Published> {
    let n = load.messages;
    let mut publishes = Vec::new();
    for round in 0..rounds {
        for e in entrants.iter_mut() {
            let id = format!("bench-{}", e.slug);
            let mut stored = None;
            let attempt = (|| -> Result<f64> {
                let sink = match e.sink.as_mut() {
                    Some(make) => Some(make(round)?),
                    None => None,
                };
                ctx.rt
                    .block_on(loadgen::prime_session(ep, &id, "device/data/+"))?;
                publishes.push(ctx.rt.block_on(loadgen::publish(ep, load))?);
                let run = Run::prepare(
                    e.consumer,
                    &ctx.programs,
                    ep,
                    &id,
                    n,
                    &dir.join(&e.slug),
                    sink,
                )?;
                if round == 0 {
                    s.command(run.line.clone());
                }
                let before = e.watched_now();
                let d = run.drain(timeout(n))?;
                e.record_watched(&before, n);
                stored = d.stored;
                if let Some(k) = d.stored.filter(|k| *k != n) {
                    bail!("FAILED: {k} messages stored, not {n}");
                }
                Ok(e.record(d).0)
            })();
            e.stored.push(stored);
            e.rates.push(attempt.as_ref().copied().unwrap_or(f64::NAN));
            if let Err(err) = attempt {
                s.skip(format!("{}, round {}: {err:#}", e.label, round + 1));
            }
        }
    }
    publishes
}

/// The load generator's row: its best rate and the bytes on the wire per message.
pub fn load_row(label: impl Into<String>, publishes: &[Published]) -> Option<Row> {
    if publishes.is_empty() {
        return None;
    }
    let rate = publishes.iter().map(|p| p.rate()).fold(0.0, f64::max);
    let wire: u64 = publishes.iter().map(|p| p.wire.payload_bytes()).sum();
    let ip: u64 = publishes.iter().map(|p| p.wire.ip_bytes()).sum();
    let msgs: u64 = publishes.iter().map(|p| p.messages).sum();
    Some(
        Row::new(label)
            .set("msg/s", rate)
            .set("wire B/msg", wire as f64 / msgs as f64)
            .set("wire+IP B/msg", ip as f64 / msgs as f64),
    )
}
