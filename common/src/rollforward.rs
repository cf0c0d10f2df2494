//! What keeps a rollback from being undone by the next routine publish.
//!
//! `rollback --to N` publishes version N's content as the channel's next
//! version M, and leaves a signed marker at `rollbacks/<channel>.json`
//! saying so (M, N, and V, the version it rolled back from). While the
//! channel's head is M, a publish that would give a tenant back the content
//! it had in V (which the rollback took back) is refused unless allowed:
//! the source a rollback answers is usually still the bad one. Agents never
//! read the marker; a publish on top of M makes it stale. A per-tenant
//! rollback holds its tenant in the signed manifest instead
//! ([`crate::bundle::Hold`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundle::{Frames, Limits, SignatureCheck};
use crate::compile::Compiled;
use crate::layout::{self, Document};
use crate::operator::{OperatorError, fetch_bundle};
use crate::pointer::{Pointer, PointerError, sign_document, verify_document};
use crate::sign::{Role, SigningKey, TrustedKeys};
use crate::store::{ReadStore, StoreError, WriteStore};
use crate::versions::{self, VersionsError};

/// The marker's `type`.
const MARKER_TYPE: &str = "strata-rollback";

/// Where channel `channel`'s rollback marker lives.
pub fn marker_key(channel: &str) -> String {
    format!("rollbacks/{channel}.json")
}

/// A rollback, as its marker records it (signed by publisher keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    /// Always `strata-rollback`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The channel rolled back.
    pub channel: String,
    /// The version the rollback published.
    pub version: u64,
    /// The version whose content it published again.
    pub to: u64,
    /// The version the channel served before it.
    pub from: u64,
    /// Versions rolled back from by the rollbacks just before this one
    /// (rolled back twice in a row: both stay taken back), oldest first.
    pub earlier: Vec<u64>,
    /// When it was signed (RFC 3339 UTC).
    pub created_at: String,
}

impl Marker {
    /// The marker of a rollback of `channel` from `from` to `to`'s content,
    /// published as `version`; `before` is the channel's marker when `from`
    /// was itself a rollback, whose versions stay taken back.
    pub fn new(channel: &str, version: u64, to: u64, from: u64, before: Option<&Marker>) -> Self {
        let earlier = before
            .filter(|b| b.version == from)
            .map(|b| {
                let mut e = b.earlier.clone();
                e.push(b.from);
                e
            })
            .unwrap_or_default();
        Self {
            kind: MARKER_TYPE.to_owned(),
            channel: channel.to_owned(),
            version,
            to,
            from,
            earlier,
            created_at: crate::time::format(crate::time::now()),
        }
    }

    /// Every version this rollback keeps taken back: `from`, and those of
    /// the rollbacks just before it.
    pub fn taken_back(&self) -> Vec<u64> {
        let mut all = self.earlier.clone();
        all.push(self.from);
        all
    }

    /// Signs and writes the marker over whatever is at its key.
    pub fn write(&self, store: &dyn WriteStore, keys: &[SigningKey]) -> Result<(), OperatorError> {
        let key = marker_key(&self.channel);
        let bytes = sign_document(self, keys).map_err(|e| OperatorError::Sign(e.to_string()))?;
        let current = layout::read(store, &key)?;
        store.put_if(&key, &bytes, current.as_ref().map(|d| d.etag.as_str()))?;
        Ok(())
    }

    /// The marker of `channel`, verified with `trust` (publisher keys);
    /// `Ok(None)` if there is none.
    pub fn read(
        store: &dyn ReadStore,
        channel: &str,
        trust: &TrustedKeys,
    ) -> Result<Option<Self>, MarkerError> {
        let key = marker_key(channel);
        let Some(Document { bytes, .. }) = layout::read(store, &key)? else {
            return Ok(None);
        };
        let bad = |reason: String| MarkerError::Refused {
            key: key.clone(),
            reason,
        };
        let (signed, _) = verify_document(&bytes, Role::Publisher, trust)
            .map_err(|e: PointerError| bad(e.to_string()))?;
        let marker: Marker = serde_json::from_value(signed).map_err(|e| bad(e.to_string()))?;
        if marker.kind != MARKER_TYPE || marker.channel != channel {
            return Err(bad(format!(
                "is a {} for channel {}, not a rollback of {channel}",
                marker.kind, marker.channel
            )));
        }
        Ok(Some(marker))
    }
}

/// Why a rollback marker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// It is not a marker the publisher keys signed.
    #[error("{key}: {reason}")]
    Refused {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// What a publish over a rolled-back channel would undo.
#[derive(Debug)]
pub enum Rollforward {
    /// The channel's head is not a rollback (or no longer: a publish went
    /// on top of it), or has no marker.
    NotRolledBack,
    /// The channel's marker does not verify: not checked (it guards
    /// against a mistake, not an attacker).
    Unreadable(String),
    /// The head is a rollback; what would come back: for each version it
    /// took back, the tenants (and `Layer 1`) that would get back the
    /// content they had there; and the versions taken back whose bundles
    /// are gone (gc), which cannot be compared.
    Checked {
        /// The marker.
        marker: Marker,
        /// (version taken back, what would get its content back).
        back: Vec<(u64, Vec<String>)>,
        /// Versions taken back whose bundles are gone.
        gone: Vec<u64>,
    },
}

/// How a brought-back Layer 1 is named among tenants.
pub const LAYER1: &str = "Layer 1";

/// Compares `compiled` with the channel `head` and, if `head` is a
/// rollback, with the version it rolled back from (both verified with
/// `trust`).
pub fn check(
    store: &dyn WriteStore,
    head: &Pointer,
    trust: &TrustedKeys,
    compiled: &Compiled,
) -> Result<Rollforward, VersionsError> {
    let marker = match Marker::read(store, &head.name, trust) {
        Ok(Some(m)) if m.version == head.version => m,
        Ok(_) => return Ok(Rollforward::NotRolledBack),
        Err(e) => return Ok(Rollforward::Unreadable(e.to_string())),
    };
    let limits = Limits::agents();
    let mut served_reader = versions::served_reader(store, head, trust)?;
    let mut new_reader =
        versions::payload_reader(compiled, store).map_err(|source| VersionsError::Payload {
            what: "the new snapshot",
            source,
        })?;
    // Format 3: chunks both share hold the same tenants (nothing of them
    // comes back), so they are not read: a damaged one among them does not
    // switch the check off.
    if let (Some(a), Some(b)) = (served_reader.chunk_hashes(), new_reader.chunk_hashes()) {
        let shared = a.intersection(&b).copied().collect();
        served_reader.skip_chunks(&shared);
        new_reader.skip_chunks(&shared);
    }
    let served = hashes(served_reader, "the channel's snapshot")?;
    let new = hashes(new_reader, "the new snapshot")?;
    let mut back = Vec::new();
    let mut gone = Vec::new();
    for version in marker.taken_back() {
        let bundle = match fetch_bundle(store, version, SignatureCheck::Trusted(trust), &limits) {
            Ok(b) => b,
            Err(e) if e.is_damage() => {
                gone.push(version);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let key = layout::bundle_key(version);
        let then = hashes(
            bundle.reader(store, &key, &limits)?,
            "a version rolled back from",
        )?;
        let came_back: Vec<String> = new
            .iter()
            .filter(|(t, h)| then.get(*t) == Some(h) && served.get(*t) != Some(h))
            .map(|(t, _)| t.clone())
            .collect();
        if !came_back.is_empty() {
            back.push((version, came_back));
        }
    }
    Ok(Rollforward::Checked { marker, back, gone })
}

/// Each tenant's config hash in a payload's index (no body decoded), and
/// Layer 1 (as [`LAYER1`], by its bytes' hash); format 3 chunks the reader
/// was told to skip are left out.
fn hashes(
    mut reader: Box<dyn Frames + '_>,
    what: &'static str,
) -> Result<BTreeMap<String, [u8; 64]>, VersionsError> {
    let mut out = BTreeMap::new();
    let mut layer1 = [0u8; 64];
    let digest = crate::canonical::sha256_hex(reader.layer1());
    for (slot, b) in layer1.iter_mut().zip(digest.bytes()) {
        *slot = b;
    }
    out.insert(LAYER1.to_owned(), layer1);
    while let Some(group) = reader
        .next_group()
        .map_err(|source| VersionsError::Payload { what, source })?
    {
        if let crate::bundle::Group::Listed(frame) = group {
            for t in frame.tenants {
                out.insert(t.tenant, t.config_hash);
            }
        }
    }
    Ok(out)
}
