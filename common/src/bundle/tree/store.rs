//! Uploading a format 3 snapshot's objects: only those the store does not
//! hold yet, in parallel, each with a create-only put.

use std::collections::HashSet;

use super::write::Objects;
use crate::store::{StoreError, WriteStore};

/// What [`upload`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Objects written.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects the store held already.
    pub kept: u64,
    /// Objects found damaged in the store and written again (`repair`).
    pub repaired: u64,
    /// Of those, the ones `present` did not name: no snapshot the
    /// publisher knows reaches them, so a gc may be deleting them; see
    /// [`restore`].
    pub revived: Vec<[u8; 32]>,
    /// The objects written (uploaded or repaired): also checked by
    /// [`restore`], in case a gc with a grace shorter than this publish
    /// deleted them before the root named them.
    pub written: Vec<[u8; 32]>,
}

impl Uploaded {
    /// What [`restore`] checks after the pointer moved.
    pub fn to_check(&self) -> Vec<[u8; 32]> {
        self.written.iter().chain(&self.revived).copied().collect()
    }
}

/// How many uploads run at once.
const UPLOAD_THREADS: usize = 8;

/// Writes every object of `objects` that `present` does not name, with a
/// create-only put on [`UPLOAD_THREADS`] threads. An object that exists
/// already is kept: its name is its hash, so it holds the same bytes. With
/// `repair`, each is read back first and one whose bytes are not its name's
/// (damaged in the store) is deleted and written again.
pub fn upload(
    store: &dyn WriteStore,
    objects: &Objects,
    present: &HashSet<[u8; 32]>,
    repair: bool,
) -> Result<Uploaded, StoreError> {
    let todo: Vec<&[u8; 32]> = objects.keys().filter(|h| !present.contains(*h)).collect();
    let kept = (objects.len() - todo.len()) as u64;
    let per = todo.len().div_ceil(UPLOAD_THREADS).max(1);
    let results: Vec<Result<Uploaded, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = todo
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut done = Uploaded::default();
                    for hash in part {
                        let bytes = objects
                            .get(hash)
                            .map_err(|e| super::objects::unreadable(hash, e))?
                            .unwrap_or_default();
                        let bytes = &bytes;
                        match store.put_new(&super::object_key(hash), bytes) {
                            Ok(()) => {
                                done.objects += 1;
                                done.bytes += bytes.len() as u64;
                                done.written.push(**hash);
                            }
                            Err(StoreError::AlreadyExists { .. }) if repair => {
                                let key = super::object_key(hash);
                                let intact = match store.get(&key, bytes.len() as u64) {
                                    Ok(o) => o.bytes == *bytes,
                                    Err(StoreError::TooLarge { .. }) => false,
                                    Err(e) => return Err(e),
                                };
                                if intact {
                                    done.kept += 1;
                                } else {
                                    store.delete(&key)?;
                                    store.put_new(&key, bytes)?;
                                    done.repaired += 1;
                                    done.written.push(**hash);
                                    done.objects += 1;
                                    done.bytes += bytes.len() as u64;
                                }
                            }
                            Err(StoreError::AlreadyExists { .. }) => {
                                done.kept += 1;
                                done.revived.push(**hash);
                            }
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
        total.repaired += r.repaired;
        total.revived.extend(r.revived);
        total.written.extend(r.written);
    }
    Ok(total)
}

/// After the pointer moved: writes again any of `hashes` (the objects a
/// publish wrote or found, [`Uploaded::written`] and [`Uploaded::revived`])
/// that a gc deleted before the new root named them: its sweep marks roots
/// written before it deletes, and its grace period keeps new objects, so
/// this is the narrow rest (a grace shorter than the publish). Checked on
/// [`UPLOAD_THREADS`] threads; agents that met the gap retry.
pub fn restore(
    store: &dyn WriteStore,
    objects: &Objects,
    hashes: &[[u8; 32]],
) -> Result<(), StoreError> {
    let per = hashes.len().div_ceil(UPLOAD_THREADS).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = hashes
            .chunks(per)
            .map(|part| {
                s.spawn(move || -> Result<(), StoreError> {
                    for hash in part {
                        let key = super::object_key(hash);
                        match store.get_range(&key, 0..1) {
                            Err(StoreError::NotFound { .. }) => {
                                let held = objects
                                    .get(hash)
                                    .map_err(|e| super::objects::unreadable(hash, e))?;
                                if let Some(bytes) = held {
                                    match store.put_new(&key, &bytes) {
                                        Ok(()) | Err(StoreError::AlreadyExists { .. }) => {}
                                        Err(e) => return Err(e),
                                    }
                                }
                            }
                            Ok(_) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                Err(StoreError::Fatal {
                    key: super::OBJECTS.to_owned(),
                    source: "a restore thread panicked".into(),
                })
            })
        })
    })
}
