//! Scenario 1, ingest throughput: N messages are queued by the broker for a
//! consumer's persistent QoS 1 session while it is offline, then the consumer is
//! started and timed until all N are stored (received, for mosquitto_sub). Every
//! consumer drains the same load from the same broker, plain and TLS.

use super::{guarded, Ctx};
use crate::broker::{Broker, Limits};
use crate::consumers::{Consumer, Run};
use crate::loadgen::{self, Load};
use crate::report::{Row, Section};
use std::time::Duration;

/// Connections of the load generator.
pub const LOAD_CONNECTIONS: usize = 4;
/// Unacknowledged messages per load connection.
pub const LOAD_WINDOW: u16 = 200;

struct Variant {
    tls: bool,
    limits: Limits,
    consumers: Vec<Consumer>,
}

impl Variant {
    fn label(&self, base: &Limits) -> String {
        let mut l = if self.tls { "TLS" } else { "plain" }.to_string();
        if self.limits.max_inflight != base.max_inflight {
            l.push_str(&format!(", inflight {}", self.limits.max_inflight));
        }
        if self.limits.tcp_nodelay != base.tcp_nodelay {
            l.push_str(&format!(", nodelay {}", self.limits.tcp_nodelay));
        }
        l
    }
}

/// Runs the scenario.
pub fn run(ctx: &Ctx) -> Section {
    let mut s = Section::new(
        "throughput",
        "drain of N queued QoS 1 messages from a persistent session",
    );
    let n = ctx.messages;
    let rounds = if ctx.quick { 1 } else { 5 };
    let all = vec![Consumer::MosquittoSub, Consumer::Paho, Consumer::Collector];
    let mut variants = vec![
        Variant {
            tls: false,
            limits: ctx.limits,
            consumers: all.clone(),
        },
        Variant {
            tls: true,
            limits: ctx.limits,
            // What durability against a power loss costs.
            consumers: [all, vec![Consumer::CollectorSyncFull]].concat(),
        },
    ];
    if !ctx.quick && ctx.limits.max_inflight < 1000 {
        // What raising the broker's window buys a consumer that acknowledges after commit.
        variants.push(Variant {
            tls: true,
            limits: Limits {
                max_inflight: 1000,
                ..ctx.limits
            },
            consumers: vec![Consumer::MosquittoSub, Consumer::Collector],
        });
    }
    if !ctx.quick {
        // Nagle's algorithm on the broker's side shapes a window-bound, ack-after-commit consumer.
        variants.push(Variant {
            tls: true,
            limits: Limits {
                tcp_nodelay: !ctx.limits.tcp_nodelay,
                ..ctx.limits
            },
            consumers: vec![Consumer::MosquittoSub, Consumer::Collector],
        });
    }
    s.note(format!(
        "N = {n} messages per drain; load generator: {LOAD_CONNECTIONS} connections, window {LOAD_WINDOW} each, QoS 1, contract payloads; {rounds} round(s), consumers interleaved within a round; msg/s = best round, ratios = median of the per-round ratios (both run in the same round, under the same machine load); elapsed = process start to the Nth message stored/received (start-up and connect included)"
    ));
    for v in &variants {
        let label = v.label(&ctx.limits);
        guarded(&mut s, &format!("{label} drains"), |s| {
            run_variant(ctx, s, v, &label, n, rounds)
        });
    }
    let mut notes = Vec::new();
    for v in &variants {
        let label = v.label(&ctx.limits);
        let rounds_of = |who: Consumer| -> Option<Vec<f64>> {
            let runs = s.find(&format!("{}, {label}", who.name()))?;
            match runs.cells.iter().find(|(k, _)| k == "runs msg/s")? {
                (_, crate::report::Cell::Text(t)) => Some(
                    t.split('/')
                        .map(|x| x.parse().unwrap_or(f64::NAN))
                        .collect(),
                ),
                _ => None,
            }
        };
        let Some(coll) = rounds_of(Consumer::Collector) else {
            continue;
        };
        for peer in [Consumer::MosquittoSub, Consumer::Paho] {
            let Some(p) = rounds_of(peer) else { continue };
            let mut ratios: Vec<f64> = coll
                .iter()
                .zip(&p)
                .map(|(c, p)| c / p)
                .filter(|r| r.is_finite())
                .collect();
            if ratios.is_empty() {
                continue;
            }
            ratios.sort_by(f64::total_cmp);
            let median = ratios[ratios.len() / 2];
            let verdict = match peer {
                Consumer::MosquittoSub if median >= 0.9 => " (goal >= 0.90: met)",
                Consumer::MosquittoSub => " (goal >= 0.90: MISSED)",
                _ => "",
            };
            notes.push(format!(
                "{label}: collector / {} = {median:.2} (per round: {}){verdict}",
                peer.name(),
                coll.iter()
                    .zip(&p)
                    .map(|(c, p)| format!("{:.2}", c / p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    for v in &variants {
        let label = v.label(&ctx.limits);
        let median = |who: Consumer| {
            s.find(&format!("{}, {label}", who.name()))
                .and_then(|r| r.num("median msg/s"))
        };
        if let (Some(normal), Some(full)) = (
            median(Consumer::Collector),
            median(Consumer::CollectorSyncFull),
        ) {
            notes.push(format!(
                "{label}: collector --sync full drains at {:.2} of the default --sync normal (medians)",
                full / normal
            ));
        }
    }
    for n in notes {
        s.note(n);
    }
    s
}

fn run_variant(
    ctx: &Ctx,
    s: &mut Section,
    v: &Variant,
    label: &str,
    n: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    let dir = ctx.subdir(&format!(
        "throughput-{}-{}-{}",
        if v.tls { "tls" } else { "plain" },
        v.limits.max_inflight,
        v.limits.tcp_nodelay
    ));
    let broker = Broker::start(&dir.join("broker"), &ctx.pki, v.limits)?;
    s.command(broker.command_line());
    let ep = broker.endpoint(v.tls);
    let load = Load {
        messages: n,
        connections: LOAD_CONNECTIONS,
        window: LOAD_WINDOW,
        prefix: "load_".into(),
    };
    let mut best: Vec<(Consumer, Option<crate::consumers::Drained>, Vec<f64>)> =
        v.consumers.iter().map(|c| (*c, None, Vec::new())).collect();
    let mut publishes = Vec::new();
    for round in 0..rounds {
        for (consumer, best, rates) in best.iter_mut() {
            let id = format!("bench-{}", consumer.slug());
            let attempt = (|| -> anyhow::Result<()> {
                ctx.rt
                    .block_on(loadgen::prime_session(&ep, &id, "device/data/+"))?;
                let published = ctx.rt.block_on(loadgen::publish(&ep, &load))?;
                publishes.push(published);
                let run = Run::prepare(
                    *consumer,
                    &ctx.programs,
                    &ep,
                    &id,
                    n,
                    &dir.join(consumer.slug()),
                )?;
                if round == 0 {
                    s.command(run.line.clone());
                }
                let timeout = Duration::from_secs(30) + Duration::from_secs_f64(n as f64 / 1000.0);
                let d = run.drain(timeout)?;
                rates.push(d.rate());
                if !matches!(best, Some(b) if b.rate() >= d.rate()) {
                    *best = Some(d);
                }
                Ok(())
            })();
            if let Err(e) = attempt {
                rates.push(f64::NAN);
                s.skip(format!(
                    "{}, {label}, round {}: {e:#}",
                    consumer.name(),
                    round + 1
                ));
            }
        }
    }
    for (consumer, best, rates) in best {
        if let Some(d) = best {
            let runs = rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join("/");
            let mut finite: Vec<f64> = rates.iter().copied().filter(|r| r.is_finite()).collect();
            finite.sort_by(f64::total_cmp);
            s.row(
                Row::new(format!("{}, {label}", consumer.name()))
                    .set("msg/s", d.rate())
                    .set("median msg/s", finite[finite.len() / 2])
                    .set("seconds", d.elapsed.as_secs_f64())
                    .set("runs msg/s", runs)
                    .set("cpu us/msg", d.cpu * 1e6 / d.messages as f64)
                    .set("max RSS MiB", d.max_rss_kib as f64 / 1024.0),
            );
        }
    }
    if !publishes.is_empty() {
        let rate = publishes.iter().map(|p| p.rate()).fold(0.0, f64::max);
        let wire: u64 = publishes.iter().map(|p| p.wire.payload_bytes()).sum();
        let ip: u64 = publishes.iter().map(|p| p.wire.ip_bytes()).sum();
        let msgs: u64 = publishes.iter().map(|p| p.messages).sum();
        s.row(
            Row::new(format!("load generator, {label}"))
                .set("msg/s", rate)
                .set("wire B/msg", wire as f64 / msgs as f64)
                .set("wire+IP B/msg", ip as f64 / msgs as f64),
        );
    }
    Ok(())
}
