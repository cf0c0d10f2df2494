//! Fetching chunks in parallel: a batch at a time on [`FETCH_THREADS`]
//! threads, or ahead of the reader on a thread of its own, so that a new
//! node fetches the next chunks while it writes the last ones.

use std::sync::mpsc::{Receiver, sync_channel};

use super::ObjectRef;
use super::TreeError;
use super::read::ObjectSource;

/// How many chunks are fetched at once.
pub const FETCH_BATCH: usize = 128;
/// How many fetches run in parallel.
pub const FETCH_THREADS: usize = 64;

/// A fetched chunk: its index among the snapshot's chunks, and its bytes
/// (checked against its reference) or why they could not be had.
pub(super) type Fetch = (usize, Result<Vec<u8>, TreeError>);

/// The objects `objs` names, fetched on [`FETCH_THREADS`] threads; the
/// results in the same order.
pub(super) fn parallel(
    store: ObjectSource<'_>,
    objs: &[ObjectRef],
) -> Vec<Result<Vec<u8>, TreeError>> {
    std::thread::scope(|s| {
        let per = objs.len().div_ceil(FETCH_THREADS).max(1);
        let handles: Vec<_> = objs
            .chunks(per)
            .map(|part| s.spawn(move || part.iter().map(|o| store.object(o)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(TreeError::NotOneFrame {
                        key: "-".into(),
                        reason: "a fetch thread panicked",
                    })]
                })
            })
            .collect()
    })
}

/// Fetches `plan`'s chunks on a thread of `scope`, [`FETCH_BATCH`] at a
/// time, and hands them over in order: at most one batch waits to be read
/// while the next is fetched, so memory stays bounded whatever the
/// snapshot's size. It stops at the first failure (handed over in its
/// place) or when the receiver is dropped.
pub(super) fn ahead<'scope, 'a: 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: ObjectSource<'a>,
    plan: Vec<(usize, ObjectRef)>,
) -> Receiver<Fetch> {
    let (tx, rx) = sync_channel(FETCH_BATCH);
    scope.spawn(move || {
        for batch in plan.chunks(FETCH_BATCH) {
            let objs: Vec<ObjectRef> = batch.iter().map(|(_, o)| *o).collect();
            for ((i, _), r) in batch.iter().zip(parallel(store, &objs)) {
                let failed = r.is_err();
                if tx.send((*i, r)).is_err() || failed {
                    return;
                }
            }
        }
    });
    rx
}
