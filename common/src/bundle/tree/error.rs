//! Why an object of a format 3 snapshot was refused: one variant per kind
//! of damage, so a node's reason label and a test can tell them apart.

use crate::store::StoreError;

/// Why an object of a format 3 snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The object could not be read (missing from the store, or the store
    /// failed). A missing object is a store that lost it or a publish still
    /// copying to a mirror: the node keeps serving and tries again.
    #[error(
        "{source} (an object the snapshot names: the node keeps what it serves and tries again)"
    )]
    Fetch {
        /// The object's key.
        key: String,
        /// The store's error.
        source: StoreError,
    },
    /// A thread fetching objects panicked: a bug in the reader, not damage
    /// in the snapshot, so it is not held against the pointer: the node
    /// keeps what it serves and tries again with backoff.
    #[error(
        "a thread fetching the snapshot's objects panicked (a bug: report it with the log above); the node keeps what it serves and tries again"
    )]
    FetchPanicked,
    /// The object's bytes are not the size its parent names.
    #[error(
        "object {key} is {actual} bytes, its parent names {expected}: it was altered or cut short"
    )]
    SizeMismatch {
        /// The object's key.
        key: String,
        /// The size named.
        expected: u64,
        /// The size read.
        actual: u64,
    },
    /// The object's bytes do not hash to its name.
    #[error(
        "object {key} has SHA-256 {actual}: it was altered; `strata-publisher publish --format 3 --full` writes it again"
    )]
    HashMismatch {
        /// The object's key.
        key: String,
        /// The hash of what was read.
        actual: String,
    },
    /// The snapshot names more objects than the reader's limit.
    #[error("the snapshot names {count} objects, over the limit of {limit} (max_objects)")]
    TooManyObjects {
        /// How many it names (at least).
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// The objects together are larger than the reader's limit.
    #[error(
        "the snapshot's {what} is {size} bytes, over the limit of {limit}; raise max_bundle_bytes if this is expected"
    )]
    TooLarge {
        /// `objects` or `decompressed records`.
        what: &'static str,
        /// The declared total.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The dictionary is larger than the reader's limit.
    #[error("dictionary {key} is {size} bytes, over the limit of {limit}")]
    DictionaryTooLarge {
        /// Its key.
        key: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The dictionary is not a zstd dictionary.
    #[error("dictionary {key} is not a zstd dictionary: {reason}")]
    BadDictionary {
        /// Its key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// An object whose declared decompressed size is over the frame limit.
    #[error(
        "object {key} declares {raw_size} decompressed bytes, over the limit of {limit} (max_frame_bytes)"
    )]
    ObjectTooLarge {
        /// Its key.
        key: String,
        /// The declared size.
        raw_size: u64,
        /// The limit.
        limit: u64,
    },
    /// The object does not decompress to exactly its declared size (a zstd
    /// bomb, or a parent that lies).
    #[error("object {key} does not decompress to its declared {declared} bytes: {reason}")]
    Decompress {
        /// Its key.
        key: String,
        /// The declared size.
        declared: u64,
        /// What happened.
        reason: String,
    },
    /// The object is not exactly one zstd frame with its content checksum.
    #[error("object {key} {reason}")]
    NotOneFrame {
        /// Its key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Items (chunks, pages, tenants, routes) listed twice or out of order.
    #[error("{object}: {reason}")]
    Order {
        /// The object (or `root`).
        object: String,
        /// What is out of order.
        reason: String,
    },
    /// A record that cannot be decoded or is not the one expected here.
    #[error("{object} is malformed at byte {offset}: {reason}")]
    BadRecord {
        /// The object (or `root`).
        object: String,
        /// Where in its decompressed bytes.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An object holds another number of items than its parent says.
    #[error("{object} holds {actual} {what}, its parent says {expected}")]
    Count {
        /// The object (or `root`).
        object: String,
        /// What was counted.
        what: &'static str,
        /// From the parent.
        expected: u64,
        /// Decoded.
        actual: u64,
    },
}

impl TreeError {
    /// The short reason for metrics and `/v1/snapshot`.
    pub fn reason(&self) -> &'static str {
        match self {
            TreeError::Fetch { .. } => "object_unavailable",
            TreeError::FetchPanicked => "fetch_panicked",
            TreeError::SizeMismatch { .. } | TreeError::HashMismatch { .. } => {
                "object_hash_mismatch"
            }
            TreeError::TooManyObjects { .. } => "too_many_objects",
            TreeError::TooLarge { .. } => "bundle_too_large",
            TreeError::DictionaryTooLarge { .. } | TreeError::BadDictionary { .. } => {
                "bad_dictionary"
            }
            TreeError::ObjectTooLarge { .. } | TreeError::Decompress { .. } => {
                "object_decompression"
            }
            TreeError::NotOneFrame { .. } => "frame_checksum_missing",
            TreeError::Order { .. } => "objects_out_of_order",
            TreeError::BadRecord { .. } | TreeError::Count { .. } => "malformed_object",
        }
    }

    /// Whether trying again later may pass: the store failed or has not got
    /// the object (yet), or a fetching thread panicked.
    pub fn is_transient(&self) -> bool {
        matches!(self, TreeError::Fetch { .. } | TreeError::FetchPanicked)
    }
}
