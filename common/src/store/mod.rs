//! Access to the object store that holds bundles and pointers.
//!
//! ```text
//! snapshots/<version, 20 digits>.bundle    immutable, never overwritten
//! channels/<channel>.json                  signed pointer
//! pins/<region>.json                       signed pin
//! ```
//! Two halves: [`ReadStore`], what an agent needs (get, conditional get,
//! ranged get, bounded streaming), and [`WriteStore`], what a publisher
//! adds (create-only put, compare-and-swap put, paginated list, delete).
//! A store URL is parsed once into a [`StoreUrl`]; each scheme is one
//! implementation. This module depends on no SDK and no TLS stack: a
//! scheme that needs one plugs in behind a cargo feature.
//!
//! The traits are synchronous on purpose: the publisher is a batch tool and
//! the agent runs fetch → verify → ingest on a blocking thread. An
//! async-SDK backend owns a small runtime and blocks on it behind them.

mod file;
#[cfg(feature = "https")]
mod https;
mod probe;
#[cfg(any(feature = "s3", feature = "https"))]
mod runtime;
#[cfg(feature = "s3")]
mod s3;
mod url;

use std::io::Write;
use std::ops::Range;

use sha2::{Digest, Sha256};

pub use file::{FileStore, make_dir};
#[cfg(feature = "https")]
pub use https::HttpsStore;
pub use probe::{ConditionsError, check_conditions};
#[cfg(feature = "s3")]
pub use s3::S3Store;
pub use url::{StoreUrl, UrlError};

/// An object read from the store, with the ETag to compare-and-swap on.
#[derive(Debug, Clone)]
pub struct Object {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// An opaque version tag of these bytes.
    pub etag: String,
}

/// What a conditional get found.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The object still has the ETag the caller holds.
    NotModified,
    /// The object changed (or the caller held no ETag).
    Object(Object),
}

/// One page of [`WriteStore::list_page`].
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Keys of this page, sorted.
    pub keys: Vec<String>,
    /// Where the next page starts (pass it as `after`), or `None` after the last.
    pub next: Option<String>,
    /// The size in bytes of each key the store gave one for (gc's report).
    pub sizes: std::collections::HashMap<String, u64>,
}

/// A boxed error from a store's backend (an I/O error, an SDK error),
/// kept whole so its chain is printed and can be inspected.
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a caller does about a [`StoreError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Nothing there: the store is empty, or the key was never written.
    NotFound,
    /// May pass: retry later, with backoff.
    Transient,
    /// Will not pass by retrying: configuration, permissions, a conflict.
    Fatal,
}

/// Why a store operation failed.
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
        /// Its size (at least; a read stops just past the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A failure that may pass (I/O error, network, throttling).
    #[error("{key}: {source}")]
    Transient {
        /// The key.
        key: String,
        /// The backend's error.
        source: BackendError,
    },
    /// A failure that will not pass by retrying (permissions, bad credentials).
    #[error("{key}: {source}")]
    Fatal {
        /// The key.
        key: String,
        /// The backend's error.
        source: BackendError,
    },
    /// A key outside the store layout (empty, absolute, `..`).
    #[error("invalid store key {key:?}")]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// The URL names a store this build cannot open, or opens read-only.
    #[error("store {url}: {reason}")]
    Unsupported {
        /// The store's URL.
        url: StoreUrl,
        /// What is missing, and what to use instead.
        reason: &'static str,
    },
}

impl StoreError {
    /// What a caller does about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Transient { .. } => ErrorKind::Transient,
            StoreError::AlreadyExists { .. }
            | StoreError::PreconditionFailed { .. }
            | StoreError::TooLarge { .. }
            | StoreError::Fatal { .. }
            | StoreError::InvalidKey { .. }
            | StoreError::Unsupported { .. } => ErrorKind::Fatal,
        }
    }

    /// A transient error for `key` from an I/O error.
    pub fn io(key: &str, source: std::io::Error) -> Self {
        StoreError::Transient {
            key: key.to_owned(),
            source: Box::new(source),
        }
    }
}

/// What an agent (or any reader) needs of a store.
pub trait ReadStore: Send + Sync {
    /// The store's URL, for logs and `/v1/snapshot`.
    fn url(&self) -> &StoreUrl;

    /// Reads `key`, refusing objects over `max_bytes`.
    fn get(&self, key: &str, max_bytes: u64) -> Result<Object, StoreError> {
        match self.get_if_changed(key, None, max_bytes)? {
            Fetched::Object(obj) => Ok(obj),
            Fetched::NotModified => Err(StoreError::Fatal {
                key: key.to_owned(),
                source: "the store answered 304 Not Modified to an unconditional read".into(),
            }),
        }
    }

    /// Reads `key` unless its ETag is still `etag`: an idle poll of an
    /// unchanged pointer moves no body (a 304 on S3 and HTTPS).
    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError>;

    /// Reads the bytes `range` of `key` (a bundle's frame, for a reader
    /// that fetches only what changed). A range past the end is an error.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError>;

    /// Streams `key` into `out`, refusing objects over `max_bytes`, and
    /// returns the number of bytes written. For bundles: memory stays flat
    /// whatever the bundle's size.
    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError>;

    /// Reads `keys` (each refused past its own limit), up to `parallel`
    /// at once, and hands each body to `done` in `keys`' order until
    /// `done` returns `false`; up to `ahead` may be read and not yet
    /// handed over (so one slow read does not stop the others). The
    /// default reads one after another on the calling thread; S3 and
    /// HTTPS run the reads as tasks of their runtime (see
    /// [`ReadStore::reads_concurrently`]).
    fn get_each(
        &self,
        keys: &mut dyn Iterator<Item = (String, u64)>,
        parallel: usize,
        ahead: usize,
        done: &mut dyn FnMut(Result<Vec<u8>, StoreError>) -> bool,
    ) {
        let _ = (parallel, ahead);
        for (key, max_bytes) in keys {
            if !done(self.get(&key, max_bytes).map(|o| o.bytes)) {
                return;
            }
        }
    }

    /// Whether [`ReadStore::get_each`] runs its reads at once. A caller
    /// that wants many objects from a store that does not (the file
    /// store, whose reads are system calls) reads on threads of its own.
    fn reads_concurrently(&self) -> bool {
        false
    }
}

/// What a publisher adds: writes that never lose a version.
pub trait WriteStore: ReadStore {
    /// Creates `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// Replaces `key` only if its current ETag is `expected` (`None`: only if
    /// it does not exist). Returns the new ETag.
    fn put_if(&self, key: &str, bytes: &[u8], expected: Option<&str>)
    -> Result<String, StoreError>;

    /// One page of the keys under `prefix`, sorted, starting after `after`.
    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError>;

    /// Removes `key`; removing a missing key is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Whether this implementation enforces `put_new` and `put_if`'s
    /// conditions itself (a local directory: `O_EXCL` and a rename under a
    /// lock), so that no server or proxy in between can drop them and
    /// [`check_conditions`] has nothing to find out.
    fn enforces_conditions_locally(&self) -> bool {
        false
    }
}

/// Every key under `prefix`, sorted, through as many pages as there are.
pub fn list(store: &dyn WriteStore, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_page(prefix, after.as_deref())?;
        keys.extend(page.keys);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(keys),
        }
    }
}

/// Opens a store for reading: what an agent follows. `ca_file`, for an
/// `https://` mirror, replaces the platform's CA certificates.
pub fn open_read(
    url: &StoreUrl,
    ca_file: Option<&std::path::Path>,
) -> Result<Box<dyn ReadStore>, StoreError> {
    open_read_within(url, ca_file, None)
}

/// [`open_read`], with every read of an S3 or HTTPS store given up after
/// `deadline` in all (a file store's reads are local and cannot be cut).
pub fn open_read_within(
    url: &StoreUrl,
    ca_file: Option<&std::path::Path>,
    deadline: Option<std::time::Duration>,
) -> Result<Box<dyn ReadStore>, StoreError> {
    match url {
        StoreUrl::File(path) => Ok(Box::new(FileStore::new(path)?)),
        #[cfg(feature = "s3")]
        StoreUrl::S3 { .. } => {
            let store = S3Store::new(url)?;
            Ok(Box::new(match deadline {
                Some(d) => store.with_deadline(d),
                None => store,
            }))
        }
        #[cfg(feature = "https")]
        StoreUrl::Https(_) => {
            let store = HttpsStore::new(url, ca_file)?;
            Ok(Box::new(match deadline {
                Some(d) => store.with_deadline(d),
                None => store,
            }))
        }
        #[allow(unreachable_patterns)]
        _ => {
            let _ = (ca_file, deadline);
            Err(not_built(url))
        }
    }
}

/// Opens a store for writing: what a publisher moves.
pub fn open_write(url: &StoreUrl) -> Result<Box<dyn WriteStore>, StoreError> {
    match url {
        StoreUrl::File(path) => {
            let store = FileStore::new(path)?;
            store.check_layout()?;
            Ok(Box::new(store))
        }
        StoreUrl::Https(_) => Err(StoreError::Unsupported {
            url: url.clone(),
            reason: "an https:// mirror is read-only; publish to the s3:// or file:// store it mirrors",
        }),
        #[cfg(feature = "s3")]
        StoreUrl::S3 { .. } => Ok(Box::new(S3Store::new(url)?)),
        #[allow(unreachable_patterns)]
        _ => Err(not_built(url)),
    }
}

fn not_built(url: &StoreUrl) -> StoreError {
    StoreError::Unsupported {
        url: url.clone(),
        reason: "this build was made without the cargo feature for this scheme (s3, https)",
    }
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
    store: &dyn ReadStore,
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
