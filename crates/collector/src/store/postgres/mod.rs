//! The PostgreSQL store (contract section 6, issue 11): the tables of `schema`,
//! one transaction per batch written set-wise ([`write`]) under the duplicate rules
//! of the SQLite store (`plan`), TLS on rustls with ring (`tls`), the
//! libpq-style URL ([`config`]), failures sorted into retry or refuse ([`error`]),
//! and `collector stats` over the same tables ([`stats`]).
//!
//! Shared by every collector of a share group: rows are unique by key, so two
//! collectors storing the same message store it once, and each row names the
//! collector that stored it.

pub mod config;
mod connection;
pub mod error;
mod plan;
mod schema;
pub mod stats;
mod tls;
mod write;

pub use config::{ConfigError, PostgresUrl, RootCert, SslMode};
pub use error::STORE;

use super::{Record, Store, StoreError, WriteOutcome};
use connection::{Session, StoreRuntime};
use error::Failure;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long one batch (with a reconnect and the schema check) may take before
/// the store gives up on the connection and reports the server unavailable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The PostgreSQL store. Blocking, like every [`Store`]: run it on the store thread.
pub struct PostgresStore {
    url: PostgresUrl,
    tls: Option<MakeRustlsConnect>,
    collector: String,
    timeout: Duration,
    session: Option<(Session, write::Prepared)>,
    // Declared last: dropped after the session it drives.
    rt: StoreRuntime,
}

impl PostgresStore {
    /// Parses `url`, connects, and creates the tables if missing. `collector_id`
    /// goes into the `collector` column of every row it writes.
    pub fn connect(url: &str, collector_id: &str) -> Result<PostgresStore, StoreError> {
        let mut store = Self::new(url, collector_id)?;
        store.ensure_session()?;
        Ok(store)
    }

    /// Parses `url` and builds the TLS configuration, without connecting: the first
    /// [`Store::write_batch`] connects (for a collector that starts while the
    /// database is still down). Fails only on the URL or the TLS files.
    pub fn new(url: &str, collector_id: &str) -> Result<PostgresStore, StoreError> {
        let refuse = |e: ConfigError| StoreError::Refused {
            store: STORE,
            reason: e.to_string(),
        };
        let mut url = PostgresUrl::parse(url).map_err(refuse)?;
        url.default_application_name(collector_id);
        let tls = tls::connector(&url).map_err(refuse)?;
        let rt = StoreRuntime::new().map_err(|f| f.into_store_error(&url))?;
        Ok(PostgresStore {
            url,
            tls,
            collector: collector_id.to_string(),
            timeout: DEFAULT_TIMEOUT,
            session: None,
            rt,
        })
    }

    /// Another limit for one batch than [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> PostgresStore {
        self.timeout = timeout;
        self
    }

    /// The URL, with the password hidden.
    pub fn url(&self) -> &PostgresUrl {
        &self.url
    }

    /// Connects (and checks the tables) unless connected.
    pub fn ensure_session(&mut self) -> Result<(), StoreError> {
        self.open().map_err(|f| f.into_store_error(&self.url))
    }

    fn open(&mut self) -> Result<(), Failure> {
        if self.session.is_some() {
            return Ok(());
        }
        let (url, tls) = (&self.url, self.tls.as_ref());
        let session = self.rt.run(self.timeout, async move {
            let mut session = Session::open(url, tls).await?;
            schema::ensure(&mut session.client).await?;
            let prepared = write::Prepared::new(&session.client).await?;
            Ok((session, prepared))
        })?;
        tracing::info!(target: "collector::store::postgres", "connected to {}", self.url);
        self.session = Some(session);
        Ok(())
    }

    fn try_write(&mut self, batch: &[Record]) -> Result<WriteOutcome, Failure> {
        let fresh = self.session.is_none();
        self.open()?;
        let Some((session, prepared)) = self.session.as_ref() else {
            return Err(Failure::Runtime(std::io::Error::other("no session")));
        };
        let collector = self.collector.as_str();
        let client = &session.client;
        let result = self.rt.run(self.timeout, async move {
            write::write_batch(client, prepared, collector, batch).await
        });
        match result {
            // A kept connection the server closed between two batches (a restart,
            // an idle timeout, a crash): nothing was done yet, so try once on a
            // new one.
            Err(Failure::Begin(e)) if !fresh => {
                tracing::debug!(target: "collector::store::postgres", "kept connection unusable ({e}); reconnecting");
                self.drop_session();
                self.try_write(batch)
            }
            other => other,
        }
    }

    fn drop_session(&mut self) {
        if let Some((s, _)) = self.session.take() {
            self.rt.close(s);
        }
    }
}

impl Store for PostgresStore {
    fn write_batch(&mut self, batch: &[Record]) -> Result<WriteOutcome, StoreError> {
        if batch.is_empty() {
            return Ok(WriteOutcome::default());
        }
        self.try_write(batch).map_err(|f| {
            // After any failure the connection may be mid-transaction or dead:
            // the retry of the same batch starts on a new one.
            self.drop_session();
            f.into_store_error(&self.url)
        })
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.drop_session();
    }
}
