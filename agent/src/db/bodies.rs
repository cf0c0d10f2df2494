//! Config and prompt bodies, laid out to fill redb's pages.
//!
//! redb gives a leaf holding one value larger than a page a page of the
//! next power of two, and a value close to a page a page of its own. Bodies
//! are typically 2–8 KB: stored whole, a million tenants' 8 GB of bodies took
//! 12 GB of file (1.5×), and every one of those bytes was written. So a
//! body is cut from its start into [`PIECE`]-byte pieces, stored under
//! fixed-width keys where exactly two fill a 4 KiB page, and its last
//! `len % PIECE` bytes (the tail) stay in the body table under the body's
//! own key, behind a 12-byte prefix naming the pieces. Tails pack several
//! to a page. The file is about 1.1× the bodies, and a cold apply writes
//! that much less.
//!
//! A body shorter than a piece is its tail alone, and a lookup hands its
//! page to the response without copying; a longer one is gathered from its
//! pieces and tail into one buffer.

use bytes::{Bytes, BytesMut};
use redb::{ReadOnlyTable, ReadableTable, Table, TableDefinition};

use super::DbError;
use super::read::Page;

/// `(piece id, index)` → [`PIECE`] bytes of a config body.
pub(super) const CONFIG_PIECES: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("config_pieces");
/// `(piece id, index)` → [`PIECE`] bytes of a prompt body.
pub(super) const PROMPT_PIECES: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("prompt_pieces");

/// Bytes in a piece: two pieces and their keys fill one 4 KiB redb leaf
/// (4 bytes of page header; per entry a 4-byte value length, the 12-byte
/// fixed key and the piece).
pub const PIECE: usize = (4096 - 4 - 2 * (4 + 12)) / 2;

/// The tail's prefix: piece count (u32 LE), piece id (u64 LE).
const PREFIX: usize = 12;

/// The pieces a tail names.
#[derive(Debug, Clone, Copy)]
struct Pieces {
    count: u32,
    id: u64,
}

impl Pieces {
    fn decode(tail: &[u8], tenant: &str, what: &str) -> Result<Self, DbError> {
        let damaged =
            || DbError::Damaged(format!("{what} body of {tenant}: stored tail too short"));
        let count = tail.get(..4).and_then(|b| b.try_into().ok());
        let id = tail.get(4..PREFIX).and_then(|b| b.try_into().ok());
        Ok(Self {
            count: u32::from_le_bytes(count.ok_or_else(damaged)?),
            id: u64::from_le_bytes(id.ok_or_else(damaged)?),
        })
    }
}

/// One kind of body (configs or prompts) open for writing.
pub(super) struct Bodies<'t> {
    tails: Table<'t, (u64, &'static str), &'static [u8]>,
    pieces: Table<'t, (u64, u32), &'static [u8]>,
    /// The next piece id, read from the pieces table on first use.
    next: Option<u64>,
    what: &'static str,
}

impl<'t> Bodies<'t> {
    /// Opens (or creates) the tails table and its pieces table in `txn`.
    pub(super) fn open(
        txn: &'t redb::WriteTransaction,
        tails: TableDefinition<(u64, &str), &[u8]>,
        pieces: TableDefinition<(u64, u32), &[u8]>,
        what: &'static str,
    ) -> Result<Self, DbError> {
        Ok(Self {
            tails: txn.open_table(tails)?,
            pieces: txn.open_table(pieces)?,
            next: None,
            what,
        })
    }

    /// Stores `body` under `key` (`(version, tenant)`), replacing any body
    /// stored there.
    pub(super) fn insert(&mut self, key: (u64, &str), body: &[u8]) -> Result<(), DbError> {
        let count = body.len() / PIECE;
        let id = if count == 0 {
            0
        } else {
            let id = match self.next {
                Some(id) => id,
                None => match self.pieces.last()? {
                    None => 1,
                    // Ids only grow; u64::MAX is a damaged file, and
                    // wrapping would write over another body's pieces.
                    Some((k, _)) => k.value().0.checked_add(1).ok_or_else(|| {
                        DbError::Damaged(format!("{} pieces: the last id is u64::MAX", self.what))
                    })?,
                },
            };
            self.next = id.checked_add(1);
            for (i, piece) in body.chunks_exact(PIECE).enumerate() {
                let index = u32::try_from(i).map_err(|_| self.too_long(key.1))?;
                self.pieces.insert((id, index), piece)?;
            }
            id
        };
        let count = u32::try_from(count).map_err(|_| self.too_long(key.1))?;
        let mut tail = Vec::with_capacity(PREFIX + body.len() % PIECE);
        tail.extend_from_slice(&count.to_le_bytes());
        tail.extend_from_slice(&id.to_le_bytes());
        tail.extend_from_slice(&body[body.len() - body.len() % PIECE..]);
        let old = self
            .tails
            .insert(key, tail.as_slice())?
            .map(|g| Pieces::decode(g.value(), key.1, self.what))
            .transpose()?;
        if let Some(old) = old {
            self.remove_pieces(old)?;
        }
        Ok(())
    }

    /// Deletes the body under `key`, if any, with its pieces.
    pub(super) fn remove(&mut self, key: (u64, &str)) -> Result<(), DbError> {
        let old = self
            .tails
            .remove(key)?
            .map(|g| Pieces::decode(g.value(), key.1, self.what))
            .transpose()?;
        if let Some(old) = old {
            self.remove_pieces(old)?;
        }
        Ok(())
    }

    fn remove_pieces(&mut self, old: Pieces) -> Result<(), DbError> {
        if old.count > 0 {
            self.pieces
                .retain_in((old.id, 0)..(old.id, old.count), |_, _| false)?;
        }
        Ok(())
    }

    fn too_long(&self, tenant: &str) -> DbError {
        DbError::Damaged(format!(
            "{} body of {tenant} is too long to store",
            self.what
        ))
    }
}

/// One kind of body open for reading, in a read transaction.
pub(super) struct ReadBodies {
    pub(super) tails: ReadOnlyTable<(u64, &'static str), &'static [u8]>,
    pieces: ReadOnlyTable<(u64, u32), &'static [u8]>,
    what: &'static str,
}

impl ReadBodies {
    /// Opens the tails table and its pieces table in `txn`.
    pub(super) fn open(
        txn: &redb::ReadTransaction,
        tails: TableDefinition<(u64, &str), &[u8]>,
        pieces: TableDefinition<(u64, u32), &[u8]>,
        what: &'static str,
    ) -> Result<Self, DbError> {
        Ok(Self {
            tails: txn.open_table(tails)?,
            pieces: txn.open_table(pieces)?,
            what,
        })
    }

    /// The body stored under `(version, tenant)`; its absence is damage
    /// (a tenant row points at it), not a 404.
    pub(super) fn get(&self, version: u64, tenant: &str) -> Result<Bytes, DbError> {
        let guard = self.tails.get_owned((version, tenant))?.ok_or_else(|| {
            DbError::Damaged(format!(
                "{} body of {tenant} from snapshot {version} is missing",
                self.what
            ))
        })?;
        let pieces = Pieces::decode(guard.value(), tenant, self.what)?;
        let tail = Bytes::from_owner(Page(guard)).slice(PREFIX..);
        if pieces.count == 0 {
            return Ok(tail);
        }
        let missing = || {
            DbError::Damaged(format!(
                "{} body of {tenant} from snapshot {version}: a piece is missing or cut wrong",
                self.what
            ))
        };
        // The count is read from the file: allocate by what is found, not
        // by what a damaged count claims.
        let mut body = BytesMut::with_capacity(pieces.count.min(32) as usize * PIECE + tail.len());
        let mut found = 0u32;
        for piece in self
            .pieces
            .range((pieces.id, 0)..(pieces.id, pieces.count))?
        {
            let piece = piece?.1;
            if piece.value().len() != PIECE {
                return Err(missing());
            }
            body.extend_from_slice(piece.value());
            found += 1;
        }
        if found != pieces.count {
            return Err(missing());
        }
        body.extend_from_slice(&tail);
        Ok(body.freeze())
    }
}
