//! One connection to the server, driven by a current-thread tokio runtime that
//! belongs to the store: the store thread (see `store::worker`) blocks on it, so
//! no async worker of the collector ever waits for PostgreSQL.

use super::config::PostgresUrl;
use super::error::Failure;
use std::future::Future;
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The runtime of one store: built once, dropped without blocking anyone.
pub(crate) struct StoreRuntime {
    rt: Option<Runtime>,
}

impl StoreRuntime {
    pub fn new() -> Result<StoreRuntime, Failure> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Failure::Runtime)?;
        Ok(StoreRuntime { rt: Some(rt) })
    }

    /// Runs `fut` to its end, or fails after `limit`. Called from inside another
    /// runtime (a caller on an async worker), it runs on a helper thread instead of
    /// panicking, as tokio would for a nested `block_on`.
    pub fn run<T: Send>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, Failure>> + Send,
    ) -> Result<T, Failure> {
        let Some(rt) = &self.rt else {
            return Err(Failure::Runtime(std::io::Error::other("runtime shut down")));
        };
        let bounded = async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout(limit)),
            }
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| {
                s.spawn(|| rt.block_on(bounded))
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p))
            })
        } else {
            rt.block_on(bounded)
        }
    }

    /// Lets `session` say goodbye to the server (a Terminate message) when that
    /// can be done without blocking an async worker, then closes it.
    pub fn close(&self, session: Session) {
        let Session { client, driver } = session;
        drop(client);
        if let (Some(rt), Err(_)) = (&self.rt, tokio::runtime::Handle::try_current()) {
            // The timer must be made inside the runtime.
            let _ =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), driver).await });
        }
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Unlike a plain drop, allowed on an async worker too.
            rt.shutdown_background();
        }
    }
}

/// A connected client and the task that drives its socket.
pub(crate) struct Session {
    pub client: Client,
    driver: JoinHandle<()>,
}

impl Session {
    /// Connects with the TLS `url` asks for; must run inside the store's runtime.
    pub async fn open(
        url: &PostgresUrl,
        tls: Option<&MakeRustlsConnect>,
    ) -> Result<Session, tokio_postgres::Error> {
        let (client, driver) = match tls {
            None => {
                let (client, conn) = url.pg.connect(NoTls).await?;
                (client, tokio::spawn(drive(conn)))
            }
            Some(tls) => {
                let (client, conn) = url.pg.connect(tls.clone()).await?;
                (client, tokio::spawn(drive(conn)))
            }
        };
        Ok(Session { client, driver })
    }
}

async fn drive<F: Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(e) = conn.await {
        // The next statement on this client fails and is reported there.
        tracing::debug!(target: "collector::store::postgres", "connection ended: {e}");
    }
}
