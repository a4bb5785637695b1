//! A real PostgreSQL (Debian's `postgresql` package) in a temporary folder, on a
//! free loopback port: password authentication (scram-sha-256) for TCP, optional
//! TLS with a [`Pki`] server certificate, stopped, started again on the same port
//! and data, paused, or killed on demand, and killed when dropped.
//!
//! PostgreSQL refuses to run as root, so under root (CI, this workplace) every
//! server program runs as the `postgres` OS user, which owns the folder.

use crate::dir::Dir;
use crate::pki::Pki;
use crate::process::{die_with_parent, free_port, wait_until};
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The password of the `postgres` role unless [`PostgresConfig::password`] sets another.
pub const DEFAULT_PASSWORD: &str = "testkit-postgres-secret";

/// How long a start may take: initdb is not part of it, crash recovery is.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Why a PostgreSQL could not be set up.
// The #[error] text of each variant says what every field holds.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// No `initdb`/`postgres` programs were found.
    #[error("PostgreSQL is not installed: no {looked_in} holds initdb and postgres; install it (apt-get install postgresql) or set TESTKIT_PG_BIN to its bin directory")]
    NotInstalled { looked_in: String },
    /// Running as root and there is no `postgres` OS user to run the server as.
    #[error("running as root, and PostgreSQL refuses root, but there is no `postgres` OS user to run it as; install the postgresql package, which creates it")]
    NoUser,
    /// A file or folder could not be prepared.
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("{program} failed ({status}): {output}")]
    Failed {
        program: String,
        status: ExitStatus,
        output: String,
    },
    /// The server ended before it accepted connections.
    #[error("postgres exited at start ({status}); log:\n{log}")]
    Exited { status: ExitStatus, log: String },
    /// The server runs but did not answer `pg_isready` in time.
    #[error(
        "postgres did not accept connections on port {port} within {READY_WITHIN:?}; log:\n{log}"
    )]
    NotReady { port: u16, log: String },
}

/// The result of a setup step.
pub type Result<T, E = PostgresError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PostgresError + '_ {
    move |source| PostgresError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to start: the password of the `postgres` role, TLS, extra databases and settings.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// Password of the `postgres` role (TCP connections must give it).
    pub password: String,
    /// Server certificate and key (PEM); `ssl = on` when set.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Databases created after the first start, besides `postgres`.
    pub databases: Vec<String>,
    /// Extra `postgresql.conf` lines.
    pub settings: Vec<String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            password: DEFAULT_PASSWORD.into(),
            tls: None,
            databases: Vec::new(),
            settings: Vec::new(),
        }
    }
}

impl PostgresConfig {
    /// Plain TCP, password [`DEFAULT_PASSWORD`].
    pub fn new() -> PostgresConfig {
        PostgresConfig::default()
    }

    /// Another password for the `postgres` role.
    pub fn password(mut self, password: &str) -> PostgresConfig {
        self.password = password.into();
        self
    }

    /// TLS with `pki`'s server certificate (which names localhost, 127.0.0.1 and ::1
    /// unless made by [`Pki::with_server_names`]).
    pub fn tls(mut self, pki: &Pki) -> PostgresConfig {
        self.tls = Some((pki.server_crt.clone(), pki.server_key.clone()));
        self
    }

    /// One more database to create.
    pub fn database(mut self, name: &str) -> PostgresConfig {
        self.databases.push(name.into());
        self
    }

    /// One more `postgresql.conf` line, e.g. `"max_connections = 5"`.
    pub fn setting(mut self, line: &str) -> PostgresConfig {
        self.settings.push(line.into());
        self
    }
}

/// A PostgreSQL server of this test: its folder, port and process.
pub struct Postgres {
    /// The loopback port it listens on (the same after [`Postgres::start_again`]).
    pub port: u16,
    /// Password of the `postgres` role.
    pub password: String,
    /// Whether it was started with TLS.
    pub tls: bool,
    dir: Dir,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    /// initdb, start and wait until it accepts connections; panics with PostgreSQL's
    /// own words when it cannot.
    pub fn start(cfg: PostgresConfig) -> Postgres {
        Self::try_start(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Postgres::start`] that returns the failure instead of panicking.
    pub fn try_start(cfg: PostgresConfig) -> Result<Postgres> {
        let bin = bin_dir()?;
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user().ok_or(PostgresError::NoUser)?)
        } else {
            None
        };
        let dir = Dir::temp().map_err(io_err(&std::env::temp_dir()))?;
        let mut pg = Postgres {
            port: free_port(),
            password: cfg.password.clone(),
            tls: cfg.tls.is_some(),
            dir,
            bin,
            owner,
            child: None,
        };
        pg.init(&cfg)?;
        pg.try_start_again()?;
        for db in &cfg.databases {
            pg.try_psql(&format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\"")))?;
        }
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder of the unix socket (psql connects there without a password).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn own(&self, path: &Path) -> Result<()> {
        match self.owner {
            Some((uid, gid)) => chown(path, Some(uid), Some(gid)).map_err(io_err(path)),
            None => Ok(()),
        }
    }

    /// A server program run as the owner of the folder, from inside it.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn init(&self, cfg: &PostgresConfig) -> Result<()> {
        let root = self.dir.path();
        self.own(root)?;
        let sock = self.socket_dir();
        fs::create_dir(&sock).map_err(io_err(&sock))?;
        self.own(&sock)?;
        let pwfile = root.join("pwfile");
        fs::write(&pwfile, format!("{}\n", cfg.password)).map_err(io_err(&pwfile))?;
        self.own(&pwfile)?;
        let data = self.data_dir();
        let mut initdb = self.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(&mut initdb, "initdb")?;
        let _ = fs::remove_file(&pwfile);

        let mut conf = format!(
            "\n# testkit\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             password_encryption = 'scram-sha-256'\nmax_connections = 30\nshared_buffers = 16MB\n\
             fsync = off\nfull_page_writes = off\n",
            self.port,
            sock.display()
        );
        if let Some((crt, key)) = &cfg.tls {
            // The server reads them as its own user, and refuses a key others can read.
            for (from, name, mode) in [(crt, "server.crt", 0o644), (key, "server.key", 0o600)] {
                let to = data.join(name);
                fs::copy(from, &to).map_err(io_err(&to))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(mode)).map_err(io_err(&to))?;
                self.own(&to)?;
            }
            conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        for line in &cfg.settings {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).map_err(io_err(&path))?;
        text.push_str(&conf);
        fs::write(&path, text).map_err(io_err(&path))
    }

    /// Starts the server again after [`Postgres::stop`] or [`Postgres::kill`]: same
    /// port, same data (a killed one goes through crash recovery first).
    pub fn start_again(&mut self) {
        self.try_start_again().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Postgres::start_again`] that returns the failure instead of panicking.
    pub fn try_start_again(&mut self) -> Result<()> {
        assert!(self.child.is_none(), "postgres already running");
        let log_path = self.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        let err = log.try_clone().map_err(io_err(&log_path))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(self.data_dir());
        let child = die_with_parent(&mut cmd)
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|source| PostgresError::Spawn {
                program: self.bin.join("postgres"),
                source,
            })?;
        self.child = Some(child);
        let ready = wait_until(READY_WITHIN, || self.exited().is_some() || self.is_ready());
        if let Some(status) = self.exited() {
            self.child = None;
            return Err(PostgresError::Exited {
                status,
                log: self.log(),
            });
        }
        if !ready {
            self.kill();
            return Err(PostgresError::NotReady {
                port: self.port,
                log: self.log(),
            });
        }
        Ok(())
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn is_ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-t", "1", "-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        self.url_with("postgres", &self.password, "postgres", "")
    }

    /// A URL for another user, password, database, and query parameters (without
    /// the `?`, e.g. `"sslmode=verify-full&sslrootcert=/path/ca.crt"`; empty for none).
    pub fn url_with(&self, user: &str, password: &str, db: &str, params: &str) -> String {
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}{query}",
            encode(user),
            encode(password),
            self.port,
            encode(db)
        )
    }

    /// Runs `sql` in database `postgres` with psql (unaligned, tuples only) and
    /// returns its output, trimmed; panics with psql's message when it fails.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Postgres::psql`] in database `db`.
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        self.try_psql_in(db, sql).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Postgres::psql`] that returns the failure instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String> {
        self.try_psql_in("postgres", sql)
    }

    /// [`Postgres::psql_in`] that returns the failure instead of panicking.
    pub fn try_psql_in(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
        ])
        .arg("-h")
        .arg(self.socket_dir())
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db)
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
        let out = run(&mut cmd, &format!("psql -c {sql:?}"))?;
        Ok(out.trim().to_string())
    }

    /// Fast shutdown (SIGINT: sessions are ended, a checkpoint is written) and wait.
    pub fn stop(&mut self) {
        self.signal(libc::SIGINT);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGKILL to the server and its backends, and wait: a crash.
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGSTOP to the server and its backends: connections stay open but nothing
    /// answers (a stalled server, for timeout tests).
    pub fn pause(&self) {
        self.signal_group(libc::SIGSTOP);
    }

    /// SIGCONT after [`Postgres::pause`].
    pub fn resume(&self) {
        self.signal_group(libc::SIGCONT);
    }

    /// Signals the postmaster and every process it forked (each backend is a
    /// session leader of its own, so a process group does not reach them).
    fn signal_group(&self, sig: i32) {
        let Some(c) = &self.child else { return };
        let pid = c.id() as i32;
        // Listed first: a killed postmaster's children are re-parented.
        let children = children_of(pid);
        for p in std::iter::once(pid).chain(children) {
            // SAFETY: kill(2) has no memory effects; these are our child and its children.
            unsafe {
                libc::kill(p, sig);
            }
        }
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) has no memory effects; the pid is our own child's.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// The postmaster's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The folder holding the data directory, the socket and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` to its end; its stdout when it succeeds.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(|source| PostgresError::Spawn {
        program: PathBuf::from(cmd.get_program()),
        source,
    })?;
    if !out.status.success() {
        return Err(PostgresError::Failed {
            program: what.into(),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest installed version's bin directory (`/usr/lib/postgresql/N/bin`), or
/// `TESTKIT_PG_BIN`.
fn bin_dir() -> Result<PathBuf> {
    let has_programs = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("TESTKIT_PG_BIN").map(PathBuf::from) {
        return if has_programs(&d) {
            Ok(d)
        } else {
            Err(PostgresError::NotInstalled {
                looked_in: format!("TESTKIT_PG_BIN={}", d.display()),
            })
        };
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            has_programs(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| PostgresError::NotInstalled {
            looked_in: format!("{}/*/bin", root.display()),
        })
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            // After the command name in parentheses: state, then the parent's pid.
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// uid and gid of the `postgres` OS user.
fn postgres_user() -> Option<(u32, u32)> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes only into
    // `pwd` and `buf` (whose length it is told) and sets `found`.
    let rc = unsafe {
        libc::getpwnam_r(
            c"postgres".as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
}

/// Percent-encodes what a URL's user, password or path may not hold as it is.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_stops_and_starts_again() {
        let mut pg = Postgres::start(PostgresConfig::new().database("extra"));
        assert_eq!(pg.psql("select 1"), "1");
        pg.psql("create table kept (n int); insert into kept values (7)");
        assert_eq!(pg.psql_in("extra", "select current_database()"), "extra");
        let port = pg.port;
        pg.stop();
        assert!(
            pg.try_psql("select 1").is_err(),
            "still answering after stop"
        );
        pg.start_again();
        assert_eq!(pg.port, port);
        assert_eq!(pg.psql("select n from kept"), "7");
        pg.kill();
        pg.start_again();
        assert_eq!(pg.psql("select n from kept"), "7");
        assert!(pg.url().starts_with(&format!(
            "postgresql://postgres:{DEFAULT_PASSWORD}@127.0.0.1:{port}/postgres"
        )));
    }

    #[test]
    fn tls_is_on_when_asked() {
        let pki = Pki::new();
        let pg = Postgres::start(PostgresConfig::new().tls(&pki));
        assert_eq!(pg.psql("show ssl"), "on");
    }

    #[test]
    fn urls_encode_what_they_must() {
        assert_eq!(encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
    }
}
