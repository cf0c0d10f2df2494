//! The small runtime an async client blocks on behind the synchronous
//! store traits (see the module doc of `store`).

use std::future::Future;

/// A small tokio runtime (two worker threads, which drive the connections)
/// that may be dropped anywhere (it shuts down in the background) and
/// blocked on from plain threads, several at once: format 3 fetches and
/// uploads objects on several threads, and a current-thread runtime would
/// serve them one at a time.
pub(crate) struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    pub(crate) fn new() -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-store-io")
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    /// Runs `future` to completion on this thread: for the store traits'
    /// calls, which the agent makes on its sync thread and the publisher
    /// from `main`, never from async code.
    pub(crate) fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime().block_on(future)
    }

    /// Runs `future` to completion from any thread, within another runtime
    /// too (on a scoped thread of its own): for opening a store, which the
    /// agent does in its async `run`.
    pub(crate) fn block_on_anywhere<F: Future + Send>(&self, future: F) -> F::Output
    where
        F::Output: Send,
    {
        let rt = self.runtime();
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(future);
        }
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs a read of up to `bytes` of `key` as [`Runtime::block_on`]
    /// does, given up after `deadline` (if any) plus a second per
    /// [`FLOOR_RATE`] bytes, however the store trickles its answer: the
    /// per-read timeouts end only a read that moves nothing at all, and a
    /// large bundle on a slow link still arrives.
    pub(crate) fn read<T>(
        &self,
        key: &str,
        deadline: Option<std::time::Duration>,
        bytes: u64,
        future: impl Future<Output = Result<T, super::StoreError>>,
    ) -> Result<T, super::StoreError> {
        self.block_on(bounded(key, deadline, bytes, future))
    }

    /// Runs `reads` (each a key, the most bytes it may bring, and the read
    /// itself) as tasks of this runtime, up to `parallel` at once, each
    /// given up as [`Runtime::read`] gives one up, and hands their results
    /// to `done` in order until `done` returns `false` or the reads run
    /// out; tasks still running then are aborted. Up to `ahead` reads (at
    /// least `parallel`) may be started and not yet handed over, so one
    /// slow read does not stop the others: the next starts as soon as any
    /// is in, until `ahead` wait behind the slow one. For a reader that
    /// fetches many objects ahead (a new node's chunks): each read runs on
    /// the threads that drive its connection, with no thread of its own
    /// and no hand-over between threads at each step.
    pub(crate) fn each<T, F>(
        &self,
        reads: impl Iterator<Item = (String, u64, F)>,
        deadline: Option<std::time::Duration>,
        parallel: usize,
        ahead: usize,
        done: &mut dyn FnMut(Result<T, super::StoreError>) -> bool,
    ) where
        T: Send + 'static,
        F: Future<Output = Result<T, super::StoreError>> + Send + 'static,
    {
        let rt = self.runtime();
        let parallel = parallel.max(1);
        let ahead = ahead.max(parallel);
        // A read runs (and its deadline counts) only while it holds one of
        // `parallel` permits; up to `ahead` wait for one or hold a result.
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
        let mut reads = reads.fuse();
        let mut running = Started(std::collections::VecDeque::with_capacity(ahead));
        loop {
            while running.0.len() < ahead {
                let Some((key, bytes, read)) = reads.next() else {
                    break;
                };
                let (named, permits) = (key.clone(), permits.clone());
                let task = rt.spawn(async move {
                    // The semaphore is never closed: a permit always comes.
                    let _permit = permits.acquire_owned().await;
                    bounded(&named, deadline, bytes, read).await
                });
                running.0.push_back((key, task));
            }
            let Some((key, task)) = running.0.pop_front() else {
                return;
            };
            let result = rt.block_on(task).unwrap_or_else(|e| Err(ended(key, &e)));
            if !done(result) {
                return;
            }
        }
    }

    /// [`Runtime::each`] for a store's `get_each`: each of `keys` (a key
    /// and the most bytes it may have) read whole by the future `read`
    /// makes for it.
    pub(crate) fn each_object<F, R>(
        &self,
        keys: &mut dyn Iterator<Item = (String, u64)>,
        deadline: Option<std::time::Duration>,
        parallel: usize,
        ahead: usize,
        read: R,
        done: &mut dyn FnMut(Result<Vec<u8>, super::StoreError>) -> bool,
    ) where
        R: Fn(String, u64) -> F,
        F: Future<Output = Result<Vec<u8>, super::StoreError>> + Send + 'static,
    {
        let reads = keys.map(|(key, max_bytes)| {
            let future = read(key.clone(), max_bytes);
            (key, max_bytes, future)
        });
        self.each(reads, deadline, parallel, ahead, done);
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        match &self.0 {
            Some(rt) => rt,
            None => unreachable!("the runtime is only taken by drop"),
        }
    }
}

/// The reads [`Runtime::each`] started and has not handed over, in order.
/// However `each` ends (the reads ran out, the reader stopped, `done`
/// panicked), those still running are aborted when this is dropped: a
/// dropped `JoinHandle` alone would leave its task reading.
struct Started<T>(std::collections::VecDeque<(String, tokio::task::JoinHandle<T>)>);

impl<T> Drop for Started<T> {
    fn drop(&mut self) {
        for (_, task) in &self.0 {
            task.abort();
        }
    }
}

/// What a read's task that ended without an answer means for `key`: a
/// panic is a bug, which retrying repeats (fatal); a task cancelled as the
/// runtime shuts down is tried again (transient).
fn ended(key: String, e: &tokio::task::JoinError) -> super::StoreError {
    if e.is_panic() {
        super::StoreError::Fatal {
            key,
            source: "the read panicked (a bug: please report it)".into(),
        }
    } else {
        super::StoreError::Transient {
            key,
            source: format!("the read's task ended early ({e}); to be tried again").into(),
        }
    }
}

/// `future`, given up after `deadline` (if any) plus a second per
/// [`FLOOR_RATE`] bytes (see [`Runtime::read`]).
async fn bounded<T>(
    key: &str,
    deadline: Option<std::time::Duration>,
    bytes: u64,
    future: impl Future<Output = Result<T, super::StoreError>>,
) -> Result<T, super::StoreError> {
    let Some(deadline) = deadline else {
        return future.await;
    };
    let deadline = deadline.saturating_add(std::time::Duration::from_secs(bytes / FLOOR_RATE));
    tokio::time::timeout(deadline, future)
        .await
        .unwrap_or_else(|_| {
            Err(super::StoreError::Transient {
                key: key.to_owned(),
                source: format!(
                    "no complete answer within {}s (twice check_timeout, and a second per 256 KiB); given up, to be tried again",
                    deadline.as_secs()
                )
                .into(),
            })
        })
}

/// The slowest transfer a read's deadline allows for, in bytes per second.
const FLOOR_RATE: u64 = 256 << 10;

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Counts how many of its kind are alive: a read's future is dropped
    /// when it ends or its task is aborted.
    struct Alive(Arc<AtomicUsize>);
    impl Alive {
        fn new(count: &Arc<AtomicUsize>) -> Self {
            count.fetch_add(1, Ordering::SeqCst);
            Self(count.clone())
        }
    }
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// 100 reads, counted in `alive` while they run: the first answers at
    /// once, the others not in the time of a test.
    fn first_answers(
        alive: &Arc<AtomicUsize>,
    ) -> impl Iterator<
        Item = (
            String,
            u64,
            impl Future<Output = Result<u64, StoreError>> + Send + 'static,
        ),
    > {
        let alive = alive.clone();
        (0..100u64).map(move |i| {
            let alive = alive.clone();
            let read = async move {
                let _alive = Alive::new(&alive);
                if i > 0 {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                Ok::<_, StoreError>(i)
            };
            (format!("objects/{i}"), 0, read)
        })
    }

    fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "{what} within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn results_come_in_order_whatever_order_the_reads_finish_in() {
        let rt = Runtime::new().expect("runtime");
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let reads = (0..40u64).map(|i| {
            let (running, most) = (running.clone(), most.clone());
            let read = async move {
                let alive = Alive::new(&running);
                most.fetch_max(running.load(Ordering::SeqCst), Ordering::SeqCst);
                // Later reads answer sooner: the order must still hold.
                tokio::time::sleep(Duration::from_millis(40 - i)).await;
                drop(alive);
                Ok::<_, StoreError>(i)
            };
            (format!("objects/{i}"), 0, read)
        });
        let mut got = Vec::new();
        rt.each(reads, None, 8, 8, &mut |read| {
            got.push(read.expect("every read answers"));
            true
        });
        assert_eq!(got, (0..40).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!(
            (2..=8).contains(&most),
            "reads run at once, at most 8: {most}"
        );
    }

    #[test]
    fn a_slow_read_does_not_stop_the_reads_behind_it() {
        let rt = Runtime::new().expect("runtime");
        let finished = Arc::new(AtomicUsize::new(0));
        let reads = (0..100u64).map(|i| {
            let finished = finished.clone();
            let read = async move {
                if i == 0 {
                    // Slow until the 15 behind it are in (or 5 s pass,
                    // when fewer than 15 may be read ahead of it).
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while finished.load(Ordering::SeqCst) < 15 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, StoreError>(i)
            };
            (format!("objects/{i}"), 0, read)
        });
        let mut behind = None;
        rt.each(reads, None, 4, 16, &mut |read| {
            if read.expect("every read answers") == 0 {
                behind = Some(finished.load(Ordering::SeqCst));
            }
            true
        });
        // While the first read took its time, the 15 after it (as many as
        // may wait to be handed over) were read, 4 at a time.
        assert_eq!(behind, Some(16));
    }

    #[test]
    fn a_read_that_panics_is_fatal_for_its_key_and_the_others_still_come() {
        let rt = Runtime::new().expect("runtime");
        let reads = (0..3u64).map(|i| {
            let read = async move {
                assert!(i != 1, "a bug in a read");
                Ok::<_, StoreError>(i)
            };
            (format!("objects/cd/{i}"), 0, read)
        });
        let mut got = Vec::new();
        rt.each(reads, None, 3, 3, &mut |read| {
            got.push(read);
            true
        });
        assert!(matches!(got[0], Ok(0)));
        match &got[1] {
            Err(StoreError::Fatal { key, .. }) => assert_eq!(key, "objects/cd/1"),
            other => panic!("expected a fatal error naming the key: {other:?}"),
        }
        assert!(matches!(got[2], Ok(2)));
    }

    #[test]
    fn a_reader_that_stops_ends_the_reads_still_running() {
        let rt = Runtime::new().expect("runtime");
        let alive = Arc::new(AtomicUsize::new(0));
        let reads = first_answers(&alive);
        let started = Instant::now();
        let mut got = Vec::new();
        rt.each(reads, None, 16, 64, &mut |read| {
            got.push(read.expect("the first read answers"));
            false
        });
        assert_eq!(got, [0]);
        assert!(started.elapsed() < Duration::from_secs(5));
        poll_until("the aborted reads dropped", || {
            alive.load(Ordering::SeqCst) == 0
        });
    }

    #[test]
    fn a_reader_that_panics_ends_the_reads_still_running_too() {
        let rt = Runtime::new().expect("runtime");
        let alive = Arc::new(AtomicUsize::new(0));
        let reads = first_answers(&alive);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.each(reads, None, 16, 64, &mut |_| panic!("a bug in the reader"));
        }));
        assert!(unwound.is_err());
        poll_until("the reads behind the panic dropped", || {
            alive.load(Ordering::SeqCst) == 0
        });
    }

    #[test]
    fn a_read_that_never_answers_is_given_up_as_transient_naming_its_key() {
        let rt = Runtime::new().expect("runtime");
        let reads = (0..3u64).map(|i| {
            let read = async move {
                if i == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, StoreError>(i)
            };
            (format!("objects/ab/{i}"), 0, read)
        });
        let mut got = Vec::new();
        rt.each(reads, Some(Duration::from_millis(200)), 3, 3, &mut |read| {
            got.push(read);
            true
        });
        assert_eq!(got.len(), 3, "the reads after it still come");
        assert!(matches!(got[0], Ok(0)));
        match &got[1] {
            Err(StoreError::Transient { key, .. }) => assert_eq!(key, "objects/ab/1"),
            other => panic!("expected a transient error naming the key: {other:?}"),
        }
        assert!(matches!(got[2], Ok(2)));
    }
}
