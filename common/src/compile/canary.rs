//! Canary arms: `tenants/<id>.canary.toml` (or a second active row with
//! `canary_percent`) is a whole overlay of tenant `<id>` plus the share of
//! sessions it answers. It is validated and rendered like the tenant's
//! own file, and written as the record `<id>.canary` whose config carries
//! `canary` ([`Canary`]): the arm's hash and percent. Its numbers must be
//! the stable arm's (routes name tenants, not arms).

use std::collections::BTreeMap;

use crate::model::{CANARY_SUFFIX, Canary, EffectiveConfig};
use crate::validate::{Problem, Reporter};

/// The tenant a record key belongs to, and whether it is a canary arm.
pub(super) fn base_of(key: &str) -> (&str, bool) {
    match key.strip_suffix(CANARY_SUFFIX) {
        Some(base) => (base, true),
        None => (key, false),
    }
}

/// Takes `canary_percent` out of a canary's document (it is not an
/// overlay field), checked: a number from 0 to 100 in steps of 0.01.
pub(super) fn take_percent(r: &mut Reporter<'_>, doc: &mut toml::Value) -> Option<f64> {
    let taken = doc.as_table_mut().and_then(|t| t.remove("canary_percent"));
    let percent = match taken {
        None => {
            r.push(
                "canary_percent",
                "missing; a canary sets the share of sessions it answers, 0 to 100 (canary_percent = 5)",
            );
            return None;
        }
        Some(toml::Value::Integer(n)) => n as f64,
        Some(toml::Value::Float(f)) => f,
        Some(other) => {
            r.push(
                "canary_percent",
                format!(
                    "expected a number from 0 to 100, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    let steps = percent * 100.0;
    if !(0.0..=100.0).contains(&percent) || (steps - steps.round()).abs() > 1e-6 {
        r.push(
            "canary_percent",
            format!("{percent} is not a share of sessions; use 0 to 100 in steps of 0.01 (12.5)"),
        );
        return None;
    }
    Some(steps.round() / 100.0)
}

/// Seals `cfg` as the canary arm answering `percent` of sessions: its
/// `canary.arm` is the hash it has without that section.
pub(super) fn seal(cfg: &mut EffectiveConfig, percent: f64) -> Result<Vec<u8>, serde_json::Error> {
    cfg.canary = None;
    cfg.seal()?;
    cfg.canary = Some(Canary {
        arm: cfg.config_hash.clone(),
        percent,
    });
    cfg.seal()
}

/// Whether two lists name the same numbers (routes are served sorted, a
/// file lists them in any order).
fn same_numbers(a: &[String], b: &[String]) -> bool {
    let a: std::collections::BTreeSet<&String> = a.iter().collect();
    let b: std::collections::BTreeSet<&String> = b.iter().collect();
    a == b
}

/// Format 3's incremental compile: a canary is compiled (its chunk not
/// kept) whenever its tenant is, or is gone, so that it is checked against
/// its tenant's numbers and never outlives it.
pub(super) fn compile_with_tenant(tenants: &crate::source::Tenants, shas: &mut [Option<String>]) {
    let canaries: Vec<usize> = (0..tenants.len())
        .filter(|i| base_of(tenants.id(*i)).1)
        .collect();
    if canaries.is_empty() {
        return;
    }
    let index: std::collections::HashMap<&str, usize> =
        (0..tenants.len()).map(|i| (tenants.id(i), i)).collect();
    for i in canaries {
        let base = base_of(tenants.id(i)).0;
        if index.get(base).is_none_or(|b| shas[*b].is_none()) {
            shas[i] = None;
        }
    }
}

/// The stable arms' numbers, for the tenants that have a canary, and the
/// check of each canary against them.
#[derive(Debug, Default)]
pub(super) struct Arms {
    /// Tenants whose canary the source holds.
    with_canary: std::collections::BTreeSet<String>,
    /// Their stable arm's numbers, once taken.
    stable: BTreeMap<String, Vec<String>>,
}

impl Arms {
    /// For a source whose record keys are `keys`.
    pub(super) fn new<'a>(keys: impl Iterator<Item = &'a str>) -> Self {
        let with_canary = keys
            .filter_map(|k| k.strip_suffix(CANARY_SUFFIX))
            .map(str::to_owned)
            .collect();
        Self {
            with_canary,
            stable: BTreeMap::new(),
        }
    }

    /// Notes a stable arm's numbers (its canary, sorting after it, is
    /// checked against them).
    pub(super) fn stable(&mut self, tenant: &str, phones: &[String]) {
        if self.with_canary.contains(tenant) {
            self.stable.insert(tenant.to_owned(), phones.to_vec());
        }
    }

    /// The problem with canary `key` (its numbers `phones`, filed under
    /// `file`), if its stable arm is missing or routes other numbers.
    pub(super) fn check(
        &self,
        key: &str,
        phones: &[String],
        file: &std::path::Path,
    ) -> Option<Problem> {
        let (base, _) = base_of(key);
        let reason = match self.stable.get(base) {
            None => format!(
                "a canary of tenant {base}, which the source does not hold (or which is refused): a canary runs beside the tenant's own config"
            ),
            Some(stable) if !same_numbers(stable, phones) => format!(
                "the canary routes {phones:?}, the tenant {stable:?}: numbers route to tenants, not arms; give the canary the tenant's phone_numbers"
            ),
            Some(_) => return None,
        };
        Some(Problem {
            file: file.to_path_buf(),
            tenant: Some(base.to_owned()),
            field: if self.stable.contains_key(base) {
                "phone_numbers".into()
            } else {
                String::new()
            },
            reason,
        })
    }
}
