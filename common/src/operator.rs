//! What operators do to a store besides publishing: pin a region to a
//! version and unpin it, re-sign a channel pointer with a fresh expiry
//! (refresh), publish an old version's content as the channel's next
//! version (rollback); `gc` is its own module. The publisher's commands of
//! the same names are thin wrappers.
//!
//! Pins are signed by operator keys and rollbacks by publisher keys, so a
//! stolen CI key cannot pin a region and a stolen operator key cannot
//! author content: agents check each document against its own role.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::bundle::{self, BundleError, Header, Limits, Payload, SignatureCheck};
use crate::channel::{self, PublishError, PublishOptions, Published};
use crate::compile::Compiled;
use crate::layout::{self, BadName, Document};
use crate::model::SnapshotVersion;
use crate::pointer::{Pointer, PointerKind};
use crate::sign::{KeyId, TrustedKeys};
use crate::store::{self, ErrorKind, ReadStore, StoreError, WriteStore};
use crate::time;

/// Why an operator command changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The version asked for has no bundle in the store.
    #[error(
        "{key} is not in the store; `strata-publisher list --store URL` shows the versions there"
    )]
    Missing {
        /// The bundle's key.
        key: String,
    },
    /// The bundle does not verify.
    #[error("{key}: {source}")]
    Bundle {
        /// The bundle's key.
        key: String,
        /// Why.
        source: BundleError,
    },
    /// The bundle under a version's key holds another version.
    #[error("{key} holds version {found}, not {expected}: the store was tampered with")]
    WrongVersion {
        /// The bundle's key.
        key: String,
        /// The version asked for.
        expected: u64,
        /// The manifest's version.
        found: u64,
    },
    /// A region or channel name that cannot be a store key.
    #[error(transparent)]
    BadName(#[from] BadName),
    /// The channel has no pointer to refresh.
    #[error("{key} does not exist; publish first")]
    NoPointer {
        /// The pointer's key.
        key: String,
    },
    /// Someone else wrote the document between this command's read and write.
    #[error("{key} changed while this command ran; nothing was written, run it again")]
    Raced {
        /// The document's key.
        key: String,
    },
    /// A pointer or pin that cannot be parsed: gc cannot tell what it
    /// references, so it deletes nothing.
    #[error(
        "{key}: {reason}; gc deletes nothing while it cannot tell what every pointer and pin references: fix or remove it"
    )]
    Unreadable {
        /// The document's key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The store does not honour conditional writes.
    #[error(transparent)]
    Conditions(#[from] store::ConditionsError),
    /// Publishing (rollback) or reading the channel failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// A temporary file could not be written or read.
    #[error("temporary copy of {key}: {source}")]
    Spool {
        /// The bundle's key.
        key: String,
        /// Why.
        source: std::io::Error,
    },
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
    /// The pin in place was signed after this machine's clock.
    #[error(
        "{key} was signed at {created_at}, ahead of this machine's clock: a new pin must be signed later, or agents refuse it as a replay; check the clocks"
    )]
    PinInFuture {
        /// The pin's key.
        key: String,
        /// Its `created_at`.
        created_at: String,
    },
    /// A pin signed with a key that signs channel pointers.
    #[error(
        "key {key_id} signs {pointer}: it is a publisher key, and agents refuse pins it signs; pin with an operator key"
    )]
    WrongRole {
        /// The key's id.
        key_id: String,
        /// A channel pointer it signed.
        pointer: String,
    },
    /// A refresh would drop a trusted key's signature from the pointer.
    #[error(
        "{key} is signed by key(s) {} too, which this refresh does not hold: re-signing without them would drop their signatures, and nodes that trust only them would refuse the channel. Pass those keys as well (--key), or --drop-signers if they are retired and no node trusts only them",
        dropped.join(", ")
    )]
    WouldDropSigners {
        /// The pointer's key.
        key: String,
        /// The key ids that would be dropped.
        dropped: Vec<String>,
    },
    /// The store holds bundles newer than the pointer to refresh.
    #[error(
        "{key} names version {version}, but the store holds {newest}: the pointer may be an old one put back; publish (or rollback) instead, or pass --force if an abandoned upload left {newest}"
    )]
    NewerBundles {
        /// The pointer's key.
        key: String,
        /// Its version.
        version: u64,
        /// The newest bundle's key.
        newest: String,
    },
}

impl OperatorError {
    /// Whether the bundle itself is gone or damaged in the store (not a
    /// store or local disk that failed this time): a publish may replace
    /// it without the checks against it, since nothing else can.
    pub fn is_damage(&self) -> bool {
        match self {
            OperatorError::Missing { .. } | OperatorError::WrongVersion { .. } => true,
            OperatorError::Bundle { source, .. } => !matches!(source, BundleError::Io(_)),
            // Not a regular file, over the size limit: no retry mends it.
            OperatorError::Store(e) => e.kind() != ErrorKind::Transient,
            _ => false,
        }
    }
}

/// A bundle copied out of the store into a private temporary file and
/// verified: its header, size and SHA-256.
pub struct StoredBundle {
    /// The private copy.
    pub file: File,
    /// The verified header.
    pub header: Header,
    /// The file's size.
    pub size: u64,
    /// The file's SHA-256.
    pub sha256: String,
}

impl StoredBundle {
    /// The payload's bytes, exactly as signed.
    pub fn payload(&mut self, key: &str) -> Result<Vec<u8>, OperatorError> {
        let spool = |source| OperatorError::Spool {
            key: key.to_owned(),
            source,
        };
        self.file
            .seek(SeekFrom::Start(self.header.payload_offset))
            .map_err(spool)?;
        let mut payload = Vec::new();
        (&self.file)
            .take(self.header.manifest.payload_size)
            .read_to_end(&mut payload)
            .map_err(spool)?;
        Ok(payload)
    }

    /// The snapshot's tenants and routes, read from the private copy (and,
    /// for a format 3 root, the objects it names in `store`).
    pub fn reader<'s>(
        &self,
        store: &'s dyn ReadStore,
        key: &str,
        limits: &Limits,
    ) -> Result<Box<dyn bundle::Frames + 's>, OperatorError> {
        let refused = |source| OperatorError::Bundle {
            key: key.to_owned(),
            source,
        };
        let mut file = self
            .file
            .try_clone()
            .map_err(|source| OperatorError::Spool {
                key: key.to_owned(),
                source,
            })?;
        file.seek(SeekFrom::Start(0))
            .map_err(|source| OperatorError::Spool {
                key: key.to_owned(),
                source,
            })?;
        let verified = bundle::verify(
            BufReader::new(file),
            SignatureCheck::SkipForInspection,
            limits,
        )
        .map_err(refused)?;
        crate::bundle::tree::frames_of(
            verified,
            crate::bundle::tree::read::ObjectSource::Store(store),
            limits,
        )
        .map_err(refused)
    }
}

/// Copies `snapshots/<version>.bundle` into a temporary file and verifies it
/// (signatures too, when `check` holds keys): what a pin or a rollback is
/// about to name must be there and whole.
pub fn fetch_bundle(
    store: &dyn ReadStore,
    version: u64,
    check: SignatureCheck<'_>,
    limits: &Limits,
) -> Result<StoredBundle, OperatorError> {
    let key = SnapshotVersion(version).bundle_key();
    let spool = |source| OperatorError::Spool {
        key: key.clone(),
        source,
    };
    let mut file = tempfile::tempfile().map_err(spool)?;
    let copied = match store::copy_hashed(store, &key, limits.max_bundle_bytes, &mut file) {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(OperatorError::Missing { key }),
        Err(e) => return Err(e.into()),
    };
    file.seek(SeekFrom::Start(0)).map_err(spool)?;
    let verified = bundle::verify(BufReader::new(&file), check, limits).map_err(|source| {
        OperatorError::Bundle {
            key: key.clone(),
            source,
        }
    })?;
    let header = verified.header;
    if header.manifest.version != version {
        return Err(OperatorError::WrongVersion {
            key,
            expected: version,
            found: header.manifest.version,
        });
    }
    Ok(StoredBundle {
        file,
        header,
        size: copied.size,
        sha256: copied.sha256,
    })
}

/// Writes `bytes` at `key` if it still has the ETag it was read with.
/// Signs `pointer` with `keys` and writes it at `key` over `current` (by
/// compare-and-swap, on a store checked to honour conditions); returns the
/// file written.
fn sign_over(
    store: &dyn WriteStore,
    key: &str,
    pointer: &Pointer,
    keys: &[SigningKey],
    current: Option<&Document>,
) -> Result<Vec<u8>, OperatorError> {
    let signed = pointer
        .sign(keys)
        .map_err(|e| OperatorError::Sign(e.to_string()))?;
    store::check_conditions(store)?;
    write_if(store, key, &signed, current.map(|doc| doc.etag.as_str()))?;
    Ok(signed)
}

fn write_if(
    store: &dyn WriteStore,
    key: &str,
    bytes: &[u8],
    etag: Option<&str>,
) -> Result<(), OperatorError> {
    match store.put_if(key, bytes, etag.filter(|e| !e.is_empty())) {
        Ok(_) => Ok(()),
        Err(StoreError::PreconditionFailed { .. } | StoreError::AlreadyExists { .. }) => {
            Err(OperatorError::Raced {
                key: key.to_owned(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Pins `region` to `version`, signed by the operator `keys`, valid for
/// `expires_in`. The bundle must be in the store and whole (and signed by
/// `publishers`, when given). The pin's `created_at` is after any pin it
/// replaces (the command waits up to a second for its clock to pass it):
/// agents refuse a pin older than the one they follow.
pub fn pin(
    store: &dyn WriteStore,
    region: &str,
    version: u64,
    keys: &[SigningKey],
    publishers: Option<&TrustedKeys>,
    expires_in: Duration,
) -> Result<Pointer, OperatorError> {
    layout::check_name("region", region)?;
    refuse_publisher_keys(store, keys)?;
    let check = publishers.map_or(SignatureCheck::SkipForInspection, SignatureCheck::Trusted);
    let stored = fetch_bundle(store, version, check, &Limits::agents())?;
    let key = PointerKind::Pin.store_key(region);
    let current = layout::read(store, &key)?;
    if let Some(before) = current
        .as_ref()
        .and_then(|doc| Pointer::parse_unverified(&doc.bytes).ok())
        .and_then(|p| time::parse_exact(&p.created_at).ok())
        && !wait_past(before)
    {
        return Err(OperatorError::PinInFuture {
            key: key.clone(),
            created_at: time::format(before),
        });
    }
    let now = time::now();
    let pointer = Pointer {
        kind: PointerKind::Pin,
        name: region.to_owned(),
        version,
        bundle: SnapshotVersion(version).bundle_key(),
        bundle_sha256: stored.sha256,
        bundle_size: stored.size,
        created_at: time::format(now),
        expires_at: time::format(now + expires_in),
        tenants: Some(stored.header.manifest.tenant_count),
    };
    let signed = sign_over(store, &key, &pointer, keys, current.as_ref())?;
    // A gc that read the pins before this one was written may have
    // deleted the bundle meanwhile: a pin to nothing would send the
    // region's nodes to `bundle_missing`, so it is taken back.
    if let Err(e) = store.get_range(&pointer.bundle, 0..1)
        && e.kind() == ErrorKind::NotFound
    {
        let restored = match &current {
            Some(before) => layout::read(store, &key)?
                .filter(|now| now.bytes == signed)
                .map(|now| write_if(store, &key, &before.bytes, Some(&now.etag)))
                .transpose()
                .map(drop),
            None => store.delete(&key).map_err(OperatorError::from),
        };
        restored?;
        return Err(OperatorError::Missing {
            key: pointer.bundle,
        });
    }
    Ok(pointer)
}

/// Refuses to pin with a key that signs a channel pointer in the store: a
/// publisher key, whose pin every agent would refuse (freezing the region
/// on what it serves).
fn refuse_publisher_keys(store: &dyn WriteStore, keys: &[SigningKey]) -> Result<(), OperatorError> {
    let ids: Vec<KeyId> = keys.iter().map(|k| KeyId::of(&k.verifying_key())).collect();
    for key in store::list(store, layout::CHANNELS)? {
        if !key.ends_with(".json") {
            continue;
        }
        let Some(Document { bytes, .. }) = layout::read(store, &key)? else {
            continue;
        };
        if let Some(id) = Pointer::signer_ids(&bytes)
            .into_iter()
            .find(|i| ids.contains(i))
        {
            return Err(OperatorError::WrongRole {
                key_id: id.0,
                pointer: key,
            });
        }
    }
    Ok(())
}

/// What [`unpin`] found at the region's pin key.
#[derive(Debug)]
pub enum Unpinned {
    /// A pin, now replaced by the unpin.
    Was(Pointer),
    /// No pin (none, or gone): the unpin is written all the same, so that
    /// agents that followed a pin which disappeared let go of it now.
    NoPin,
    /// An earlier unpin, or a file that is no pin: replaced by a fresh
    /// unpin (an old unpin put back over a pin is refused by agents as a
    /// replay; a new one, signed now, is not).
    Replaced,
}

/// Ends `region`'s pin: writes the region's unpin, signed by `keys`
/// (operator keys, as for a pin), over whatever is at the pin's key. Its
/// agents follow the channel again. A pin file that merely disappears is
/// not an unpin: agents keep a verified pin until it expires.
pub fn unpin(
    store: &dyn WriteStore,
    region: &str,
    keys: &[SigningKey],
) -> Result<Unpinned, OperatorError> {
    layout::check_name("region", region)?;
    refuse_publisher_keys(store, keys)?;
    let key = PointerKind::Unpin.store_key(region);
    let current = layout::read(store, &key)?;
    let before = current
        .as_ref()
        .and_then(|doc| Pointer::parse_unverified(&doc.bytes).ok());
    // Always a fresh unpin, signed by every key given: whatever is there
    // (an unpin replayed over a newer pin, one short of a threshold's
    // signatures, a forgery) agents may refuse.
    // Agents refuse a pin or unpin signed before the one they follow
    // (a replay): signing times are whole seconds, so sign past the pin's.
    if let Some(t) = before
        .as_ref()
        .and_then(|p| time::parse_exact(&p.created_at).ok())
        && !wait_past(t)
    {
        return Err(OperatorError::PinInFuture {
            key: key.clone(),
            created_at: time::format(t),
        });
    }
    let unpin = Pointer::unpin(region, time::now());
    sign_over(store, &key, &unpin, keys, current.as_ref())?;
    // A pin made next must be signed after this unpin.
    if let Ok(t) = time::parse_exact(&unpin.created_at) {
        wait_past(t);
    }
    Ok(match (before, current) {
        (Some(pin), _) if pin.kind == PointerKind::Pin => Unpinned::Was(pin),
        (_, Some(_)) => Unpinned::Replaced,
        (_, None) => Unpinned::NoPin,
    })
}

/// Waits until this machine's clock, in whole seconds, is past `t` (a
/// signing time), so that what is signed next is strictly newer. Returns
/// false without waiting if that would take more than a few seconds: `t`
/// is in the future, and the clocks disagree.
fn wait_past(t: std::time::SystemTime) -> bool {
    const AT_MOST: Duration = Duration::from_secs(5);
    let after = t + Duration::from_secs(1);
    match after.duration_since(std::time::SystemTime::now()) {
        Err(_) => true,
        Ok(wait) if wait <= AT_MOST => {
            std::thread::sleep(wait);
            true
        }
        Ok(_) => false,
    }
}

/// Re-signs the channel pointer with a fresh expiry and nothing else
/// changed: agents serving its version take the new expiry without a
/// fetch. The pointer must verify with `trust` (publisher role), and no
/// bundle newer than it may be in the store (unless `force`: a publisher
/// that died after its upload leaves one).
pub fn refresh(
    store: &dyn WriteStore,
    channel_name: &str,
    keys: &[SigningKey],
    trust: &TrustedKeys,
    expires_in: Duration,
    force: bool,
    signers: Signers,
) -> Result<Pointer, OperatorError> {
    layout::check_name("channel", channel_name)?;
    let key = PointerKind::Channel.store_key(channel_name);
    let Some((current, etag, signed_by)) =
        Pointer::read_channel_signed(store, channel_name, trust).map_err(PublishError::from)?
    else {
        return Err(OperatorError::NoPointer { key });
    };
    // During a key rotation the pointer carries both keys' signatures: a
    // refresh holding only one would drop the other, and nodes that trust
    // only the other would refuse the channel.
    let holding: Vec<KeyId> = keys.iter().map(|k| KeyId::of(&k.verifying_key())).collect();
    let dropped: Vec<String> = signed_by
        .iter()
        .filter(|id| !holding.contains(id))
        .map(|id| id.0.clone())
        .collect();
    if signers == Signers::KeepAll && !dropped.is_empty() {
        return Err(OperatorError::WouldDropSigners { key, dropped });
    }
    // An older pointer put back by someone with write access to the store
    // must not be made fresh again.
    if !force
        && let Some(newest) = channel::list_versions(store)?
            .into_iter()
            .rfind(|v| v.0 > current.version)
    {
        return Err(OperatorError::NewerBundles {
            key,
            version: current.version,
            newest: newest.bundle_key(),
        });
    }
    let now = time::now();
    let pointer = Pointer {
        created_at: time::format(now),
        expires_at: time::format(now + expires_in),
        ..current
    };
    let signed = pointer
        .sign(keys)
        .map_err(|e| OperatorError::Sign(e.to_string()))?;
    store::check_conditions(store)?;
    write_if(store, &key, &signed, Some(&etag))?;
    Ok(pointer)
}

/// Whether a refresh may re-sign without a key that signs the pointer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Signers {
    /// Every trusted key that signs the pointer must sign again (the safe
    /// default: a rotation's two signatures are kept).
    #[default]
    KeepAll,
    /// Keys not given are dropped (a retired key, on purpose).
    DropMissing,
}

/// The version channel `name` serves and its [`tenant_count`], if read.
pub fn served_tenants(
    store: &dyn ReadStore,
    name: &str,
    trust: &TrustedKeys,
) -> Option<(u64, u64)> {
    let (pointer, _) = Pointer::read_channel(store, name, trust).ok()??;
    Some((pointer.version, tenant_count(store, &pointer)?))
}

/// The tenant count a verified `pointer` signs, or (earlier releases) its
/// bundle's manifest's: what guards removals over a damaged bundle.
pub fn tenant_count(store: &dyn ReadStore, pointer: &Pointer) -> Option<u64> {
    let manifest = || bundle::peek_manifest(store, &pointer.bundle).map(|m| m.tenant_count);
    pointer.tenants.or_else(manifest)
}

/// Publishes version `to`'s content as the channel's next version: history
/// stays linear, agents move forward to it, and nothing needs a pin. The
/// old bundle must verify with the signing keys or `opts.trusted`; the
/// tenants a rollback held there stay held.
pub fn rollback(
    store: &dyn WriteStore,
    to: u64,
    keys: &[SigningKey],
    opts: &PublishOptions,
) -> Result<Published, OperatorError> {
    let trust = TrustedKeys::for_publisher(keys, &opts.trusted);
    let check = SignatureCheck::Trusted(&trust);
    let mut stored = fetch_bundle(store, to, check, &Limits::agents())?;
    let key = SnapshotVersion(to).bundle_key();
    let compressed = stored.payload(&key)?;
    let m = &stored.header.manifest;
    let compiled = Compiled {
        payload: Payload {
            format: m.format,
            compressed,
            sha256: m.payload_sha256.clone(),
            index_size: m.index_size,
            routes_sha256: m.routes_sha256.clone(),
            raw_size: m.payload_raw_size,
            record_count: m.record_count,
        },
        objects: Default::default(),
        layer1_version: m.layer1_version.clone(),
        tenant_count: m.tenant_count,
        held_back: Vec::new(),
        warnings: Vec::new(),
        holds: m.held.clone(),
    };
    Ok(channel::publish(store, &compiled, keys, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gone_or_damaged_bundle_counts_as_damage_not_a_failure_this_time() {
        let key = || "snapshots/00000000000000000001.bundle".to_owned();
        let io = || std::io::Error::other("EIO");
        for (e, damage) in [
            (OperatorError::Missing { key: key() }, true),
            (
                OperatorError::WrongVersion {
                    key: key(),
                    expected: 1,
                    found: 2,
                },
                true,
            ),
            (
                OperatorError::Store(StoreError::TooLarge {
                    key: key(),
                    size: 2,
                    limit: 1,
                }),
                true,
            ),
            (OperatorError::Store(StoreError::io(&key(), io())), false),
            (
                OperatorError::Spool {
                    key: key(),
                    source: io(),
                },
                false,
            ),
            (
                OperatorError::Bundle {
                    key: key(),
                    source: BundleError::Io(io()),
                },
                false,
            ),
        ] {
            assert_eq!(e.is_damage(), damage, "{e}");
        }
    }
}
