//! The Strata agent: a sidecar on every call node that follows a channel in
//! the store, verifies what it finds, keeps verified snapshots in a local redb
//! file and answers lookups over a unix socket.
//!
//! [`run`] is the whole agent; `main.rs` only parses the command line, starts
//! tracing and waits for a signal, so tests run the real thing in-process.

pub mod arm;
pub mod client;
pub mod config;
pub mod db;
pub mod demo;
pub mod endpoint;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod priority;
pub mod push;
mod scrape;
pub mod shutdown;
pub mod state;
pub mod sync;
pub mod systemd;
pub mod writeback;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{info, warn};

use strata_common::store::StoreUrl;

use crate::config::Config;
use crate::db::Db;
use crate::state::Shared;
use crate::sync::Syncer;

/// Runs the agent until `shutdown` resolves: restores the last verified
/// snapshot from disk, binds the socket, follows the store, and on shutdown
/// stops accepting, lets in-flight requests finish within the grace period
/// and removes the socket.
pub async fn run(
    config: Config,
    config_path: &Path,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let trust = config.trust(config_path)?;
    // A read still running at twice check_timeout (plus a second per
    // 256 KiB) is given up and tried again, however the store trickles.
    let store = strata_common::store::open_read_within(
        &config.store,
        config.ca_file.as_deref(),
        config.check_timeout.checked_mul(2),
    )?;
    let store_dir = match &config.store {
        StoreUrl::File(dir) => Some(dir.clone()),
        StoreUrl::S3 { .. } | StoreUrl::Https(_) => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let db = Db::open_or_set_aside(&config.db_path(), config.cache_bytes)
        .with_context(|| format!("opening {}", config.db_path().display()))?;
    if !db.is_writable() {
        warn!(
            "{} cannot be written (a read-only data_dir?): serving what it holds; no update is applied until it can be",
            config.db_path().display()
        );
    }
    let shared = Shared::new(store.url().to_string(), config.region.clone());
    shared.metrics.set_info(
        &config.region,
        &config.channel,
        &config.node_id.clone().unwrap_or_else(node_name),
    );
    // SIGHUP: check the store now (as POST /v1/check does).
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    info!("SIGHUP: checking the store now");
                    shared.check_now.notify_one();
                }
            });
        }
        Err(e) => warn!("cannot listen for SIGHUP ({e}); POST /v1/check forces a check"),
    }
    let mut syncer = Syncer::new(&config, config_path, store, trust, db, shared.clone());
    match syncer.restore() {
        Ok(Some(v)) => info!(version = v, "serving the last verified snapshot from disk"),
        Ok(None) => info!("no snapshot on disk yet"),
        Err(e) => warn!("not serving the snapshot on disk: {e}"),
    }
    // Bound before the socket: a port in use stops the agent before it
    // has placed anything.
    let scrapes = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics_listen {addr}"))?;
            let bound = listener.local_addr().map_or(addr, |a| a);
            info!(address = %bound, "serving /metrics, /healthz, /readyz and /v1/snapshot over TCP");
            shared.status().metrics_address = Some(bound.to_string());
            Some(listener)
        }
        None => None,
    };
    let socket_mode = config.socket_mode_bits().map_err(anyhow::Error::msg)?;
    let (mut listener, _socket_lock) = bind(&config.socket, socket_mode)?;
    let mut socket = SocketWatch {
        path: config.socket.clone(),
        mode: socket_mode,
        id: file_id(&config.socket),
        trouble: false,
    };
    let mut socket_check = tokio::time::interval(SOCKET_CHECK);
    socket_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(socket = %config.socket.display(), source = %config.store, channel = %config.channel, "agent started");

    let (stop_tx, stop_rx) = watch::channel(false);
    // The sync side stops last: it owns the snapshot file, which in-flight
    // requests still read while they drain.
    let (sync_stop_tx, sync_stop_rx) = watch::channel(false);
    let local_files: Vec<PathBuf> = std::iter::once(config_path.to_path_buf())
        .chain(config.trusted_keys.iter().map(|k| k.path.clone()))
        .chain(config.pin_file.clone())
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect();
    let sync_task = tokio::spawn(sync::run(
        syncer,
        shared.clone(),
        store_dir,
        local_files,
        config.poll_interval,
        config.check_timeout,
        sync_stop_rx,
    ));
    let push_task = config.notify_config().map(|notify| {
        tokio::spawn(push::run(
            push::Listener {
                config: notify,
                channel: config.channel.clone(),
                region: config.region.clone(),
                node_id: config.node_id.clone().unwrap_or_else(node_name),
                spread: config.notify_spread,
            },
            shared.clone(),
            stop_rx.clone(),
        ))
    });
    let notify_task = tokio::spawn(systemd::run(
        shared.clone(),
        config.socket.clone(),
        stop_rx.clone(),
    ));
    let graceful = GracefulShutdown::new();
    if let Some(listener) = scrapes {
        tokio::spawn(scrape::serve_scrapes(
            listener,
            shared.clone(),
            config.idle_timeout,
            stop_rx.clone(),
        ));
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let mut accept_errors = AcceptErrors::default();
    let idle_timeout = config.idle_timeout;
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, connections wait in the backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            // At the cap too: the socket must be back for when a slot frees.
            _ = socket_check.tick() => {
                if let Some(placed) = socket.check() {
                    listener = placed;
                }
                continue;
            }
            _ = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => {
                        accept_errors.recovered();
                        s
                    }
                    Err(e) => {
                        // Out of file descriptors (or memory): wait instead
                        // of spinning, and say it once per burst.
                        accept_errors.failed(&e);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                serve(
                    stream,
                    shared.clone(),
                    http::handle,
                    slot,
                    Timeouts { header: HEADER_READ_TIMEOUT, idle: idle_timeout },
                    std::future::pending(),
                    &graceful,
                );
            }
            _ = socket_check.tick() => {
                if let Some(placed) = socket.check() {
                    listener = placed;
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    // Only the socket this agent placed (an operator may have started
    // another agent on the path since).
    if std::fs::symlink_metadata(&config.socket)
        .is_ok_and(|m| Some((m.dev(), m.ino())) == socket.id)
    {
        let _ = std::fs::remove_file(&config.socket);
    }
    let _ = stop_tx.send(true);
    tokio::select! {
        _ = graceful.shutdown() => info!("in-flight requests finished"),
        _ = tokio::time::sleep(config.shutdown_grace) => warn!("grace period over; closing remaining connections"),
    }
    // Bounded inside: a hung check is not waited for long.
    let _ = sync_stop_tx.send(true);
    let _ = sync_task.await;
    let _ = notify_task.await;
    if let Some(mut task) = push_task {
        // It ends at the stop signal; one stuck on a dead connection is
        // not waited for long.
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    info!("agent stopped");
    Ok(())
}

/// This node's name for `strata_node`: the kernel's host name.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// How long a connection may be silent: before its request head, and
/// between any two bytes.
#[derive(Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) header: std::time::Duration,
    pub(crate) idle: std::time::Duration,
}

/// Serves one accepted connection with `handler` until it ends, until it
/// moves no byte for `timeouts.idle`, or until `evicted` completes (a full
/// `metrics_listen` making room), holding `slot` meanwhile.
pub(crate) fn serve<S, H, F>(
    stream: S,
    shared: Arc<Shared>,
    handler: H,
    slot: impl Send + 'static,
    timeouts: Timeouts,
    evicted: impl Future<Output = ()> + Send + 'static,
    graceful: &GracefulShutdown,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<hyper::body::Incoming>, Arc<Shared>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<http::Resp, std::convert::Infallible>> + Send + 'static,
{
    let activity = idle::Activity::new();
    let stream = idle::Watched::new(stream, activity.clone());
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeouts.header)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(
            TokioIo::new(stream),
            service_fn(move |req| handler(req, shared.clone())),
        );
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        let _slot = slot;
        tokio::select! {
            ended = conn => if let Err(e) = ended {
                tracing::debug!("connection ended: {e}");
            },
            () = activity.idle_for(timeouts.idle) => {
                tracing::debug!("closing a connection that moved no byte for {:?}", timeouts.idle);
            }
            () = evicted => {
                tracing::debug!("closing a connection to make room for a new one");
            }
        }
    });
}

/// How long a client may take to send a request's headers: a slow or
/// silent client is closed instead of holding a connection slot for ever.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The largest request head read: lookups are a line and a few headers.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// The wait after a failed accept (no file descriptor left), so that the
/// loop does not spin.
pub(crate) const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Failed accepts, logged once per burst rather than once each. A burst
/// ends only after accepts have succeeded for [`BURST_QUIET`]: out of
/// descriptors, every one freed (a lookup answered, a file closed by the
/// sync thread) lets one connection in before the next accept fails again.
#[derive(Default)]
pub(crate) struct AcceptErrors {
    failing: u64,
    last_failure: Option<std::time::Instant>,
}

/// How long accepts must keep succeeding before a burst of failures is over.
const BURST_QUIET: std::time::Duration = std::time::Duration::from_secs(10);

impl AcceptErrors {
    pub(crate) fn failed(&mut self, e: &std::io::Error) {
        // A failure long after the last one starts a new burst.
        if self
            .last_failure
            .is_some_and(|t| t.elapsed() >= BURST_QUIET)
        {
            self.failing = 0;
        }
        if self.failing == 0 {
            warn!("accept failed: {e}; backing off (logged once until accepts succeed again)");
        }
        self.failing += 1;
        self.last_failure = Some(std::time::Instant::now());
    }

    pub(crate) fn recovered(&mut self) {
        if self.failing > 0 && self.last_failure.is_none_or(|t| t.elapsed() >= BURST_QUIET) {
            info!(failed = self.failing, "accepting connections again");
            self.failing = 0;
        }
    }
}

/// Binds the socket with `mode`, replacing a stale socket file (never any
/// other kind of file, and never a socket another process answers on: a
/// second agent must not take over a live one's socket). The socket is
/// bound under a temporary name, given its mode, then renamed into place,
/// so that it never exists at its path with the umask's mode.
///
/// Two agents started at the same instant could both find no live socket:
/// each first takes an exclusive `flock` on `<socket>.lock` (next to the
/// socket), held until it exits, and the second is refused.
fn bind(path: &Path, mode: u32) -> Result<(UnixListener, std::fs::File)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening the socket's lock file {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is the socket of a running process (another agent holds {}); stop it, or give this agent another socket path",
            path.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", lock_path.display()));
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // Stale only if nothing listens: a refusal for lack of
            // permission means a live socket of another user.
            match std::os::unix::net::UnixStream::connect(path) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Ok(_) => bail!(
                    "{} is the socket of a running process (another agent?); stop it, or give this agent another socket path",
                    path.display()
                ),
                Err(e) => bail!(
                    "{} is a socket this agent cannot check ({e}); if no agent serves it, remove it",
                    path.display()
                ),
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; remove it or choose another socket path",
            path.display()
        ),
        Err(_) => {}
    }
    Ok((place(path, mode)?, lock))
}

/// Device and inode of the file at `path`, if any.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The agent's socket file, checked every [`SOCKET_CHECK`]: removed (a
/// cleanup script, a tmpfiles rule), no client reaches the agent, so it is
/// placed again; a file of someone else's there is left alone.
struct SocketWatch {
    path: PathBuf,
    mode: u32,
    /// Device and inode of the socket this agent placed.
    id: Option<(u64, u64)>,
    /// A problem already logged (said once until it clears).
    trouble: bool,
}

impl SocketWatch {
    /// A new listener when the socket had to be placed again.
    fn check(&mut self) -> Option<UnixListener> {
        match std::fs::symlink_metadata(&self.path).map(|m| (m.dev(), m.ino())) {
            Ok(now) if Some(now) == self.id => self.trouble = false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match place(&self.path, self.mode) {
                    Ok(placed) => {
                        warn!(socket = %self.path.display(), "the socket file was removed; placed it again");
                        self.id = file_id(&self.path);
                        self.trouble = false;
                        return Some(placed);
                    }
                    Err(e) if !self.trouble => {
                        warn!(
                            "the socket file was removed, and placing it again failed: {e:#}; trying every {}s",
                            SOCKET_CHECK.as_secs()
                        );
                        self.trouble = true;
                    }
                    Err(_) => {}
                }
            }
            // Another file there, or one this agent cannot look at: never
            // replaced.
            _ if !self.trouble => {
                warn!(
                    socket = %self.path.display(),
                    "the socket file was replaced by another file (or cannot be checked); clients of that path no longer reach this agent (restart it)"
                );
                self.trouble = true;
            }
            _ => {}
        }
        None
    }
}

/// How often the agent checks that its socket file is still in place.
const SOCKET_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds a new socket at `path` with `mode`: bound under a temporary
/// name, given its mode, then renamed into place, so that it never exists
/// at its path with the umask's mode.
fn place(path: &Path, mode: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Short: a socket path has at most 107 bytes.
    let temp = path.with_file_name(format!(".{:08x}", rand::random::<u32>()));
    let _ = std::fs::remove_file(&temp);
    let listener =
        UnixListener::bind(&temp).with_context(|| format!("binding {}", temp.display()))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", temp.display()))
        .and_then(|()| {
            // Never over a file that appeared at the path meanwhile.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &temp,
                rustix::fs::CWD,
                path,
                rustix::fs::RenameFlags::NOREPLACE,
            )
            .map_err(std::io::Error::from)
            .with_context(|| format!("moving the socket to {}", path.display()))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(listener)
}
