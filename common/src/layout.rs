//! The store's layout, in one place: the key of every object, the rules for
//! the names that become part of a key, the size limit of a signed
//! document, and every read of a pointer, a pin or a bundle's manifest.
//!
//! ```text
//! snapshots/<version, 20 digits>.bundle    immutable, never overwritten
//! channels/<channel>.json                  signed pointer: a channel's newest version
//! pins/<region>.json                       signed pin: the version a region serves
//! ```
//!
//! The publisher's commands, the agent's check and `inspect` all read a
//! signed document through [`read`] or [`read_changed`], so they agree on
//! what a key means and on how much of a document is read; the document's
//! own type decodes it (`Pointer::read_unverified`, `Pointer::read_channel`,
//! `bundle::peek_manifest`).

use crate::store::{ErrorKind, Fetched, ReadStore, StoreError};

/// The prefix of every bundle key.
pub const SNAPSHOTS: &str = "snapshots/";
/// The prefix of every channel pointer key.
pub const CHANNELS: &str = "channels/";
/// The prefix of every region pin key.
pub const PINS: &str = "pins/";

/// Pointers and pins are small; anything larger is not one.
pub const MAX_POINTER_BYTES: u64 = 64 * 1024;

/// The store key of version `version`'s bundle: `snapshots/<20 digits>.bundle`,
/// zero-padded so that keys sort in version order.
pub fn bundle_key(version: u64) -> String {
    format!("{SNAPSHOTS}{version:020}.bundle")
}

/// The version a bundle key names, if `key` is one.
pub fn bundle_version(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(SNAPSHOTS)?.strip_suffix(".bundle")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The store key of channel `name`'s pointer.
pub fn channel_key(name: &str) -> String {
    format!("{CHANNELS}{name}.json")
}

/// The store key of region `name`'s pin.
pub fn pin_key(name: &str) -> String {
    format!("{PINS}{name}.json")
}

/// A region or channel name no publisher could write a key for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} {name:?} is not a valid name: use 1 to 64 of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
)]
pub struct BadName {
    /// `channel` or `region`.
    pub what: &'static str,
    /// The name given.
    pub name: String,
}

/// Checks a region or channel name before it becomes part of a store key:
/// 1 to 64 of `a-z`, `0-9` and (not first) `-`, `_`, `.`.
pub fn check_name(what: &'static str, name: &str) -> Result<(), BadName> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(BadName {
            what,
            name: name.to_owned(),
        })
    }
}

/// A signed document's bytes as read, with the store's ETag: what a
/// conditional read or a compare-and-swap compares with.
#[derive(Debug, Clone)]
pub struct Document {
    /// The store's ETag of these bytes.
    pub etag: String,
    /// The document, exactly as stored.
    pub bytes: Vec<u8>,
}

/// Reads the document at `key` (`None` if the store has none), at most
/// [`MAX_POINTER_BYTES`].
pub fn read(store: &dyn ReadStore, key: &str) -> Result<Option<Document>, StoreError> {
    read_changed(store, key, None)
}

/// Reads the document at `key` only if it changed since `seen` (a
/// conditional GET); unchanged, `seen` is returned, so that the caller
/// verifies it again (its expiry still counts on every poll). `None` if
/// the store has no such document.
pub fn read_changed(
    store: &dyn ReadStore,
    key: &str,
    seen: Option<&Document>,
) -> Result<Option<Document>, StoreError> {
    match store.get_if_changed(key, seen.map(|s| s.etag.as_str()), MAX_POINTER_BYTES) {
        Ok(Fetched::Object(obj)) => Ok(Some(Document {
            etag: obj.etag,
            bytes: obj.bytes,
        })),
        Ok(Fetched::NotModified) => match seen {
            Some(seen) => Ok(Some(seen.clone())),
            // Only a broken store answers 304 to an unconditional GET.
            None => Err(StoreError::Fatal {
                key: key.to_owned(),
                source: "304 Not Modified to an unconditional GET".into(),
            }),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_keys_sort_in_version_order_and_parse_back() {
        assert_eq!(bundle_key(42), "snapshots/00000000000000000042.bundle");
        assert_eq!(bundle_version(&bundle_key(42)), Some(42));
        assert!(bundle_key(9) < bundle_key(10));
        assert_eq!(bundle_version("snapshots/42.bundle"), None);
        assert_eq!(bundle_version("channels/stable.json"), None);
    }

    #[test]
    fn names_that_could_leave_their_prefix_are_refused() {
        assert!(check_name("region", "eu-west-1").is_ok());
        for bad in ["", "../x", "a/b", "Upper", "-lead", &"x".repeat(65)] {
            assert!(check_name("region", bad).is_err(), "{bad:?}");
        }
        assert_eq!(pin_key("eu"), "pins/eu.json");
        assert_eq!(channel_key("stable"), "channels/stable.json");
    }
}
