//! Why a check applied nothing: [`Refusal`], one variant per reason, with
//! the words an operator acts on, its short reason (the metrics label and
//! the `/v1/snapshot` reason) and its [`Severity`].
//!
//! These are the verifier's own refusals: what the store offers, judged
//! against the trust, the marks and the limits. What only a consumer of a
//! verified snapshot can fail at (the agent's local pin file, its
//! database) is that consumer's error, which wraps a [`Refusal`].

use crate::bundle::BundleError;
use crate::pointer::PointerError;
use crate::store::StoreError;

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
         A store replaced or made anew where the old one was (an unmounted volume, a wrong --store path or bucket prefix): point the publisher back at the store this node followed, and check its volume. \
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
    /// A pointer or pin signed more than [`super::MAX_CLOCK_AHEAD`] after this
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
    /// The manifest's tenant count is not the one the pointer signs (a
    /// publisher that signed two different counts: refused, as any
    /// disagreement between two signed documents is).
    #[error(
        "{bundle}: the manifest holds {manifest} tenant(s) but the pointer says {pointer}; publish again"
    )]
    ManifestTenants {
        /// The bundle's key.
        bundle: String,
        /// The manifest's `tenant_count`.
        manifest: u64,
        /// The pointer's `tenants`.
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
            Refusal::VersionConflict { .. } | Refusal::ManifestVersion { .. } => "version_conflict",
            Refusal::ManifestTenants { .. } => "tenant_count_mismatch",
            Refusal::BundleTooLarge { .. } => "bundle_too_large",
            Refusal::BundleHash { .. } => "bundle_hash",
            Refusal::Spool { .. } => "spool",
            Refusal::BundleExpired { .. } => "bundle_expired",
            Refusal::Bundle { source, .. } => source.reason(),
        }
    }

    /// Whether the node is stale (nothing to verify, or a local failure to
    /// retry) or degraded (the signed inputs were refused). Only what the
    /// signed inputs decide is refused: a full disk or a failed read of the
    /// spool copy is retried, never held against the pointer.
    pub fn severity(&self) -> Severity {
        if let Refusal::Bundle {
            source: BundleError::Object(e),
            ..
        } = self
            && e.is_transient()
        {
            // A missing object (a store that lost it, a mirror still
            // copying) or a failed read: retried with backoff.
            return Severity::Unavailable;
        }
        match self {
            Refusal::StoreEmpty { .. }
            | Refusal::StoreUnreachable { .. }
            | Refusal::PointerExpired { .. }
            | Refusal::Spool { .. }
            | Refusal::Bundle {
                source: BundleError::Io(_),
                ..
            } => Severity::Unavailable,
            Refusal::Pointer { .. }
            | Refusal::OlderVersion { .. }
            | Refusal::PinReplayed { .. }
            | Refusal::SignedInFuture { .. }
            | Refusal::BundleMissing { .. }
            | Refusal::VersionConflict { .. }
            | Refusal::BundleTooLarge { .. }
            | Refusal::BundleHash { .. }
            | Refusal::ManifestVersion { .. }
            | Refusal::ManifestTenants { .. }
            | Refusal::BundleExpired { .. }
            | Refusal::Bundle { .. } => Severity::Refused,
        }
    }
}

/// What to tell the operator when `key` expired.
fn expiry_fix(key: &str) -> &'static str {
    if key.starts_with(crate::layout::PINS) {
        "an operator must pin again (`strata-publisher pin`) or unpin; a node keeps serving the snapshot it has, if any"
    } else {
        "the publisher must run `strata-publisher refresh` (or publish) to re-sign it; a node keeps serving the snapshot it has, if any"
    }
}
