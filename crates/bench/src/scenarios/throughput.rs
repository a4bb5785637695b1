//! Scenario 1, ingest throughput: N messages are queued by the broker for a
//! consumer's persistent QoS 1 session while it is offline, then the consumer is
//! started and timed until all N are stored (received, for mosquitto_sub). Every
//! consumer drains the same load from the same broker, plain and TLS.

use super::drain::{self, Entrant, LOAD_CONNECTIONS, LOAD_WINDOW};
use super::{guarded, Ctx};
use crate::broker::{Broker, Limits};
use crate::consumers::Consumer;
use crate::report::Section;

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
    let mut measured = Vec::new();
    for v in &variants {
        let label = v.label(&ctx.limits);
        guarded(&mut s, &format!("{label} drains"), |s| {
            measured.push((label.clone(), run_variant(ctx, s, v, &label, n, rounds)?));
            Ok(())
        });
    }
    let mut notes = Vec::new();
    for (label, entrants) in &measured {
        let rates = |who: Consumer| {
            entrants
                .iter()
                .find(|e| e.consumer == who)
                .map(|e| e.rates.as_slice())
        };
        let Some(coll) = rates(Consumer::Collector) else {
            continue;
        };
        for peer in [Consumer::MosquittoSub, Consumer::Paho] {
            let Some((median, each)) = rates(peer).and_then(|p| drain::ratios(coll, p)) else {
                continue;
            };
            let verdict = match peer {
                Consumer::MosquittoSub if median >= 0.9 => " (goal >= 0.90: met)",
                Consumer::MosquittoSub => " (goal >= 0.90: MISSED)",
                _ => "",
            };
            notes.push(format!(
                "{label}: collector / {} = {median:.2} (per round: {each}){verdict}",
                peer.name(),
            ));
        }
    }
    for (label, entrants) in &measured {
        let median = |who: Consumer| {
            entrants
                .iter()
                .find(|e| e.consumer == who)
                .and_then(Entrant::median)
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

fn run_variant<'a>(
    ctx: &'a Ctx,
    s: &mut Section,
    v: &Variant,
    label: &str,
    n: u64,
    rounds: usize,
) -> anyhow::Result<Vec<Entrant<'a>>> {
    let dir = ctx.subdir(&format!(
        "throughput-{}-{}-{}",
        if v.tls { "tls" } else { "plain" },
        v.limits.max_inflight,
        v.limits.tcp_nodelay
    ));
    let broker = Broker::start(&dir.join("broker"), &ctx.pki, v.limits)?;
    s.command(broker.command_line());
    let ep = broker.endpoint(v.tls);
    let mut entrants: Vec<Entrant> = v
        .consumers
        .iter()
        .map(|c| Entrant::new(format!("{}, {label}", c.name()), *c))
        .collect();
    let publishes = drain::run_rounds(ctx, s, &ep, &drain::load(n), &dir, &mut entrants, rounds);
    for row in entrants.iter().filter_map(Entrant::row) {
        s.row(row);
    }
    if let Some(row) = drain::load_row(format!("load generator, {label}"), &publishes) {
        s.row(row);
    }
    Ok(entrants)
}
