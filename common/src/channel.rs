//! Channel operations, the library behind the publisher's store commands.
//! Publishing writes an immutable bundle under the next free version, then
//! moves the channel pointer to it with compare-and-swap.
//!
//! Two concurrent publishers can never lose or reuse a version: a bundle key
//! is claimed with a create-only put, and the pointer only moves forward from
//! the exact pointer the publisher read.

use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;

use crate::bundle::{self, BundleError, FORMAT_VERSION, MANIFEST_TYPE, Manifest, Provenance};
use crate::canonical::sha256_hex;
use crate::compile::Compiled;
use crate::model::SnapshotVersion;
use crate::pointer::{Pointer, PointerKind};
use crate::store::{self, ErrorKind, ReadStore, StoreError, WriteStore};
use crate::time;
use crate::verify::MAX_POINTER_BYTES;

/// Default lifetime of a bundle's signature.
pub const DEFAULT_BUNDLE_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a channel pointer or pin.
pub const DEFAULT_POINTER_EXPIRY: Duration = Duration::from_secs(14 * 24 * 3600);
/// How long a publisher keeps trying while others keep moving the channel.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
/// How long a bundle key may be held by a bundle no pointer names before a
/// publisher takes the version after it.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(10);

/// Why a publish failed. Nothing is half-written: a bundle is either absent
/// or complete, and the pointer either moved or did not.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The bundle could not be built.
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The current pointer cannot be read.
    #[error("{key}: {reason}; fix or remove it before publishing")]
    BadPointer {
        /// The pointer's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Other publishers kept winning the race for this long.
    #[error("gave up after {0:?}: other publishers kept moving the channel; try again")]
    Contention(Duration),
    /// The channel is at the largest version there is.
    #[error(
        "the channel's pointer is at the largest version there is (2^64 - 1); no version can follow it"
    )]
    VersionExhausted,
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}

/// The manifest of a bundle built from `compiled`.
pub fn manifest(
    compiled: &Compiled,
    version: u64,
    now: SystemTime,
    expires_in: Duration,
    provenance: &Provenance,
) -> Manifest {
    Manifest {
        kind: MANIFEST_TYPE.to_owned(),
        format: FORMAT_VERSION,
        version,
        created_at: time::format(now),
        expires_at: time::format(now + expires_in),
        layer1_version: compiled.layer1_version.clone(),
        tenant_count: compiled.tenant_count,
        record_count: compiled.payload.record_count,
        payload_size: compiled.payload.compressed.len() as u64,
        index_size: compiled.payload.index_size,
        routes_sha256: compiled.payload.routes_sha256.clone(),
        payload_raw_size: compiled.payload.raw_size,
        payload_sha256: compiled.payload.sha256.clone(),
        provenance: provenance.clone(),
    }
}

/// Options of [`publish`].
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The channel to move.
    pub channel: String,
    /// Lifetime of the bundle's signature.
    pub bundle_expires_in: Duration,
    /// Lifetime of the pointer's signature.
    pub pointer_expires_in: Duration,
    /// Recorded in the manifest.
    pub provenance: Provenance,
    /// How long a bundle key may be held by a bundle no pointer names
    /// before this publisher takes the version after it.
    pub abandoned_after: Duration,
}

impl PublishOptions {
    /// The defaults for `channel`: bundles valid 365 days, pointers 14,
    /// no provenance, abandoned keys skipped after [`ABANDONED_AFTER`].
    pub fn for_channel(channel: impl Into<String>) -> Self {
        Self {
            channel: channel.into(),
            bundle_expires_in: DEFAULT_BUNDLE_EXPIRY,
            pointer_expires_in: DEFAULT_POINTER_EXPIRY,
            provenance: Provenance::default(),
            abandoned_after: ABANDONED_AFTER,
        }
    }
}

/// What a publish wrote.
#[derive(Debug, Clone)]
pub struct Published {
    /// The new pointer (version, bundle key, hash, size, expiry).
    pub pointer: Pointer,
}

/// Reads the pointer `kind`/`name` without verifying it, with its ETag.
pub fn read_pointer(
    store: &dyn ReadStore,
    kind: PointerKind,
    name: &str,
) -> Result<Option<(Pointer, String)>, PublishError> {
    let key = kind.store_key(name);
    match store.get(&key, MAX_POINTER_BYTES) {
        Ok(obj) => {
            let p =
                Pointer::parse_unverified(&obj.bytes).map_err(|e| PublishError::BadPointer {
                    key,
                    reason: e.to_string(),
                })?;
            Ok(Some((p, obj.etag)))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Versions of every bundle in the store, ascending.
pub fn list_versions(store: &dyn WriteStore) -> Result<Vec<SnapshotVersion>, PublishError> {
    let mut v: Vec<_> = store::list(store, "snapshots/")?
        .iter()
        .filter_map(|k| SnapshotVersion::from_bundle_key(k))
        .collect();
    v.sort();
    Ok(v)
}

/// Publishes `compiled` as the channel's next version: the version after
/// the pointer's, so that concurrent publishers get consecutive versions.
///
/// The bundle key is claimed with a create-only put. If another publisher
/// holds it, that publisher is about to move the pointer to it: this one
/// waits for the pointer to move and takes the version after. A key held
/// for [`PublishOptions::abandoned_after`] by a bundle no pointer names (a
/// publisher died between its two writes) is skipped, leaving that version
/// unused.
pub fn publish(
    store: &dyn WriteStore,
    compiled: &Compiled,
    keys: &[SigningKey],
    opts: &PublishOptions,
) -> Result<Published, PublishError> {
    let kind = PointerKind::Channel;
    let pointer_key = kind.store_key(&opts.channel);
    let started = std::time::Instant::now();
    // The lowest version this publisher may take: raised past abandoned keys.
    let mut floor = 0u64;
    let mut blocked: Option<(u64, std::time::Instant)> = None;
    let mut wait = Duration::from_millis(10);
    loop {
        if started.elapsed() > GIVE_UP_AFTER {
            return Err(PublishError::Contention(GIVE_UP_AFTER));
        }
        let current = read_pointer(store, kind, &opts.channel)?;
        let next = current
            .as_ref()
            .map_or(0, |(p, _)| p.version)
            .checked_add(1)
            .ok_or(PublishError::VersionExhausted)?;
        let version = next.max(floor);
        let now = time::now();
        let manifest = manifest(
            compiled,
            version,
            now,
            opts.bundle_expires_in,
            &opts.provenance,
        );
        let bytes = bundle::write_bundle(&manifest, &compiled.payload.compressed, keys)?;
        let bundle_key = SnapshotVersion(version).bundle_key();
        match store.put_new(&bundle_key, &bytes) {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                // Held by another publisher, which moves the pointer next;
                // or abandoned, if the pointer never gets there.
                match blocked {
                    Some((v, since)) if v == version && since.elapsed() > opts.abandoned_after => {
                        floor = version
                            .checked_add(1)
                            .ok_or(PublishError::VersionExhausted)?;
                        blocked = None;
                    }
                    Some((v, _)) if v == version => {}
                    _ => blocked = Some((version, std::time::Instant::now())),
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(500));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let pointer = Pointer {
            kind,
            name: opts.channel.clone(),
            version,
            bundle: bundle_key,
            bundle_sha256: sha256_hex(&bytes),
            bundle_size: bytes.len() as u64,
            created_at: time::format(now),
            expires_at: time::format(now + opts.pointer_expires_in),
        };
        let signed = pointer
            .sign(keys)
            .map_err(|e| PublishError::Sign(e.to_string()))?;
        let mut expected = current.map(|(_, etag)| etag);
        loop {
            match store.put_if(&pointer_key, &signed, expected.as_deref()) {
                Ok(_) => return Ok(Published { pointer }),
                Err(StoreError::PreconditionFailed { .. }) => {
                    // The pointer changed (re-signed, or moved by a publisher
                    // that skipped an abandoned key). Follow it while it is
                    // still behind this version; otherwise start again.
                    match read_pointer(store, kind, &opts.channel)? {
                        Some((p, etag)) if p.version < version => expected = Some(etag),
                        _ => break,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
