//! Plans: Layer 1's named ceilings (`[policy.plans.<name>]`) and the
//! tenant's `plan`. The merge ([`EffectiveConfig::merge`]) already lowered
//! every limit the tenant left out to its plan's ceiling, so a value over
//! a ceiling here is one the tenant wrote.

use super::Reporter;
use crate::model::{EffectiveConfig, Layer1, Policy};

/// The largest integer every JSON reader holds exactly (2^53 − 1).
const MAX_EXACT: u64 = (1 << 53) - 1;

/// Checks the tenant's plan and its limits against the plan's ceilings,
/// naming the field and the plan.
pub(crate) fn check_tenant(r: &mut Reporter<'_>, policy: &Policy, cfg: &EffectiveConfig) {
    let limits = [
        ("limits.max_queries_per_day", cfg.limits.max_queries_per_day),
        ("limits.max_documents", cfg.limits.max_documents),
    ];
    for (field, value) in limits {
        if let Some(v) = value.filter(|v| *v > MAX_EXACT) {
            r.push(
                field,
                format!("{v} is above 2^53, which JSON readers round; use a smaller value"),
            );
        }
    }
    let names = || policy.plans.keys().cloned().collect::<Vec<_>>().join(", ");
    let Some(name) = &cfg.plan else {
        if !policy.plans.is_empty() {
            r.push(
                "plan",
                format!(
                    "no plan named and Layer 1 sets no defaults.plan; name one of: {}",
                    names()
                ),
            );
        }
        return;
    };
    let Some(plan) = policy.plans.get(name) else {
        let valid = if policy.plans.is_empty() {
            "Layer 1 defines no plans; leave plan out".to_owned()
        } else {
            format!("use one of: {}", names())
        };
        r.push(
            "plan",
            format!("{name:?} is not a plan of Layer 1; {valid}"),
        );
        return;
    };
    let over = |r: &mut Reporter<'_>, field: &str, v: u64, ceiling: Option<u64>| {
        if let Some(c) = ceiling.filter(|c| v > *c) {
            r.push(
                field,
                format!("{v} exceeds plan {name}'s ceiling; use at most {c} or another plan"),
            );
        }
    };
    over(
        r,
        "limits.max_concurrent_calls",
        u64::from(cfg.limits.max_concurrent_calls),
        plan.max_concurrent_calls.map(u64::from),
    );
    if let Some(v) = cfg.limits.max_queries_per_day {
        over(r, "limits.max_queries_per_day", v, plan.max_queries_per_day);
    }
    if let Some(v) = cfg.limits.max_documents {
        over(r, "limits.max_documents", v, plan.max_documents);
    }
    if let Some(models) = &plan.models {
        let used = std::iter::once(("model.primary".to_owned(), &cfg.model.primary)).chain(
            cfg.model
                .fallbacks
                .iter()
                .enumerate()
                .map(|(i, m)| (format!("model.fallbacks[{i}]"), m)),
        );
        for (field, model) in used {
            if !models.contains(model) {
                r.push(
                    field,
                    format!(
                        "model {model:?} is not in plan {name}; the plan allows: {}",
                        models.join(", ")
                    ),
                );
            }
        }
    }
}

/// Checks Layer 1's plans: their models approved, `defaults.plan` one of
/// them (and required when there are plans), ceilings exact in JSON, and
/// that a tenant on each plan that sets nothing is valid (a plan whose
/// ceilings the defaults cannot meet would refuse every tenant on it, for
/// fields they never wrote).
pub(crate) fn check_layer1(r: &mut Reporter<'_>, layer1: &Layer1) {
    let policy = &layer1.policy;
    for name in policy.plans.keys() {
        if layer1.defaults.plan.as_ref() == Some(name) {
            continue; // the defaults' own probe covers it
        }
        let on_plan = crate::model::Overlay {
            plan: Some(name.clone()),
            ..Default::default()
        };
        let probe =
            EffectiveConfig::merge(&layer1.defaults, &policy.plans, &layer1.version, &on_plan);
        let mut inner = Reporter::new(r.file, None);
        super::check_policy(&mut inner, layer1, &probe);
        for p in inner.problems {
            r.push(
                format!("policy.plans.{name}"),
                format!(
                    "a tenant on this plan that sets nothing is refused: defaults.{}: {}; raise the ceiling or change the default",
                    p.field, p.reason
                ),
            );
        }
    }
    for (name, plan) in &policy.plans {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            r.push(
                format!("policy.plans.{name}"),
                "a plan name is a-z, 0-9, - and _ only; rename it",
            );
        }
        for m in plan.models.iter().flatten() {
            if !policy.models.contains_key(m) {
                r.push(
                    format!("policy.plans.{name}.models"),
                    format!(
                        "model {m:?} is not approved in policy.models; approve it or remove it"
                    ),
                );
            }
        }
        if plan.models.as_ref().is_some_and(Vec::is_empty) {
            r.push(
                format!("policy.plans.{name}.models"),
                "is empty; list the plan's models or leave models out (every approved model)",
            );
        }
    }
}
