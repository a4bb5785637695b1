//! `collector certgen`: writes a development CA, the broker's certificate and
//! client certificates with `mqtt_core::certgen`, refuses to overwrite an
//! existing set without `--force`, and tells the operator what to do next.

use anyhow::Context;
use clap::Args;
use mqtt_core::certgen::{DevCertificates, WrittenFile, LOCAL_NAMES};
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

/// Runs the command: checks the names, honours `--if-missing`, writes the set and
/// prints where it went and what to do next.
pub fn run(args: &CertgenArgs) -> anyhow::Result<()> {
    // Before --if-missing looks at the files, so a bad name is refused even then.
    DevCertificates::check_names(&args.hosts, &args.clients)?;
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
    let written = write_set(args)?;
    print!("{}", report(args, &written));
    Ok(())
}

/// What [`write_set`] wrote: the absolute directory and each file in it.
#[derive(Debug)]
pub struct Written {
    /// The directory, absolute (symlinks resolved).
    pub dir: PathBuf,
    /// Each file with its absolute path and mode, in the order written.
    pub files: Vec<WrittenFile>,
}

/// Generates the set and writes it into `args.out`.
pub fn write_set(args: &CertgenArgs) -> anyhow::Result<Written> {
    let dir = &args.out;
    let set = DevCertificates::generate(&args.hosts, &args.clients, args.days)?;
    let files = set
        .write(dir, args.force)
        .with_context(|| format!("collector certgen into {}", dir.display()))?;
    let abs = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.clone());
    let files = files
        .into_iter()
        .map(|f| WrittenFile {
            path: f.path.file_name().map_or(f.path.clone(), |n| abs.join(n)),
            mode: f.mode,
        })
        .collect();
    Ok(Written { dir: abs, files })
}

fn describe(path: &Path) -> &'static str {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("ca.crt") => {
            "CA certificate: give it to the broker (cafile) and every client (MQTT_CA_CERTS)"
        }
        Some("ca.key") => {
            "CA private key: signs new certificates; keep it secret, off the broker and the clients"
        }
        Some("server.crt") => "broker certificate (certfile)",
        Some("server.key") => "broker private key (keyfile)",
        Some(n) if n.ends_with(".crt") => "client certificate (MQTT_CERTFILE)",
        Some(_) => "client private key (MQTT_KEYFILE)",
        None => "",
    }
}

/// The text printed after a write: the absolute directory, each file with its mode
/// and role, the names the server certificate carries, and the next steps.
pub fn report(args: &CertgenArgs, written: &Written) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let dir = written.dir.display();
    let _ = writeln!(out, "Wrote {} files into {dir}:", written.files.len());
    let entries: Vec<String> = written
        .files
        .iter()
        .map(|f| format!("{} ({:04o})", f.path.display(), f.mode))
        .collect();
    let width = entries.iter().map(String::len).max().unwrap_or(0);
    for (entry, f) in entries.iter().zip(&written.files) {
        let _ = writeln!(out, "  wrote {entry:<width$}  {}", describe(&f.path));
    }
    let mut names: Vec<&str> = LOCAL_NAMES.to_vec();
    for host in &args.hosts {
        if !names.contains(&host.as_str()) {
            names.push(host);
        }
    }
    let _ = writeln!(
        out,
        "\nThe server certificate is valid for {} (for {} days).",
        names.join(", "),
        args.days
    );
    let _ = writeln!(out, "Next steps:");
    let _ = writeln!(out, "  1. Broker (mosquitto.conf, TLS listener 8883): cafile {dir}/ca.crt, certfile {dir}/server.crt, keyfile {dir}/server.key; restart Mosquitto.");
    let _ = writeln!(out, "  2. Clients (collector, device-sim) get ca.crt: MQTT_USE_TLS=true MQTT_CA_CERTS={dir}/ca.crt MQTT_BROKER_HOST=<one of the names above>.");
    if args.clients.is_empty() {
        let _ = writeln!(out, "  3. For mutual TLS, run again with --client NAME (and --force, which makes a new CA).");
    } else {
        let _ = writeln!(
            out,
            "  3. Mutual TLS (require_certificate true on the listener), each client its own pair:"
        );
        for client in &args.clients {
            let _ = writeln!(
                out,
                "     {client}: MQTT_CERTFILE={dir}/{client}.crt MQTT_KEYFILE={dir}/{client}.key"
            );
        }
    }
    let _ = writeln!(
        out,
        "Keep ca.key private: neither the broker nor the clients need it. See MQTT_TLS_SETUP.md."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_core::certgen::CertgenError;

    fn args(out: &Path, hosts: &[&str], clients: &[&str]) -> CertgenArgs {
        CertgenArgs {
            out: out.to_path_buf(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            clients: clients.iter().map(|s| s.to_string()).collect(),
            days: 30,
            force: false,
            if_missing: false,
        }
    }

    #[test]
    fn certgen_reports_absolute_paths_modes_and_next_steps() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        // A path with a ".." in it: the report names the directory it resolves to.
        let out = tmp.path().join("sub/../certs");
        let a = args(&out, &["mqtt.lan"], &["vehicle_01", "collector-1"]);
        let written = write_set(&a).unwrap();
        let abs = std::fs::canonicalize(tmp.path()).unwrap().join("certs");
        assert_eq!(written.dir, abs);
        let names: Vec<String> = written
            .files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, planned_files(&a));
        for f in &written.files {
            assert_eq!(f.path.parent().unwrap(), abs);
            assert!(f.path.is_file(), "{}", f.path.display());
        }

        let text = report(&a, &written);
        let abs = abs.display();
        assert!(text.contains(&format!("into {abs}:")), "{text}");
        for name in ["ca.key", "server.key", "vehicle_01.key", "collector-1.key"] {
            assert!(
                text.contains(&format!("wrote {abs}/{name} (0600)")),
                "{name}: {text}"
            );
        }
        for name in ["ca.crt", "server.crt", "vehicle_01.crt", "collector-1.crt"] {
            assert!(
                text.contains(&format!("wrote {abs}/{name} (0644)")),
                "{name}: {text}"
            );
        }
        assert!(
            text.contains("localhost, 127.0.0.1, ::1, mqtt.lan"),
            "{text}"
        );
        assert!(text.contains("Next steps"), "{text}");
        assert!(
            text.contains(&format!(
                "cafile {abs}/ca.crt, certfile {abs}/server.crt, keyfile {abs}/server.key"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("MQTT_CA_CERTS={abs}/ca.crt")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "collector-1: MQTT_CERTFILE={abs}/collector-1.crt MQTT_KEYFILE={abs}/collector-1.key"
            )),
            "{text}"
        );
    }

    #[test]
    fn certgen_without_clients_says_how_to_get_one() {
        let tmp = tempfile::tempdir().unwrap();
        let a = args(&tmp.path().join("certs"), &[], &[]);
        let written = write_set(&a).unwrap();
        assert_eq!(written.files.len(), 4);
        let text = report(&a, &written);
        assert!(text.contains("run again with --client NAME"), "{text}");
        assert!(!text.contains("MQTT_CERTFILE="), "{text}");
    }

    #[test]
    fn certgen_refuses_bad_hosts_and_clients_before_writing_even_with_if_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("certs");
        for host in ["mqtt://broker.lan", "broker.lan:8883", "", "two words"] {
            let err = run(&args(&out, &[host], &[])).unwrap_err();
            assert!(
                matches!(err.downcast_ref(), Some(CertgenError::Host { name, .. }) if name == host),
                "{err:#}"
            );
            assert!(format!("{err:#}").contains("without scheme or port"));
            assert!(!out.exists(), "{host:?}: something was written");
        }
        for client in ["../escape", "ca", "a b"] {
            let err = run(&args(&out, &[], &[client])).unwrap_err();
            assert!(
                matches!(err.downcast_ref(), Some(CertgenError::ClientName { .. })),
                "{err:#}"
            );
            assert!(!out.exists(), "{client:?}: something was written");
        }
        // With a complete set and --if-missing, a bad name is still an error.
        run(&args(&out, &[], &[])).unwrap();
        let mut a = args(&out, &["mqtt://broker.lan"], &[]);
        a.if_missing = true;
        assert!(run(&a).is_err());
        a.hosts.clear();
        run(&a).unwrap();
    }
}
