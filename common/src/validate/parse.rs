//! Reading a TOML source file into its typed form, with every failure a
//! [`Problem`] placed as an editor would: a syntax error by line and
//! column, a type error or an unknown key by field path
//! (`generation.temperature`). Layer 1 and tenant files go through here.

use serde::de::DeserializeOwned;

#[cfg(doc)]
use super::Problem;
use super::Reporter;

/// Parses `text` as TOML. A syntax error is reported on `r` (line and
/// column) and gives `None`.
pub(crate) fn parse_toml(r: &mut Reporter<'_>, text: &str) -> Option<toml::Value> {
    match toml::from_str::<toml::Value>(text) {
        Ok(doc) => Some(doc),
        Err(e) => {
            r.push("", format!("not valid TOML: {}", toml_reason(&e, text)));
            None
        }
    }
}

/// Deserialises a parsed document into `T` through its path, so that a
/// wrong type or an unknown key names its field (`policy.max_turns`). A
/// failure is reported on `r` and gives `None`.
pub(crate) fn typed<T: DeserializeOwned>(r: &mut Reporter<'_>, doc: toml::Value) -> Option<T> {
    match serde_path_to_error::deserialize(doc) {
        Ok(v) => Some(v),
        Err(e) => {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let message = e.into_inner().to_string();
            r.push(
                field,
                type_reason(message.lines().next().unwrap_or_default()),
            );
            None
        }
    }
}

/// A TOML error in `text` as one line: the message and where it is, as
/// an editor counts (line and column, from 1).
fn toml_reason(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("{msg} (line {line}, column {column})")
        }
        None => msg,
    }
}

/// A serde type error in words a person editing the file reads:
/// `invalid type: string "0.5", expected f64` becomes `expected a number,
/// found the string "0.5"`.
fn type_reason(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_owned();
    };
    let Some((found, expected)) = rest.split_once(", expected ") else {
        return message.to_owned();
    };
    let expected = match expected {
        "f64" | "f32" => "a number",
        "u8" | "u16" | "u32" | "u64" | "i32" | "i64" | "usize" => "a whole number",
        "a boolean" | "bool" => "true or false",
        other => other,
    };
    let found = match found.split_once(' ') {
        Some(("string", value)) => format!("the string {value}"),
        Some((kind, value)) => format!("the {kind} {value}"),
        None => found.to_owned(),
    };
    format!("expected {expected}, found {found}")
}
