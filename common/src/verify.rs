//! The verification pipeline: everything between "the store has a channel
//! pointer" and "this payload may be stored", in one ordered place. The
//! agent runs it on every check; `strata-publisher inspect --store` runs it
//! with the same keys and limits to show an operator what agents will do.
//!
//! 1. read the document that names the version ([`read_document`]): the
//!    node's local pin if it has one, else its region's pin if the store
//!    holds one, else the channel pointer — a [`Source`];
//! 2. the document: canonical JSON, exact timestamps, the expected channel
//!    or region, signed by a threshold of trusted keys of its role
//!    (publisher for the channel, operator for a pin); a pin must also be
//!    signed no earlier than the last pin this node followed or retired
//!    (a replayed older pin is refused);
//! 3. its expiry;
//! 4. its version: a channel pointer below the node's high-water mark (the
//!    highest version it accepted from the channel) is refused, only a pin
//!    may go back; the version served is up to date, a version still
//!    stored locally is switched to without a fetch, and a different bundle
//!    under either version is refused;
//! 5. the bundle's size against the limit;
//! 6. copy the bundle (bounded by the pointer's size) into a private spool
//!    file, hashing it on the way: size and SHA-256 must be the pointer's;
//! 7. the bundle header: canonical manifest, exact timestamps, publisher
//!    signatures, payload size limits, payload SHA-256, nothing after it;
//! 8. the manifest's version is the pointer's, and it has not expired;
//! 9. the payload, lazily: every rule of docs/FORMAT.md is checked on what
//!    is decoded ([`crate::bundle::PayloadReader`]); a consumer that stores
//!    the snapshot (the agent's ingest) decodes into one transaction and
//!    commits only if every record passed, [`Verified::check_payload`]
//!    decodes everything.
//!
//! Nothing is written anywhere but the spool file until all of it passed.
//! Every way to fail is one [`Refusal`] variant; its [`Refusal::reason`] is
//! the metrics label and the `/v1/snapshot` reason.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::SystemTime;

use crate::bundle::{self, BundleError, Limits, Manifest, PayloadReader, SignatureCheck};
use crate::model::SnapshotVersion;
use crate::pointer::{Pointer, PointerError, PointerKind};
use crate::sign::{KeyId, SignatureEntry, TrustedKeys};
use crate::store::{ErrorKind, Fetched, ReadStore, StoreError};
use crate::time;

/// Pointers are small; anything larger is not a pointer.
pub const MAX_POINTER_BYTES: u64 = 64 * 1024;

/// What the verifier trusts and compares against: an agent's keys, channel,
/// region and limits, and what it serves and holds now.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Trusted keys by role, with thresholds.
    pub trust: &'a TrustedKeys,
    /// The channel followed.
    pub channel: &'a str,
    /// The node's region: the only pin it reads.
    pub region: &'a str,
    /// Size limits.
    pub limits: Limits,
    /// The time expiry is checked against.
    pub now: SystemTime,
    /// The version served now and its bundle's SHA-256, if any.
    pub served: Option<(u64, &'a str)>,
    /// Versions stored locally: a pin (or the channel, after an unpin)
    /// naming one is served without a fetch.
    pub retained: &'a [Stored],
    /// The highest version accepted from the channel: rollback protection.
    /// A channel pointer below it is refused; only a pin goes back.
    pub high_water: u64,
    /// Seconds since the epoch: a pin signed earlier is a replay (older than
    /// the pin this node follows, or the same as one it saw removed).
    pub pin_floor: u64,
}

/// A snapshot a node stores, as the pipeline compares with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its version.
    pub version: u64,
    /// Its bundle's SHA-256.
    pub bundle_sha256: String,
    /// Its bundle's own expiry (`expires_at` of the manifest): an expired
    /// one is not switched to.
    pub bundle_expires_at: String,
}

/// How far ahead of this node's clock a document may be signed: clocks
/// drift, but a pin signed far in the future would stay newer than every
/// pin after it and jam the region.
pub const MAX_CLOCK_AHEAD: std::time::Duration = std::time::Duration::from_secs(300);

/// The document that decides which version a node serves, in the order
/// they win: the node's own local pin, its region's pin, the channel.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The channel pointer file, signed by publishers.
    Channel(&'a [u8]),
    /// The region's pin file, signed by operators.
    Pin(&'a [u8]),
    /// The version this node's `pin_file` names: local, unsigned (whoever
    /// can write it is root on the node), and still served only from a
    /// bundle the publisher keys signed.
    Local(u64),
}

/// What named the version: the verified document, or the local pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// The channel pointer.
    Channel(Pointer),
    /// The region's pin.
    Pin(Pointer),
    /// This node's local pin.
    Local(u64),
}

impl Named {
    /// The version named.
    pub fn version(&self) -> u64 {
        match self {
            Named::Channel(p) | Named::Pin(p) => p.version,
            Named::Local(v) => *v,
        }
    }

    /// The signed pointer, unless this is a local pin.
    pub fn pointer(&self) -> Option<&Pointer> {
        match self {
            Named::Channel(p) | Named::Pin(p) => Some(p),
            Named::Local(_) => None,
        }
    }

    /// Whether a pin (region or local) named the version.
    pub fn is_pin(&self) -> bool {
        !matches!(self, Named::Channel(_))
    }

    /// The bundle's store key: the pointer's, or the version's own.
    pub fn bundle_key(&self) -> String {
        match self {
            Named::Channel(p) | Named::Pin(p) => p.bundle.clone(),
            Named::Local(v) => SnapshotVersion(*v).bundle_key(),
        }
    }
}

/// Where the document named by a [`Source`] lives, for messages.
fn source_key(source: &Source<'_>, policy: &Policy<'_>) -> String {
    match source {
        Source::Channel(_) => PointerKind::Channel.store_key(policy.channel),
        Source::Pin(_) => PointerKind::Pin.store_key(policy.region),
        Source::Local(_) => "pin_file".to_owned(),
    }
}

/// Whether a refusal means "nothing could be checked right now" (the node
/// serves what it has, unconfirmed: stale; checked again at the next poll)
/// or "the store offers something bad" (degraded; not fetched again until
/// the pointer changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Nothing to verify, or it cannot be fetched or stored: the store is
    /// empty or unreachable, the pointer expired, the local disk failed.
    Unavailable,
    /// The store offers something that failed verification.
    Refused,
}

/// Why a check applied nothing: one variant per reason, with its details.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The channel has no pointer yet.
    #[error("{store}: no {key} yet; waiting for a publish")]
    StoreEmpty {
        /// The store's URL.
        store: String,
        /// The pointer's key.
        key: String,
    },
    /// The store failed to answer.
    #[error("{store}: {source}")]
    StoreUnreachable {
        /// The store's URL.
        store: String,
        /// What failed.
        source: StoreError,
    },
    /// The pointer is not a valid document for this channel: malformed, not
    /// canonical, a bad timestamp, another channel, or not signed by a
    /// threshold of trusted publisher keys.
    #[error("{key}: {source}")]
    Pointer {
        /// The pointer's key.
        key: String,
        /// Why.
        source: PointerError,
    },
    /// The pointer or pin expired: nobody re-signed it in time.
    #[error("{key}: expired at {expires_at}; {}", expiry_fix(key))]
    PointerExpired {
        /// The pointer's key.
        key: String,
        /// Its expiry.
        expires_at: String,
    },
    /// The channel pointer names a version below the highest this node has
    /// accepted from the channel (a replayed older pointer).
    #[error(
        "{key} names version {version}, older than version {served}, the newest this node has accepted from a channel; refusing a rollback that no operator pin asked for. \
         An old pointer put back: publish (or `strata-publisher rollback`) to move the channel past {served}. \
         This node moved to another channel, or the store was rebuilt (versions start again): pin it to {version} (`pin_file`, or `strata-publisher pin` for the region) until the channel passes {served}, \
         or stop the agent, move strata.redb out of data_dir and start it again (it then fetches as a new node)"
    )]
    OlderVersion {
        /// The pointer's key.
        key: String,
        /// The version it names.
        version: u64,
        /// The high-water mark.
        served: u64,
    },
    /// A pin signed before the pin this node follows, or no later than one
    /// it saw removed: a replayed pin.
    #[error(
        "{key}: pin signed at {created_at}, before the last pin this node followed or saw removed; refusing a replayed pin (an operator pins again to move the region)"
    )]
    PinReplayed {
        /// The pin's key.
        key: String,
        /// Its `created_at`.
        created_at: String,
    },
    /// A pointer or pin signed more than [`MAX_CLOCK_AHEAD`] after this
    /// node's clock: a pin from the future would outrank every later one.
    #[error(
        "{key}: signed at {created_at}, ahead of this node's clock by more than 5 minutes; check the signer's and this node's clocks, then sign again"
    )]
    SignedInFuture {
        /// The document's key.
        key: String,
        /// Its `created_at`.
        created_at: String,
    },
    /// The bundle a pointer, pin or local pin names is not in the store.
    #[error("{bundle} is not in the store; pin a version `strata-publisher list` shows")]
    BundleMissing {
        /// The bundle's key.
        bundle: String,
    },
    /// The local pin file cannot be read or does not hold a version.
    #[error("{path}: {reason}; write one snapshot version (such as `42`) or remove the file")]
    LocalPin {
        /// The pin file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The pointer names the served version with another bundle.
    #[error("{key} names version {version} with a different bundle than the one served")]
    VersionConflict {
        /// The pointer's key.
        key: String,
        /// The version.
        version: u64,
    },
    /// The bundle is over `max_bundle_bytes`.
    #[error("{bundle}: {size} bytes, over max_bundle_bytes {limit}")]
    BundleTooLarge {
        /// The bundle's key.
        bundle: String,
        /// Its size, as the pointer declares it.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The bundle is not the one the signed pointer names.
    #[error(
        "{bundle}: {size} bytes with SHA-256 {sha256}, the signed pointer says {expected_size} bytes with {expected_sha256}: the bundle was altered or replaced"
    )]
    BundleHash {
        /// The bundle's key.
        bundle: String,
        /// Bytes found (at least: a read stops past the declared size).
        size: u64,
        /// Their SHA-256 (empty when the read stopped).
        sha256: String,
        /// The pointer's `bundle_size`.
        expected_size: u64,
        /// The pointer's `bundle_sha256`.
        expected_sha256: String,
    },
    /// The spool file could not be written or read.
    #[error("cannot spool {bundle} into {dir}: {source}")]
    Spool {
        /// The bundle's key.
        bundle: String,
        /// The spool directory.
        dir: String,
        /// Why.
        source: std::io::Error,
    },
    /// The manifest's version is not the pointer's.
    #[error("{bundle}: manifest version {manifest} but the pointer says {pointer}")]
    ManifestVersion {
        /// The bundle's key.
        bundle: String,
        /// The manifest's version.
        manifest: u64,
        /// The pointer's version.
        pointer: u64,
    },
    /// The bundle's own signature has expired.
    #[error("{bundle}: bundle signature expired at {expires_at}")]
    BundleExpired {
        /// The bundle's key.
        bundle: String,
        /// Its expiry.
        expires_at: String,
    },
    /// The bundle breaks a rule of docs/FORMAT.md.
    #[error("{bundle}: {source}")]
    Bundle {
        /// The bundle's key.
        bundle: String,
        /// The rule, with its details.
        source: BundleError,
    },
    /// The verified snapshot could not be stored (a consumer's failure, such
    /// as the agent's database).
    #[error("{bundle}: {source}; the previous snapshot stays served")]
    Ingest {
        /// The bundle's key.
        bundle: String,
        /// The consumer's error.
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
        /// Whether storing this same bundle again would fail the same way
        /// (its version is already stored, or older than the stored one),
        /// as opposed to a disk that may have room at the next try.
        permanent: bool,
    },
    /// The consumer's local store cannot take a snapshot now (the agent's
    /// snapshot file closed after an I/O error, or on a full or read-only
    /// disk): nothing new is applied until it can. Reported as `ingest`.
    #[error("{path}: {reason}")]
    LocalStore {
        /// The local file.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
}

impl Refusal {
    /// The short reason: the metrics label and the `/v1/snapshot` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::StoreEmpty { .. } => "store_empty",
            Refusal::StoreUnreachable { .. } => "store_unreachable",
            Refusal::Pointer { source, .. } => source.reason(),
            Refusal::PointerExpired { .. } => "pointer_expired",
            Refusal::OlderVersion { .. } => "older_version",
            Refusal::PinReplayed { .. } => "pin_replayed",
            Refusal::SignedInFuture { .. } => "signed_in_future",
            Refusal::BundleMissing { .. } => "bundle_missing",
            Refusal::LocalPin { .. } => "local_pin",
            Refusal::VersionConflict { .. } | Refusal::ManifestVersion { .. } => "version_conflict",
            Refusal::BundleTooLarge { .. } => "bundle_too_large",
            Refusal::BundleHash { .. } => "bundle_hash",
            Refusal::Spool { .. } => "spool",
            Refusal::BundleExpired { .. } => "bundle_expired",
            Refusal::Bundle { source, .. } => source.reason(),
            Refusal::Ingest { .. } | Refusal::LocalStore { .. } => "ingest",
        }
    }

    /// Whether the next check should wait longer than the poll interval: the
    /// store or the local disk failed, or the bundle was not (yet) the one
    /// the pointer names, and trying at once would only fail again (an
    /// empty store or an expired pointer is polled as usual).
    pub fn backs_off(&self) -> bool {
        matches!(
            self,
            Refusal::BundleHash { .. } | Refusal::BundleMissing { .. }
        ) || (self.severity() == Severity::Unavailable
            && !matches!(
                self,
                Refusal::StoreEmpty { .. } | Refusal::PointerExpired { .. }
            ))
    }

    /// Whether the same pointer bytes will always be refused the same way,
    /// so that the bundle need not be fetched again until the pointer
    /// changes: what the signed documents decide. A bundle whose bytes are
    /// not the pointer's (a mirror caught mid-copy, an upload still under
    /// way) may be right at the next try, and is fetched again, backing off.
    pub fn is_final(&self) -> bool {
        self.severity() == Severity::Refused
            && !matches!(
                self,
                Refusal::BundleHash { .. }
                    | Refusal::BundleMissing { .. }
                    | Refusal::LocalPin { .. }
                    | Refusal::SignedInFuture { .. }
            )
    }

    /// Whether the node is stale (nothing to verify, or a local failure to
    /// retry) or degraded (the signed inputs were refused). Only what the
    /// signed inputs decide is refused: a full disk or a failed read of the
    /// spool copy is retried, never held against the pointer.
    pub fn severity(&self) -> Severity {
        match self {
            Refusal::StoreEmpty { .. }
            | Refusal::StoreUnreachable { .. }
            | Refusal::PointerExpired { .. }
            | Refusal::Spool { .. }
            | Refusal::LocalStore { .. }
            | Refusal::Ingest {
                permanent: false, ..
            }
            | Refusal::Bundle {
                source: BundleError::Io(_),
                ..
            } => Severity::Unavailable,
            Refusal::Pointer { .. }
            | Refusal::OlderVersion { .. }
            | Refusal::PinReplayed { .. }
            | Refusal::SignedInFuture { .. }
            | Refusal::BundleMissing { .. }
            | Refusal::LocalPin { .. }
            | Refusal::VersionConflict { .. }
            | Refusal::BundleTooLarge { .. }
            | Refusal::BundleHash { .. }
            | Refusal::ManifestVersion { .. }
            | Refusal::BundleExpired { .. }
            | Refusal::Ingest {
                permanent: true, ..
            }
            | Refusal::Bundle { .. } => Severity::Refused,
        }
    }
}

/// What a check found.
pub enum Checked {
    /// The document names the snapshot already served.
    UpToDate(Named),
    /// The document names a snapshot still stored locally, with the same
    /// bundle: serve it without a fetch.
    Retained(Named),
    /// A new snapshot whose document and bundle header verified; its payload
    /// is checked as it is read.
    New(Box<Verified>),
}

/// A snapshot whose document, bundle hash, signatures and manifest verified.
pub struct Verified {
    /// What named it.
    pub named: Named,
    /// The bundle's store key.
    pub bundle: String,
    /// The bundle file's SHA-256 (the pointer's; measured for a local pin).
    pub bundle_sha256: String,
    /// The bundle file's size.
    pub bundle_size: u64,
    /// The manifest, exactly as signed.
    pub manifest: Manifest,
    /// The manifest's bytes, exactly as signed.
    pub manifest_bytes: Vec<u8>,
    /// The manifest's signatures.
    pub signatures: Vec<SignatureEntry>,
    /// Trusted publisher keys that signed the manifest.
    pub signed_by: Vec<KeyId>,
    /// The payload, read from the private spool copy.
    pub payload: PayloadReader<BufReader<File>>,
}

impl Verified {
    /// Decodes the whole payload, checking every record against every rule
    /// (what a node that holds nothing yet would check), and counts it.
    pub fn check_payload(mut self) -> Result<PayloadCounts, Refusal> {
        let bundle = self.bundle.clone();
        let refused = |source| Refusal::Bundle {
            bundle: bundle.clone(),
            source,
        };
        let mut counts = PayloadCounts::default();
        while let Some(frame) = self.payload.next_frame().map_err(refused)? {
            counts.frames += 1;
            let bodies = self.payload.read_frame(&frame).map_err(refused)?;
            for i in 0..frame.tenants.len() {
                bodies.config(i).map_err(refused)?;
                bodies.prompt(i).map_err(refused)?;
                counts.tenants += 1;
            }
        }
        while self.payload.next_route().map_err(refused)?.is_some() {
            counts.routes += 1;
        }
        Ok(counts)
    }
}

/// What [`Verified::check_payload`] decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PayloadCounts {
    /// Body frames.
    pub frames: u64,
    /// Tenants (each a config and a prompt).
    pub tenants: u64,
    /// Phone routes.
    pub routes: u64,
}

/// What to tell the operator when `key` expired.
fn expiry_fix(key: &str) -> &'static str {
    if key.starts_with("pins/") {
        "an operator must pin again (`strata-publisher pin`) or unpin; a node keeps serving the snapshot it has, if any"
    } else {
        "the publisher must run `strata-publisher refresh` (or publish) to re-sign it; a node keeps serving the snapshot it has, if any"
    }
}

/// A pointer or pin as last read, with its ETag: what the next read
/// compares with, so an idle poll of an unchanged document moves no body.
#[derive(Debug, Clone)]
pub struct SeenPointer {
    /// The store's ETag of these bytes.
    pub etag: String,
    /// The pointer file.
    pub bytes: Vec<u8>,
}

/// Step 1: the document `kind`/`name` (a channel pointer or a region pin),
/// read only if it changed since `seen` (a conditional GET); unchanged,
/// `seen` is returned and verified again, so its expiry is still checked on
/// every poll. `None` when the store has no such document.
pub fn read_document(
    store: &dyn ReadStore,
    kind: PointerKind,
    name: &str,
    seen: Option<&SeenPointer>,
) -> Result<Option<SeenPointer>, Refusal> {
    let key = kind.store_key(name);
    match store.get_if_changed(&key, seen.map(|s| s.etag.as_str()), MAX_POINTER_BYTES) {
        Ok(Fetched::Object(obj)) => Ok(Some(SeenPointer {
            etag: obj.etag,
            bytes: obj.bytes,
        })),
        Ok(Fetched::NotModified) => match seen {
            Some(seen) => Ok(Some(seen.clone())),
            // Only a broken store answers 304 to an unconditional GET.
            None => Err(Refusal::StoreUnreachable {
                store: store.url().to_string(),
                source: StoreError::Fatal {
                    key,
                    source: "304 Not Modified to an unconditional GET".into(),
                },
            }),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Refusal::StoreUnreachable {
            store: store.url().to_string(),
            source,
        }),
    }
}

/// Step 1 for the channel: its pointer, which must exist.
pub fn read_pointer(
    store: &dyn ReadStore,
    channel: &str,
    seen: Option<&SeenPointer>,
) -> Result<SeenPointer, Refusal> {
    read_document(store, PointerKind::Channel, channel, seen)?.ok_or_else(|| Refusal::StoreEmpty {
        store: store.url().to_string(),
        key: PointerKind::Channel.store_key(channel),
    })
}

/// Steps 2 to 8 on the document `source` (read by [`read_document`]): on
/// success the payload is ready to be read (step 9). The bundle is spooled
/// into an unnamed file in `spool_dir`.
pub fn verify(
    store: &dyn ReadStore,
    source: Source<'_>,
    policy: &Policy<'_>,
    spool_dir: &Path,
) -> Result<Checked, Refusal> {
    let key = source_key(&source, policy);
    // 2. and 3.
    let document = |bytes: &[u8], kind: PointerKind, name: &str| {
        let (pointer, _) = Pointer::verify(bytes, kind, name, policy.trust).map_err(|source| {
            Refusal::Pointer {
                key: key.clone(),
                source,
            }
        })?;
        if time::parse_exact(&pointer.created_at).is_ok_and(|t| t > policy.now + MAX_CLOCK_AHEAD) {
            return Err(Refusal::SignedInFuture {
                key: key.clone(),
                created_at: pointer.created_at.clone(),
            });
        }
        match pointer.check_expiry(policy.now) {
            Ok(()) => Ok(pointer),
            Err(PointerError::Expired { expires_at }) => Err(Refusal::PointerExpired {
                key: key.clone(),
                expires_at,
            }),
            Err(source) => Err(Refusal::Pointer {
                key: key.clone(),
                source,
            }),
        }
    };
    let named = match source {
        Source::Channel(bytes) => {
            Named::Channel(document(bytes, PointerKind::Channel, policy.channel)?)
        }
        Source::Pin(bytes) => {
            let pin = document(bytes, PointerKind::Pin, policy.region)?;
            if signed_at(&pin) < policy.pin_floor {
                return Err(Refusal::PinReplayed {
                    key,
                    created_at: pin.created_at,
                });
            }
            Named::Pin(pin)
        }
        Source::Local(version) => Named::Local(version),
    };
    // 4.
    let version = named.version();
    if let Named::Channel(_) = named
        && version < policy.high_water
    {
        return Err(Refusal::OlderVersion {
            key,
            version,
            served: policy.high_water,
        });
    }
    let expected = named.pointer().map(|p| p.bundle_sha256.as_str());
    let conflict = || Refusal::VersionConflict {
        key: key.clone(),
        version,
    };
    if let Some((served, served_sha)) = policy.served
        && served == version
    {
        return match expected {
            Some(sha) if sha != served_sha => Err(conflict()),
            _ => Ok(Checked::UpToDate(named)),
        };
    }
    if let Some(stored) = policy.retained.iter().find(|s| s.version == version) {
        if expected.is_some_and(|sha| sha != stored.bundle_sha256) {
            return Err(conflict());
        }
        if time::parse_exact(&stored.bundle_expires_at).is_ok_and(|t| t < policy.now) {
            return Err(Refusal::BundleExpired {
                bundle: named.bundle_key(),
                expires_at: stored.bundle_expires_at.clone(),
            });
        }
        return Ok(Checked::Retained(named));
    }
    // 5.
    let limit = policy.limits.max_bundle_bytes;
    let bundle_key = named.bundle_key();
    if let Some(p) = named.pointer()
        && p.bundle_size > limit
    {
        return Err(Refusal::BundleTooLarge {
            bundle: bundle_key,
            size: p.bundle_size,
            limit,
        });
    }
    // 6.
    let (spool, bundle_size, bundle_sha256) = fetch(store, &named, limit, spool_dir)?;
    // 7.
    let refused = |source| Refusal::Bundle {
        bundle: bundle_key.clone(),
        source,
    };
    let verified = bundle::verify(
        BufReader::new(spool),
        SignatureCheck::Trusted(policy.trust),
        &policy.limits,
    )
    .map_err(refused)?;
    // 8.
    let manifest = verified.manifest().clone();
    if manifest.version != version {
        return Err(Refusal::ManifestVersion {
            bundle: bundle_key,
            manifest: manifest.version,
            pointer: version,
        });
    }
    // The header's check made the timestamp exact; compare it.
    if time::parse_exact(&manifest.expires_at).is_ok_and(|t| t < policy.now) {
        return Err(Refusal::BundleExpired {
            bundle: bundle_key,
            expires_at: manifest.expires_at,
        });
    }
    let manifest_bytes = verified.header.manifest_bytes.clone();
    let signatures = verified.header.signatures.clone();
    let signed_by = verified.signed_by.clone();
    // 9. starts here: the index is opened, the rest is read on demand.
    let payload = verified.payload().map_err(refused)?;
    Ok(Checked::New(Box::new(Verified {
        named,
        bundle: bundle_key,
        bundle_sha256,
        bundle_size,
        manifest,
        manifest_bytes,
        signatures,
        signed_by,
        payload,
    })))
}

/// When a pointer or pin was signed, in seconds since the epoch (0 if its
/// timestamp does not parse, which verification has refused already).
pub fn signed_at(pointer: &Pointer) -> u64 {
    time::parse_exact(&pointer.created_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// Steps 1 to 8 together, as a new node of `policy.region` would take
/// them (without a local pin): the region's pin if the store has one
/// (`policy.region` empty: none is read), else the channel. What
/// `inspect --store` runs.
pub fn check(
    store: &dyn ReadStore,
    policy: &Policy<'_>,
    spool_dir: &Path,
) -> Result<Checked, Refusal> {
    if !policy.region.is_empty()
        && let Some(pin) = read_document(store, PointerKind::Pin, policy.region, None)?
    {
        return verify(store, Source::Pin(&pin.bytes), policy, spool_dir);
    }
    let pointer = read_pointer(store, policy.channel, None)?;
    verify(store, Source::Channel(&pointer.bytes), policy, spool_dir)
}

/// Step 6: copies the bundle `named` into an unnamed file in `spool_dir`,
/// never more than the pointer's `bundle_size` bytes (a local pin: the
/// `limit`), checking its size and SHA-256 against the pointer on the way.
/// Verification then reads this private copy, never the store again: what
/// was hashed is what gets decoded, and memory stays flat whatever the
/// bundle's size. Returns the file, its size and its SHA-256.
fn fetch(
    store: &dyn ReadStore,
    named: &Named,
    limit: u64,
    spool_dir: &Path,
) -> Result<(File, u64, String), Refusal> {
    let bundle = named.bundle_key();
    let spool_err = |source| Refusal::Spool {
        bundle: bundle.clone(),
        dir: spool_dir.display().to_string(),
        source,
    };
    let mut spool = Spool {
        file: tempfile::tempfile_in(spool_dir).map_err(spool_err)?,
        failed: None,
    };
    let pointer = named.pointer();
    let max = pointer.map_or(limit, |p| p.bundle_size);
    let mismatch = |size, sha256| match pointer {
        Some(p) => Refusal::BundleHash {
            bundle: bundle.clone(),
            size,
            sha256,
            expected_size: p.bundle_size,
            expected_sha256: p.bundle_sha256.clone(),
        },
        None => Refusal::BundleTooLarge {
            bundle: bundle.clone(),
            size,
            limit,
        },
    };
    let copied = match crate::store::copy_hashed(store, &bundle, max, &mut spool) {
        Ok(c) => c,
        // The local disk failed, not the store.
        Err(_) if spool.failed.is_some() => {
            let failed = spool.failed.take();
            return Err(spool_err(failed.unwrap_or_else(|| {
                std::io::Error::other("the spool file could not be written")
            })));
        }
        Err(StoreError::TooLarge { size, .. }) => return Err(mismatch(size, String::new())),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Refusal::BundleMissing { bundle });
        }
        Err(source) => {
            return Err(Refusal::StoreUnreachable {
                store: store.url().to_string(),
                source,
            });
        }
    };
    if let Some(p) = pointer
        && (copied.size != p.bundle_size || copied.sha256 != p.bundle_sha256)
    {
        return Err(mismatch(copied.size, copied.sha256));
    }
    let mut file = spool.file;
    file.seek(SeekFrom::Start(0)).map_err(spool_err)?;
    Ok((file, copied.size, copied.sha256))
}

/// The spool file, remembering a failed write so that a full disk is told
/// apart from a failing store.
struct Spool {
    file: File,
    failed: Option<std::io::Error>,
}

impl std::io::Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).inspect_err(|e| {
            self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
