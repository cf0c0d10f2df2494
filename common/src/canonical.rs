//! Canonical JSON: the one serialisation that is hashed and signed, RFC 8785
//! (the JSON Canonicalization Scheme, JCS), so that any JCS library
//! reproduces our bytes and hashes.
//!
//! Object keys sorted by their UTF-16 code units, no insignificant
//! whitespace, strings escaping only `"`, `\\` and control characters,
//! numbers as ECMAScript writes a double (`1` for 1.0, `1e-7`, `1e+21`).
//! docs/FORMAT.md specifies it for independent verifiers.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Serialises `value` canonically (RFC 8785), whatever order the struct
/// declares its fields in.
///
/// Through `serde_json::Value`, whose maps iterate in UTF-8 byte order:
/// the same as JCS's UTF-16 order unless a key holds a character from
/// U+E000 on, and then `serde_jcs` sorts it. Numbers go through
/// [`JcsNumbers`]. `serde_jcs` alone is the reference (a test compares
/// the two), but it parses every key back into a value to sort it: 35 µs
/// more a config, 35 s of CPU for a 1M-tenant build.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    value_to_vec(&serde_json::to_value(value)?)
}

/// [`to_vec`] of a value already in `serde_json::Value` form, without
/// copying it first (sealing a config serialises its value twice).
pub fn value_to_vec(value: &serde_json::Value) -> Result<Vec<u8>, serde_json::Error> {
    if has_late_key(value) {
        return serde_jcs::to_vec(value);
    }
    let mut out = Vec::with_capacity(1024);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, JcsNumbers);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// Whether an object key in `value` holds a character whose UTF-16 order
/// is not its UTF-8 order (U+E000 and above).
fn has_late_key(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Array(items) => items.iter().any(has_late_key),
        serde_json::Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.chars().any(|c| c >= '\u{e000}') || has_late_key(v)),
        _ => false,
    }
}

/// serde_json's compact output with RFC 8785's numbers: every number as
/// ECMAScript writes the double it reads as (`1` for 1.0, `1e+21`, an
/// integer past 2^53 rounded as a double is). Strings need nothing:
/// serde_json escapes exactly what JCS does, in lower-case hex.
struct JcsNumbers;

impl JcsNumbers {
    fn double<W: ?Sized + std::io::Write>(writer: &mut W, value: f64) -> std::io::Result<()> {
        if !value.is_finite() {
            return Err(std::io::Error::other("NaN and infinity have no JSON form"));
        }
        writer.write_all(ryu_js::Buffer::new().format_finite(value).as_bytes())
    }
}

impl serde_json::ser::Formatter for JcsNumbers {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        Self::double(w, v)
    }

    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        Self::double(w, f64::from(v))
    }

    fn write_u64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: u64) -> std::io::Result<()> {
        if v <= MAX_EXACT_INTEGER {
            return write!(w, "{v}");
        }
        Self::double(w, v as f64)
    }

    fn write_i64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: i64) -> std::io::Result<()> {
        if v.unsigned_abs() <= MAX_EXACT_INTEGER {
            return write!(w, "{v}");
        }
        Self::double(w, v as f64)
    }
}

/// The largest integer JSON carries exactly to every reader: RFC 8785
/// writes every number as an IEEE-754 double, which holds integers up to
/// 2^53 exactly and rounds larger ones.
pub const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// The first integer in `value` (depth first, in key order) that JCS would
/// round, with its path (`limits.max_file_bytes`, `fallbacks[2]`): what
/// validation refuses, since its hash would not name what was written.
pub fn inexact_integer(value: &serde_json::Value) -> Option<(String, String)> {
    fn walk(value: &serde_json::Value, path: &mut String) -> Option<(String, String)> {
        match value {
            serde_json::Value::Number(n) => {
                let exact = n
                    .as_u64()
                    .map(|u| u <= MAX_EXACT_INTEGER)
                    .or_else(|| n.as_i64().map(|i| i.unsigned_abs() <= MAX_EXACT_INTEGER))
                    .unwrap_or(true);
                (!exact).then(|| (path.clone(), n.to_string()))
            }
            serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            serde_json::Value::Object(map) => map.iter().find_map(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = walk(item, path);
                path.truncate(len);
                found
            }),
            _ => None,
        }
    }
    walk(value, &mut String::new())
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
            if last.as_ref().is_some_and(|l| utf16_order(l, &key).is_ge()) {
                return Err(NotCanonical {
                    offset: start,
                    reason: "object keys not in ascending UTF-16 order, or repeated",
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

    /// A number as RFC 8785 writes it: the ECMAScript form of its double
    /// (`1`, not `1.0`; `1e-7`; `1e+21`). The shortest round-trip form
    /// earlier releases wrote (`1.0`, `1e21`) is accepted too, so that a
    /// snapshot published before them is still served; publishers write
    /// only the JCS form, and an independent verifier may insist on it.
    fn number(&mut self) -> Result<(), NotCanonical> {
        let start = self.pos;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        let token = &self.b[start..self.pos];
        let digits = token.strip_prefix(b"-").unwrap_or(token);
        // Up to 15 digits is always an exact double in plain decimal: the
        // common case, checked here (no "-0": ECMAScript writes 0).
        let plain_integer = !digits.is_empty()
            && digits.len() <= 15
            && digits.iter().all(u8::is_ascii_digit)
            && (digits[0] != b'0' || token == b"0");
        if plain_integer {
            return Ok(());
        }
        let Some(value) = std::str::from_utf8(token)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Number>(t).ok())
        else {
            return Err(self.not_shortest(start));
        };
        let jcs = value
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| ryu_js::Buffer::new().format_finite(f).as_bytes() == token);
        let legacy = || {
            serde_json::to_string(&value)
                .ok()
                .as_deref()
                .map(str::as_bytes)
                == Some(token)
        };
        if jcs == Some(true) || legacy() {
            return Ok(());
        }
        Err(self.not_shortest(start))
    }

    fn not_shortest(&self, start: usize) -> NotCanonical {
        NotCanonical {
            offset: start,
            reason: "a number not in its RFC 8785 form (the shortest that reads back to the same double, as ECMAScript writes it)",
        }
    }
}

/// RFC 8785's order of object keys: by their UTF-16 code units (which
/// differs from UTF-8 byte order only between U+E000..U+FFFF and
/// characters beyond U+FFFF).
fn utf16_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    match (std::str::from_utf8(a), std::str::from_utf8(b)) {
        (Ok(a), Ok(b)) => a.encode_utf16().cmp(b.encode_utf16()),
        _ => a.cmp(b),
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

    /// RFC 8785's own example (its section 3.2.2 input and 3.2.3 output):
    /// numbers as ECMAScript writes them, strings escaped only where
    /// needed, keys in UTF-16 order.
    #[test]
    fn the_rfc_8785_example_serialises_to_its_published_bytes() {
        let input = r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#;
        let value: serde_json::Value = serde_json::from_str(input).expect("json");
        let expected = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
        assert_eq!(
            String::from_utf8(to_vec(&value).expect("jcs")).expect("utf8"),
            expected
        );
        // What the issue found: 1.0 and 0.00001 as JCS writes them.
        let cfg = json!({"temperature": 1.0, "alpha": 0.00001, "top_k": 5});
        assert_eq!(
            to_vec(&cfg).expect("jcs"),
            br#"{"alpha":0.00001,"temperature":1,"top_k":5}"#
        );
        // Keys by UTF-16 code units: U+1F600 (a surrogate pair, 0xD83D…)
        // before U+FB01, although its UTF-8 bytes sort after.
        let keys = json!({"\u{fb01}": 1, "\u{1f600}": 2});
        let bytes = to_vec(&keys).expect("jcs");
        assert_eq!(
            String::from_utf8(bytes).expect("utf8"),
            "{\"\u{1f600}\":2,\"\u{fb01}\":1}"
        );
        let sealed = sealed(keys);
        check_sealed(&sealed).expect("JCS key order is canonical");
        let swapped = String::from_utf8(sealed.clone()).expect("utf8").replacen(
            "\"\u{1f600}\":2,\"\u{fb01}\":1",
            "\"\u{fb01}\":1,\"\u{1f600}\":2",
            1,
        );
        assert!(
            check_sealed(swapped.as_bytes()).is_err(),
            "UTF-8 order refused"
        );
    }

    /// Snapshots of earlier releases wrote `1.0`: still served.
    #[test]
    fn the_number_spelling_of_earlier_releases_is_still_accepted() {
        let jcs = sealed(json!({"temperature": 1.0}));
        assert!(jcs.ends_with(b"\"temperature\":1}"), "publishers write JCS");
        let legacy_body = br#"{"temperature":1.0}"#;
        let hash = sha256_hex(legacy_body);
        let legacy = format!("{{\"config_hash\":\"{hash}\",\"temperature\":1.0}}");
        let s = check_sealed(legacy.as_bytes()).expect("legacy accepted");
        assert_eq!(s.computed, hash);
    }

    #[test]
    fn integers_past_2_to_the_53_are_found_with_their_path() {
        assert_eq!(
            inexact_integer(&json!({"a": [1, 9007199254740992u64]})),
            None
        );
        assert_eq!(
            inexact_integer(&json!({"a": {"b": [1, 9007199254740993u64]}})),
            Some(("a.b[1]".to_owned(), "9007199254740993".to_owned()))
        );
        assert!(inexact_integer(&json!({"n": -9007199254740993i64})).is_some());
    }

    /// The fast path writes what `serde_jcs` (the reference) writes.
    #[test]
    fn the_fast_path_writes_what_serde_jcs_writes() {
        let mut values = vec![
            json!({"a": [1.0, 0.1, 1e21, 1e-7, -0.0, 123456789012345678u64, -9007199254740993i64, 5e-324, 1.7976931348623157e308]}),
            json!({"s": "\u{1}\u{1f}\u{7f}\"\\/é€\u{2028}", "n": null, "t": true, "e": {}, "l": []}),
            json!({"\u{fb01}": 1, "\u{1f600}": {"\u{e000}": 2, "z": 3}}),
        ];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(json!({"f": f64::from_bits(x >> 2), "g": (x % 1000) as f64 / 100.0, "i": x >> (x % 64)}));
        }
        for value in values {
            if value["f"].as_f64().is_some_and(|f| !f.is_finite()) {
                continue;
            }
            assert_eq!(
                String::from_utf8(to_vec(&value).expect("fast")).expect("utf8"),
                serde_jcs::to_string(&value).expect("serde_jcs"),
                "{value}"
            );
        }
    }
}
