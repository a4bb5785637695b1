//! Scenario 4, the cost of TLS on the same work: connect time per device, and
//! device-sim at 1,000 msg/s into the collector over plain and TLS (latency, CPU,
//! bytes on the wire per message); throughput ratios come from scenario 1 when it ran.

use super::latency::{self, SimLoad};
use super::{guarded, Ctx};
use crate::broker::Broker;
use crate::loadgen;
use crate::report::{percentile, Row, Section};

/// Runs the scenario; `earlier` holds the sections already run (for throughput).
pub fn run(ctx: &Ctx, earlier: &[Section]) -> Section {
    let mut s = Section::new("tls", "plain vs TLS on the same work");
    guarded(&mut s, "tls", |s| {
        let dir = ctx.subdir("tls");
        let broker = Broker::start(&dir.join("broker"), &ctx.pki, ctx.limits)?;
        s.command(broker.command_line());

        let connects = if ctx.quick { 50 } else { 200 };
        // Connect times also on a broker with the other Nagle setting: the TLS handshake
        // ends with several small writes, which Nagle's algorithm can hold back.
        let other = crate::broker::Limits {
            tcp_nodelay: !ctx.limits.tcp_nodelay,
            ..ctx.limits
        };
        let other_broker = Broker::start(&dir.join("broker-nodelay"), &ctx.pki, other)?;
        s.command(other_broker.command_line());
        let mut mean = [0.0; 2];
        for (b, limits) in [(&broker, ctx.limits), (&other_broker, other)] {
            for (i, tls) in [false, true].into_iter().enumerate() {
                let ep = b.endpoint(tls);
                let mut t = ctx.rt.block_on(loadgen::connect_times(&ep, connects))?;
                t.sort_by(f64::total_cmp);
                let m = t.iter().sum::<f64>() / t.len() as f64;
                if limits.tcp_nodelay == ctx.limits.tcp_nodelay {
                    mean[i] = m;
                }
                s.row(
                    Row::new(format!(
                        "connect, {}, broker set_tcp_nodelay {}",
                        ep.label(),
                        limits.tcp_nodelay
                    ))
                    .set("connects", t.len() as u64)
                    .set("mean ms", m)
                    .set("p50 ms", percentile(&t, 50.0))
                    .set("p99 ms", percentile(&t, 99.0)),
                );
            }
        }
        drop(other_broker);
        s.note(format!(
            "connect = TCP + TLS handshake + CONNECT/CONNACK, one after another, rustls client with TCP_NODELAY; with the run's broker TLS adds {:.2} ms per device",
            mean[1] - mean[0]
        ));

        let load = SimLoad {
            count: 100,
            interval_ms: 100,
            seconds: if ctx.quick { 6 } else { 20 },
        };
        let mut runs = Vec::new();
        for tls in [false, true] {
            let label = format!("1000 msg/s {}", if tls { "TLS" } else { "plain" });
            let d = ctx.subdir(&format!("tls/{}", if tls { "tls" } else { "plain" }));
            match latency::sim_into_collector(ctx, &broker, tls, load, &d) {
                Ok(r) => {
                    for c in &r.commands {
                        s.command(c.clone());
                    }
                    s.row(latency::row(label, &load, &r));
                    runs.push(r);
                }
                Err(e) => s.skip(format!("{label}: {e:#}")),
            }
        }
        if let [p, t] = runs.as_slice() {
            if let (Some(pw), Some(tw)) = (p.wire_per_msg, t.wire_per_msg) {
                s.note(format!(
                    "bytes on the wire per message (device->broker->collector, both directions, TCP payload): plain {:.0}, TLS {:.0} (+{:.1}%); with IP/TCP headers {:.0} vs {:.0} (+{:.1}%)",
                    pw.0, tw.0, 100.0 * (tw.0 / pw.0 - 1.0), pw.1, tw.1, 100.0 * (tw.1 / pw.1 - 1.0)
                ));
            }
            s.note(format!(
                "latency p50/p99: plain {:.2}/{:.2} ms, TLS {:.2}/{:.2} ms (+{:.2}/+{:.2} ms)",
                p.steady[0],
                p.steady[2],
                t.steady[0],
                t.steady[2],
                t.steady[0] - p.steady[0],
                t.steady[2] - p.steady[2]
            ));
            s.note(format!(
                "CPU at 1,000 msg/s, percent of one core, plain -> TLS: device-sim {:.1} -> {:.1}, collector {:.1} -> {:.1}, broker {:.1} -> {:.1}",
                p.cpu[0], t.cpu[0], p.cpu[1], t.cpu[1], p.cpu[2], t.cpu[2]
            ));
        }

        if let Some(tp) = earlier.iter().find(|x| x.name == "throughput") {
            for who in ["collector", "mosquitto_sub", "paho", "load generator"] {
                // Medians: a best round on a noisy machine flatters either side.
                let col = if who == "load generator" {
                    "msg/s"
                } else {
                    "median msg/s"
                };
                let plain = tp.find(&format!("{who}, plain")).and_then(|r| r.num(col));
                let tls = tp.find(&format!("{who}, TLS")).and_then(|r| r.num(col));
                if let (Some(p), Some(t)) = (plain, tls) {
                    s.row(
                        Row::new(format!(
                            "throughput {who} (median; best for the load generator)"
                        ))
                        .set("plain msg/s", p)
                        .set("TLS msg/s", t)
                        .set("TLS/plain", t / p),
                    );
                }
            }
            let wire = |l: &str| tp.find(l).and_then(|r| r.num("wire B/msg"));
            if let (Some(p), Some(t)) = (wire("load generator, plain"), wire("load generator, TLS"))
            {
                s.note(format!(
                    "pipelined publishing by the load generator (publish + PUBACK): {p:.0} vs {t:.0} B/msg (+{:.1}%)",
                    100.0 * (t / p - 1.0)
                ));
            }
        } else {
            s.note("throughput plain vs TLS: run with --scenario throughput too");
        }
        Ok(())
    });
    s
}
