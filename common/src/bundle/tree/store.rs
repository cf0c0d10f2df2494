//! Uploading a format 3 snapshot's objects: only those the store does not
//! hold yet, in parallel, each with a create-only put.

use std::collections::HashSet;

use super::write::Objects;
use crate::store::{StoreError, WriteStore};

/// What [`upload`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Objects written.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects the store held already.
    pub kept: u64,
}

/// How many uploads run at once.
const UPLOAD_THREADS: usize = 8;

/// Writes every object of `objects` that `present` does not name, with a
/// create-only put on [`UPLOAD_THREADS`] threads. An object that exists
/// already is kept: its name is its hash, so it holds the same bytes.
pub fn upload(
    store: &dyn WriteStore,
    objects: &Objects,
    present: &HashSet<[u8; 32]>,
) -> Result<Uploaded, StoreError> {
    let todo: Vec<(&[u8; 32], &Vec<u8>)> = objects
        .iter()
        .filter(|(h, _)| !present.contains(*h))
        .collect();
    let kept = (objects.len() - todo.len()) as u64;
    let per = todo.len().div_ceil(UPLOAD_THREADS).max(1);
    let results: Vec<Result<Uploaded, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut done = Uploaded::default();
                    for (hash, bytes) in part {
                        match store.put_new(&super::object_key(hash), bytes) {
                            Ok(()) => {
                                done.objects += 1;
                                done.bytes += bytes.len() as u64;
                            }
                            Err(StoreError::AlreadyExists { .. }) => done.kept += 1,
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Fatal {
                        key: super::OBJECTS.to_owned(),
                        source: "an upload thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut total = Uploaded {
        kept,
        ..Uploaded::default()
    };
    for r in results {
        let r = r?;
        total.objects += r.objects;
        total.bytes += r.bytes;
        total.kept += r.kept;
    }
    Ok(total)
}
