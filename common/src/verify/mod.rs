//! The verification pipeline: everything between "the store has a channel
//! pointer" and "this payload may be stored", in one ordered place. The
//! agent runs it on every check; `strata-publisher inspect --store` runs it
//! with the same keys and limits to show an operator what agents will do.
//!
//! [`verify`] runs the steps in order, one function each, and persists
//! nothing: the only file written is a private spool copy of the bundle.
//!
//! 1. [`read_document`]: the document that names the version — the
//!    node's local pin if it has one, else its region's pin if the store
//!    holds one, else the channel pointer: a [`VersionDoc`];
//! 2. and 3. [`check_document`]: canonical JSON, exact timestamps, the
//!    expected channel or region, signed by a threshold of trusted keys of
//!    its role (publisher for the channel, operator for a pin), not signed
//!    in the future, not expired; a pin must also be signed no earlier
//!    than the last pin this node followed or retired (a replayed older
//!    pin is refused);
//! 4. [`check_version`]: a channel pointer below the node's high-water
//!    mark (the highest version it accepted from the channel) is refused,
//!    only a pin may go back; the version served is up to date, a version
//!    still stored locally is switched to without a fetch, and a
//!    different bundle under either version is refused;
//! 5. [`check_size`]: the bundle's declared size against the limit;
//! 6. [`fetch`]: copy the bundle (bounded by the pointer's size) into a
//!    private spool file, hashing it on the way: size and SHA-256 must be
//!    the pointer's;
//! 7. [`check_header`]: canonical manifest, exact timestamps, publisher
//!    signatures, payload size limits, payload SHA-256, nothing after it;
//! 8. [`check_manifest`]: the manifest's version is the pointer's, and it
//!    has not expired;
//! 9. the payload, lazily: every rule of docs/FORMAT.md is checked on what
//!    is decoded ([`crate::bundle::PayloadReader`]); a consumer that stores
//!    the snapshot (the agent's ingest) decodes into one transaction and
//!    commits only if every record passed, [`Verified::check_payload`]
//!    decodes everything.
//!
//! Every way to fail is one [`Refusal`] variant (in `refusal.rs`); its
//! [`Refusal::reason`] is the metrics label and the `/v1/snapshot` reason.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::time::SystemTime;

use crate::bundle::{self, Limits, Manifest, PayloadReader, SignatureCheck};
use crate::layout::{self, Document};
use crate::model::SnapshotVersion;
use crate::pointer::{Pointer, PointerError, PointerKind};
use crate::sign::{KeyId, SignatureEntry, TrustedKeys};
use crate::store::ReadStore;
use crate::time;

mod refusal;
mod spool;

pub use refusal::{Refusal, Severity};
pub use spool::fetch;

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
pub enum VersionDoc<'a> {
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

/// Where the document named by a [`VersionDoc`] lives, for messages.
fn doc_key(doc: &VersionDoc<'_>, policy: &Policy<'_>) -> String {
    match doc {
        VersionDoc::Channel(_) => layout::channel_key(policy.channel),
        VersionDoc::Pin(_) => layout::pin_key(policy.region),
        VersionDoc::Local(_) => "pin_file".to_owned(),
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
    /// The payload: what is served once applied.
    pub payload: Body,
}

/// A verified snapshot's payload, by format.
pub enum Body {
    /// Format 2: the whole payload, read from the private spool copy.
    Bundle(Box<PayloadReader<BufReader<File>>>),
    /// Format 3: the root's decompressed payload; the objects it names are
    /// read from the store (or the node's cache) as it is applied
    /// ([`crate::bundle::tree::TreeFrames`]).
    Tree(Vec<u8>),
}

impl Verified {
    /// Decodes the whole payload, checking every record against every rule
    /// (what a node that holds nothing yet would check), and counts it.
    /// A format 3 root's objects are read from `store`.
    pub fn check_payload(self, store: &dyn ReadStore) -> Result<PayloadCounts, Refusal> {
        let bundle = self.bundle.clone();
        let refused = |source| Refusal::Bundle {
            bundle: bundle.clone(),
            source,
        };
        let mut frames: Box<dyn crate::bundle::Frames + '_> = match self.payload {
            Body::Bundle(p) => p,
            Body::Tree(root) => Box::new(
                crate::bundle::tree::TreeFrames::open(
                    crate::bundle::tree::read::ObjectSource::Store(store),
                    &self.manifest,
                    &root,
                    &crate::bundle::tree::Held::nothing(),
                    &Limits::agents(),
                )
                .map_err(|e| refused(e.into()))?,
            ),
        };
        let mut counts = PayloadCounts::default();
        while let Some(frame) = frames.next_listed().map_err(refused)? {
            counts.frames += 1;
            let bodies = frames.bodies(&frame).map_err(refused)?;
            for i in 0..frame.tenants.len() {
                bodies.config(i).map_err(refused)?;
                bodies.prompt(i).map_err(refused)?;
                counts.tenants += 1;
            }
        }
        while frames.next_route().map_err(refused)?.is_some() {
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

/// Step 1: the document `kind`/`name` (a channel pointer or a region pin),
/// read only if it changed since `seen` (a conditional GET); unchanged,
/// `seen` is returned and verified again, so its expiry is still checked on
/// every poll. `None` when the store has no such document.
pub fn read_document(
    store: &dyn ReadStore,
    kind: PointerKind,
    name: &str,
    seen: Option<&Document>,
) -> Result<Option<Document>, Refusal> {
    layout::read_changed(store, &kind.store_key(name), seen).map_err(|source| {
        Refusal::StoreUnreachable {
            store: store.url().to_string(),
            source,
        }
    })
}

/// Step 1 for the channel: its pointer, which must exist.
pub fn read_pointer(
    store: &dyn ReadStore,
    channel: &str,
    seen: Option<&Document>,
) -> Result<Document, Refusal> {
    read_document(store, PointerKind::Channel, channel, seen)?.ok_or_else(|| Refusal::StoreEmpty {
        store: store.url().to_string(),
        key: layout::channel_key(channel),
    })
}

/// Steps 2 to 8 on the document `doc` (read by [`read_document`]): on
/// success the payload is ready to be read (step 9). The bundle is spooled
/// into an unnamed file in `spool_dir`.
pub fn verify(
    store: &dyn ReadStore,
    doc: VersionDoc<'_>,
    policy: &Policy<'_>,
    spool_dir: &Path,
) -> Result<Checked, Refusal> {
    let key = doc_key(&doc, policy);
    let named = check_document(doc, policy, &key)?;
    let named = match check_version(named, policy, &key)? {
        Next::Fetch(named) => named,
        Next::Done(checked) => return Ok(checked),
    };
    let bundle_key = named.bundle_key();
    check_size(&named, policy)?;
    let (spool, bundle_size, bundle_sha256) =
        fetch(store, &named, policy.limits.max_bundle_bytes, spool_dir)?;
    let verified = check_header(spool, policy, &bundle_key)?;
    let manifest = verified.manifest().clone();
    check_manifest(&manifest, &named, policy, &bundle_key)?;
    let manifest_bytes = verified.header.manifest_bytes.clone();
    let signatures = verified.header.signatures.clone();
    let signed_by = verified.signed_by.clone();
    // 9. starts here: the index is opened, the rest is read on demand.
    let payload = if manifest.format == bundle::FORMAT_TREE {
        verified.root().map(Body::Tree)
    } else {
        verified.payload().map(|p| Body::Bundle(Box::new(p)))
    }
    .map_err(|source| Refusal::Bundle {
        bundle: bundle_key.clone(),
        source,
    })?;
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

/// Steps 2 and 3: the document verified against the trust for its role,
/// its signing time against this node's clock and its pin floor, and its
/// expiry. `key` names the document in refusals.
pub fn check_document(
    doc: VersionDoc<'_>,
    policy: &Policy<'_>,
    key: &str,
) -> Result<Named, Refusal> {
    let signed = |bytes: &[u8], kind: PointerKind, name: &str| {
        let pointer = verify_signed(bytes, kind, name, policy, key)?;
        match pointer.check_expiry(policy.now) {
            Ok(()) => Ok(pointer),
            Err(PointerError::Expired { expires_at }) => Err(Refusal::PointerExpired {
                key: key.to_owned(),
                expires_at,
            }),
            Err(source) => Err(Refusal::Pointer {
                key: key.to_owned(),
                source,
            }),
        }
    };
    Ok(match doc {
        VersionDoc::Channel(bytes) => {
            Named::Channel(signed(bytes, PointerKind::Channel, policy.channel)?)
        }
        VersionDoc::Pin(bytes) => {
            let pin = signed(bytes, PointerKind::Pin, policy.region)?;
            if signed_at(&pin) < policy.pin_floor {
                return Err(Refusal::PinReplayed {
                    key: key.to_owned(),
                    created_at: pin.created_at,
                });
            }
            Named::Pin(pin)
        }
        VersionDoc::Local(version) => Named::Local(version),
    })
}

/// A pointer file verified as `kind` for `name` against the trust for its
/// role, and its signing time against this node's clock.
fn verify_signed(
    bytes: &[u8],
    kind: PointerKind,
    name: &str,
    policy: &Policy<'_>,
    key: &str,
) -> Result<Pointer, Refusal> {
    let (pointer, _) =
        Pointer::verify(bytes, kind, name, policy.trust).map_err(|source| Refusal::Pointer {
            key: key.to_owned(),
            source,
        })?;
    if time::parse_exact(&pointer.created_at).is_ok_and(|t| t > policy.now + MAX_CLOCK_AHEAD) {
        return Err(Refusal::SignedInFuture {
            key: key.to_owned(),
            created_at: pointer.created_at.clone(),
        });
    }
    Ok(pointer)
}

/// Whether the region pin file `bytes` is an unpin (unverified: which
/// check to run on it).
pub fn is_unpin(bytes: &[u8]) -> bool {
    Pointer::peek_kind(bytes) == Some(PointerKind::Unpin)
}

/// Steps 2 and 3 for a region's unpin: verified by operator keys, and
/// signed no earlier than the pin floor (an old unpin put back over a
/// newer pin is a replay). It does not expire: it names nothing.
pub fn check_unpin(bytes: &[u8], policy: &Policy<'_>, key: &str) -> Result<Pointer, Refusal> {
    let unpin = verify_signed(bytes, PointerKind::Unpin, policy.region, policy, key)?;
    if signed_at(&unpin) < policy.pin_floor {
        return Err(Refusal::PinReplayed {
            key: key.to_owned(),
            created_at: unpin.created_at,
        });
    }
    Ok(unpin)
}

/// What step 4 decided: the check ends here, or the bundle is fetched.
pub enum Next {
    /// Nothing to fetch: up to date, or a stored version to switch to.
    Done(Checked),
    /// A version this node does not hold: fetch and verify its bundle.
    Fetch(Named),
}

/// Step 4: the version named against the high-water mark (only a pin goes
/// back), the version served and the versions stored.
pub fn check_version(named: Named, policy: &Policy<'_>, key: &str) -> Result<Next, Refusal> {
    let version = named.version();
    if let Named::Channel(_) = named
        && version < policy.high_water
    {
        return Err(Refusal::OlderVersion {
            key: key.to_owned(),
            version,
            served: policy.high_water,
        });
    }
    let expected = named.pointer().map(|p| p.bundle_sha256.as_str());
    let conflict = || Refusal::VersionConflict {
        key: key.to_owned(),
        version,
    };
    if let Some((served, served_sha)) = policy.served
        && served == version
    {
        return match expected {
            Some(sha) if sha != served_sha => Err(conflict()),
            _ => Ok(Next::Done(Checked::UpToDate(named))),
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
        return Ok(Next::Done(Checked::Retained(named)));
    }
    Ok(Next::Fetch(named))
}

/// Step 5: the bundle's size, as the signed pointer declares it, against
/// `max_bundle_bytes` (a local pin declares none: [`fetch`] stops at the
/// limit).
pub fn check_size(named: &Named, policy: &Policy<'_>) -> Result<(), Refusal> {
    let limit = policy.limits.max_bundle_bytes;
    match named.pointer() {
        Some(p) if p.bundle_size > limit => Err(Refusal::BundleTooLarge {
            bundle: named.bundle_key(),
            size: p.bundle_size,
            limit,
        }),
        _ => Ok(()),
    }
}

/// Step 7: the bundle header read from the spool copy: canonical manifest,
/// exact timestamps, a threshold of trusted publisher signatures, payload
/// size limits and SHA-256, nothing after the payload.
pub fn check_header(
    spool: File,
    policy: &Policy<'_>,
    bundle_key: &str,
) -> Result<bundle::VerifiedBundle<BufReader<File>>, Refusal> {
    bundle::verify(
        BufReader::new(spool),
        SignatureCheck::Trusted(policy.trust),
        &policy.limits,
    )
    .map_err(|source| Refusal::Bundle {
        bundle: bundle_key.to_owned(),
        source,
    })
}

/// Step 8: the manifest names the version (and holds the tenant count)
/// the document named, and its own signature has not expired.
pub fn check_manifest(
    manifest: &Manifest,
    named: &Named,
    policy: &Policy<'_>,
    bundle_key: &str,
) -> Result<(), Refusal> {
    let version = named.version();
    if manifest.version != version {
        return Err(Refusal::ManifestVersion {
            bundle: bundle_key.to_owned(),
            manifest: manifest.version,
            pointer: version,
        });
    }
    if let Some(tenants) = named.pointer().and_then(|p| p.tenants)
        && tenants != manifest.tenant_count
    {
        return Err(Refusal::ManifestTenants {
            bundle: bundle_key.to_owned(),
            manifest: manifest.tenant_count,
            pointer: tenants,
        });
    }
    // The header's check made the timestamp exact; compare it.
    if time::parse_exact(&manifest.expires_at).is_ok_and(|t| t < policy.now) {
        return Err(Refusal::BundleExpired {
            bundle: bundle_key.to_owned(),
            expires_at: manifest.expires_at.clone(),
        });
    }
    Ok(())
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
        if !is_unpin(&pin.bytes) {
            return verify(store, VersionDoc::Pin(&pin.bytes), policy, spool_dir);
        }
        check_unpin(
            &pin.bytes,
            policy,
            &PointerKind::Pin.store_key(policy.region),
        )?;
    }
    let pointer = read_pointer(store, policy.channel, None)?;
    verify(
        store,
        VersionDoc::Channel(&pointer.bytes),
        policy,
        spool_dir,
    )
}
