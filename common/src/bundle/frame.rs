//! A body frame of the payload: the tenants the index lists for it, and
//! their records once decoded, each checked against its index entry (a
//! canonical config that hashes to its `config_hash`, a prompt that starts
//! with Layer 1's base prompt).

use std::cell::OnceCell;
use std::ops::Range;

use super::BundleError;
use super::error::bad;
use crate::canonical;

/// A tenant as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The tenant id.
    pub tenant: String,
    /// Its config's `config_hash`, 64 hex digits: equal hashes mean equal
    /// configs, and (under the same Layer 1) equal prompts.
    pub config_hash: [u8; 64],
}

/// A body frame as the index describes it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// 1 for the first body frame (0 is the index).
    pub number: u64,
    /// Its tenants, in order.
    pub tenants: Vec<IndexEntry>,
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) raw_size: u64,
}

/// A decoded body frame: each tenant's config and prompt, borrowed from the
/// reader's buffer until the next frame is read.
#[derive(Debug)]
pub struct FrameBodies<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) number: u64,
    pub(crate) tenants: &'a [IndexEntry],
    pub(crate) spans: Vec<BodySpan>,
    pub(crate) layer1: &'a [u8],
    /// Layer 1's base prompt and the separator, parsed on the first prompt taken.
    pub(crate) prompt_prefix: &'a OnceCell<Result<Vec<u8>, String>>,
}

/// Where one tenant's records sit in a decoded frame.
#[derive(Debug, Clone)]
pub struct BodySpan {
    pub(crate) at: u64,
    pub(crate) config: Range<usize>,
    pub(crate) prompt: Range<usize>,
}

impl FrameBodies<'_> {
    /// Where the frame's `i`th tenant's records are, and its index entry.
    fn tenant(&self, i: usize) -> Result<(&BodySpan, &IndexEntry), BundleError> {
        match (self.spans.get(i), self.tenants.get(i)) {
            (Some(span), Some(entry)) => Ok((span, entry)),
            _ => Err(bad(self.number, 0, format!("no tenant {i} in the frame"))),
        }
    }

    /// The config of the frame's `i`th tenant, once it is found to be
    /// canonical JSON whose `config_hash` is both the one the index lists
    /// and the hash of its content. Checked here, per config taken, so that
    /// a reader keeping most of a frame's tenants from an earlier snapshot
    /// does not parse the configs it leaves (docs/FORMAT.md).
    pub fn config(&self, i: usize) -> Result<&[u8], BundleError> {
        let (span, entry) = self.tenant(i)?;
        let config = &self.raw[span.config.clone()];
        let sealed =
            canonical::check_sealed(config).map_err(|source| BundleError::NonCanonicalConfig {
                tenant: entry.tenant.clone(),
                frame: self.number,
                source,
            })?;
        if sealed.config_hash.as_bytes() != entry.config_hash {
            return Err(bad(
                self.number,
                span.at,
                format!(
                    "the config of {} does not have the config_hash the index lists",
                    entry.tenant
                ),
            ));
        }
        if sealed.computed != sealed.config_hash {
            return Err(BundleError::ConfigHashMismatch {
                tenant: entry.tenant.clone(),
                claimed: sealed.config_hash.to_owned(),
                computed: sealed.computed,
            });
        }
        Ok(config)
    }

    /// The combined prompt of the frame's `i`th tenant, once it is found to
    /// start with Layer 1's base prompt and the separator.
    pub fn prompt(&self, i: usize) -> Result<&[u8], BundleError> {
        let (span, entry) = self.tenant(i)?;
        let prompt = &self.raw[span.prompt.clone()];
        let prefix = self
            .prompt_prefix
            .get_or_init(|| prompt_prefix(self.layer1))
            .as_ref()
            .map_err(|e| BundleError::BadLayer1(e.clone()))?;
        if !prompt.starts_with(prefix) {
            return Err(BundleError::PromptWithoutBase {
                tenant: entry.tenant.clone(),
            });
        }
        Ok(prompt)
    }
}

/// What every combined prompt starts with: Layer 1's `base_prompt`, then
/// the separator.
pub(crate) fn prompt_prefix(layer1: &[u8]) -> Result<Vec<u8>, String> {
    #[derive(serde::Deserialize)]
    struct Base<'a> {
        #[serde(borrow)]
        base_prompt: std::borrow::Cow<'a, str>,
    }
    let base: Base<'_> = serde_json::from_slice(layer1).map_err(|e| e.to_string())?;
    Ok([
        base.base_prompt.as_bytes(),
        crate::render::SEPARATOR.as_bytes(),
    ]
    .concat())
}

/// Checks the zstd frame header at the start of `frame`: a zstd frame (not
/// a skippable one) that carries its content checksum (docs/FORMAT.md).
pub(super) fn check_frame_header(number: u64, frame: &[u8]) -> Result<(), BundleError> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    const CONTENT_CHECKSUM_FLAG: u8 = 0x04;
    let missing = |reason| BundleError::FrameChecksumMissing {
        frame: number,
        reason,
    };
    match frame {
        [m0, m1, m2, m3, descriptor, ..] if [*m0, *m1, *m2, *m3] == ZSTD_MAGIC => {
            if descriptor & CONTENT_CHECKSUM_FLAG == 0 {
                return Err(missing("was written without its zstd content checksum"));
            }
            Ok(())
        }
        _ => Err(missing("does not start with a zstd frame header")),
    }
}
