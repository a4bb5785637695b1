//! `collector certgen`: writes development certificates (owned by the operator-kit work).

use clap::Args;
use std::path::PathBuf;

/// Arguments of `collector certgen`.
#[derive(Debug, Args)]
pub struct CertgenArgs {
    /// Directory to write into
    #[arg(long, default_value = "docker/mosquitto/config/certs")]
    pub out: PathBuf,
    /// Extra host name or IP for the server certificate (repeatable); localhost, 127.0.0.1 and ::1 are always included
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Also make a client certificate NAME.crt/NAME.key for mutual TLS (repeatable)
    #[arg(long = "client", value_name = "NAME")]
    pub clients: Vec<String>,
    /// Validity in days
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
}

/// Runs the command.
pub fn run(args: &CertgenArgs) -> anyhow::Result<()> {
    let set = mqtt_core::certgen::DevCertificates::generate(&args.hosts, &args.clients, args.days)?;
    for path in set.write(&args.out, args.force)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}
