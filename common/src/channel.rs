//! Channel operations, the library behind the publisher's store commands.
//! Publishing writes an immutable bundle under the next free version, then
//! moves the channel pointer to it with compare-and-swap.
//!
//! Two concurrent publishers can never lose or reuse a version: a bundle key
//! is claimed with a create-only put, and the pointer only moves forward from
//! the exact pointer the publisher read.

use std::time::{Duration, SystemTime};

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::bundle::{self, BundleError, MANIFEST_TYPE, Manifest, Provenance};
use crate::canonical::sha256_hex;
use crate::compile::Compiled;
use crate::layout;
use crate::model::SnapshotVersion;
use crate::pointer::{Pointer, PointerKind, PointerReadError};
use crate::sign::TrustedKeys;
use crate::store::{self, StoreError, WriteStore};
use crate::time;

/// Default lifetime of a bundle's signature.
pub const DEFAULT_BUNDLE_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Default lifetime of a channel pointer or pin.
pub const DEFAULT_POINTER_EXPIRY: Duration = Duration::from_secs(14 * 24 * 3600);
/// How long a publisher keeps trying while others keep moving the channel.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
/// How many compare-and-swaps on an unchanged pointer may be refused before
/// the store's ETags are blamed rather than other publishers.
const UNSTABLE_ETAG_TRIES: u32 = 5;
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
    /// The current pointer cannot be read or does not verify.
    #[error(transparent)]
    Pointer(#[from] PointerReadError),
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
    /// The store does not honour conditional writes.
    #[error(transparent)]
    Conditions(#[from] store::ConditionsError),
    /// Compare-and-swaps on a pointer nobody changed kept being refused.
    #[error(
        "{key}: the store refused {tries} compare-and-swaps in a row although nobody changed the pointer: its ETags change between reads (a proxy or CDN rewriting ETag, or a store that does not keep them stable); publish to the store directly, or fix the ETag handling in front of it; the uploaded bundle is left for gc"
    )]
    UnstableEtags {
        /// The pointer's key.
        key: String,
        /// How many were refused.
        tries: u32,
    },
    /// The pointer written was replaced by another write at once, although
    /// the store accepted this one's condition.
    #[error(
        "{key} holds other bytes right after this publish's conditional write succeeded: the store (or a proxy) does not honour If-Match, and a concurrent publish may have been lost; nothing more was written"
    )]
    LostWrite {
        /// The pointer's key.
        key: String,
    },
    /// The caller's check against the channel's current snapshot refused
    /// the publish (see [`publish_gated`]); nothing of it stays in the store.
    #[error("{0}")]
    Refused(String),
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
        format: compiled.payload.format,
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
        // A hold made by this publish (a rollback) is since this version.
        held: compiled
            .holds
            .iter()
            .map(|(t, h)| {
                let since = if h.since == 0 { version } else { h.since };
                (t.clone(), crate::bundle::Hold { since, ..h.clone() })
            })
            .collect(),
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
    /// Public keys, beside the signing keys' own, whose signature on the
    /// current pointer is trusted (the previous key, during a rotation).
    pub trusted: Vec<VerifyingKey>,
    /// Format 3: objects the store holds already (those of the channel's
    /// snapshot), not uploaded again.
    pub present: std::collections::HashSet<[u8; 32]>,
    /// Format 3: read back every object the store holds already, and write
    /// again one that is damaged (`publish --full`).
    pub repair: bool,
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
            trusted: Vec::new(),
            present: Default::default(),
            repair: false,
        }
    }
}

/// What a publish wrote.
#[derive(Debug, Clone)]
pub struct Published {
    /// The new pointer (version, bundle key, hash, size, expiry).
    pub pointer: Pointer,
    /// Tenants in the snapshot published.
    pub tenant_count: u64,
    /// Format 3: the objects uploaded, and those the store held already.
    pub uploaded: crate::bundle::tree::Uploaded,
}

/// Versions of every bundle in the store, ascending.
pub fn list_versions(store: &dyn WriteStore) -> Result<Vec<SnapshotVersion>, PublishError> {
    let mut v: Vec<_> = store::list(store, layout::SNAPSHOTS)?
        .iter()
        .filter_map(|k| SnapshotVersion::from_bundle_key(k))
        .collect();
    v.sort();
    Ok(v)
}

/// Publishes `compiled` as the channel's next version: the version after
/// the pointer's, so that concurrent publishers get consecutive versions.
///
/// The bundle key is claimed with a create-only put. Bundle keys are shared
/// by every channel, so a key may be held already: by a bundle another
/// channel's pointer names, or an old one (a publisher died between its two
/// writes), which this publisher skips at once; or by a bundle made within
/// [`PublishOptions::abandoned_after`] that no pointer names yet, whose
/// publisher is about to move this channel's pointer: this one then waits,
/// polling only the pointer, and takes the version after.
pub fn publish(
    store: &dyn WriteStore,
    compiled: &Compiled,
    keys: &[SigningKey],
    opts: &PublishOptions,
) -> Result<Published, PublishError> {
    publish_gated(store, compiled, keys, opts, &mut |_| Ok(()))
}

/// [`publish`], with `gate` asked about every channel head the new
/// version would follow (`None`: the channel has no pointer yet) before
/// the pointer moves past it: a check made against one head (the tenant
/// version discipline) holds for the version published. When another
/// publisher moves the channel first, `gate` is asked again about the new
/// head; when it refuses, its error is returned (naming the bundle this
/// publish had uploaded, if any: no pointer names it, and gc removes it).
pub fn publish_gated(
    store: &dyn WriteStore,
    compiled: &Compiled,
    keys: &[SigningKey],
    opts: &PublishOptions,
    gate: &mut dyn FnMut(Option<&Pointer>) -> Result<(), PublishError>,
) -> Result<Published, PublishError> {
    let kind = PointerKind::Channel;
    let pointer_key = kind.store_key(&opts.channel);
    let started = std::time::Instant::now();
    let trust = TrustedKeys::for_publisher(keys, &opts.trusted);
    let mut probed = false;
    let give_up = || -> Result<(), PublishError> {
        if started.elapsed() > GIVE_UP_AFTER {
            return Err(PublishError::Contention(GIVE_UP_AFTER));
        }
        Ok(())
    };
    // The lowest version this publisher may take: raised past held keys.
    let mut floor = 0u64;
    // The head `gate` passed (`Some(None)`: an empty channel).
    let mut gated: Option<Option<u64>> = None;
    // The bundle this publisher uploaded and no pointer names yet.
    let mut uploaded: Option<(u64, Vec<u8>)> = None;
    // Format 3 objects found in the store already that the channel's
    // snapshot does not reach: a gc may be deleting them.
    let mut uploaded_objects = crate::bundle::tree::Uploaded::default();
    loop {
        give_up()?;
        let current = Pointer::read_channel(store, &opts.channel, &trust)?;
        let head = current.as_ref().map(|(p, _)| p.version);
        let next = head
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(PublishError::VersionExhausted)?;
        let version = next.max(floor);
        // An upload of another version is left behind, named by no
        // pointer, for gc: deleting it would free its key for a bundle
        // of other bytes, which a mirror or a pin may have seen already.
        uploaded.take_if(|(v, _)| *v != version);
        if gated != Some(head) {
            if let Err(e) = gate(current.as_ref().map(|(p, _)| p)) {
                return Err(match (e, uploaded) {
                    (PublishError::Refused(why), Some((v, _))) => PublishError::Refused(format!(
                        "{why} (another publish moved the channel after this one uploaded {}: no pointer names it, and gc removes it)",
                        SnapshotVersion(v).bundle_key()
                    )),
                    (e, _) => e,
                });
            }
            gated = Some(head);
        }
        let bundle_key = SnapshotVersion(version).bundle_key();
        let (now, bytes) = match uploaded.take() {
            Some((_, bytes)) => (time::now(), bytes),
            None => {
                let now = time::now();
                let manifest = manifest(
                    compiled,
                    version,
                    now,
                    opts.bundle_expires_in,
                    &opts.provenance,
                );
                let bytes = bundle::write_bundle(&manifest, &compiled.payload.compressed, keys)?;
                // Right before the first write: a publish refused for any
                // other reason leaves the store untouched.
                if !probed {
                    store::check_conditions(store)?;
                    probed = true;
                    // Format 3: the objects first, so that the root (and
                    // then the pointer) never names one not yet there.
                    uploaded_objects = crate::bundle::tree::upload(
                        store,
                        &compiled.objects,
                        &opts.present,
                        opts.repair,
                    )?;
                }
                match store.put_new(&bundle_key, &bytes) {
                    Ok(()) => (now, bytes),
                    Err(StoreError::AlreadyExists { .. }) => {
                        let skip = version
                            .checked_add(1)
                            .ok_or(PublishError::VersionExhausted)?;
                        match held_by(store, version, opts.abandoned_after)? {
                            Held::Done => floor = skip,
                            Held::InFlight => {
                                // Wait for its publisher to move this channel past it.
                                let waiting = std::time::Instant::now();
                                let mut wait = Duration::from_millis(10);
                                loop {
                                    give_up()?;
                                    std::thread::sleep(wait);
                                    wait = (wait * 2).min(Duration::from_millis(500));
                                    let moved =
                                        Pointer::read_unverified(store, kind, &opts.channel)?
                                            .is_some_and(|(p, _)| p.version >= version);
                                    if moved {
                                        break;
                                    }
                                    if waiting.elapsed() > opts.abandoned_after {
                                        floor = skip;
                                        break;
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let pointer = Pointer {
            kind,
            name: opts.channel.clone(),
            version,
            bundle: bundle_key,
            bundle_sha256: sha256_hex(&bytes),
            bundle_size: bytes.len() as u64,
            created_at: time::format(now),
            expires_at: time::format(now + opts.pointer_expires_in),
            tenants: Some(compiled.tenant_count),
        };
        let signed = pointer
            .sign(keys)
            .map_err(|e| PublishError::Sign(e.to_string()))?;
        uploaded = Some((version, bytes));
        let head_pointer = current.as_ref().map(|(p, _)| p.clone());
        let mut expected = current.map(|(_, etag)| etag).filter(|e| !e.is_empty());
        let mut wait = Duration::from_millis(10);
        // Refusals of a pointer nobody changed: a store (or proxy) whose
        // ETags change between reads refuses every compare-and-swap.
        let mut refused_unchanged = 0u32;
        loop {
            give_up()?;
            match store.put_if(&pointer_key, &signed, expected.as_deref()) {
                Ok(_) => {
                    // Read back: a store that let another writer's bytes
                    // replace these ones has not kept its condition.
                    match layout::read(store, &pointer_key)? {
                        Some(doc) if doc.bytes == signed => {}
                        Some(doc)
                            if Pointer::parse_unverified(&doc.bytes)
                                .is_ok_and(|p| p.version > version) => {}
                        _ => {
                            return Err(PublishError::LostWrite {
                                key: pointer_key.clone(),
                            });
                        }
                    }
                    crate::bundle::tree::restore(
                        store,
                        &compiled.objects,
                        &uploaded_objects.revived,
                    )?;
                    return Ok(Published {
                        pointer,
                        tenant_count: compiled.tenant_count,
                        uploaded: uploaded_objects,
                    });
                }
                Err(StoreError::PreconditionFailed { .. }) => {
                    // The pointer changed: re-signed at the head `gate`
                    // passed, or by this very write whose answer was lost
                    // and retried: follow it. Moved anywhere else (another
                    // publisher's version): start again from the new head,
                    // which `gate` is asked about.
                    match layout::read(store, &pointer_key) {
                        Ok(Some(obj)) if obj.bytes == signed => {
                            crate::bundle::tree::restore(
                                store,
                                &compiled.objects,
                                &uploaded_objects.to_check(),
                            )?;
                            return Ok(Published {
                                pointer,
                                tenant_count: compiled.tenant_count,
                                uploaded: uploaded_objects,
                            });
                        }
                        Ok(Some(obj)) => match Pointer::parse_unverified(&obj.bytes) {
                            Ok(p) if p.version < version && gated == Some(Some(p.version)) => {
                                if head_pointer.as_ref() == Some(&p) {
                                    refused_unchanged += 1;
                                    if refused_unchanged >= UNSTABLE_ETAG_TRIES {
                                        return Err(PublishError::UnstableEtags {
                                            key: pointer_key.clone(),
                                            tries: refused_unchanged,
                                        });
                                    }
                                }
                                expected = Some(obj.etag).filter(|e| !e.is_empty());
                            }
                            _ => break,
                        },
                        Ok(None) if gated == Some(None) => {
                            expected = None;
                        }
                        Ok(None) => break,
                        Err(e) => return Err(e.into()),
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Who holds a bundle key a create-only put found taken.
enum Held {
    /// A bundle some channel's pointer names, or an old or unreadable one:
    /// never this channel's next version.
    Done,
    /// A bundle made moments ago that no pointer names yet: its publisher
    /// is about to move a pointer to it.
    InFlight,
}

/// Decides who holds `snapshots/<version>`: only a scheduling decision (the
/// version numbers stay unique whatever it says), so pointers and the
/// bundle's header are read without verifying them.
fn held_by(
    store: &dyn WriteStore,
    version: u64,
    fresh_for: Duration,
) -> Result<Held, PublishError> {
    for key in store::list(store, layout::CHANNELS)? {
        let named = layout::read(store, &key)
            .ok()
            .flatten()
            .and_then(|obj| Pointer::parse_unverified(&obj.bytes).ok())
            .is_some_and(|p| p.version == version);
        if named {
            return Ok(Held::Done);
        }
    }
    let created = bundle::peek_manifest(store, &SnapshotVersion(version).bundle_key())
        .and_then(|m| time::parse_exact(&m.created_at).ok());
    let fresh = created.is_some_and(|t| {
        time::now()
            .duration_since(t)
            .map_or(true, |age| age <= fresh_for)
    });
    Ok(if fresh { Held::InFlight } else { Held::Done })
}
