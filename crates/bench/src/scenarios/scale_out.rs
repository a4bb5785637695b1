//! Scenario 7, scale-out (issue 12): the stores scenario's PostgreSQL drain by 1, 2
//! and 3 collectors in one share group, on one Mosquitto and one PostgreSQL. Each
//! member's persistent session is primed with the share-group filter, then N
//! messages are queued while all are offline (Mosquitto 2.0 deals a group's messages
//! round robin to its members' sessions, connected or not), then every member starts
//! at once and the drain is timed to the Nth row. On a machine where the broker, the
//! database and every collector share the same few cores, a member brings no CPU
//! of its own: the ratios show what scaling out costs there, not what separate
//! machines would gain.

use super::drain::{self, Entrant, SinkMaker, LOAD_CONNECTIONS, LOAD_WINDOW};
use super::stores::{self, PG_SETTINGS};
use super::{guarded, Ctx};
use crate::broker::{Broker, Endpoint};
use crate::consumers::{collector_command, wait_for_count, Consumer, Drained};
use crate::loadgen::{self, Load, Published};
use crate::procstat;
use crate::report::Section;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};
use testkit::postgres::Postgres;

/// The share group every member joins.
const GROUP: &str = "bench";

/// What a member subscribes: its share of the drain scenarios' topic.
fn filter() -> String {
    format!("$share/{GROUP}/device/data/+")
}

/// Group sizes, each with the name of its PostgreSQL databases.
const SIZES: [(usize, &str); 3] = [(1, "scale1"), (2, "scale2"), (3, "scale3")];

/// Client id of member `i` (1-based); the same ids for every size, so each run's
/// priming also ends whatever session an earlier, larger group left behind.
fn member_id(i: usize) -> String {
    format!("bench-member-{i}")
}

/// One member's part of a drain.
struct Member {
    id: String,
    /// CPU seconds when the Nth row was seen (shutdown not included).
    cpu: f64,
    max_rss_kib: u64,
    /// Rows in `telemetry` naming it in the `collector` column.
    rows: u64,
}

/// What one drain by one group measured beyond its [`Drained`] (whose `cpu` is the
/// sum over the members and `max_rss_kib` the largest member's).
struct Detail {
    members: Vec<Member>,
    /// Busy share of all cores over the drain, percent (whoever used them).
    machine_busy: f64,
    /// Messages a collector found already stored (the collector's `duplicates` counter).
    redelivered: u64,
}

/// Percent of all cores busy between two [`procstat::machine_ticks`] samples.
fn busy_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> f64 {
    match (before, after) {
        (Some((b0, a0)), Some((b1, a1))) if a1 > a0 => (b1 - b0) as f64 * 100.0 / (a1 - a0) as f64,
        _ => f64::NAN,
    }
}

/// One group size and its rounds.
struct Group<'a> {
    k: usize,
    db: &'static str,
    sink: SinkMaker<'a>,
    /// Rates, stored counts and the fastest round, as for the drain scenarios.
    entrant: Entrant<'a>,
    /// The fastest round's details.
    best: Option<Detail>,
    /// Busy share of all cores per round, percent.
    machine_busy: Vec<f64>,
    /// The collector's `duplicates` counter after each round (None if the round failed earlier).
    redelivered: Vec<Option<u64>>,
}

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Section {
    let mut s = Section::new(
        "scale-out",
        "drain of N queued QoS 1 messages by 1, 2 and 3 collectors in one share group into one PostgreSQL",
    );
    guarded(&mut s, "scale-out", |s| run_all(ctx, s));
    s
}

fn run_all(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let n = ctx.messages;
    let rounds = if ctx.quick { 1 } else { 3 };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let dir = ctx.subdir("scale-out");
    let broker = Broker::start(&dir.join("broker"), &ctx.pki, ctx.limits)?;
    s.command(broker.command_line());
    let ep = broker.endpoint(false);
    // Declared before the groups, whose sinks borrow it; without it there is nothing to share.
    let Some(pg) = stores::start_postgres(s) else {
        return Ok(());
    };

    let mut groups: Vec<Group> = SIZES
        .iter()
        .map(|&(k, db)| Group {
            k,
            db,
            sink: stores::postgres_sink(ctx, &pg, n, db, false),
            entrant: Entrant::new(
                format!("{k} collector{}", if k == 1 { "" } else { "s" }),
                Consumer::Collector,
            )
            .watch("broker", broker.pid())
            .watch("PostgreSQL", pg.pid()),
            best: None,
            machine_busy: Vec::new(),
            redelivered: Vec::new(),
        })
        .collect();
    s.note(format!(
        "N = {n} messages per drain over plain TCP; load generator: {LOAD_CONNECTIONS} connections, window {LOAD_WINDOW} each, QoS 1, contract payloads (as in throughput and stores); {rounds} round(s), group sizes interleaved within a round; msg/s = best round, median msg/s = median round, / 1 instance = median of the per-round ratios to the 1-collector rate; elapsed = start of the members to the Nth row in PostgreSQL (connect and schema creation included)"
    ));
    s.note(format!(
        "each member: collector --postgres URL --share-group {GROUP} with its own MQTT_CLIENT_ID (bench-member-1..3); before each run every member's session is ended with a clean-session connect, then the k members' persistent sessions are created with a QoS 1 subscription to {}, and the N messages are queued while all k are offline: Mosquitto deals them round robin to the k sessions, so each member drains its own queue (rows per instance)",
        filter()
    ));
    s.note(format!(
        "PostgreSQL: {}, a new database per run, started by testkit on this machine",
        PG_SETTINGS.join(", ")
    ));
    s.note(format!(
        "this machine has {cores} cores, shared by Mosquitto (one thread), PostgreSQL (a process per connection), every member and whatever else runs: the members add no CPU, so these ratios are not the speed-up separate machines would give, and on {cores} cores scaling out shows its overhead. A ratio above 1 can only come from cores a lone member leaves idle while it waits for its commits (it keeps --pipeline transactions in flight, 4 by default); once the cores are busy, another member only adds overhead (a connection, a PostgreSQL backend, concurrent transactions on the same table and index, a process to schedule). CPU per instance, the broker's and PostgreSQL's CPU per message and machine busy % show which of the two a ratio is"
    ));
    s.note(
        "from each size's fastest round: seconds, cpu us/msg (all members together), max RSS MiB (the largest member), CPU s and rows per instance; CPU is sampled when the Nth row is seen, before SIGTERM. Medians of the rounds: broker and PostgreSQL cpu us/msg (Mosquitto's and the whole PostgreSQL process tree's CPU over the same span, the benchmark's own progress queries included) and machine busy % (share of all cores busy over that span, /proc/stat, whoever used them)",
    );

    let load = drain::load(n);
    let mut publishes = Vec::new();
    for round in 0..rounds {
        for g in groups.iter_mut() {
            let mut stored = None;
            let mut redelivered = None;
            let mut busy = f64::NAN;
            let attempt = (|| -> Result<f64> {
                let (d, detail) =
                    drain_group(ctx, s, &ep, &pg, &dir, g, round, &load, &mut publishes)?;
                stored = d.stored;
                redelivered = Some(detail.redelivered);
                busy = detail.machine_busy;
                if let Some(k) = d.stored.filter(|k| *k != n) {
                    bail!("FAILED: {k} messages stored, not {n}");
                }
                let (rate, best) = g.entrant.record(d);
                if best {
                    g.best = Some(detail);
                }
                Ok(rate)
            })();
            g.entrant.stored.push(stored);
            g.redelivered.push(redelivered);
            g.machine_busy.push(busy);
            g.entrant
                .rates
                .push(attempt.as_ref().copied().unwrap_or(f64::NAN));
            if let Err(err) = attempt {
                s.skip(format!("{}, round {}: {err:#}", g.entrant.label, round + 1));
            }
        }
    }

    report(s, &groups, &publishes, n);
    Ok(())
}

/// One run of group `g`: fresh database and sessions, N messages queued, every
/// member started at once and timed to the Nth row, then stopped and counted.
#[allow(clippy::too_many_arguments)]
fn drain_group(
    ctx: &Ctx,
    s: &mut Section,
    ep: &Endpoint,
    pg: &Postgres,
    dir: &Path,
    g: &mut Group,
    round: usize,
    load: &Load,
    publishes: &mut Vec<Published>,
) -> Result<(Drained, Detail)> {
    let n = load.messages;
    let mut sink = (g.sink)(round)?;
    let ids: Vec<String> = (1..=SIZES.len()).map(member_id).collect();
    for (i, id) in ids.iter().enumerate() {
        if i < g.k {
            ctx.rt.block_on(loadgen::prime_session(ep, id, &filter()))?;
        } else {
            ctx.rt.block_on(loadgen::end_session(ep, id))?;
        }
    }
    let ids = &ids[..g.k];
    publishes.push(ctx.rt.block_on(loadgen::publish(ep, load))?);

    let mut args = sink.args.clone();
    args.extend(["--share-group".to_string(), GROUP.to_string()]);
    let mut cmds = Vec::new();
    for id in ids {
        let member_dir = dir.join(format!("k{}", g.k)).join(id);
        std::fs::create_dir_all(&member_dir)?;
        let (cmd, line) = collector_command(&ctx.programs, ep, id, &args, &member_dir)?;
        if round == 0 {
            s.command(line);
        }
        cmds.push(cmd);
    }

    let watched = g.entrant.watched_now();
    let machine = procstat::machine_ticks();
    let start = Instant::now();
    let mut children: Vec<Child> = Vec::new();
    for cmd in &mut cmds {
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &children {
                    let _ = procstat::terminate(c, Duration::from_secs(5));
                }
                return Err(e).context("starting a collector");
            }
        }
    }
    let refs: Vec<&Child> = children.iter().collect();
    let done = wait_for_count(
        &refs,
        n,
        start + drain::timeout(n),
        sink.poll,
        &mut sink.progress,
    )?;
    let elapsed = done.duration_since(start);
    let machine_busy = busy_percent(machine, procstat::machine_ticks());
    g.entrant.record_watched(&watched, n);
    let cpu: Vec<f64> = children
        .iter()
        .map(|c| procstat::cpu_seconds(c.id()).unwrap_or(f64::NAN))
        .collect();
    let mut members = Vec::new();
    for ((child, id), cpu) in children.iter().zip(ids).zip(cpu) {
        let ended = procstat::terminate(child, Duration::from_secs(10))?;
        if ended.code != 0 {
            tracing::warn!("collector {id} exited with {} after SIGTERM", ended.code);
        }
        members.push(Member {
            id: id.clone(),
            cpu,
            max_rss_kib: ended.max_rss_kib,
            rows: 0,
        });
    }

    let stored = (sink.count)().context("counting the stored messages")?;
    let db = stores::round_db(g.db, round);
    let by_member = rows_by_collector(pg, &db)?;
    for m in &mut members {
        m.rows = by_member.get(&m.id).copied().unwrap_or(0);
    }
    let strangers: Vec<String> = by_member
        .iter()
        .filter(|(c, _)| !ids.contains(c))
        .map(|(c, r)| format!("{c}: {r}"))
        .collect();
    if !strangers.is_empty() {
        bail!(
            "rows from a collector outside the group: {}",
            strangers.join(", ")
        );
    }
    let redelivered = pg
        .try_psql_in(
            &db,
            "SELECT coalesce(sum(value), 0) FROM counters WHERE name = 'duplicates'",
        )?
        .parse()
        .context("reading the duplicates counter")?;
    let detail = Detail {
        machine_busy,
        redelivered,
        members,
    };
    let drained = Drained {
        messages: n,
        elapsed,
        cpu: detail.members.iter().map(|m| m.cpu).sum(),
        max_rss_kib: detail
            .members
            .iter()
            .map(|m| m.max_rss_kib)
            .max()
            .unwrap_or(0),
        stored: Some(stored),
    };
    Ok((drained, detail))
}

/// Rows of `telemetry` in `db` per value of its `collector` column (the member's client id).
fn rows_by_collector(pg: &Postgres, db: &str) -> Result<BTreeMap<String, u64>> {
    let out = pg.try_psql_in(
        db,
        "SELECT collector || ' ' || count(*) FROM telemetry GROUP BY collector",
    )?;
    out.lines()
        .map(|l| {
            let (c, n) = l
                .rsplit_once(' ')
                .with_context(|| format!("unexpected psql line {l:?}"))?;
            Ok((c.to_string(), n.parse()?))
        })
        .collect()
}

fn joined<T>(values: impl IntoIterator<Item = T>, show: impl Fn(T) -> String) -> String {
    values.into_iter().map(show).collect::<Vec<_>>().join("/")
}

fn report(s: &mut Section, groups: &[Group], publishes: &[Published], n: u64) {
    let one = groups
        .iter()
        .find(|g| g.k == 1)
        .map(|g| g.entrant.rates.clone());
    let mut notes = Vec::new();
    for g in groups {
        let (Some(mut row), Some(detail)) = (g.entrant.row(), g.best.as_ref()) else {
            continue;
        };
        if let Some((ratio, each)) = one
            .as_ref()
            .and_then(|one| drain::ratios(&g.entrant.rates, one))
        {
            row = row.set("/ 1 instance", ratio);
            if g.k > 1 {
                notes.push(format!(
                    "{} / 1 collector = {ratio:.2} (per round: {each})",
                    g.entrant.label
                ));
            }
        }
        row = row
            .set(
                "CPU s per instance",
                joined(&detail.members, |m| format!("{:.2}", m.cpu)),
            )
            .set(
                "rows per instance",
                joined(&detail.members, |m| m.rows.to_string()),
            )
            .set_opt("machine busy %", drain::median(&g.machine_busy))
            .set(
                "redelivered",
                joined(&g.redelivered, |r| r.map_or("?".into(), |r| r.to_string())),
            );
        s.row(row);
        let idle: Vec<&str> = detail
            .members
            .iter()
            .filter(|m| m.rows == 0)
            .map(|m| m.id.as_str())
            .collect();
        if !idle.is_empty() {
            notes.push(format!(
                "{}: {} stored nothing in the fastest round (the share was not dealt to every member)",
                g.entrant.label,
                idle.join(", ")
            ));
        }
    }
    if let Some(row) = drain::load_row("load generator", publishes) {
        s.row(row);
    }
    for note in notes {
        s.note(note);
    }
    let incomplete: Vec<String> = groups
        .iter()
        .filter(|g| g.entrant.stored.iter().any(|k| *k != Some(n)))
        .map(|g| g.entrant.label.clone())
        .collect();
    if incomplete.is_empty() {
        s.note(format!(
            "every run stored exactly {n} rows (count(*) after every member stopped; the unique (device_id, seq) key keeps a reading from being stored twice, and \"redelivered\" counts the messages a member received that were already stored)"
        ));
    } else {
        s.note(format!(
            "FAILED: not every run stored all {n} messages: {} (see \"stored\" and the skipped lines)",
            incomplete.join("; ")
        ));
    }
}
