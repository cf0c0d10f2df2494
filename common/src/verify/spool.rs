//! Step 6 of the pipeline: the bundle copied out of the store into a
//! private spool file, bounded and hashed on the way.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use super::{Named, Refusal};
use crate::store::{ErrorKind, ReadStore, StoreError};

/// Step 6: copies the bundle `named` into an unnamed file in `spool_dir`,
/// never more than the pointer's `bundle_size` bytes (a local pin: the
/// `limit`), checking its size and SHA-256 against the pointer on the way.
/// Verification then reads this private copy, never the store again: what
/// was hashed is what gets decoded, and memory stays flat whatever the
/// bundle's size. Returns the file, its size and its SHA-256.
pub fn fetch(
    store: &dyn ReadStore,
    named: &Named,
    limit: u64,
    spool_dir: &Path,
) -> Result<(File, u64, String), Refusal> {
    let bundle = named.bundle_key();
    let spool_err = |source| Refusal::Spool {
        bundle: bundle.clone(),
        dir: spool_dir.display().to_string(),
        source,
    };
    let mut spool = Spool {
        file: tempfile::tempfile_in(spool_dir).map_err(spool_err)?,
        failed: None,
    };
    let pointer = named.pointer();
    let max = pointer.map_or(limit, |p| p.bundle_size);
    let mismatch = |size, sha256| match pointer {
        Some(p) => Refusal::BundleHash {
            bundle: bundle.clone(),
            size,
            sha256,
            expected_size: p.bundle_size,
            expected_sha256: p.bundle_sha256.clone(),
        },
        None => Refusal::BundleTooLarge {
            bundle: bundle.clone(),
            size,
            limit,
        },
    };
    let copied = match crate::store::copy_hashed(store, &bundle, max, &mut spool) {
        Ok(c) => c,
        // The local disk failed, not the store.
        Err(_) if spool.failed.is_some() => {
            let failed = spool.failed.take();
            return Err(spool_err(failed.unwrap_or_else(|| {
                std::io::Error::other("the spool file could not be written")
            })));
        }
        Err(StoreError::TooLarge { size, .. }) => return Err(mismatch(size, String::new())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Refusal::BundleMissing { bundle });
        }
        Err(source) => {
            return Err(Refusal::StoreUnreachable {
                store: store.url().to_string(),
                source,
            });
        }
    };
    if let Some(p) = pointer
        && (copied.size != p.bundle_size || copied.sha256 != p.bundle_sha256)
    {
        return Err(mismatch(copied.size, copied.sha256));
    }
    let mut file = spool.file;
    file.seek(SeekFrom::Start(0)).map_err(spool_err)?;
    Ok((file, copied.size, copied.sha256))
}

/// The spool file, remembering a failed write so that a full disk is told
/// apart from a failing store.
struct Spool {
    file: File,
    failed: Option<std::io::Error>,
}

impl std::io::Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).inspect_err(|e| {
            self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
