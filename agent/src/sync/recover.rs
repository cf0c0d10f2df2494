//! The snapshot file's health: what is stored, checked against today's
//! trusted keys (at start, and when the keys change), and the file opened
//! again after redb latched an I/O error (a full disk) or once a read-only
//! `data_dir` can be written.

use std::sync::atomic::Ordering;

use strata_common::sign::{Role, SignatureError};
use tracing::{info, warn};

use super::{CheckError, Syncer};
use crate::db::{Db, SnapshotMeta};

/// Free space in `data_dir` before the snapshot file is opened again after
/// an I/O error: enough for a publish of a few thousand changed tenants.
const REOPEN_ROOM: u64 = 64 << 20;

impl Syncer {
    /// Serves what the database holds, after checking its stored manifest
    /// signatures against today's trusted keys. Used at start, so a
    /// restart serves at once without the network. A stored snapshot those
    /// keys do not vouch for is dropped, so that the store's snapshot is
    /// fetched as on a new node, whatever its version.
    pub fn restore(&mut self) -> Result<Option<u64>, String> {
        let reader = self.db.reader().map_err(|e| e.to_string())?;
        let Some(reader) = reader else {
            return Ok(None);
        };
        let vouched = reader
            .current_meta()
            .ok_or_else(|| "the local snapshot file names no current snapshot".to_owned())
            .and_then(|meta| {
                self.vouches(meta).map_err(|e| {
                    format!("stored snapshot {} no longer verifies: {e}", meta.version)
                })
            });
        let refused = match vouched {
            Ok(()) => {
                let version = reader.current;
                self.mark_untrusted(Some(&reader));
                self.shared.served.store(Some(std::sync::Arc::new(reader)));
                return Ok(Some(version));
            }
            Err(refused) => refused,
        };
        drop(reader);
        self.drop_stored(&refused)
    }

    /// Whether today's trusted publisher keys still vouch for a stored
    /// snapshot: its manifest's signatures, checked again.
    pub(super) fn vouches(&self, meta: &SnapshotMeta) -> Result<(), SignatureError> {
        self.trust
            .verify(Role::Publisher, meta.manifest.as_bytes(), &meta.signatures)
            .map(drop)
    }

    /// Stops serving the stored snapshots and empties the file (marks too,
    /// as on a new node): today's keys no longer vouch for them.
    pub(super) fn drop_stored(&mut self, why: &str) -> Result<Option<u64>, String> {
        self.shared.served.store(None);
        self.shared.status().signed_by.clear();
        match self.db.clear() {
            Ok(()) => Err(format!(
                "{why}; dropped it, fetching the channel's snapshot as a new node would"
            )),
            Err(e) => Err(format!(
                "{why}; dropping it failed too ({e}), so the store's snapshot may be \
                 refused as already stored: remove strata.redb from data_dir and restart"
            )),
        }
    }

    /// After a failed write to the snapshot file: notes whether redb
    /// latched the failure (it then refuses every write until the file is
    /// opened again, as after a full disk), so the next check reopens it.
    pub(super) fn db_write_failed(&mut self) {
        if !self.db_failed && self.db.is_writable() && self.db.needs_reopen() {
            warn!(
                "the snapshot file refuses writes after an I/O error; opening it again at the next check"
            );
            self.db_failed = true;
        }
    }

    /// Opens the snapshot file again when it is due: after a latched I/O
    /// error (a full disk, once `data_dir` has [`REOPEN_ROOM`] free again),
    /// or once a read-only `data_dir` can be written. Closing the old
    /// handle ends what it served, so the snapshot on disk is then served
    /// through the new one (or nothing, if it cannot be opened: lookups
    /// answer 503 and the check is refused, stale, backing off).
    pub(super) fn reopen_db(&mut self) -> Result<(), CheckError> {
        if self.shared.read_failed.swap(false, Ordering::Relaxed) {
            self.db_write_failed();
        }
        let due = self.db_failed || (!self.db.is_writable() && self.db.needs_reopen());
        if !due {
            return Ok(());
        }
        let refused = |db: &Db, reason: String| CheckError::LocalStore {
            path: db.path().display().to_string(),
            reason,
        };
        if self.db_failed && !self.db.has_room(REOPEN_ROOM) {
            return Err(refused(
                &self.db,
                format!(
                    "the snapshot file refuses writes after an I/O error and data_dir has less than {} MiB free; \
                     free space and the agent opens it again",
                    REOPEN_ROOM >> 20
                ),
            ));
        }
        let reopened = self.db.reopen();
        self.shared.served.store(None);
        if let Err(e) = reopened {
            return Err(refused(
                &self.db,
                format!(
                    "opening the snapshot file again: {e}; nothing is served until it opens (lookups answer 503)"
                ),
            ));
        }
        self.db_failed = false;
        match self.restore() {
            Ok(version) => info!(
                version,
                "opened the snapshot file again; updates can be applied"
            ),
            Err(e) => warn!("opened the snapshot file again, but {e}"),
        }
        Ok(())
    }
}
