//! Access to the object store that holds bundles and pointers.
//!
//! ```text
//! snapshots/<version, 20 digits>.bundle    immutable, never overwritten
//! channels/<channel>.json                  signed pointer
//! pins/<region>.json                       signed pin
//! ```
//! The trait is synchronous on purpose: the publisher is a batch tool and the
//! agent runs fetch → verify → ingest on a blocking thread. An async-SDK
//! backend owns a small runtime and blocks on it behind this trait.

mod file;

use std::io::Write;

use sha2::{Digest, Sha256};

pub use file::FileStore;

/// An object read from the store, with the ETag to compare-and-swap on.
#[derive(Debug, Clone)]
pub struct Object {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// An opaque version tag of these bytes.
    pub etag: String,
}

/// Why a store operation failed. The kinds let a caller tell "nothing there"
/// from "try again later" from "give up".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object at the key.
    #[error("{key}: not found in the store")]
    NotFound {
        /// The key.
        key: String,
    },
    /// `put_new` on a key that exists: objects there are immutable.
    #[error("{key}: already exists and is never overwritten")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// `put_if` lost a race: the object changed since it was read.
    #[error("{key}: changed since it was read (compare-and-swap lost)")]
    PreconditionFailed {
        /// The key.
        key: String,
    },
    /// The object is larger than the caller allows.
    #[error("{key}: {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The key.
        key: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A failure that may pass (I/O error, network, throttling).
    #[error("{key}: {source}")]
    Transient {
        /// The key.
        key: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A failure that will not pass by retrying (bad URL, bad key).
    #[error("{0}")]
    Fatal(String),
}

/// Object storage as Strata needs it: get with an ETag, create-only put,
/// conditional put, list and delete.
pub trait ObjectStore: Send + Sync {
    /// The store's URL, for logs and `/v1/snapshot`.
    fn url(&self) -> &str;

    /// Reads `key`, refusing objects over `max_bytes`.
    fn get(&self, key: &str, max_bytes: u64) -> Result<Object, StoreError>;

    /// Streams `key` into `out`, refusing objects over `max_bytes`, and
    /// returns the number of bytes written. For bundles: memory stays flat
    /// whatever the bundle's size.
    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError>;

    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// Replaces `key` only if its current ETag is `expected` (`None`: only if
    /// it does not exist). Returns the new ETag.
    fn put_if(&self, key: &str, bytes: &[u8], expected: Option<&str>)
    -> Result<String, StoreError>;

    /// Keys under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Removes `key`; removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Opens a store from its URL. `file:///abs/path` is the embedded default.
pub fn open(url: &str) -> Result<Box<dyn ObjectStore>, StoreError> {
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Box::new(FileStore::new(path)?));
    }
    let scheme = url.split("://").next().unwrap_or(url);
    Err(StoreError::Fatal(format!(
        "store URL {url:?}: scheme {scheme:?} is not supported by this build; use file:///absolute/path"
    )))
}

/// What [`copy_hashed`] copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Bytes copied.
    pub size: u64,
    /// Their SHA-256, lowercase hex.
    pub sha256: String,
}

/// Copies `key` into `out` and hashes it on the way, so a bundle is checked
/// against its signed pointer without a second read or a copy in memory.
pub fn copy_hashed(
    store: &dyn ObjectStore,
    key: &str,
    max_bytes: u64,
    out: &mut dyn Write,
) -> Result<Copied, StoreError> {
    struct Tee<'a> {
        out: &'a mut dyn Write,
        hash: Sha256,
    }
    impl Write for Tee<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.out.write(buf)?;
            self.hash.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.out.flush()
        }
    }
    let mut tee = Tee {
        out,
        hash: Sha256::new(),
    };
    let size = store.get_to(key, max_bytes, &mut tee)?;
    Ok(Copied {
        size,
        sha256: hex::encode(tee.hash.finalize()),
    })
}
