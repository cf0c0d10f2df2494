//! The verification pipeline: everything between "the store has a channel
//! pointer" and "this payload may be stored", in one ordered place. The
//! agent runs it on every check; `strata-publisher inspect --store` runs it
//! with the same keys and limits to show an operator what agents will do.
//!
//! 1. read the channel pointer (bounded) — [`read_pointer`];
//! 2. the pointer: canonical JSON, exact timestamps, the expected channel,
//!    signed by a threshold of trusted publisher keys;
//! 3. its expiry;
//! 4. its version against the one served: older is refused, the same is
//!    up to date, a different bundle under the same version is refused;
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
use crate::pointer::{Pointer, PointerError, PointerKind};
use crate::sign::{KeyId, SignatureEntry, TrustedKeys};
use crate::store::{ErrorKind, Fetched, ReadStore, StoreError};
use crate::time;

/// Pointers are small; anything larger is not a pointer.
pub const MAX_POINTER_BYTES: u64 = 64 * 1024;

/// What the verifier trusts and compares against: an agent's keys, channel
/// and limits, and what it serves now.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Trusted keys by role, with thresholds.
    pub trust: &'a TrustedKeys,
    /// The channel followed.
    pub channel: &'a str,
    /// Size limits.
    pub limits: Limits,
    /// The time expiry is checked against.
    pub now: SystemTime,
    /// The version served now and its bundle's SHA-256, if any.
    pub served: Option<(u64, &'a str)>,
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
    /// The pointer expired: the publisher has not refreshed it.
    #[error(
        "{key}: pointer expired at {expires_at}; the publisher must run `strata-publisher refresh` (or publish) to re-sign it"
    )]
    PointerExpired {
        /// The pointer's key.
        key: String,
        /// Its expiry.
        expires_at: String,
    },
    /// The pointer names a version older than the one served.
    #[error(
        "{key} names version {version}, older than the served version {served}; refusing a rollback that no operator pin asked for"
    )]
    OlderVersion {
        /// The pointer's key.
        key: String,
        /// The version it names.
        version: u64,
        /// The version served.
        served: u64,
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
            Refusal::VersionConflict { .. } | Refusal::ManifestVersion { .. } => "version_conflict",
            Refusal::BundleTooLarge { .. } => "bundle_too_large",
            Refusal::BundleHash { .. } => "bundle_hash",
            Refusal::Spool { .. } => "spool",
            Refusal::BundleExpired { .. } => "bundle_expired",
            Refusal::Bundle { source, .. } => source.reason(),
            Refusal::Ingest { .. } => "ingest",
        }
    }

    /// Whether the next check should wait longer than the poll interval: the
    /// store or the local disk failed, or the bundle was not (yet) the one
    /// the pointer names, and trying at once would only fail again (an
    /// empty store or an expired pointer is polled as usual).
    pub fn backs_off(&self) -> bool {
        matches!(self, Refusal::BundleHash { .. })
            || (self.severity() == Severity::Unavailable
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
        self.severity() == Severity::Refused && !matches!(self, Refusal::BundleHash { .. })
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
            | Refusal::Ingest {
                permanent: false, ..
            }
            | Refusal::Bundle {
                source: BundleError::Io(_),
                ..
            } => Severity::Unavailable,
            Refusal::Pointer { .. }
            | Refusal::OlderVersion { .. }
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
    /// The pointer names the snapshot already served.
    UpToDate(u64),
    /// A new snapshot whose pointer and bundle header verified; its payload
    /// is checked as it is read.
    New(Box<Verified>),
}

/// A snapshot whose pointer, bundle hash, signatures and manifest verified.
pub struct Verified {
    /// The channel pointer that named it.
    pub pointer: Pointer,
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
        let bundle = self.pointer.bundle.clone();
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

/// A channel pointer as last read, with its ETag: what the next read
/// compares with, so an idle poll of an unchanged pointer moves no body.
#[derive(Debug, Clone)]
pub struct SeenPointer {
    /// The store's ETag of these bytes.
    pub etag: String,
    /// The pointer file.
    pub bytes: Vec<u8>,
}

/// Step 1: the channel pointer, read only if it changed since `seen` (a
/// conditional GET); unchanged, `seen` is returned and verified again, so
/// its expiry is still checked on every poll.
pub fn read_pointer(
    store: &dyn ReadStore,
    channel: &str,
    seen: Option<&SeenPointer>,
) -> Result<SeenPointer, Refusal> {
    let key = PointerKind::Channel.store_key(channel);
    match store.get_if_changed(&key, seen.map(|s| s.etag.as_str()), MAX_POINTER_BYTES) {
        Ok(Fetched::Object(obj)) => Ok(SeenPointer {
            etag: obj.etag,
            bytes: obj.bytes,
        }),
        Ok(Fetched::NotModified) => match seen {
            Some(seen) => Ok(seen.clone()),
            // Only a broken store answers 304 to an unconditional GET.
            None => Err(Refusal::StoreUnreachable {
                store: store.url().to_string(),
                source: StoreError::Fatal {
                    key,
                    source: "304 Not Modified to an unconditional GET".into(),
                },
            }),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Err(Refusal::StoreEmpty {
            store: store.url().to_string(),
            key,
        }),
        Err(source) => Err(Refusal::StoreUnreachable {
            store: store.url().to_string(),
            source,
        }),
    }
}

/// Steps 2 to 8 on the pointer `pointer_bytes` read by [`read_pointer`]: on
/// success the payload is ready to be read (step 9). The bundle is spooled
/// into an unnamed file in `spool_dir`.
pub fn verify(
    store: &dyn ReadStore,
    pointer_bytes: &[u8],
    policy: &Policy<'_>,
    spool_dir: &Path,
) -> Result<Checked, Refusal> {
    let key = PointerKind::Channel.store_key(policy.channel);
    // 2.
    let (pointer, _) = Pointer::verify(
        pointer_bytes,
        PointerKind::Channel,
        policy.channel,
        policy.trust,
    )
    .map_err(|source| Refusal::Pointer {
        key: key.clone(),
        source,
    })?;
    // 3.
    match pointer.check_expiry(policy.now) {
        Ok(()) => {}
        Err(PointerError::Expired { expires_at }) => {
            return Err(Refusal::PointerExpired { key, expires_at });
        }
        Err(source) => return Err(Refusal::Pointer { key, source }),
    }
    // 4.
    if let Some((served, served_sha)) = policy.served {
        if pointer.version < served {
            return Err(Refusal::OlderVersion {
                key,
                version: pointer.version,
                served,
            });
        }
        if pointer.version == served {
            if pointer.bundle_sha256 == served_sha {
                return Ok(Checked::UpToDate(served));
            }
            return Err(Refusal::VersionConflict {
                key,
                version: served,
            });
        }
    }
    // 5.
    let limit = policy.limits.max_bundle_bytes;
    if pointer.bundle_size > limit {
        return Err(Refusal::BundleTooLarge {
            bundle: pointer.bundle,
            size: pointer.bundle_size,
            limit,
        });
    }
    // 6.
    let spool = fetch(store, &pointer, spool_dir)?;
    // 7.
    let bundle_key = pointer.bundle.clone();
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
    if manifest.version != pointer.version {
        return Err(Refusal::ManifestVersion {
            bundle: pointer.bundle,
            manifest: manifest.version,
            pointer: pointer.version,
        });
    }
    // The header's check made the timestamp exact; compare it.
    if time::parse_exact(&manifest.expires_at).is_ok_and(|t| t < policy.now) {
        return Err(Refusal::BundleExpired {
            bundle: pointer.bundle,
            expires_at: manifest.expires_at,
        });
    }
    let manifest_bytes = verified.header.manifest_bytes.clone();
    let signatures = verified.header.signatures.clone();
    let signed_by = verified.signed_by.clone();
    // 9. starts here: the index is opened, the rest is read on demand.
    let payload = verified.payload().map_err(refused)?;
    Ok(Checked::New(Box::new(Verified {
        pointer,
        manifest,
        manifest_bytes,
        signatures,
        signed_by,
        payload,
    })))
}

/// Steps 1 to 8 together: what `inspect --store` runs.
pub fn check(
    store: &dyn ReadStore,
    policy: &Policy<'_>,
    spool_dir: &Path,
) -> Result<Checked, Refusal> {
    let pointer = read_pointer(store, policy.channel, None)?;
    verify(store, &pointer.bytes, policy, spool_dir)
}

/// Step 6: copies the bundle the pointer names into an unnamed file in
/// `spool_dir`, never more than the pointer's `bundle_size` bytes, checking
/// its size and SHA-256 against the pointer on the way. Verification then
/// reads this private copy, never the store again: what was hashed is what
/// gets decoded, and memory stays flat whatever the bundle's size.
fn fetch(store: &dyn ReadStore, pointer: &Pointer, spool_dir: &Path) -> Result<File, Refusal> {
    let spool_err = |source| Refusal::Spool {
        bundle: pointer.bundle.clone(),
        dir: spool_dir.display().to_string(),
        source,
    };
    let mut spool = Spool {
        file: tempfile::tempfile_in(spool_dir).map_err(spool_err)?,
        failed: None,
    };
    let mismatch = |size, sha256| Refusal::BundleHash {
        bundle: pointer.bundle.clone(),
        size,
        sha256,
        expected_size: pointer.bundle_size,
        expected_sha256: pointer.bundle_sha256.clone(),
    };
    let copied =
        match crate::store::copy_hashed(store, &pointer.bundle, pointer.bundle_size, &mut spool) {
            Ok(c) => c,
            // The local disk failed, not the store.
            Err(_) if spool.failed.is_some() => {
                let failed = spool.failed.take();
                return Err(spool_err(failed.unwrap_or_else(|| {
                    std::io::Error::other("the spool file could not be written")
                })));
            }
            Err(StoreError::TooLarge { size, .. }) => return Err(mismatch(size, String::new())),
            Err(source) => {
                return Err(Refusal::StoreUnreachable {
                    store: store.url().to_string(),
                    source,
                });
            }
        };
    if copied.size != pointer.bundle_size || copied.sha256 != pointer.bundle_sha256 {
        return Err(mismatch(copied.size, copied.sha256));
    }
    let mut file = spool.file;
    file.seek(SeekFrom::Start(0)).map_err(spool_err)?;
    Ok(file)
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
