//! Signed pointers: the channel pointer (`channels/<channel>.json`, signed by
//! publisher keys) and the region pin (`pins/<region>.json`, signed by
//! operator keys). Both are small JSON documents naming one bundle by
//! version, key, size and SHA-256, with an expiry.
//!
//! The file is `{"signatures":[…],"signed":{…}}`; the signatures cover the
//! canonical JSON of `signed` (see [`crate::canonical`]).

use std::time::SystemTime;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::canonical::{self, NotCanonical};
use crate::layout;
use crate::sign::{self, KeyId, Role, SignatureEntry, SignatureError, TrustedKeys};
use crate::store::{ReadStore, StoreError};

/// Which document a pointer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PointerKind {
    /// A channel's newest version, signed by publishers.
    #[serde(rename = "strata-channel")]
    Channel,
    /// The version a region must serve, signed by operators.
    #[serde(rename = "strata-pin")]
    Pin,
    /// A region's unpin: "follow the channel", signed by operators, at the
    /// pin's key. Naming no bundle (version 0, empty bundle fields) and not
    /// expiring, it is what ends a pin: a pin file that merely disappears
    /// (a keyless writer, a mirror's passing 404) is not an unpin.
    #[serde(rename = "strata-unpin")]
    Unpin,
}

impl PointerKind {
    /// The role whose keys sign this kind.
    pub fn role(self) -> Role {
        match self {
            PointerKind::Channel => Role::Publisher,
            PointerKind::Pin | PointerKind::Unpin => Role::Operator,
        }
    }

    /// The store key of the pointer named `name` (see [`crate::layout`]).
    pub fn store_key(self, name: &str) -> String {
        match self {
            PointerKind::Channel => layout::channel_key(name),
            PointerKind::Pin | PointerKind::Unpin => layout::pin_key(name),
        }
    }
}

/// The signed content of a pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// Channel pointer or pin.
    #[serde(rename = "type")]
    pub kind: PointerKind,
    /// The channel or region name.
    pub name: String,
    /// The snapshot version pointed to.
    pub version: u64,
    /// The bundle's store key.
    pub bundle: String,
    /// Hex SHA-256 of the whole bundle file.
    pub bundle_sha256: String,
    /// The bundle file's size in bytes.
    pub bundle_size: u64,
    /// When this pointer was signed (RFC 3339 UTC).
    pub created_at: String,
    /// After this the pointer is refused (RFC 3339 UTC).
    pub expires_at: String,
    /// How many tenants the named snapshot holds (its manifest's
    /// `tenant_count`, which agents check it against). Kept here, signed
    /// and beside the bundle rather than in it, so that a publish over a
    /// served bundle that is damaged still has the mass-removal guard's
    /// count. Absent in pointers of earlier releases and in unpins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenants: Option<u64>,
}

/// The pointer file as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedFile {
    signatures: Vec<SignatureEntry>,
    signed: serde_json::Value,
}

/// Why a pointer was refused.
#[derive(Debug, thiserror::Error)]
pub enum PointerError {
    /// Not the JSON document described in docs/FORMAT.md.
    #[error("pointer is malformed: {0}")]
    Malformed(String),
    /// A channel pointer where a pin was expected, or the other way round,
    /// or a pointer for another channel or region.
    #[error(
        "pointer is a {found:?} for {found_name:?}, expected a {expected:?} for {expected_name:?}"
    )]
    WrongTarget {
        /// What was expected.
        expected: PointerKind,
        /// The channel or region expected.
        expected_name: String,
        /// What was found.
        found: PointerKind,
        /// The name found.
        found_name: String,
    },
    /// The file is not the canonical JSON of what it holds (pretty-printed,
    /// a trailing newline, a repeated key): one document, one spelling.
    #[error("pointer is not canonical JSON: {0}")]
    NotCanonical(NotCanonical),
    /// A timestamp that is not RFC 3339 UTC with whole seconds.
    #[error("pointer {field}: {source}")]
    BadTimestamp {
        /// `created_at` or `expires_at`.
        field: &'static str,
        /// The timestamp as written.
        source: crate::time::NotExact,
    },
    /// Signatures do not meet the role's threshold.
    #[error("pointer signatures: {0}")]
    Signature(#[from] SignatureError),
    /// Past `expires_at`.
    #[error(
        "pointer expired at {expires_at}; the publisher must run `strata-publisher refresh` (or publish) to re-sign it"
    )]
    Expired {
        /// Its expiry.
        expires_at: String,
    },
}

/// `doc` signed by `keys` as a store document (`{"signatures", "signed"}`,
/// canonical JSON): a pointer, a pin, a rollback marker.
pub(crate) fn sign_document<T: Serialize>(
    doc: &T,
    keys: &[SigningKey],
) -> Result<Vec<u8>, serde_json::Error> {
    let signed = serde_json::to_value(doc)?;
    let message = canonical::to_vec(&signed)?;
    let file = SignedFile {
        signatures: sign::sign(keys, &message),
        signed,
    };
    canonical::to_vec(&file)
}

/// The `signed` object of a store document, once a threshold of `role`'s
/// keys in `trust` verify over its canonical bytes (and the file is exactly
/// its canonical JSON).
pub(crate) fn verify_document(
    bytes: &[u8],
    role: Role,
    trust: &TrustedKeys,
) -> Result<(serde_json::Value, Vec<KeyId>), PointerError> {
    let file: SignedFile =
        serde_json::from_slice(bytes).map_err(|e| PointerError::Malformed(e.to_string()))?;
    canonical::require_canonical(bytes, &file).map_err(PointerError::NotCanonical)?;
    let message =
        canonical::to_vec(&file.signed).map_err(|e| PointerError::Malformed(e.to_string()))?;
    let signed_by = trust.verify(role, &message, &file.signatures)?;
    Ok((file.signed, signed_by))
}

impl Pointer {
    /// Serialises and signs the pointer; the result is the file to upload.
    pub fn sign(&self, keys: &[SigningKey]) -> Result<Vec<u8>, serde_json::Error> {
        sign_document(self, keys)
    }

    /// The key ids listed in a pointer file's signatures, unverified: for
    /// a publisher command to tell which role a key already signs for.
    pub fn signer_ids(bytes: &[u8]) -> Vec<KeyId> {
        serde_json::from_slice::<SignedFile>(bytes)
            .map(|f| f.signatures.into_iter().map(|s| s.key_id).collect())
            .unwrap_or_default()
    }

    /// The unpin of `region` signed at `now`: it names no bundle and does
    /// not expire (its `expires_at` is its `created_at`, never checked).
    pub fn unpin(region: &str, now: SystemTime) -> Self {
        let at = crate::time::format(now);
        Self {
            kind: PointerKind::Unpin,
            name: region.to_owned(),
            version: 0,
            bundle: String::new(),
            bundle_sha256: String::new(),
            bundle_size: 0,
            created_at: at.clone(),
            expires_at: at,
            tenants: None,
        }
    }

    /// The kind a pointer file says it is, unverified (`None` if it does
    /// not parse): which check to run on it.
    pub fn peek_kind(bytes: &[u8]) -> Option<PointerKind> {
        let file: SignedFile = serde_json::from_slice(bytes).ok()?;
        serde_json::from_value(file.signed.get("type")?.clone()).ok()
    }

    /// Parses a pointer file without checking its signatures: for the
    /// publisher, which only needs the current version to pick the next.
    pub fn parse_unverified(bytes: &[u8]) -> Result<Self, PointerError> {
        let file: SignedFile =
            serde_json::from_slice(bytes).map_err(|e| PointerError::Malformed(e.to_string()))?;
        serde_json::from_value(file.signed).map_err(|e| PointerError::Malformed(e.to_string()))
    }

    /// Parses a pointer file and checks it is the expected document, signed
    /// by a threshold of trusted keys of the kind's role, in canonical JSON
    /// with exact timestamps. Does not check expiry.
    pub fn verify(
        bytes: &[u8],
        kind: PointerKind,
        name: &str,
        trust: &TrustedKeys,
    ) -> Result<(Self, Vec<KeyId>), PointerError> {
        let (signed, signed_by) = verify_document(bytes, kind.role(), trust)?;
        let pointer: Pointer =
            serde_json::from_value(signed).map_err(|e| PointerError::Malformed(e.to_string()))?;
        if pointer.kind != kind || pointer.name != name {
            return Err(PointerError::WrongTarget {
                expected: kind,
                expected_name: name.to_owned(),
                found: pointer.kind,
                found_name: pointer.name,
            });
        }
        // An unpin names nothing.
        if kind == PointerKind::Unpin
            && (pointer.version != 0
                || !pointer.bundle.is_empty()
                || !pointer.bundle_sha256.is_empty()
                || pointer.bundle_size != 0)
        {
            return Err(PointerError::Malformed(
                "an unpin names no bundle: version 0, bundle and bundle_sha256 empty, bundle_size 0".to_owned(),
            ));
        }
        // The bundle is named by its version: nothing else in the store
        // (and nothing outside it) can be pointed at.
        let bundle = layout::bundle_key(pointer.version);
        if kind != PointerKind::Unpin && (pointer.bundle != bundle || pointer.version == 0) {
            return Err(PointerError::Malformed(format!(
                "bundle {:?} is not {bundle:?}, the key of version {}",
                pointer.bundle, pointer.version
            )));
        }
        for (field, value) in [
            ("created_at", &pointer.created_at),
            ("expires_at", &pointer.expires_at),
        ] {
            crate::time::parse_exact(value)
                .map_err(|source| PointerError::BadTimestamp { field, source })?;
        }
        Ok((pointer, signed_by))
    }

    /// Reads the pointer `kind`/`name` without verifying it, with its
    /// ETag: for a listing or a scheduling decision, never for what is
    /// served. `None` if the store has none.
    pub fn read_unverified(
        store: &dyn ReadStore,
        kind: PointerKind,
        name: &str,
    ) -> Result<Option<(Self, String)>, PointerReadError> {
        let key = kind.store_key(name);
        let Some(doc) = layout::read(store, &key)? else {
            return Ok(None);
        };
        let pointer =
            Self::parse_unverified(&doc.bytes).map_err(|e| PointerReadError::Malformed {
                key,
                reason: e.to_string(),
            })?;
        Ok(Some((pointer, doc.etag)))
    }

    /// Reads channel `channel`'s pointer and verifies it with `trust`
    /// (publisher role), with its ETag: the only way a publisher learns
    /// the current version, so that nothing unsigned in the store (an
    /// edited pointer, a file name) decides one. Expiry is not checked.
    pub fn read_channel(
        store: &dyn ReadStore,
        channel: &str,
        trust: &TrustedKeys,
    ) -> Result<Option<(Self, String)>, PointerReadError> {
        Ok(Self::read_channel_signed(store, channel, trust)?.map(|(p, etag, _)| (p, etag)))
    }

    /// [`Self::read_channel`], with the key id of every signature the
    /// pointer carries (trusted or not: what a re-signing would drop).
    pub fn read_channel_signed(
        store: &dyn ReadStore,
        channel: &str,
        trust: &TrustedKeys,
    ) -> Result<Option<(Self, String, Vec<KeyId>)>, PointerReadError> {
        let key = layout::channel_key(channel);
        let Some(doc) = layout::read(store, &key)? else {
            return Ok(None);
        };
        let (pointer, _) =
            Self::verify(&doc.bytes, PointerKind::Channel, channel, trust).map_err(|e| {
                PointerReadError::Untrusted {
                    key,
                    reason: e.to_string(),
                }
            })?;
        Ok(Some((pointer, doc.etag, Self::signer_ids(&doc.bytes))))
    }

    /// Refuses the pointer if `now` is past its expiry.
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), PointerError> {
        let expires = crate::time::parse_exact(&self.expires_at).map_err(|source| {
            PointerError::BadTimestamp {
                field: "expires_at",
                source,
            }
        })?;
        if now > expires {
            return Err(PointerError::Expired {
                expires_at: self.expires_at.clone(),
            });
        }
        Ok(())
    }
}

/// Why a pointer a publisher command reads cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PointerReadError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The document is not a pointer.
    #[error("{key}: {reason}; fix or remove it before publishing")]
    Malformed {
        /// The pointer's key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The channel pointer does not verify with the publisher's keys.
    #[error(
        "{key} does not verify with the signing keys' public halves or a --trusted-key ({reason}). Is --key the channel's publisher key (not an operator's or another channel's)? If the publisher key was rotated, pass the old public key with --trusted-key; if the pointer was written without a key, restore it from a trusted copy"
    )]
    Untrusted {
        /// The pointer's key.
        key: String,
        /// Why it was refused.
        reason: String,
    },
}

impl PointerError {
    /// The short reason for metrics and `/v1/snapshot`.
    pub fn reason(&self) -> &'static str {
        match self {
            PointerError::Malformed(_) => "pointer_malformed",
            PointerError::NotCanonical(_) => "pointer_not_canonical",
            PointerError::BadTimestamp { .. } => "bad_timestamp",
            PointerError::WrongTarget { .. } => "pointer_wrong_target",
            PointerError::Signature(_) => "pointer_signature",
            PointerError::Expired { .. } => "pointer_expired",
        }
    }
}
