//! Development certificates: a CA, a server certificate for the local names and
//! any extra hosts, and client certificates for mutual TLS. Used by
//! `collector certgen` and by the tests, so both exercise the same certificates.
//!
//! Behind the `certgen` feature (off by default), so `device-sim` is built without
//! rcgen. Files are written through a fresh temporary file in the target directory
//! (created exclusively, mode set before a byte is written), then renamed into
//! place; a symlink planted at the final or a temporary name is never followed.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use std::io;
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// Names every server certificate carries, so a local broker is reachable by any of them.
pub const LOCAL_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Why certificates could not be made or written.
// The #[error] text of each variant says what every field holds.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum CertgenError {
    /// rcgen refused the parameters (for example a host name that is not a valid DNS name).
    #[error("cannot create the certificate for {what}: {source}")]
    Generate { what: String, source: rcgen::Error },
    /// A `--client` name that cannot be a certificate's file name.
    #[error("cannot use {name:?} as a client name: {reason}")]
    ClientName { name: String, reason: String },
    /// A `--host` that is neither a DNS name nor an IP address.
    #[error("cannot use {name:?} as a host name of the server certificate: {reason}; give a DNS name (letters, digits, hyphens and dots, e.g. mqtt.example.com, or a wildcard *.example.com) or an IP address (e.g. 192.168.1.10 or fd00::1), without scheme or port")]
    Host { name: String, reason: String },
    /// A file exists and `force` was not given.
    #[error("{0} already exists; pass --force to overwrite the whole set (nothing was written)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// The first instant it is valid (tests set it in the future for a "not valid yet" certificate).
    pub not_before: OffsetDateTime,
    /// The last instant it is valid.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days.into()),
        }
    }

    /// Expired yesterday (for tests of expiry handling).
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }

    /// Valid only from tomorrow.
    pub fn not_yet_valid() -> Self {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now + Duration::days(1),
            not_after: now + Duration::days(30),
        }
    }
}

/// A certificate authority that can issue server and client certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    issued: Issued,
}

fn gen_err(what: &str) -> impl FnOnce(rcgen::Error) -> CertgenError + '_ {
    move |source| CertgenError::Generate {
        what: what.to_string(),
        source,
    }
}

/// The organisational unit of each kind of certificate: it keeps the subjects of
/// the CA, the server and the clients distinct even when a client is named like
/// the server (`--client localhost`), so no certificate can pass for another kind.
const UNIT_CA: &str = "certificate authority";
const UNIT_SERVER: &str = "broker";
const UNIT_CLIENT: &str = "client";

fn base_params(
    sans: Vec<String>,
    unit: &str,
    common_name: &str,
    validity: Validity,
    what: &str,
) -> Result<CertificateParams, CertgenError> {
    let mut params = CertificateParams::new(sans).map_err(gen_err(what))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mqtt-telemetry");
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let serial: [u8; 16] = rand::random();
    let mut serial = serial.to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

impl CertificateAuthority {
    /// A new self-signed CA.
    pub fn new(common_name: &str, validity: Validity) -> Result<Self, CertgenError> {
        let mut params = base_params(vec![], UNIT_CA, common_name, validity, "the CA")?;
        // The CA signs leaf certificates only; no intermediate CA can hang below it.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(gen_err("the CA"))?;
        let cert = params.self_signed(&key).map_err(gen_err("the CA"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            issued,
        })
    }

    /// The CA's own certificate and key.
    pub fn issued(&self) -> &Issued {
        &self.issued
    }

    /// A server certificate naming [`LOCAL_NAMES`] and `hosts`.
    pub fn issue_server(
        &self,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let mut sans: Vec<String> = LOCAL_NAMES.iter().map(|s| s.to_string()).collect();
        for h in hosts {
            if !sans.contains(h) {
                sans.push(h.clone());
            }
        }
        self.issue_server_exact(&sans, validity)
    }

    /// A server certificate naming exactly `names` (tests use it for a certificate of another host).
    pub fn issue_server_exact(
        &self,
        names: &[String],
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let cn = names.first().map(String::as_str).unwrap_or("mqtt-broker");
        let mut params = base_params(names.to_vec(), UNIT_SERVER, cn, validity, "the server")?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.sign(params, "the server")
    }

    /// A client certificate whose common name is `name` (Mosquitto's `use_identity_as_username` reads it).
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<Issued, CertgenError> {
        let what = format!("client {name:?}");
        let key = KeyPair::generate().map_err(gen_err(&what))?;
        self.issue_client_for(name, key, validity)
    }

    /// A client certificate for a key made elsewhere (PKCS#8 PEM, e.g. an RSA key
    /// from openssl), so other key types and encodings can be tried against a broker.
    pub fn issue_client_with_key(
        &self,
        name: &str,
        key_pem: &str,
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let what = format!("client {name:?}");
        let key = KeyPair::from_pem(key_pem).map_err(gen_err(&what))?;
        self.issue_client_for(name, key, validity)
    }

    fn issue_client_for(
        &self,
        name: &str,
        key: KeyPair,
        validity: Validity,
    ) -> Result<Issued, CertgenError> {
        let what = format!("client {name:?}");
        let mut params = base_params(vec![], UNIT_CLIENT, name, validity, &what)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign_with(params, key, &what)
    }

    fn sign(&self, params: CertificateParams, what: &str) -> Result<Issued, CertgenError> {
        let key = KeyPair::generate().map_err(gen_err(what))?;
        self.sign_with(params, key, what)
    }

    fn sign_with(
        &self,
        params: CertificateParams,
        key: KeyPair,
        what: &str,
    ) -> Result<Issued, CertgenError> {
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(gen_err(what))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A complete development set: CA, server and clients.
pub struct DevCertificates {
    /// The CA.
    pub ca: Issued,
    /// The server certificate.
    pub server: Issued,
    /// One certificate per client name.
    pub clients: Vec<(String, Issued)>,
}

impl DevCertificates {
    /// Generates a CA, a server certificate for [`LOCAL_NAMES`] plus `hosts`, and the clients.
    /// A client name must be a valid device id (the contract's rule, so it is also
    /// a safe file name) and must not collide with the CA's or the server's files.
    pub fn generate(hosts: &[String], clients: &[String], days: u32) -> Result<Self, CertgenError> {
        Self::check_names(hosts, clients)?;
        let validity = Validity::days(days);
        let ca = CertificateAuthority::new("mqtt-telemetry development CA", validity)?;
        let server = ca.issue_server(hosts, validity)?;
        let clients = clients
            .iter()
            .map(|name| Ok((name.clone(), ca.issue_client(name, validity)?)))
            .collect::<Result<Vec<_>, CertgenError>>()?;
        Ok(DevCertificates {
            ca: ca.issued().clone(),
            server,
            clients,
        })
    }

    /// Checks what [`generate`](Self::generate) checks, without generating anything:
    /// every host is a DNS name or an IP address ([`check_host_name`]), every client
    /// name is a valid device id that does not clash with the CA's or the server's
    /// files, and no client is given twice.
    pub fn check_names(hosts: &[String], clients: &[String]) -> Result<(), CertgenError> {
        for host in hosts {
            check_host_name(host)?;
        }
        for (i, name) in clients.iter().enumerate() {
            check_client_name(name)?;
            if clients[..i].contains(name) {
                return Err(CertgenError::ClientName {
                    name: name.clone(),
                    reason: "it is given twice".into(),
                });
            }
        }
        Ok(())
    }

    /// The files of this set: (file name, contents, is a private key).
    pub fn files(&self) -> Vec<(String, &str, bool)> {
        let mut files = vec![
            ("ca.crt".to_string(), self.ca.cert_pem.as_str(), false),
            ("ca.key".to_string(), self.ca.key_pem.as_str(), true),
            (
                "server.crt".to_string(),
                self.server.cert_pem.as_str(),
                false,
            ),
            ("server.key".to_string(), self.server.key_pem.as_str(), true),
        ];
        for (name, issued) in &self.clients {
            files.push((format!("{name}.crt"), issued.cert_pem.as_str(), false));
            files.push((format!("{name}.key"), issued.key_pem.as_str(), true));
        }
        files
    }

    /// Writes the set into `dir` (created if missing): keys 0600, certificates 0644,
    /// each through [`write_file`] (with `force`) or [`write_new_file`] (without).
    /// Without `force`, an existing file, or any symlink, at one of the names stops
    /// the write before anything is written. Returns the files in the order written.
    pub fn write(&self, dir: &Path, force: bool) -> Result<Vec<WrittenFile>, CertgenError> {
        let files = self.files();
        if !force {
            // symlink_metadata, not exists(): a dangling symlink is in the way too.
            if let Some((name, _, _)) = files
                .iter()
                .find(|(n, _, _)| std::fs::symlink_metadata(dir.join(n)).is_ok())
            {
                return Err(CertgenError::Exists(dir.join(name)));
            }
        }
        std::fs::create_dir_all(dir).map_err(|source| CertgenError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut written = Vec::new();
        for (name, contents, secret) in files {
            let path = dir.join(&name);
            let mode = if secret { KEY_MODE } else { CERT_MODE };
            let result = if force {
                write_file(&path, contents.as_bytes(), mode)
            } else {
                write_new_file(&path, contents.as_bytes(), mode)
            };
            match result {
                Ok(()) => written.push(WrittenFile { path, mode }),
                // Created by someone else between the check above and now.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && written.is_empty() => {
                    return Err(CertgenError::Exists(path));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(CertgenError::Write {
                        path,
                        source: io::Error::new(
                            e.kind(),
                            "the file appeared while the set was being written, so the set is incomplete; run again with --force",
                        ),
                    });
                }
                Err(source) => return Err(CertgenError::Write { path, source }),
            }
        }
        Ok(written)
    }
}

/// Mode of a private key file.
pub const KEY_MODE: u32 = 0o600;
/// Mode of a certificate file.
pub const CERT_MODE: u32 = 0o644;

/// A file [`DevCertificates::write`] wrote, and the Unix mode it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// `dir` joined with the file name.
    pub path: PathBuf,
    /// [`KEY_MODE`] or [`CERT_MODE`].
    pub mode: u32,
}

/// Checks a `--host` value for the server certificate: an IP address (v4 or v6,
/// without brackets) or a DNS name of letters, digits, hyphens and dots (labels of
/// 1 to 63 characters that neither start nor end with a hyphen, 253 characters in
/// all, the last label not all digits). A wildcard is allowed as the whole first
/// label followed by at least two labels (`*.example.com`, not `*.com`); it
/// matches one label only. Schemes, ports, paths and spaces are refused, naming the value.
pub fn check_host_name(host: &str) -> Result<(), CertgenError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let refuse = |reason: String| CertgenError::Host {
        name: host.to_string(),
        reason,
    };
    if host.is_empty() {
        return Err(refuse("it is empty".into()));
    }
    if host.contains("://") {
        return Err(refuse("it has a scheme".into()));
    }
    if host.chars().any(char::is_whitespace) {
        return Err(refuse("it contains whitespace".into()));
    }
    if host.starts_with('[') {
        return Err(refuse(
            "an IPv6 address goes without brackets (and without a port)".into(),
        ));
    }
    if host.contains(':') {
        return Err(refuse(
            "it contains ':', so it is a name with a port or a malformed IPv6 address".into(),
        ));
    }
    if host.contains('/') {
        return Err(refuse("it contains '/'".into()));
    }
    if host.len() > 253 {
        return Err(refuse(format!(
            "it is {} characters long; a DNS name has at most 253",
            host.len()
        )));
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(refuse(
                "it has an empty label (a dot at the start or end, or two dots in a row)".into(),
            ));
        }
        if label.len() > 63 {
            return Err(refuse(format!(
                "its label {label:?} is {} characters long; a label has at most 63",
                label.len()
            )));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(refuse(if c == '*' {
                "a wildcard is allowed only as the whole first label, as in *.example.com".into()
            } else {
                format!("it contains {c:?}, which a DNS name cannot")
            }));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(refuse(format!(
                "its label {label:?} starts or ends with a hyphen"
            )));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(refuse(
            "its last label is all digits, so it is neither a DNS name nor a valid IP address"
                .into(),
        ));
    }
    if wildcard && labels.len() < 2 {
        return Err(refuse(
            "a wildcard needs at least two labels after it (*.example.com, not *.com)".into(),
        ));
    }
    Ok(())
}

fn check_client_name(name: &str) -> Result<(), CertgenError> {
    let refuse = |reason: String| CertgenError::ClientName {
        name: name.to_string(),
        reason,
    };
    crate::message::validate_device_id(name).map_err(|e| refuse(e.to_string()))?;
    if matches!(name, "ca" | "server") || name.starts_with('.') {
        return Err(refuse(format!(
            "its files would be {name}.crt and {name}.key, which clash with the CA's or the server's files or are hidden"
        )));
    }
    Ok(())
}

/// Writes a file with the given Unix mode, replacing whatever is at `path` (a
/// symlink there is replaced, never followed). See [`write_new_file`] for how.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_through_temp(path, contents, mode, true)
}

/// Writes a file with the given Unix mode; fails with [`io::ErrorKind::AlreadyExists`]
/// when anything, even a dangling symlink, is at `path`. The contents go to a
/// temporary file created exclusively (`O_EXCL`) under a random name in the same
/// directory, whose mode is set before the first byte is written; it is synced and
/// then renamed into place, so a reader never sees a half-written key and a key
/// is never readable by others, not even briefly.
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_through_temp(path, contents, mode, false)
}

fn write_through_temp(path: &Path, contents: &[u8], mode: u32, replace: bool) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    // Created 0600 with O_CREAT|O_EXCL under a random name; removed again on any error.
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // fchmod on the open file: exact (no umask), and before any contents.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    if replace {
        tmp.persist(path).map_err(|e| e.error)?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| e.error)?;
    }
    #[cfg(unix)]
    {
        // The rename is durable once the directory is synced; best effort, since
        // some file systems cannot sync a directory and the file is in place anyway.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_keys_private_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let set = DevCertificates::generate(&["broker.example".into()], &["vehicle_01".into()], 10)
            .unwrap();
        let written = set.write(dir.path(), false).unwrap();
        assert_eq!(written.len(), 6);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in &written {
                let p = &f.path;
                let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
                let want = if p.extension().unwrap() == "key" {
                    0o600
                } else {
                    0o644
                };
                assert_eq!(mode, want, "{}", p.display());
                assert_eq!(f.mode, want, "{}", p.display());
            }
        }
        let before = std::fs::read(dir.path().join("ca.crt")).unwrap();
        let again = DevCertificates::generate(&[], &[], 10).unwrap();
        let err = again.write(dir.path(), false).unwrap_err();
        assert!(matches!(err, CertgenError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before);
        again.write(dir.path(), true).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.crt")).unwrap(), before);
    }

    #[test]
    fn client_names_that_clash_or_escape_are_refused() {
        for bad in [
            "ca",
            "server",
            "../evil",
            "a/b",
            "",
            ".hidden",
            "a b",
            "v\u{e9}hicle",
            "x+y",
        ] {
            let err = DevCertificates::generate(&[], &[bad.to_string()], 1)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(matches!(err, CertgenError::ClientName { .. }), "{err}");
        }
        let twice = vec!["v1".to_string(), "v1".to_string()];
        assert!(DevCertificates::generate(&[], &twice, 1).is_err());
        assert!(DevCertificates::generate(&[], &["vehicle_01".into()], 1).is_ok());
        let too_long = "v".repeat(129);
        assert!(DevCertificates::check_names(&[], &[too_long]).is_err());
        assert!(DevCertificates::check_names(&[], &["v".repeat(128)]).is_ok());
    }

    #[test]
    fn host_names_and_ip_addresses_are_accepted() {
        let long_label = "a".repeat(63);
        let long_name = [long_label.as_str(); 4].join("."); // 255 characters
        let max_name = &long_name[2..]; // 253
        for good in [
            "localhost",
            "mqtt.example.com",
            "MQTT-1.Example.com",
            "xn--bcher-kva.example",
            "a",
            long_label.as_str(),
            max_name,
            "*.example.com",
            "*.mqtt.lan",
            "10.1.2.3",
            "::1",
            "fd00::1",
            "2001:db8::8883",
            "::ffff:192.0.2.1",
        ] {
            check_host_name(good).unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
        }
        let set = DevCertificates::generate(&["*.example.com".into(), "fd00::1".into()], &[], 1);
        assert!(set.is_ok(), "rcgen refused a checked host");
    }

    #[test]
    fn host_names_that_are_urls_ports_or_not_names_are_refused_naming_the_value() {
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(63).as_str(); 4].join(".")[1..].to_string(); // 254
        for bad in [
            "",
            " ",
            "mqtt.example.com ",
            "mqtt example.com",
            "mqtt://mqtt.example.com",
            "mqtts://mqtt.example.com:8883",
            "mqtt.example.com:8883",
            "localhost:1883",
            "[::1]",
            "[::1]:8883",
            "10.1.2.3:8883",
            "mqtt.example.com/",
            "-mqtt.example.com",
            "mqtt-.example.com",
            "mqtt..example.com",
            ".example.com",
            "example.com.",
            "mqtt_broker.lan",
            "bröker.lan",
            long_label.as_str(),
            long_name.as_str(),
            "10.1.2.256",
            "1.2.3",
            "*",
            "*.com",
            "mqtt.*.com",
            "*mqtt.example.com",
            "fe80::1%eth0",
            "1::2::3",
        ] {
            let err = check_host_name(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(matches!(err, CertgenError::Host { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(
                msg.contains("a DNS name") && msg.contains("an IP address"),
                "{msg}"
            );
            assert!(msg.contains("without scheme or port"), "{msg}");
            let gen = DevCertificates::generate(&["ok.example".into(), bad.into()], &[], 1);
            assert!(
                matches!(gen, Err(CertgenError::Host { .. })),
                "generate accepted {bad:?}"
            );
        }
        let err = check_host_name("mqtt.example.com:8883")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
        let err = check_host_name("mqtt://x").unwrap_err().to_string();
        assert!(err.contains("scheme"), "{err}");
    }

    /// A file outside the certificate directory that a planted symlink points at.
    #[cfg(unix)]
    fn victim(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "victim\n").unwrap();
        path
    }

    #[cfg(unix)]
    fn is_symlink(path: &Path) -> bool {
        std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_a_final_name_is_refused_without_force_and_replaced_with_force() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = victim(outside.path(), "target");
        let link = dir.path().join("ca.key");
        symlink(&target, &link).unwrap();
        let set = DevCertificates::generate(&[], &[], 1).unwrap();

        let err = set.write(dir.path(), false).unwrap_err();
        assert!(
            matches!(&err, CertgenError::Exists(p) if p == &link),
            "{err}"
        );
        assert!(is_symlink(&link), "the refused run replaced the symlink");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "victim\n");
        assert!(!dir.path().join("ca.crt").exists(), "the refused run wrote");

        set.write(dir.path(), true).unwrap();
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert!(meta.file_type().is_file(), "ca.key is still a symlink");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&link).unwrap(), set.ca.key_pem);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "victim\n");
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_symlink_at_a_final_name_is_refused_without_force() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let nowhere = outside.path().join("would-receive-the-ca-key");
        let link = dir.path().join("ca.key");
        symlink(&nowhere, &link).unwrap();
        let set = DevCertificates::generate(&[], &[], 1).unwrap();
        let err = set.write(dir.path(), false).unwrap_err();
        assert!(
            matches!(&err, CertgenError::Exists(p) if p == &link),
            "{err}"
        );
        assert!(is_symlink(&link), "the refused run replaced the symlink");
        assert!(!nowhere.exists(), "the symlink was followed");
        assert!(!dir.path().join("ca.crt").exists(), "the refused run wrote");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_old_predictable_temp_name_is_never_followed() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        let set = DevCertificates::generate(&[], &["vehicle_01".into()], 1).unwrap();
        for force in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut planted = Vec::new();
            for (name, _, _) in set.files() {
                // The name the old writer used: ".NAME.tmpPID" next to the file.
                let tmp = dir
                    .path()
                    .join(format!(".{name}.tmp{}", std::process::id()));
                let target = victim(outside.path(), &format!("{name}.{force}"));
                symlink(&target, &tmp).unwrap();
                planted.push((name, tmp, target));
            }
            set.write(dir.path(), force).unwrap();
            for (name, tmp, target) in planted {
                assert_eq!(
                    std::fs::read_to_string(&target).unwrap(),
                    "victim\n",
                    "{name} was written through the planted temp symlink"
                );
                assert!(is_symlink(&tmp), "{name}: the planted symlink was moved");
                let path = dir.path().join(&name);
                assert!(
                    std::fs::symlink_metadata(&path)
                        .unwrap()
                        .file_type()
                        .is_file(),
                    "{name} is not a regular file"
                );
            }
        }
    }
}
