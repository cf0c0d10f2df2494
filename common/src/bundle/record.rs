//! One payload record, the unit of every frame (docs/FORMAT.md, "Payload"):
//!
//! ```text
//! kind (1 byte) | K (u32 LE, ≤ 1024) | key (K bytes, UTF-8) | V (u32 LE) | value (V bytes)
//! ```
//! Written by [`encode`], read from a decoded frame by [`decode`] and from
//! the streamed index by [`read_next`]: one layout, in one place.

use std::io::{self, BufRead};
use std::ops::Range;

use super::{Limits, MAX_KEY_LEN};

/// What a payload record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Layer 1 as JSON; key `layer1`. The index's first record.
    Layer1 = 1,
    /// A tenant's effective config as canonical JSON; key the tenant id.
    Config = 2,
    /// A tenant's combined system prompt, UTF-8; key the tenant id.
    Prompt = 3,
    /// A phone route; key the E.164 number, value the tenant id.
    Route = 4,
    /// In the index: a body frame's compressed and decompressed sizes. The
    /// tenant records after it name the tenants that frame holds.
    Frame = 5,
    /// In the index (format 2) or a chunk (format 3): a tenant id and its
    /// config hash.
    Tenant = 6,
    /// Format 3, in the root: a named object (`layer1`, `dictionary`) and
    /// its [`crate::bundle::tree::ObjectRef`].
    Object = 7,
    /// Format 3, in the root: a page of chunk references, keyed by its
    /// first tenant id.
    Page = 8,
    /// Format 3, in the root: a page of routes, keyed by its first number.
    RoutePage = 9,
    /// Format 3, in a page: a chunk of tenants, keyed by its first tenant
    /// id ([`crate::bundle::tree::ChunkRef`]).
    Chunk = 10,
}

impl RecordKind {
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Layer1,
            2 => Self::Config,
            3 => Self::Prompt,
            4 => Self::Route,
            5 => Self::Frame,
            6 => Self::Tenant,
            7 => Self::Object,
            8 => Self::Page,
            9 => Self::RoutePage,
            10 => Self::Chunk,
            _ => return None,
        })
    }
}

/// One decoded payload record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it holds.
    pub kind: RecordKind,
    /// Its key (tenant id, number, or `layer1`).
    pub key: String,
    /// Its value bytes.
    pub value: Vec<u8>,
}

/// Appends one encoded record to `out`. Public so that tests can build
/// payloads a publisher never would.
pub fn encode(out: &mut Vec<u8>, kind: RecordKind, key: &str, value: &[u8]) -> io::Result<()> {
    let too_long = |what| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("record {what} too long"),
        )
    };
    let key_len = u32::try_from(key.len())
        .ok()
        .filter(|l| *l <= MAX_KEY_LEN)
        .ok_or_else(|| too_long("key"))?;
    let value_len = u32::try_from(value.len()).map_err(|_| too_long("value"))?;
    out.push(kind as u8);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&value_len.to_le_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// One record borrowed from a decompressed frame.
#[derive(Debug)]
pub(crate) struct RawRecord<'a> {
    pub kind: RecordKind,
    pub key: &'a str,
    pub value: &'a [u8],
    /// Where the value sits in the buffer.
    pub value_at: Range<usize>,
}

/// Decodes the record at `*pos` of `buf` and moves `pos` past it.
pub(crate) fn decode<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    limits: &Limits,
) -> Result<RawRecord<'a>, String> {
    let mut at = *pos;
    let mut take = |n: usize, what: &str| -> Result<Range<usize>, String> {
        let range = at..at.saturating_add(n);
        buf.get(range.clone())
            .ok_or_else(|| format!("ends inside the {what}"))?;
        at = range.end;
        Ok(range)
    };
    let u32_at = |r: Range<usize>| {
        let b = &buf[r];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    let kind = buf[take(1, "kind")?][0];
    let kind = RecordKind::from_byte(kind).ok_or_else(|| format!("unknown record kind {kind}"))?;
    let key_len = u32_at(take(4, "key length")?);
    if key_len > MAX_KEY_LEN {
        return Err(format!("key of {key_len} bytes"));
    }
    let key = std::str::from_utf8(&buf[take(key_len as usize, "key")?])
        .map_err(|_| "key is not UTF-8".to_owned())?;
    let value_len = u32_at(take(4, "value length")?);
    if value_len > limits.max_value_bytes {
        return Err(format!("value of {value_len} bytes, over the limit"));
    }
    let value_at = take(value_len as usize, "value")?;
    *pos = at;
    Ok(RawRecord {
        kind,
        key,
        value: &buf[value_at.clone()],
        value_at,
    })
}

/// Why [`read_next`] stopped.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The record would take the stream past its decompressed budget.
    OverBudget,
    /// The stream ended inside the named part of a record.
    Truncated(&'static str),
    /// A length over the limits.
    Malformed(String),
    /// The stream itself failed (a zstd error, an I/O error).
    Io(io::Error),
}

/// Reads the next whole record of `r` into `rec` (replacing its content),
/// never reading more than `budget` bytes; `false` at the end of the stream.
/// Lengths are checked before the bytes they announce are read.
pub(crate) fn read_next<R: BufRead>(
    r: &mut R,
    rec: &mut Vec<u8>,
    limits: &Limits,
    budget: u64,
) -> Result<bool, StreamError> {
    rec.clear();
    if r.fill_buf().map_err(StreamError::Io)?.is_empty() {
        return Ok(false);
    }
    let mut fill = |rec: &mut Vec<u8>, n: usize, what: &'static str| {
        if (rec.len() + n) as u64 > budget {
            return Err(StreamError::OverBudget);
        }
        let start = rec.len();
        rec.resize(start + n, 0);
        r.read_exact(&mut rec[start..]).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StreamError::Truncated(what),
            _ => StreamError::Io(e),
        })
    };
    fill(rec, 5, "key length")?;
    let key_len = u32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
    if key_len > MAX_KEY_LEN {
        return Err(StreamError::Malformed(format!("key of {key_len} bytes")));
    }
    fill(rec, key_len as usize + 4, "key")?;
    let n = rec.len();
    let value_len = u32::from_le_bytes([rec[n - 4], rec[n - 3], rec[n - 2], rec[n - 1]]);
    if value_len > limits.max_value_bytes {
        return Err(StreamError::Malformed(format!(
            "value of {value_len} bytes, over the limit"
        )));
    }
    fill(rec, value_len as usize, "value")?;
    Ok(true)
}

/// `bytes` as 64 lower-case hex digits (a config hash in the index).
pub(crate) fn hex_digest(bytes: &[u8]) -> Result<[u8; 64], String> {
    let digest: [u8; 64] = bytes
        .try_into()
        .map_err(|_| "config hash is not 64 hex digits".to_owned())?;
    if digest
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(digest)
    } else {
        Err("config hash is not lower-case hex".to_owned())
    }
}
