//! When checks run: at start, on every change the watchers see (a
//! `file://` store's pointers and pins, the node's own config, key and pin
//! files), and every `poll_interval` (±20% jitter), backing off while the
//! store or the disk fails. Checks run one at a time on their own thread
//! at the lowest priority; the watchers only ask for one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::report::check_overran;
use super::{Outcome, Syncer};
use crate::priority::lowest_priority;
use crate::state::Shared;

/// The longest wait between checks while the store keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long to wait after `failures` checks in a row found the store (or the
/// local disk) failing: `poll` doubled per failure, up to [`MAX_BACKOFF`] (or
/// `poll`, if that is longer). Wrong credentials or an outage are then
/// retried a few times a minute, not hot.
fn backoff(poll: Duration, failures: u32) -> Duration {
    let cap = MAX_BACKOFF.max(poll);
    poll.checked_mul(1u32 << failures.min(16))
        .map_or(cap, |d| d.min(cap))
}

/// Runs checks until shutdown: at start, on every change the watcher sees in
/// a `file://` store, and every `poll_interval` (±20% jitter), backing off
/// while the store is unreachable. The checks themselves run on the sync
/// thread (see `spawn_sync_thread`).
pub async fn run(
    syncer: Syncer,
    shared: Arc<Shared>,
    store_dir: Option<PathBuf>,
    local_files: Vec<PathBuf>,
    poll: Duration,
    check_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (checks, exited) = match spawn_sync_thread(syncer) {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot start the sync thread: {e}; the last snapshot stays served");
            return;
        }
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = None;
    // The store directory itself is watched from its parent too: a store
    // that comes back (a volume mounted again) wakes a check at once.
    let watched: Vec<PathBuf> = local_files
        .iter()
        .cloned()
        .chain(store_dir.iter().cloned())
        .collect();
    let _local = watch_files(&watched, tx.clone());
    let mut failures = 0;
    // Whether the poll timer woke the next check (not a push, a store
    // event or an operator).
    let mut timer = false;
    'run: loop {
        // A watch lives on the directory it was made on: when the store
        // directory is gone or replaced (unmounted, mounted again), the
        // watch is made again on what is there now.
        if let Some(dir) = &store_dir {
            let now = dir_id(dir);
            match &watcher {
                Some((_, id)) if Some(*id) == now => {}
                _ => {
                    watcher = now.and_then(|id| watch(dir, tx.clone()).map(|w| (w, id)));
                }
            }
        }
        let (done_tx, done_rx) = oneshot::channel();
        if checks.send((timer, done_tx)).is_err() {
            warn!("sync check panicked; the sync loop stops, the last snapshot stays served");
            return;
        }
        let mut done_rx = done_rx;
        let started = Instant::now();
        let mut overran = false;
        let done = loop {
            tokio::select! {
                done = &mut done_rx => break done,
                _ = tokio::time::sleep(check_timeout), if !overran => {
                    overran = true;
                    check_overran(&shared, started.elapsed());
                }
                _ = shutdown.changed() => break 'run,
            }
        };
        let Ok(unreachable) = done else {
            warn!("sync check panicked; the sync loop stops, the last snapshot stays served");
            return;
        };
        failures = if unreachable { failures + 1 } else { 0 };
        let wait = if unreachable {
            backoff(poll, failures)
        } else {
            poll
        };
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        timer = false;
        tokio::select! {
            _ = tokio::time::sleep(wait.mul_f64(jitter)) => timer = true,
            _ = rx.recv() => {}
            // An operator's `POST /v1/check` or SIGHUP (and a push): now,
            // backoff or not.
            _ = shared.check_now.notified() => failures = 0,
            _ = shutdown.changed() => break 'run,
        }
    }
    // The sync thread ends after the check under way, closing the snapshot
    // file (an agent started again in this process can then open it); a
    // check that hangs is not waited for long.
    drop(checks);
    let _ = tokio::time::timeout(THREAD_EXIT_WAIT, exited).await;
}

/// One check asked of the sync thread: whether the poll timer woke it, and
/// where to answer whether the loop should back off.
type CheckRequest = (bool, oneshot::Sender<bool>);

/// How long a stopping agent waits for the check under way to end.
const THREAD_EXIT_WAIT: Duration = Duration::from_secs(5);

/// Starts the thread that runs one check per request, at `SCHED_IDLE`: the
/// kernel runs it only on a CPU nothing else wants, so applying a large
/// snapshot never delays a lookup (or the call worker beside us). Measured
/// in BENCHMARKS.md; nice 10 was not enough. A stopping agent waits a few
/// seconds for the check under way, not longer: an exit in the middle of
/// an ingest is as safe as a crash.
///
/// One thread, not a decode/write pipeline: decompressing on a second
/// `SCHED_IDLE` thread made a 10k-tenant apply ~20 % faster, but took the
/// lookup p99 during a 1 % publish at 2,000 req/s from 1.1–1.4× idle to
/// 3.5–9× (BENCHMARKS.md): with both cores busy, every lookup has to
/// preempt a sync thread, which a `PREEMPT_NONE` kernel does only when that
/// thread leaves the kernel.
///
/// Each request is answered with whether the loop should back off: the
/// store or the local disk failed ([`super::CheckError::backs_off`]).
fn spawn_sync_thread(
    mut syncer: Syncer,
) -> std::io::Result<(std::sync::mpsc::Sender<CheckRequest>, oneshot::Receiver<()>)> {
    let (tx, rx) = std::sync::mpsc::channel::<CheckRequest>();
    let (exit_tx, exited) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("strata-sync".into())
        .spawn(move || {
            lowest_priority("the sync thread");
            for (timer, done) in rx {
                syncer.timer_poll = timer;
                let outcome = syncer.check();
                let back_off = matches!(&outcome, Outcome::Refused(r) if r.backs_off());
                let _ = done.send(back_off);
            }
            drop(syncer);
            let _ = exit_tx.send(());
        })?;
    Ok((tx, exited))
}

/// The identity (device, inode) of directory `dir`, if it exists.
fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino()))
}

/// Watches a store directory; a change to a channel pointer or a pin asks
/// for a check (coalesced). Reads and bundle uploads are ignored: a bundle is served
/// only once a pointer names it, and the writes of a large upload would
/// otherwise each start a check that re-verifies the unchanged pointer.
fn watch(dir: &std::path::Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let root = dir.to_path_buf();
    let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Our own reads of the pointer are `Access` events: waking on them
        // would make every check start the next one.
        if event.kind.is_access() {
            return;
        }
        if event.need_rescan() || event.paths.iter().any(|p| names_a_pointer(&root, p)) {
            let _ = tx.try_send(());
        }
    })
    .ok()?;
    w.watch(dir, notify::RecursiveMode::Recursive).ok()?;
    Some(w)
}

/// Watches the node's own files (the config, the trusted keys, the local
/// pin file): a change to one asks for a check, which reads them again. Each
/// file's directory is watched, so a file created, replaced by a rename or
/// deleted is seen too.
fn watch_files(files: &[PathBuf], tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let files: Vec<PathBuf> = files.to_vec();
    let wanted = files.clone();
    let mut w = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.need_rescan() || event.paths.iter().any(|p| wanted.contains(p)) {
            let _ = tx.try_send(());
        }
    })
    .ok()?;
    let mut dirs: Vec<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), "cannot watch for key or pin changes ({e}); they are read at every poll");
        }
    }
    Some(w)
}

/// Whether `path` (from a watcher event) is under the store's `channels/` or
/// `pins/`, or is one of those directories itself.
fn names_a_pointer(root: &std::path::Path, path: &std::path::Path) -> bool {
    path.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.components().next())
        .is_some_and(|first| first.as_os_str() == "channels" || first.as_os_str() == "pins")
}

#[cfg(test)]
mod tests {
    use super::{backoff, names_a_pointer};
    use std::time::Duration;

    #[test]
    fn an_unreachable_store_is_retried_less_and_less_often_up_to_a_minute() {
        let poll = Duration::from_secs(5);
        let waits: Vec<u64> = (1..=6).map(|n| backoff(poll, n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
        assert_eq!(backoff(poll, 1000), Duration::from_secs(60));
        // A poll interval above the cap is kept.
        assert_eq!(
            backoff(Duration::from_secs(300), 3),
            Duration::from_secs(300)
        );
    }
    use std::path::Path;

    #[test]
    fn only_pointer_and_pin_changes_wake_the_sync_thread() {
        let root = Path::new("/srv/store");
        assert!(names_a_pointer(
            root,
            Path::new("/srv/store/channels/stable.json")
        ));
        assert!(names_a_pointer(
            root,
            Path::new("/srv/store/channels/.stable.json.tmp")
        ));
        assert!(names_a_pointer(
            root,
            Path::new("/srv/store/pins/eu-west-1.json")
        ));
        assert!(names_a_pointer(root, Path::new("/srv/store/channels")));
        assert!(!names_a_pointer(
            root,
            Path::new("/srv/store/snapshots/00000000000000000002.bundle")
        ));
        assert!(!names_a_pointer(root, Path::new("/srv/store")));
        assert!(!names_a_pointer(
            root,
            Path::new("/elsewhere/channels/stable.json")
        ));
    }
}
