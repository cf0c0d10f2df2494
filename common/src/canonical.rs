//! Canonical JSON: the one serialisation that is hashed and signed.
//!
//! Object keys sorted by their UTF-8 bytes, no insignificant whitespace, strings
//! escaped as `serde_json` does (only `"`, `\` and control characters), numbers
//! in their shortest round-trip form. docs/FORMAT.md specifies it for
//! independent verifiers.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Serialises `value` canonically.
///
/// Going through `serde_json::Value` sorts every object's keys (its map is a
/// `BTreeMap`), whatever order the struct declares its fields in.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    serde_json::to_vec(&value)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
