//! The platform's PostgreSQL as a source (`--source postgres://…`):
//! `tenant_configurations` rows with `is_active`, in the schema
//! `schema/postgres.sql` ships (the seed's hybrid schema plus what Strata
//! needs). Layer 1 stays a reviewed file.
//!
//! - [`rows`]: every active row, read in one consistent snapshot (a
//!   read-only repeatable-read transaction), listed through a cursor and
//!   fetched a batch at a time as the compile needs them;
//! - [`import`]: a directory source loaded into the schema, a new row per
//!   changed tenant with `is_active` moved to it;
//! - [`follow`]: what a long-running publisher needs: `LISTEN`, the
//!   advisory lock that lets one follower publish, and the problems of
//!   held-back tenants written back for the platform's dashboard.
//!
//! The client is `tokio-postgres` (the protocol implementation `sqlx` and
//! the sync `postgres` crate are built on or beside; no compile-time query
//! checking to carry, `LISTEN` notifications as a stream, binary `COPY`),
//! on a runtime of its own so that the publisher stays synchronous; TLS is
//! rustls, as for S3 and NATS.

use std::path::Path;
use std::sync::Arc;

pub mod follow;
pub mod import;
pub mod rows;
mod tls;

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL is not a PostgreSQL URL this client takes.
    #[error("{url}: {reason}")]
    Url {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// Connecting failed (refused, authentication, TLS).
    #[error(
        "{url}: cannot connect: {reason}; check the host, port, user and password (or PGPASSWORD), and sslmode"
    )]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// A statement failed.
    #[error("{url}: {what}: {reason}")]
    Query {
        /// The URL, without its password.
        url: String,
        /// What was being done.
        what: String,
        /// The server's or the connection's error.
        reason: String,
    },
    /// The CA file could not be read.
    #[error("{path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Whether `s` names a PostgreSQL database rather than a directory.
pub fn is_database_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// An open connection, with the runtime that drives it.
pub struct Database {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    /// The URL without user and password: what messages name.
    name: String,
    /// Notifications (`LISTEN`) and the connection's end, in order.
    events: std::sync::Mutex<std::sync::mpsc::Receiver<Event>>,
}

/// What the connection reports besides query results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `NOTIFY` on a channel this connection listens to: its payload.
    Notified(String),
    /// The connection ended (the server went away, or an error): every
    /// statement fails from now on.
    Lost(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Connects to `url` (`postgres://user@host:port/db?sslmode=…`; a
    /// password from the URL or `PGPASSWORD`). TLS verifies the server
    /// with `ca` (a PEM file) or the system's roots.
    pub fn connect(url: &str, ca: Option<&Path>) -> Result<Arc<Self>, DatabaseError> {
        let name = shown(url);
        let mut config: tokio_postgres::Config =
            url.parse()
                .map_err(|e: tokio_postgres::Error| DatabaseError::Url {
                    url: name.clone(),
                    reason: format!(
                        "not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DATABASE"
                    ),
                })?;
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        // TLS unless asked otherwise: `prefer` (the driver's default) lets
        // anyone on the path answer "no TLS" and feed the publisher rows it
        // signs. Plain only where asked (`sslmode=disable|prefer`), or to
        // this host.
        if !url.contains("sslmode=") && !local_only(&config) {
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if config.get_application_name().is_none() {
            config.application_name("strata-publisher");
        }
        let tls = tls::connector(ca)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("strata-postgres")
            .enable_all()
            .build()
            .map_err(|e| DatabaseError::Connect {
                url: name.clone(),
                reason: format!("cannot start its runtime: {e}"),
            })?;
        let (tx, rx) = std::sync::mpsc::channel();
        let client = rt.block_on(async {
            let (client, mut connection) =
                tokio::time::timeout(std::time::Duration::from_secs(30), config.connect(tls))
                    .await
                    .map_err(|_| "no answer within 30 s".to_owned())?
                    .map_err(|e| error_text(&e))?;
            tokio::spawn(async move {
                let end = loop {
                    let next = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
                    match next {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            if tx.send(Event::Notified(n.payload().to_owned())).is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break error_text(&e),
                        None => break "the server closed the connection".to_owned(),
                    }
                };
                let _ = tx.send(Event::Lost(end));
            });
            Ok::<_, String>(client)
        });
        let client = client.map_err(|reason| DatabaseError::Connect {
            url: name.clone(),
            reason,
        })?;
        Ok(Arc::new(Self {
            rt,
            client,
            name,
            events: std::sync::Mutex::new(rx),
        }))
    }

    /// Whether the connection has ended (every statement now fails).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The URL without user and password.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` against the client on the connection's runtime.
    pub(crate) fn run<T, F>(&self, what: &str, f: F) -> Result<T, DatabaseError>
    where
        F: AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        self.rt
            .block_on(f(&self.client))
            .map_err(|e| self.query_error(what, &e))
    }

    /// A failed statement, named.
    pub(crate) fn query_error(&self, what: &str, e: &tokio_postgres::Error) -> DatabaseError {
        if e.is_closed() {
            return DatabaseError::Connect {
                url: self.name.clone(),
                reason: format!("{what}: the connection closed"),
            };
        }
        DatabaseError::Query {
            url: self.name.clone(),
            what: what.to_owned(),
            reason: error_text(e),
        }
    }

    /// Runs statements without parameters or results (`LISTEN`, `BEGIN`).
    pub fn execute_batch(&self, what: &str, sql: &str) -> Result<(), DatabaseError> {
        self.run(what, async |c| c.batch_execute(sql).await)
    }

    /// The next event, waiting at most `timeout`; `None` if none came.
    pub fn next_event(&self, timeout: std::time::Duration) -> Option<Event> {
        let rx = self.events.lock().ok()?;
        match rx.recv_timeout(timeout) {
            Ok(e) => Some(e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Some(Event::Lost("the connection's task ended".into()))
            }
        }
    }
}

/// How messages name a database URL: without user, password and query
/// (which may hold `password=`).
pub fn shown(url: &str) -> String {
    crate::notify::redacted(url.split('?').next().unwrap_or(url))
}

/// Whether every host `config` names is this machine (loopback or a unix
/// socket), where plain connections are the norm.
fn local_only(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_matches(|c| c == '[' || c == ']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Host::Unix(_) => true,
        })
}

/// A tokio-postgres error in one line, with the server's message, detail
/// and hint where it sent them.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(&format!(": {inner}"));
                source = inner.source();
            }
            s
        }
    }
}
