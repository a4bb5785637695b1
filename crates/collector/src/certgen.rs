//! `collector certgen`: writes a development CA, the broker's certificate and
//! client certificates with `mqtt_core::certgen`, refuses to overwrite an
//! existing set without `--force`, and tells the operator what to do next.

use anyhow::Context;
use clap::Args;
use mqtt_core::certgen::{DevCertificates, LOCAL_NAMES};
use std::path::{Path, PathBuf};

/// Arguments of `collector certgen`.
#[derive(Debug, Args)]
pub struct CertgenArgs {
    /// Directory to write into (created if missing)
    #[arg(
        long,
        value_name = "DIR",
        default_value = "docker/mosquitto/config/certs"
    )]
    pub out: PathBuf,
    /// Extra host name or IP for the server certificate (repeatable); localhost, 127.0.0.1 and ::1 are always included
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Also make a client certificate NAME.crt/NAME.key for mutual TLS (repeatable); NAME follows the device id rules
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Validity in days, for the CA and every certificate it signs
    #[arg(long, value_name = "N", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub days: u32,
    /// Overwrite existing files (makes a new CA: every client must get the new ca.crt)
    #[arg(long)]
    pub force: bool,
    /// Do nothing, successfully, when ca.crt, ca.key, server.crt, server.key and every requested client's files already exist (for automation)
    #[arg(long)]
    pub if_missing: bool,
}

/// The file names a run with `args` writes, in the order they are written.
pub fn planned_files(args: &CertgenArgs) -> Vec<String> {
    let mut names: Vec<String> = ["ca.crt", "ca.key", "server.crt", "server.key"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for client in &args.clients {
        names.push(format!("{client}.crt"));
        names.push(format!("{client}.key"));
    }
    names
}

/// Runs the command.
pub fn run(args: &CertgenArgs) -> anyhow::Result<()> {
    let dir = &args.out;
    if args.if_missing {
        let planned = planned_files(args);
        if planned.iter().all(|name| dir.join(name).is_file()) {
            println!(
                "{}: the certificate set is already complete ({}); nothing was changed",
                dir.display(),
                planned.join(", ")
            );
            return Ok(());
        }
        // An incomplete set falls through: without --force the write below names the
        // first existing file and refuses, since new certificates would not match it.
    }
    let set = DevCertificates::generate(&args.hosts, &args.clients, args.days)?;
    let written = set
        .write(dir, args.force)
        .with_context(|| format!("collector certgen into {}", dir.display()))?;
    print_report(args, &written);
    Ok(())
}

fn describe(path: &Path) -> &'static str {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("ca.crt") => {
            "CA certificate: give it to the broker (cafile) and every client (MQTT_CA_CERTS)"
        }
        Some("ca.key") => {
            "CA private key: signs new certificates; keep it secret and off the broker"
        }
        Some("server.crt") => "broker certificate (certfile)",
        Some("server.key") => "broker private key (keyfile)",
        Some(n) if n.ends_with(".crt") => "client certificate (MQTT_CERTFILE)",
        Some(_) => "client private key (MQTT_KEYFILE)",
        None => "",
    }
}

fn print_report(args: &CertgenArgs, written: &[PathBuf]) {
    let width = written
        .iter()
        .map(|p| p.display().to_string().len())
        .max()
        .unwrap_or(0);
    for path in written {
        let mode = if path.extension().is_some_and(|e| e == "key") {
            "0600"
        } else {
            "0644"
        };
        println!(
            "wrote {:<width$}  {mode}  {}",
            path.display().to_string(),
            describe(path)
        );
    }
    let mut names: Vec<&str> = LOCAL_NAMES.to_vec();
    for host in &args.hosts {
        if !names.contains(&host.as_str()) {
            names.push(host);
        }
    }
    let dir = args.out.display();
    println!(
        "\nThe server certificate is valid for {} (for {} days).",
        names.join(", "),
        args.days
    );
    println!("Next steps:");
    println!("  1. Broker (mosquitto.conf, TLS listener 8883): cafile {dir}/ca.crt, certfile {dir}/server.crt, keyfile {dir}/server.key; restart Mosquitto.");
    println!("  2. Clients: MQTT_USE_TLS=true MQTT_CA_CERTS={dir}/ca.crt MQTT_BROKER_HOST=<one of the names above>.");
    if let Some(client) = args.clients.first() {
        println!("  3. Mutual TLS: MQTT_CERTFILE={dir}/{client}.crt MQTT_KEYFILE={dir}/{client}.key, and require_certificate true on the listener.");
    } else {
        println!("  3. For mutual TLS, run again with --client NAME (and --force, which makes a new CA).");
    }
    println!("See MQTT_TLS_SETUP.md.");
}
