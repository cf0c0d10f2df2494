//! Fetching chunks in parallel: a batch at a time on [`FETCH_THREADS`]
//! threads, or ahead of the reader on a pool of threads of their own, so
//! that a new node fetches the next chunks while it writes the last ones.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use super::ObjectRef;
use super::TreeError;
use super::read::ObjectSource;

/// How many chunks are fetched at once.
pub const FETCH_BATCH: usize = 128;
/// How many fetches run in parallel in a batch.
pub const FETCH_THREADS: usize = 64;
/// How many chunks are fetched at once ahead of a reader (threads of a
/// pool for the file store, tasks of the store's runtime for S3 and
/// HTTPS). Each next fetch starts as soon as one is in, so fewer keep as
/// many in flight as a batch's 64 did; more threads cost CPU in switching
/// between them (a 100k cold start from the in-process S3 server, threads:
/// 64 8.1 s, 32 6.8 s, 16 7.2 s; with GETs 20 ms late, 32 threads 8.2 s).
pub const AHEAD_THREADS: usize = 32;

/// A fetched chunk: its index among the snapshot's chunks, and what the
/// fetching side made of its bytes (checked against its reference), or why
/// they could not be had.
pub(super) type Fetch<T> = (usize, Result<T, TreeError>);

/// The objects `objs` names, fetched [`FETCH_THREADS`] at a time (as
/// tasks of the store's runtime if it runs reads at once, otherwise on as
/// many threads); the results in the same order.
pub(super) fn parallel(
    store: ObjectSource<'_>,
    objs: &[ObjectRef],
) -> Vec<Result<Vec<u8>, TreeError>> {
    if let ObjectSource::Store(store) = store
        && store.reads_concurrently()
    {
        let mut keys = objs.iter().map(|obj| (obj.key(), obj.size));
        let mut results = Vec::with_capacity(objs.len());
        store.get_each(&mut keys, FETCH_THREADS, FETCH_THREADS, &mut |read| {
            if let Some(obj) = objs.get(results.len()) {
                results.push(super::read::checked(obj, read));
            }
            true
        });
        // One result an object, even from a store that stopped early:
        // the callers pair them up.
        for obj in &objs[results.len()..] {
            let unread = crate::store::StoreError::Transient {
                key: obj.key(),
                source: "the store's reads ended before this one; to be tried again".into(),
            };
            results.push(super::read::checked(obj, Err(unread)));
        }
        return results;
    }
    std::thread::scope(|s| {
        let per = objs.len().div_ceil(FETCH_THREADS).max(1);
        let handles: Vec<_> = objs
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|o| store.object(o)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(TreeError::FetchPanicked)])
            })
            .collect()
    })
}

/// How many fetched chunks may wait for the reader: the window the
/// fetching threads work within, which bounds memory whatever the
/// snapshot's size.
const WINDOW: usize = FETCH_BATCH;

/// Chunks fetched ahead of the reader, [`AHEAD_THREADS`] at a time,
/// handed over in plan order. Each next fetch starts as soon as one is in,
/// within [`WINDOW`] chunks of the reader, so no fetch waits for a slower
/// one of its batch. Dropping it stops the fetching (a pool's threads each
/// after its fetch in flight; a store's tasks at the driver's next
/// hand-over, the rest aborted).
pub(super) struct Ahead<T> {
    from: Fetching<T>,
}

/// Who fetches for an [`Ahead`].
enum Fetching<T> {
    /// A pool of threads, each fetching one chunk at a time.
    Pool(Arc<Shared<T>>),
    /// The store's own runtime, [`AHEAD_THREADS`] reads at once as its
    /// tasks and up to `WINDOW - AHEAD_THREADS` read and not yet handed
    /// over, driven by one thread that checks each chunk and hands it over
    /// through a channel of [`AHEAD_THREADS`] places (so no more chunks
    /// wait than with the pool).
    Tasks(std::sync::mpsc::Receiver<Fetch<T>>),
}

struct Shared<T> {
    plan: Vec<(usize, ObjectRef)>,
    state: Mutex<State<T>>,
    /// Signalled when the window moves (or the reader is gone): for the
    /// fetching threads.
    room: Condvar,
    /// Signalled when a chunk is in: for the reader.
    ready: Condvar,
}

struct State<T> {
    /// Plan positions taken by a thread so far.
    taken: usize,
    /// Plan positions handed to the reader so far.
    handed: usize,
    /// Fetched, not yet handed over.
    done: HashMap<usize, Result<T, TreeError>>,
    /// The first position that failed: nothing past it is fetched.
    failed_at: Option<usize>,
    /// The reader is gone.
    stop: bool,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            taken: 0,
            handed: 0,
            done: HashMap::new(),
            failed_at: None,
            stop: false,
        }
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A thread that panicked holding the lock left the state whole
        // (every change is a single assignment or insert).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next position for a fetching thread, waiting for room in the
    /// window; `None` once there is nothing (more) to fetch.
    fn take(&self) -> Option<usize> {
        let mut s = self.lock();
        loop {
            let end = s
                .failed_at
                .map_or(self.plan.len(), |f| f.min(self.plan.len()));
            if s.stop || s.taken >= end {
                return None;
            }
            if s.taken < s.handed + WINDOW {
                s.taken += 1;
                return Some(s.taken - 1);
            }
            s = self.room.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put(&self, pos: usize, result: Result<T, TreeError>) {
        let mut s = self.lock();
        if result.is_err() {
            s.failed_at = Some(s.failed_at.map_or(pos, |f| f.min(pos)));
        }
        s.done.insert(pos, result);
        drop(s);
        self.ready.notify_one();
    }
}

impl<T> Ahead<T> {
    /// The next chunk in plan order, once fetched: its index among the
    /// snapshot's chunks and what the fetching side made of its bytes, or
    /// why they could not be had (after which nothing more comes); `None`
    /// at the end of the plan.
    pub(super) fn recv(&self) -> Option<Fetch<T>> {
        let shared = match &self.from {
            Fetching::Pool(shared) => &**shared,
            // The driver stops after a failure: nothing comes after it.
            Fetching::Tasks(chunks) => return chunks.recv().ok(),
        };
        let mut s = shared.lock();
        loop {
            // After a failure (handed over) nothing more comes, even chunks
            // already fetched past it.
            if s.stop || s.handed >= shared.plan.len() {
                return None;
            }
            let pos = s.handed;
            if let Some(result) = s.done.remove(&pos) {
                s.handed += 1;
                if result.is_err() {
                    s.stop = true;
                }
                drop(s);
                // One more position fits the window.
                shared.room.notify_one();
                return Some((shared.plan[pos].0, result));
            }
            s = shared.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        // A driver of tasks stops at its next hand-over, which fails once
        // the receiver is gone.
        if let Fetching::Pool(shared) = &self.from {
            shared.lock().stop = true;
            shared.room.notify_all();
        }
    }
}

/// What a fetching thread makes of each chunk's checked bytes before
/// handing it over (a new node decompresses and decodes chunks there, off
/// the thread that writes them): made once a fetching thread by
/// [`Finish::start`], which may fail.
pub(super) trait Finish: Send + Sync {
    /// What is handed over.
    type Out: Send;
    /// One fetching thread's state (a decompressor).
    type State;
    /// A fetching thread's state.
    fn start(&self) -> Result<Self::State, TreeError>;
    /// Chunk `index`'s bytes, made into what is handed over.
    fn finish(
        &self,
        state: &mut Self::State,
        index: usize,
        bytes: Vec<u8>,
    ) -> Result<Self::Out, TreeError>;
}

/// A fetching thread's [`Finish::State`], made on its first chunk.
struct Finisher<'f, F: Finish> {
    with: &'f F,
    state: Option<F::State>,
}

impl<'f, F: Finish> Finisher<'f, F> {
    fn new(with: &'f F) -> Self {
        Finisher { with, state: None }
    }

    /// Chunk `index`'s fetched bytes made into what is handed over. A
    /// panic while making it is a failed chunk in its own place (the
    /// state is made again for the next), never one the driver of the
    /// store's tasks would hand over under the next chunk's index, or not
    /// at all after the last.
    fn finish(
        &mut self,
        index: usize,
        fetched: Result<Vec<u8>, TreeError>,
    ) -> Result<F::Out, TreeError> {
        let bytes = fetched?;
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let state = match &mut self.state {
                Some(state) => state,
                None => self.state.insert(self.with.start()?),
            };
            self.with.finish(state, index, bytes)
        }));
        made.unwrap_or_else(|_| {
            self.state = None;
            Err(TreeError::FetchPanicked)
        })
    }
}

/// Fetches `plan`'s chunks ahead of the reader (see [`Ahead`]), each made
/// into `with`'s output on the thread that fetched it: as tasks of the
/// store's runtime if it runs reads at once (S3, HTTPS), otherwise on
/// [`AHEAD_THREADS`] threads of `scope`.
pub(super) fn ahead<'scope, 'a: 'scope, F: Finish + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: ObjectSource<'a>,
    plan: Vec<(usize, ObjectRef)>,
    with: F,
) -> Ahead<F::Out> {
    match store {
        ObjectSource::Store(store) if store.reads_concurrently() => tasks(scope, store, plan, with),
        _ => pool(scope, store, plan, with),
    }
}

/// `plan`'s chunks read as tasks of `store`'s runtime, driven from a
/// thread of `scope`: one wake-up of that thread per chunk, where a pool
/// of threads blocking on the runtime costs several switches between
/// threads per read (a 100k cold start from the in-process S3 server
/// spent a fifth of the agent's CPU switching).
fn tasks<'scope, 'a: 'scope, F: Finish + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: &'a dyn crate::store::ReadStore,
    plan: Vec<(usize, ObjectRef)>,
    with: F,
) -> Ahead<F::Out> {
    let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD_THREADS);
    scope.spawn(move || {
        let mut finisher = Finisher::new(&with);
        let mut keys = plan.iter().map(|(_, obj)| (obj.key(), obj.size));
        let mut next = plan.iter();
        let ahead = WINDOW - AHEAD_THREADS;
        // As in the pool: a panic is a failed fetch, handed over in the
        // place of the next chunk, not re-raised by the scope.
        let driven = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.get_each(&mut keys, AHEAD_THREADS, ahead, &mut |read| {
                let Some((i, obj)) = next.next() else {
                    return false;
                };
                let result = finisher.finish(*i, super::read::checked(obj, read));
                let failed = result.is_err();
                tx.send((*i, result)).is_ok() && !failed
            });
        }));
        if driven.is_err()
            && let Some((i, _)) = next.next()
        {
            let _ = tx.send((*i, Err(TreeError::FetchPanicked)));
        }
    });
    Ahead {
        from: Fetching::Tasks(rx),
    }
}

/// `plan`'s chunks fetched on [`AHEAD_THREADS`] threads of `scope`.
fn pool<'scope, 'a: 'scope, F: Finish + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: ObjectSource<'a>,
    plan: Vec<(usize, ObjectRef)>,
    with: F,
) -> Ahead<F::Out> {
    let threads = AHEAD_THREADS.min(plan.len());
    let with = Arc::new(with);
    let shared = Arc::new(Shared {
        plan,
        state: Mutex::new(State::default()),
        room: Condvar::new(),
        ready: Condvar::new(),
    });
    for _ in 0..threads {
        let shared = Arc::clone(&shared);
        let with = Arc::clone(&with);
        scope.spawn(move || {
            let mut finisher = Finisher::new(&*with);
            while let Some(pos) = shared.take() {
                // A fetch that panics is a failed fetch: the reader gets an
                // error in its place (never waits for it), and the scope
                // does not re-raise a panic the apply would not survive.
                let (index, obj) = &shared.plan[pos];
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    finisher.finish(*index, store.object(obj))
                }))
                .unwrap_or_else(|_| Err(TreeError::FetchPanicked));
                shared.put(pos, result);
            }
        });
    }
    Ahead {
        from: Fetching::Pool(shared),
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::super::write::Objects;
    use super::*;

    /// A panicked fetch is a bug in the reader, not damage in the snapshot:
    /// retried with backoff, under a reason of its own.
    #[test]
    fn a_panicked_fetch_is_retried_not_held_against_the_snapshot() {
        let e = TreeError::FetchPanicked;
        assert!(e.is_transient());
        assert_eq!(e.reason(), "fetch_panicked");
        let refusal = crate::verify::Refusal::Bundle {
            bundle: "manifests/7.json".into(),
            source: crate::bundle::BundleError::Object(e),
        };
        assert_eq!(refusal.severity(), crate::verify::Severity::Unavailable);
    }

    /// Hands each chunk's bytes over as they were fetched.
    struct Bytes;

    impl Finish for Bytes {
        type Out = Vec<u8>;
        type State = ();
        fn start(&self) -> Result<(), TreeError> {
            Ok(())
        }
        fn finish(&self, _: &mut (), _: usize, bytes: Vec<u8>) -> Result<Vec<u8>, TreeError> {
            Ok(bytes)
        }
    }

    /// Refuses chunk `.0` as its finishing step would refuse a damaged one;
    /// counts the threads' states started.
    struct Refuse(usize, Arc<std::sync::atomic::AtomicUsize>);

    impl Finish for Refuse {
        type Out = usize;
        type State = ();
        fn start(&self) -> Result<(), TreeError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        fn finish(&self, _: &mut (), index: usize, bytes: Vec<u8>) -> Result<usize, TreeError> {
            if index == self.0 {
                return Err(TreeError::NotOneFrame {
                    key: "refused".into(),
                    reason: "test",
                });
            }
            Ok(bytes.len())
        }
    }

    #[test]
    fn a_chunk_its_finishing_refuses_is_handed_over_in_its_place_and_nothing_after_it() {
        let (objects, plan) = objects(2 * WINDOW);
        let refused = plan[WINDOW + 5].0;
        std::thread::scope(|s| {
            let with = Refuse(refused, Default::default());
            let ahead = ahead(s, ObjectSource::Built(&objects, None), plan.clone(), with);
            for (i, _) in &plan[..WINDOW + 5] {
                let (got, made) = ahead.recv().expect("before the refused one");
                assert_eq!(got, *i);
                assert!(made.is_ok());
            }
            let (i, failed) = ahead.recv().expect("the refused chunk itself");
            assert_eq!(i, refused);
            assert!(matches!(failed, Err(TreeError::NotOneFrame { .. })));
            assert!(ahead.recv().is_none(), "nothing after a refusal");
        });
    }

    /// Panics on every chunk.
    struct Panics;

    impl Finish for Panics {
        type Out = ();
        type State = ();
        fn start(&self) -> Result<(), TreeError> {
            Ok(())
        }
        fn finish(&self, _: &mut (), index: usize, _: Vec<u8>) -> Result<(), TreeError> {
            panic!("finishing chunk {index}");
        }
    }

    #[test]
    fn a_panic_while_finishing_a_chunk_is_that_chunks_failure() {
        let mut finisher = Finisher::new(&Panics);
        let made = finisher.finish(41, Ok(b"chunk".to_vec()));
        assert!(matches!(made, Err(TreeError::FetchPanicked)), "{made:?}");
        assert!(finisher.state.is_none(), "made again for the next chunk");
    }

    #[test]
    fn each_fetching_thread_starts_its_state_once() {
        let (objects, plan) = objects(4 * WINDOW);
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let with = Refuse(usize::MAX, Arc::clone(&started));
        std::thread::scope(|s| {
            let ahead = ahead(s, ObjectSource::Built(&objects, None), plan.clone(), with);
            for (i, obj) in &plan {
                let (got, len) = ahead.recv().expect("one per plan entry");
                assert_eq!(got, *i);
                assert_eq!(len.expect("made") as u64, obj.size);
            }
        });
        let started = started.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=AHEAD_THREADS).contains(&started), "{started} states");
    }

    /// `n` small objects in memory, and their references in plan order.
    fn objects(n: usize) -> (Objects, Vec<(usize, ObjectRef)>) {
        let mut objects = Objects::new();
        let mut plan = Vec::new();
        for i in 0..n {
            let bytes = format!("chunk {i}").into_bytes();
            let obj = ObjectRef {
                sha256: Sha256::digest(&bytes).into(),
                size: bytes.len() as u64,
                raw_size: bytes.len() as u64,
                count: 1,
            };
            objects.insert(obj.sha256, bytes).expect("insert");
            plan.push((i * 2, obj));
        }
        (objects, plan)
    }

    #[test]
    fn chunks_fetched_ahead_arrive_in_plan_order_past_the_window() {
        let (objects, plan) = objects(3 * WINDOW + 7);
        std::thread::scope(|s| {
            let ahead = ahead(s, ObjectSource::Built(&objects, None), plan.clone(), Bytes);
            for (i, obj) in &plan {
                let (got, bytes) = ahead.recv().expect("one per plan entry");
                assert_eq!(got, *i);
                assert_eq!(
                    Some(bytes.expect("fetched")),
                    objects.get(&obj.sha256).expect("read")
                );
            }
            assert!(ahead.recv().is_none(), "nothing after the plan");
        });
    }

    #[test]
    fn a_missing_chunk_is_handed_over_in_its_place_and_nothing_after_it() {
        let (mut objects, plan) = objects(2 * WINDOW);
        objects.remove(&plan[WINDOW + 3].1.sha256);
        std::thread::scope(|s| {
            let ahead = ahead(s, ObjectSource::Built(&objects, None), plan.clone(), Bytes);
            for (i, _) in &plan[..WINDOW + 3] {
                assert_eq!(ahead.recv().expect("before the gap").0, *i);
            }
            let (i, failed) = ahead.recv().expect("the gap itself");
            assert_eq!(i, plan[WINDOW + 3].0);
            assert!(matches!(failed, Err(TreeError::Fetch { .. })));
            assert!(ahead.recv().is_none(), "nothing after a failure");
        });
    }

    #[test]
    fn nothing_comes_after_a_failure_even_chunks_fetched_past_it() {
        let (objects, plan) = objects(64);
        std::thread::scope(|s| {
            let ahead = ahead(s, ObjectSource::Built(&objects, None), plan.clone(), Bytes);
            // Let the pool fetch everything, then look at the first chunk
            // as if its fetch had failed: the reader stops there.
            let Fetching::Pool(shared) = &ahead.from else {
                panic!("objects in memory are fetched by a pool");
            };
            while shared.lock().done.len() < plan.len() {
                std::thread::yield_now();
            }
            shared.lock().failed_at = Some(0);
            let failed = Err(TreeError::FetchPanicked);
            shared.lock().done.insert(0, failed);
            assert!(ahead.recv().expect("the failure").1.is_err());
            assert!(
                ahead.recv().is_none(),
                "chunk 1 was fetched, but comes after"
            );
        });
    }

    #[test]
    fn a_reader_that_stops_early_lets_the_threads_end() {
        let (objects, plan) = objects(4 * WINDOW);
        // The scope returns only once every fetching thread has ended.
        std::thread::scope(|s| {
            let ahead = ahead(s, ObjectSource::Built(&objects, None), plan, Bytes);
            assert!(ahead.recv().is_some());
            drop(ahead);
        });
    }
}
