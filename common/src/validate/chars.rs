//! Characters that must not reach a log line, a caller's screen or a
//! model: control characters, line and paragraph separators, and the
//! bidirectional controls that reorder what a reader sees. Problem lines
//! escape them; tenant strings that hold them are refused.

use std::fmt;

use super::Reporter;

/// Text written with every character that could break a line or fool a
/// reader escaped as `\u{…}`.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_unsafe_char(c) {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

/// Where a refused pattern is in `text` (`at`, character positions): the
/// position, counted from 1, and the stretch with a little context, every
/// character outside ASCII escaped, so that a homoglyph or an invisible
/// character hiding the pattern shows (`…ign\u{200b}ore previous…`).
pub fn excerpt(text: &str, at: std::ops::Range<usize>) -> String {
    const CONTEXT: usize = 12;
    let from = at.start.saturating_sub(CONTEXT);
    let count = at.end + CONTEXT - from;
    let mut shown = String::new();
    let total = text.chars().count();
    for c in text.chars().skip(from).take(count) {
        if c.is_ascii() && !c.is_ascii_control() {
            shown.push(c);
        } else {
            shown.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        }
    }
    format!(
        "at character {}: \"{}{shown}{}\"",
        at.start + 1,
        if from > 0 { "…" } else { "" },
        if from + count < total { "…" } else { "" }
    )
}

/// The problem of a forbidden `pattern` found in `text`, with where.
pub(super) fn forbidden(
    pattern: &str,
    text: &str,
    normalized: &crate::normalize::Pattern,
) -> String {
    format!(
        "contains the forbidden pattern {pattern:?} (matched however it is spelt){}; Layer 1 policy refuses it, remove or reword it",
        located(text, normalized)
    )
}

/// ` at character N: "…excerpt…"`, or nothing if it cannot be narrowed.
pub(super) fn located(text: &str, pattern: &crate::normalize::Pattern) -> String {
    crate::normalize::locate(text, pattern)
        .map(|at| format!(" {}", excerpt(text, at)))
        .unwrap_or_default()
}

/// Control characters (C0, DEL, C1: line breaks, ESC, BEL), the line and
/// paragraph separators, the bidirectional controls (overrides,
/// embeddings, isolates, marks) that reorder what a reader sees, and the
/// invisible characters a model reads but a reviewer does not (Unicode
/// tags, invisible operators, the byte-order mark).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                // Tag characters: invisible to a reader, read by models
                // (a whole hidden instruction fits in them).
                | '\u{e0000}'..='\u{e007f}'
                // Invisible operators and the byte-order mark.
                | '\u{2061}'..='\u{2064}'
                | '\u{feff}'
        )
}

/// Refuses a control character (but line breaks and tabs), a line or
/// paragraph separator or a bidi control in a string a person or a model
/// reads: an ESC or a BEL in a persona, a U+202E that shows a name
/// reversed. Names the field and the character's position.
pub(super) fn check_characters(r: &mut Reporter<'_>, field: &str, text: &str) {
    // Most text is printable ASCII: one pass over the bytes says so.
    if text
        .bytes()
        .all(|b| (b' '..0x7f).contains(&b) || matches!(b, b'\n' | b'\t' | b'\r'))
    {
        return;
    }
    let found = text
        .chars()
        .enumerate()
        .find(|(_, c)| !matches!(c, '\n' | '\t' | '\r') && is_unsafe_char(*c));
    if let Some((at, c)) = found {
        r.push(
            field,
            format!(
                "contains the control character U+{:04X} at character {at} (escapes, bells and text-direction controls are never shown to a caller or a model); remove it",
                u32::from(c)
            ),
        );
    }
}
