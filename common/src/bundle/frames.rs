//! A snapshot as a node applies it, whatever its format: Layer 1, then its
//! tenants in id order in groups, then its routes. Format 2's groups are
//! the body frames its index lists ([`PayloadReader`]); format 3's are its
//! chunks ([`crate::bundle::tree::TreeFrames`]), where a chunk the node already
//! holds is a [`Group::Held`] range it keeps without reading.

use std::io::{Read, Seek};

use super::{BundleError, Frame, FrameBodies, PayloadReader};

/// One group of a snapshot's tenants, in id order.
#[derive(Debug)]
pub enum Group {
    /// Tenants listed with their config hashes; their bodies are read on
    /// demand with [`Frames::bodies`].
    Listed(Frame),
    /// A chunk the node holds from the snapshot it stores newest: exactly
    /// its stored tenants with ids from `first` up to (not including)
    /// `end`, `count` of them, unchanged.
    Held {
        /// The first tenant id of the chunk.
        first: String,
        /// The next chunk's first tenant id (`None` for the last chunk).
        end: Option<String>,
        /// Tenants in the chunk.
        count: u64,
    },
}

/// A snapshot as a node applies it. Call [`Self::next_group`] until it
/// returns `None`, then either [`Self::next_route`] until it returns
/// `None` (that checks the totals) or [`Self::keep_routes`] when the node
/// keeps the routes it has (equal `routes_sha256`).
pub trait Frames {
    /// Layer 1 as JSON.
    fn layer1(&self) -> &[u8];
    /// The next group of tenants; `None` after the last.
    fn next_group(&mut self) -> Result<Option<Group>, BundleError>;
    /// The next group, which must be listed: for a reader that holds
    /// nothing (inspection, a comparison), to which no chunk is held.
    fn next_listed(&mut self) -> Result<Option<Frame>, BundleError> {
        match self.next_group()? {
            None => Ok(None),
            Some(Group::Listed(f)) => Ok(Some(f)),
            Some(Group::Held { first, .. }) => Err(BundleError::BadRecord {
                frame: 0,
                offset: 0,
                reason: format!("the chunk from {first} was held, not read"),
            }),
        }
    }
    /// The bodies of a [`Group::Listed`] frame [`Self::next_group`] returned.
    fn bodies<'a>(&'a mut self, frame: &'a Frame) -> Result<FrameBodies<'a>, BundleError>;
    /// The signed SHA-256 of the route records: equal digests, equal routes.
    fn routes_sha256(&self) -> &str;
    /// The next route, `(number, tenant id)`, in ascending number order.
    fn next_route(&mut self) -> Result<Option<(&str, &str)>, BundleError>;
    /// The node keeps the routes it has: what is left to check without them.
    fn keep_routes(&mut self) -> Result<(), BundleError> {
        while self.next_route()?.is_some() {}
        Ok(())
    }
    /// Whether the reader has checked that every route names a tenant of
    /// the snapshot (format 2's index lists them all); if not, the node
    /// checks each against the tenants it stored.
    fn routes_checked(&self) -> bool;
    /// Format 3: the identities of the snapshot's chunks (hash, sizes, key,
    /// Layer 1 and dictionary: `TreeFrames::held_id`; `None` for format 2).
    fn chunk_hashes(&self) -> Option<std::collections::HashSet<[u8; 32]>> {
        None
    }
    /// Format 3: hands the chunks `shared` (which a comparison knows hold
    /// the same tenants on both sides) out as [`Group::Held`], unread.
    fn skip_chunks(&mut self, _shared: &std::collections::HashSet<[u8; 32]>) {}
    /// Format 3: hands out as [`Group::Held`], unread, every chunk that
    /// holds none of `tenants` (a reader wanting a few tenants' records).
    fn only_tenants(&mut self, _tenants: &std::collections::BTreeSet<String>) {}
    /// Format 3, once every group and route was read: what the node keeps
    /// beside the snapshot ([`crate::bundle::tree::Applied`]). `None` for format 2.
    fn take_tree(&mut self) -> Option<crate::bundle::tree::Applied> {
        None
    }
}

impl<R: Read + Seek> Frames for PayloadReader<R> {
    fn layer1(&self) -> &[u8] {
        PayloadReader::layer1(self)
    }

    fn next_group(&mut self) -> Result<Option<Group>, BundleError> {
        Ok(self.next_frame()?.map(Group::Listed))
    }

    fn bodies<'a>(&'a mut self, frame: &'a Frame) -> Result<FrameBodies<'a>, BundleError> {
        self.read_frame(frame)
    }

    fn routes_sha256(&self) -> &str {
        PayloadReader::routes_sha256(self)
    }

    fn next_route(&mut self) -> Result<Option<(&str, &str)>, BundleError> {
        PayloadReader::next_route(self)
    }

    fn routes_checked(&self) -> bool {
        true
    }
}
