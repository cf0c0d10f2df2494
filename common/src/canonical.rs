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

/// Checks that `bytes` are exactly the canonical serialisation of `value`
/// (what they were parsed into): a signed document has one spelling, so a
/// pretty-printed copy, a trailing newline or a repeated key is refused.
pub fn require_canonical<T: Serialize>(bytes: &[u8], value: &T) -> Result<(), NotCanonical> {
    let canonical = to_vec(value).map_err(|_| NotCanonical {
        offset: 0,
        reason: "cannot be serialised",
    })?;
    if canonical == bytes {
        return Ok(());
    }
    let offset = canonical
        .iter()
        .zip(bytes)
        .position(|(a, b)| a != b)
        .unwrap_or(canonical.len().min(bytes.len()));
    Err(NotCanonical {
        offset,
        reason: "differs from the canonical serialisation (sorted keys, no whitespace, nothing after)",
    })
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Why bytes are not canonical JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not canonical JSON at byte {offset}: {reason}")]
pub struct NotCanonical {
    /// Where the first difference from the canonical form is.
    pub offset: usize,
    /// What is there instead.
    pub reason: &'static str,
}

/// A canonical JSON object that carries its own hash: what [`check_sealed`]
/// found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// The value of the top-level `config_hash` member, as written.
    pub config_hash: &'a str,
    /// Lower-case hex SHA-256 of the canonical JSON of the object without
    /// that member: what `config_hash` must be.
    pub computed: String,
}

/// Checks that `json` is exactly the canonical serialisation of a JSON
/// object with a string member `config_hash` (an effective config), and
/// hashes it without that member, in one pass and without building the
/// value: the agent checks every config it stores, 100,000 on a new node.
///
/// In canonical bytes, removing one member and one comma next to it gives
/// the canonical bytes of the object without it, so the hash is taken over
/// the bytes around the member.
pub fn check_sealed(json: &[u8]) -> Result<Sealed<'_>, NotCanonical> {
    if let Err(e) = std::str::from_utf8(json) {
        return Err(NotCanonical {
            offset: e.valid_up_to(),
            reason: "not UTF-8",
        });
    }
    // Canonical JSON has no whitespace between tokens and escapes every
    // control character inside strings: no byte below 0x20 anywhere. One
    // pass the compiler vectorises, so strings are then scanned by memchr.
    if json.iter().fold(false, |found, b| found | (*b < 0x20)) {
        return Err(NotCanonical {
            offset: json.iter().position(|b| *b < 0x20).unwrap_or_default(),
            reason: "whitespace between tokens, or an unescaped control character",
        });
    }
    let mut scan = Scan {
        b: json,
        pos: 0,
        depth: 0,
        sealed: None,
    };
    if json.first() != Some(&b'{') {
        return Err(scan.err("not a JSON object"));
    }
    scan.value(true)?;
    if scan.pos != json.len() {
        return Err(scan.err("bytes after the object"));
    }
    let Some((member, value)) = scan.sealed else {
        return Err(NotCanonical {
            offset: 0,
            reason: "no string member config_hash",
        });
    };
    let (cut_from, cut_to) = if json.get(member.end) == Some(&b',') {
        (member.start, member.end + 1)
    } else if member.start > 0 && json[member.start - 1] == b',' {
        (member.start - 1, member.end)
    } else {
        (member.start, member.end)
    };
    let mut hash = Sha256::new();
    hash.update(&json[..cut_from]);
    hash.update(&json[cut_to..]);
    Ok(Sealed {
        // The whole document is UTF-8 and a string's content ends on a quote.
        config_hash: std::str::from_utf8(&json[value]).unwrap_or_default(),
        computed: hex::encode(hash.finalize()),
    })
}

/// The deepest nesting [`check_sealed`] follows.
const MAX_DEPTH: u32 = 64;

/// A recursive-descent check of canonical JSON (docs/FORMAT.md).
struct Scan<'a> {
    b: &'a [u8],
    pos: usize,
    depth: u32,
    /// The top-level `config_hash` member's bytes and its string's content.
    sealed: Option<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Scan<'_> {
    fn err(&self, reason: &'static str) -> NotCanonical {
        NotCanonical {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn value(&mut self, top: bool) -> Result<(), NotCanonical> {
        match self.peek() {
            Some(b'{') => self.nested(|s| s.object(top)),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a value (no whitespace between tokens)")),
            None => Err(self.err("ends inside a value")),
        }
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), NotCanonical>,
    ) -> Result<(), NotCanonical> {
        if self.depth == MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), NotCanonical> {
        if self.peek() != Some(byte) {
            return Err(self.err(reason));
        }
        self.pos += 1;
        Ok(())
    }

    fn object(&mut self, top: bool) -> Result<(), NotCanonical> {
        self.pos += 1;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        let mut last: Option<std::borrow::Cow<'_, [u8]>> = None;
        loop {
            let start = self.pos;
            let key = self.string()?;
            let key = unescape(&self.b[key]);
            if last.as_ref().is_some_and(|l| *l >= key) {
                return Err(NotCanonical {
                    offset: start,
                    reason: "object keys not in ascending byte order, or repeated",
                });
            }
            self.expect(b':', "expected ':' right after an object key")?;
            let value_at = self.pos;
            self.value(false)?;
            if top && &*key == b"config_hash" {
                if self.b[value_at] != b'"' {
                    return Err(NotCanonical {
                        offset: value_at,
                        reason: "config_hash is not a string",
                    });
                }
                self.sealed = Some((start..self.pos, value_at + 1..self.pos - 1));
            }
            last = Some(key);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}' after an object member")),
            }
        }
    }

    fn array(&mut self) -> Result<(), NotCanonical> {
        self.pos += 1;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.value(false)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']' after an array element")),
            }
        }
    }

    /// A string with only the escapes the canonical form writes; returns
    /// the range of its content (between the quotes).
    fn string(&mut self) -> Result<std::ops::Range<usize>, NotCanonical> {
        self.expect(b'"', "expected a string")?;
        let start = self.pos;
        loop {
            let Some(found) = memchr::memchr2(b'"', b'\\', &self.b[self.pos..]) else {
                self.pos = self.b.len();
                return Err(self.err("ends inside a string"));
            };
            self.pos += found;
            if self.b[self.pos] == b'"' {
                self.pos += 1;
                return Ok(start..self.pos - 1);
            }
            let len = match self.b.get(self.pos + 1) {
                Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                Some(b'u') => match self.b.get(self.pos + 2..self.pos + 6) {
                    Some([b'0', b'0', hi @ (b'0' | b'1'), lo])
                        if lo.is_ascii_digit() || (b'a'..=b'f').contains(lo) =>
                    {
                        let c = (hi - b'0') << 4 | hex_value(*lo);
                        // These have short escapes.
                        if matches!(c, 0x08 | 0x09 | 0x0a | 0x0c | 0x0d) {
                            0
                        } else {
                            6
                        }
                    }
                    _ => 0,
                },
                _ => 0,
            };
            if len == 0 {
                return Err(self.err(
                    "an escape the canonical form does not write (only \\\" \\\\ \\b \\f \\n \\r \\t and \\u00xx for other control characters)",
                ));
            }
            self.pos += len;
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), NotCanonical> {
        if self.b[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err("expected true, false or null"))
        }
    }

    /// An integer in plain decimal, or any other number in the shortest
    /// form that reads back to the same double, as `serde_json` writes it.
    fn number(&mut self) -> Result<(), NotCanonical> {
        let start = self.pos;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        let token = &self.b[start..self.pos];
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        // Up to 18 digits always fits an i64: the common case, checked here.
        let plain_integer = !digits.is_empty()
            && digits.len() <= 18
            && digits.iter().all(u8::is_ascii_digit)
            && (digits[0] != b'0' || token == b"0");
        if plain_integer {
            return Ok(());
        }
        let canonical = std::str::from_utf8(token)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Number>(t).ok())
            .and_then(|n| serde_json::to_string(&n).ok());
        if canonical.as_deref().map(str::as_bytes) != Some(token) {
            return Err(NotCanonical {
                offset: start,
                reason: "a number not in its shortest form",
            });
        }
        Ok(())
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        _ => digit - b'a' + 10,
    }
}

/// A canonical string's content with its escapes decoded, to compare keys
/// by their bytes; borrowed when it has none (every key Strata writes).
fn unescape(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !raw.contains(&b'\\') {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != b'\\' {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        // Only the escapes `Scan::string` accepted reach here.
        let (byte, len) = match raw.get(i + 1) {
            Some(b'b') => (0x08, 2),
            Some(b'f') => (0x0c, 2),
            Some(b'n') => (0x0a, 2),
            Some(b'r') => (0x0d, 2),
            Some(b't') => (0x09, 2),
            Some(b'u') => {
                let hi = raw.get(i + 4).copied().map_or(0, hex_value);
                let lo = raw.get(i + 5).copied().map_or(0, hex_value);
                (hi << 4 | lo, 6)
            }
            Some(other) => (*other, 2),
            None => (b'\\', 1),
        };
        out.push(byte);
        i += len;
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sealed(value: serde_json::Value) -> Vec<u8> {
        let mut v = value;
        let hash = sha256_hex(&to_vec(&v).expect("json"));
        v["config_hash"] = json!(hash);
        to_vec(&v).expect("json")
    }

    #[test]
    fn canonical_configs_pass_and_hash_as_the_publisher_seals_them() {
        for value in [
            json!({}),
            json!({"a": 1, "z": [1.5, -2, 0.1, 1e-7, 12345678901234567890u64, -9223372036854775808i64]}),
            json!({"b\"q": "x\u{1}\n\t\\é€😀", "a": {"nested": [true, false, null, {}, []]}}),
            json!({"temperature": 0.7, "zz": "last"}),
        ] {
            let bytes = sealed(value.clone());
            let s = check_sealed(&bytes).expect("canonical");
            assert_eq!(s.computed, sha256_hex(&to_vec(&value).expect("json")));
            assert_eq!(s.config_hash, s.computed);
        }
    }

    #[test]
    fn every_departure_from_the_canonical_form_is_refused() {
        let good = sealed(json!({"a": 1, "b": [0.5, "x"]}));
        let text = String::from_utf8(good.clone()).expect("utf8");
        let hash = &text[text.find("config_hash").expect("member") + 14..][..64];
        for bad in [
            text.replace(":1,", ": 1,"),
            format!("{text}\n"),
            text.replace("{\"a\":1,\"b\":[0.5,\"x\"]", "{\"b\":[0.5,\"x\"],\"a\":1"),
            text.replace("0.5", "0.50"),
            text.replace("0.5", "5e-1"),
            text.replace(":1,", ":01,"),
            text.replace(":1,", ":-0,"),
            text.replace("\"x\"", "\"\\u0078\""),
            text.replace("\"x\"", "\"\\/\""),
            text.replace("\"x\"", "\"\\u000a\""),
            text.replace("\"a\":1,", "\"a\":1,\"a\":1,"),
            text.replace(&format!("\"{hash}\""), "7"),
            "[]".to_owned(),
            "{\"a\":1}".to_owned(),
        ] {
            assert!(check_sealed(bad.as_bytes()).is_err(), "accepted {bad}");
        }
        assert!(check_sealed(b"{\"config_hash\":\"\xff\"}").is_err());
    }
}
