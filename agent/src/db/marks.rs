//! What the node remembers beside its snapshots, in the same file so that it
//! survives a restart with the store gone: the rollback-protection marks,
//! and the switch between stored versions that a pin or an unpin makes.

use redb::{ReadableTable, TableError};

use super::{Db, DbError, META, SNAPSHOTS};

/// `META` key: the highest version accepted from the channel.
const HIGH_WATER: &str = "high_water";
/// `META` key: seconds since the epoch; a region pin signed earlier is a replay.
const PIN_FLOOR: &str = "pin_floor";
/// `META` key: when the region pin followed now was signed (0: none).
const PIN_SEEN: &str = "pin_seen";
/// The region pin followed now, as verified (its file): kept when the
/// store's copy disappears, until it expires, since only a signed unpin
/// ends a pin.
const PIN_DOC: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("pin_doc");
/// `PIN_DOC`'s one key.
const PIN_DOC_KEY: &str = "pin";

/// The rollback-protection marks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Marks {
    /// The highest version accepted from the channel: a channel pointer
    /// below it is a replay, and only a pin may take the node back.
    pub high_water: u64,
    /// A region pin signed before this (seconds since the epoch) is refused:
    /// older than the pin followed, or the same as one seen removed.
    pub pin_floor: u64,
    /// When the region pin this node follows was signed, if it follows one:
    /// when that pin disappears (an unpin), the floor moves past it.
    pub pin_seen: Option<u64>,
}

impl Db {
    /// The marks as committed. A file written before marks existed has
    /// none: its newest stored version stands for the high-water mark.
    pub fn marks(&self) -> Result<Marks, DbError> {
        let txn = self.db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Marks::default()),
            Err(e) => return Err(e.into()),
        };
        let get =
            |key: &str| -> Result<Option<u64>, DbError> { Ok(meta.get(key)?.map(|g| g.value())) };
        let high_water = match get(HIGH_WATER)? {
            Some(v) => v,
            None => match txn.open_table(SNAPSHOTS) {
                Ok(s) => s.last()?.map_or(0, |(k, _)| k.value()),
                Err(TableError::TableDoesNotExist(_)) => 0,
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Marks {
            high_water,
            pin_floor: get(PIN_FLOOR)?.unwrap_or(0),
            pin_seen: get(PIN_SEEN)?.filter(|s| *s != 0),
        })
    }

    /// Records the region pin followed (`seen`: its signing time, and its
    /// file) and the replay floor; `None` when the node follows no pin.
    pub fn set_pin_marks(&self, pin_floor: u64, seen: Option<(u64, &[u8])>) -> Result<(), DbError> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(PIN_FLOOR, pin_floor)?;
            meta.insert(PIN_SEEN, seen.map_or(0, |(at, _)| at))?;
            let mut doc = txn.open_table(PIN_DOC)?;
            match seen {
                Some((_, bytes)) => {
                    doc.insert(PIN_DOC_KEY, bytes)?;
                }
                None => {
                    doc.remove(PIN_DOC_KEY)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The region pin followed now, as verified, if recorded.
    pub fn pin_doc(&self) -> Result<Option<Vec<u8>>, DbError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(PIN_DOC) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(PIN_DOC_KEY)?.map(|g| g.value().to_vec()))
    }

    /// Raises the high-water mark to `version` (a channel pointer naming
    /// the version already served, after an unpin).
    pub fn raise_high_water(&self, version: u64) -> Result<(), DbError> {
        let txn = self.db.begin_write()?;
        raise_high_water(&mut txn.open_table(META)?, version)?;
        txn.commit()?;
        Ok(())
    }

    /// Serves the stored `version` from now on (a pin to a retained
    /// version, or the channel's head again after an unpin): one small
    /// commit, no fetch. `from_channel` raises the high-water mark.
    pub fn switch(&self, version: u64, from_channel: bool) -> Result<(), DbError> {
        let txn = self.db.begin_write()?;
        {
            if txn.open_table(SNAPSHOTS)?.get(version)?.is_none() {
                return Err(DbError::Damaged(format!(
                    "snapshot {version} is not stored, so it cannot be switched to"
                )));
            }
            let mut meta = txn.open_table(META)?;
            let was = meta.get("current")?.map(|g| g.value());
            let mut served_until = txn.open_table(super::keep::SERVED_UNTIL)?;
            super::keep::note_switch(&mut served_until, was, version, super::keep::now_secs())?;
            meta.insert("current", version)?;
            if from_channel {
                raise_high_water(&mut meta, version)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// Raises the high-water mark to `version` if it is higher.
pub(super) fn raise_high_water(
    meta: &mut redb::Table<&str, u64>,
    version: u64,
) -> Result<(), DbError> {
    let now = meta.get(HIGH_WATER)?.map_or(0, |g| g.value());
    if version > now {
        meta.insert(HIGH_WATER, version)?;
    }
    Ok(())
}
