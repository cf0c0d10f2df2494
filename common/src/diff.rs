//! What changed between two snapshots: tenants added, removed and changed,
//! with the fields that changed. Tenants are compared by the config hashes
//! in each bundle's index; only the body frames holding a changed tenant
//! are decompressed, so two 100k-tenant snapshots that differ in a few
//! tenants are compared without decoding the rest.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::bundle::{Frames, Limits, SignatureCheck};
use crate::model::SnapshotVersion;
use crate::operator::{OperatorError, fetch_bundle};
use crate::store::ReadStore;

/// One tenant whose config or prompt differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Changed {
    /// The tenant.
    pub tenant_id: String,
    /// Dotted paths of the effective config that differ
    /// (`generation.temperature`), and `prompt` if the system prompt does.
    pub fields: Vec<String>,
    /// Each of `fields` with its old and new value, shortened to
    /// [`SHOWN_CHARS`] (a prompt by its length): what a reviewer reads.
    pub values: Vec<FieldChange>,
}

/// One changed field's values, as text (JSON for config values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// The dotted path, or `prompt`.
    pub field: String,
    /// The old value; none if the field is new.
    pub old: Option<String>,
    /// The new value; none if the field is gone.
    pub new: Option<String>,
}

/// How much of a value a diff shows.
pub const SHOWN_CHARS: usize = 80;

/// `value` as JSON text, cut at [`SHOWN_CHARS`] characters.
fn shown(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= SHOWN_CHARS {
        return text;
    }
    let cut: String = text.chars().take(SHOWN_CHARS).collect();
    format!("{cut}… ({} characters)", text.chars().count())
}

/// The difference between snapshot `from` and snapshot `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// The older side.
    pub from: u64,
    /// The newer side.
    pub to: u64,
    /// Layer 1's version on each side.
    pub layer1_versions: (String, String),
    /// Whether Layer 1 itself differs.
    pub layer1_changed: bool,
    /// Tenants only in `to`.
    pub added: Vec<String>,
    /// Tenants only in `from`.
    pub removed: Vec<String>,
    /// Tenants in both whose config or prompt differs.
    pub changed: Vec<Changed>,
}

/// Compares the bundles of versions `from` and `to` in `store` (verified
/// with `check`).
pub fn diff(
    store: &dyn ReadStore,
    from: u64,
    to: u64,
    check: SignatureCheck<'_>,
) -> Result<Diff, OperatorError> {
    let limits = Limits::agents();
    let sides = [from, to].map(|v| {
        let key = SnapshotVersion(v).bundle_key();
        fetch_bundle(store, v, check, &limits).map(|b| (key, b))
    });
    let [a, b] = sides;
    let (a_key, a) = a?;
    let (b_key, b) = b?;
    let index = |key: &str, bundle: &crate::operator::StoredBundle| {
        let mut reader = bundle.reader(store, key, &limits)?;
        let layer1 = reader.layer1().to_vec();
        let mut hashes = BTreeMap::new();
        while let Some(frame) = reader.next_listed().map_err(|source| bad(key, source))? {
            for t in frame.tenants {
                hashes.insert(t.tenant, t.config_hash);
            }
        }
        Ok::<_, OperatorError>((layer1, hashes))
    };
    let (a_layer1, a_hashes) = index(&a_key, &a)?;
    let (b_layer1, b_hashes) = index(&b_key, &b)?;
    let layer1_changed = a_layer1 != b_layer1;
    let added: Vec<String> = b_hashes
        .keys()
        .filter(|t| !a_hashes.contains_key(*t))
        .cloned()
        .collect();
    let removed: Vec<String> = a_hashes
        .keys()
        .filter(|t| !b_hashes.contains_key(*t))
        .cloned()
        .collect();
    let candidates: BTreeSet<String> = a_hashes
        .iter()
        .filter(|(t, h)| b_hashes.get(*t).is_some_and(|o| o != *h || layer1_changed))
        .map(|(t, _)| t.clone())
        .collect();
    let a_bodies = bodies(a.reader(store, &a_key, &limits)?, &a_key, &candidates)?;
    let b_bodies = bodies(b.reader(store, &b_key, &limits)?, &b_key, &candidates)?;
    let mut changed = Vec::new();
    for tenant in &candidates {
        let (Some((ac, ap)), Some((bc, bp))) = (a_bodies.get(tenant), b_bodies.get(tenant)) else {
            continue;
        };
        let mut found = Vec::new();
        changed_paths(ac, bc, String::new(), &mut found);
        let mut values: Vec<FieldChange> = found
            .into_iter()
            .filter(|(f, ..)| f != "config_hash")
            .map(|(field, old, new)| FieldChange {
                field,
                old: old.map(shown),
                new: new.map(shown),
            })
            .collect();
        if ap != bp {
            values.push(FieldChange {
                field: "prompt".to_owned(),
                old: Some(format!(
                    "{} characters",
                    String::from_utf8_lossy(ap).chars().count()
                )),
                new: Some(format!(
                    "{} characters",
                    String::from_utf8_lossy(bp).chars().count()
                )),
            });
        }
        if !values.is_empty() {
            changed.push(Changed {
                tenant_id: tenant.clone(),
                fields: values.iter().map(|v| v.field.clone()).collect(),
                values,
            });
        }
    }
    Ok(Diff {
        from,
        to,
        layer1_versions: (
            a.header.manifest.layer1_version.clone(),
            b.header.manifest.layer1_version.clone(),
        ),
        layer1_changed,
        added,
        removed,
        changed,
    })
}

fn bad(key: &str, source: crate::bundle::BundleError) -> OperatorError {
    OperatorError::Bundle {
        key: key.to_owned(),
        source,
    }
}

/// The configs (parsed) and prompts of `wanted` tenants, decompressing
/// only the frames that hold one.
fn bodies(
    mut reader: Box<dyn Frames + '_>,
    key: &str,
    wanted: &BTreeSet<String>,
) -> Result<BTreeMap<String, (serde_json::Value, Vec<u8>)>, OperatorError> {
    let mut out = BTreeMap::new();
    while let Some(frame) = reader.next_listed().map_err(|e| bad(key, e))? {
        if !frame.tenants.iter().any(|t| wanted.contains(&t.tenant)) {
            continue;
        }
        let decoded = reader.bodies(&frame).map_err(|e| bad(key, e))?;
        for (i, t) in frame.tenants.iter().enumerate() {
            if !wanted.contains(&t.tenant) {
                continue;
            }
            let config = decoded.config(i).map_err(|e| bad(key, e))?;
            let config: serde_json::Value =
                serde_json::from_slice(config).map_err(|e| OperatorError::Unreadable {
                    key: key.to_owned(),
                    reason: format!("config of {}: {e}", t.tenant),
                })?;
            let prompt = decoded.prompt(i).map_err(|e| bad(key, e))?.to_vec();
            out.insert(t.tenant.clone(), (config, prompt));
        }
    }
    Ok(out)
}

/// A changed field: its dotted path, its old and its new value.
type Found<'v> = (
    String,
    Option<&'v serde_json::Value>,
    Option<&'v serde_json::Value>,
);

/// Appends the dotted paths where `a` and `b` differ, with both values:
/// objects are compared key by key, anything else (arrays, numbers,
/// strings) as a whole.
fn changed_paths<'v>(
    a: &'v serde_json::Value,
    b: &'v serde_json::Value,
    at: String,
    out: &mut Vec<Found<'v>>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => changed_paths(p, q, path, out),
                    (p, q) => out.push((path, p, q)),
                }
            }
        }
        _ if a != b => out.push((at, Some(a), Some(b))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::changed_paths;
    use serde_json::json;

    #[test]
    fn changed_fields_are_named_by_their_dotted_path() {
        let a = json!({"generation": {"temperature": 0.4, "max_tokens": 10}, "name": "A", "phone_numbers": ["+1"]});
        let b = json!({"generation": {"temperature": 0.5, "max_tokens": 10}, "name": "A", "phone_numbers": ["+1", "+2"], "x": 1});
        let mut out = Vec::new();
        changed_paths(&a, &b, String::new(), &mut out);
        let paths: Vec<&str> = out.iter().map(|(p, ..)| p.as_str()).collect();
        assert_eq!(paths, ["generation.temperature", "phone_numbers", "x"]);
        assert_eq!(out[0].1, Some(&json!(0.4)));
        assert_eq!(out[0].2, Some(&json!(0.5)));
        assert_eq!(out[2].1, None);
    }
}
