//! `bench`: runs the scenarios of issue 6 against a Mosquitto it starts itself and
//! prints a table per scenario, with the command lines that reproduce each figure.

mod binaries;
mod broker;
mod cli;
mod consumers;
mod loadgen;
mod procstat;
mod report;
mod scenarios;
mod wire;

use anyhow::{Context, Result};
use broker::Limits;
use clap::Parser;
use cli::{Cli, Scenario};
use report::{Report, Section};
use scenarios::Ctx;
use std::process::Command;
use std::time::Instant;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(mqtt_core::exit::FAILURE);
        }
    }
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn meta(cli: &Cli, limits: &Limits, broker_conf: &str, dir: &std::path::Path) -> serde_json::Value {
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "date": output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "quick": cli.quick,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu_model,
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": output("uname", &["-sr"]),
        "mosquitto": output("mosquitto", &["-h"]),
        "rustc": output("rustc", &["-V"]),
        "python": output("python3", &["-V"]),
        "paho_mqtt": output("python3", &["-c", "import paho.mqtt; print(paho.mqtt.__version__)"]),
        "git_commit": output("git", &["rev-parse", "--short", "HEAD"]),
        "loadavg_at_start": scenarios::loadavg(),
        // Databases live here: fsync on tmpfs would cost nothing and flatter every store.
        "work_dir_filesystem": output("sh", &["-c", &format!("df -T '{}' | awk 'NR==2 {{print $1, $2}}'", dir.display())]),
        "broker_max_inflight_messages": limits.max_inflight,
        "broker_max_queued_messages": limits.max_queued,
        "broker_set_tcp_nodelay": limits.tcp_nodelay,
        "broker_config": broker_conf,
    })
}

fn run(cli: Cli) -> Result<()> {
    let limits = Limits {
        max_inflight: cli.max_inflight,
        max_queued: 1_000_000,
        tcp_nodelay: cli.tcp_nodelay,
    };
    let messages = cli
        .messages
        .unwrap_or(if cli.quick { 20_000 } else { 100_000 });
    let mut selected = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        cli.scenarios.clone()
    };
    selected.sort();
    selected.dedup();

    let programs = binaries::Programs::locate(cli.no_build);
    let tmp = tempfile::Builder::new()
        .prefix("mqtt-bench-")
        .tempdir()
        .context("creating a working directory")?;
    let dir = tmp.path().to_path_buf();
    let pki = testkit::Pki::try_in(&dir.join("certs"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    // A throwaway broker shows the exact configuration every scenario uses.
    let probe = broker::Broker::start(&dir.join("probe-broker"), &pki, limits)?;
    let conf = probe.config_text();
    let nofile = probe.nofile;
    drop(probe);
    let meta = meta(&cli, &limits, &conf, &dir);
    println!("bench: {}", serde_json::to_string(&meta)?);
    println!(
        "bench: broker max_inflight_messages={} max_queued_messages={} set_tcp_nodelay={} (open-file limit {}), working directory {}",
        limits.max_inflight,
        limits.max_queued,
        limits.tcp_nodelay,
        nofile.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        dir.display()
    );
    for (name, p) in [
        ("collector", &programs.collector),
        ("device-sim", &programs.device_sim),
        ("mosquitto_sub", &programs.mosquitto_sub),
        ("paho stand-in", &programs.paho),
    ] {
        match p {
            Ok(path) => println!("bench: {name}: {}", path.display()),
            Err(e) => println!("bench: {name}: unavailable: {e}"),
        }
    }

    let ctx = Ctx {
        rt,
        programs,
        pki,
        dir,
        quick: cli.quick,
        limits,
        messages,
    };
    let mut sections: Vec<Section> = Vec::new();
    for sc in selected {
        println!("\n== {} ...", sc.name());
        let started = Instant::now();
        let load0 = scenarios::loadavg();
        let mut s = match sc {
            Scenario::Throughput => scenarios::throughput::run(&ctx),
            Scenario::Latency => scenarios::latency::run(&ctx),
            Scenario::Scale => scenarios::scale::run(&ctx),
            Scenario::Tls => scenarios::tls::run(&ctx, &sections),
            Scenario::Queue => scenarios::queue::run(&ctx),
            Scenario::Stores => scenarios::stores::run(&ctx),
            Scenario::ScaleOut => scenarios::scale_out::run(&ctx),
        };
        s.seconds = started.elapsed().as_secs_f64();
        if let (Some(a), Some(b)) = (load0, scenarios::loadavg()) {
            s.notes.push(format!(
                "machine load average (1 min) {a:.1} at start, {b:.1} at end, on {} cores",
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(0)
            ));
        }
        sections.push(s);
    }

    println!("\n==================== results ====================");
    for s in &sections {
        println!("{}", report::render_section(s));
    }
    let report = Report { meta, sections };
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("bench: results written to {}", path.display());
    }
    if cli.keep {
        let kept = tmp.keep();
        println!("bench: kept {}", kept.display());
    }
    Ok(())
}
