//! Validation of overlays against Layer 1 policy.
//!
//! Validation never stops at the first problem: it reports every problem of the
//! whole source, one [`Problem`] each, naming the file, the tenant, the field,
//! what is wrong and what would be valid.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::model::{EffectiveConfig, Layer1, PhoneNumber, TenantId};
use crate::render;
use crate::secrets;

/// One thing wrong with the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the source directory where possible.
    pub file: PathBuf,
    /// The tenant, when the problem belongs to one.
    pub tenant: Option<String>,
    /// The field, dotted as in the file (`generation.temperature`), or empty.
    pub field: String,
    /// What is wrong and what would be valid.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(t) = &self.tenant {
            write!(f, ": tenant {t}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Collects problems for one file and tenant.
pub(crate) struct Reporter<'a> {
    file: &'a PathBuf,
    tenant: Option<&'a str>,
    /// Everything found so far.
    pub problems: Vec<Problem>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(file: &'a PathBuf, tenant: Option<&'a str>) -> Self {
        Self {
            file,
            tenant,
            problems: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            tenant: self.tenant.map(str::to_owned),
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// Checks the identity fields of an overlay: `tenant_id` (and that it equals
/// the file stem), `version` and the shape of each phone number.
pub(crate) fn check_identity(r: &mut Reporter<'_>, cfg: &EffectiveConfig, file_stem: &str) {
    if let Err(e) = TenantId::parse(&cfg.tenant_id) {
        r.push("tenant_id", e);
    } else if cfg.tenant_id != file_stem {
        r.push(
            "tenant_id",
            format!(
                "{:?} does not match the file name; rename the file to {}.toml or set tenant_id = {:?}",
                cfg.tenant_id, cfg.tenant_id, file_stem
            ),
        );
    }
    if cfg.name.trim().is_empty() {
        r.push("name", "is empty; give the tenant a display name");
    }
    if semver::Version::parse(&cfg.version).is_err() {
        r.push(
            "version",
            format!(
                "{:?} is not a semantic version; use MAJOR.MINOR.PATCH such as 1.4.0",
                cfg.version
            ),
        );
    }
    for (i, n) in cfg.phone_numbers.iter().enumerate() {
        if let Err(e) = PhoneNumber::parse(n) {
            r.push(format!("phone_numbers[{i}]"), e);
        }
    }
}

/// Checks a merged config against Layer 1 policy and renders its prompt.
/// Returns the rendered overlay prompt when it could be rendered.
pub(crate) fn check_policy(
    r: &mut Reporter<'_>,
    layer1: &Layer1,
    cfg: &EffectiveConfig,
) -> Option<render::Rendered> {
    let p = &layer1.policy;
    let b = &p.bounds;

    // Models: approved, and max_tokens within every used model's ceiling.
    let approved = || p.models.keys().cloned().collect::<Vec<_>>().join(", ");
    let mut used_models = vec![("model.primary".to_owned(), &cfg.model.primary)];
    for (i, m) in cfg.model.fallbacks.iter().enumerate() {
        used_models.push((format!("model.fallbacks[{i}]"), m));
    }
    for (field, model) in &used_models {
        match p.models.get(model.as_str()) {
            None => r.push(
                field.clone(),
                format!(
                    "model {model:?} is not approved by Layer 1; use one of: {}",
                    approved()
                ),
            ),
            Some(mp) if cfg.generation.max_tokens > mp.max_tokens => r.push(
                "generation.max_tokens",
                format!(
                    "{} exceeds the ceiling of {model} ({field}); use at most {}",
                    cfg.generation.max_tokens, mp.max_tokens
                ),
            ),
            Some(_) => {}
        }
    }
    check_key_ref(r, &cfg.model.key_ref);

    // Numeric bounds.
    bound_f(
        r,
        "generation.temperature",
        cfg.generation.temperature,
        b.temperature,
    );
    bound_u(
        r,
        "generation.max_tokens",
        cfg.generation.max_tokens,
        b.max_tokens,
    );
    bound_u(r, "retrieval.top_k", cfg.retrieval.top_k, b.top_k);
    bound_f(r, "retrieval.alpha", cfg.retrieval.alpha, b.alpha);
    bound_u(
        r,
        "retrieval.rerank_top_n",
        cfg.retrieval.rerank_top_n,
        b.rerank_top_n,
    );
    if cfg.retrieval.rerank && cfg.retrieval.rerank_top_n > cfg.retrieval.top_k {
        r.push(
            "retrieval.rerank_top_n",
            format!(
                "{} is more than retrieval.top_k ({}); rerank keeps at most the documents retrieved",
                cfg.retrieval.rerank_top_n, cfg.retrieval.top_k
            ),
        );
    }
    bound_u(
        r,
        "limits.max_concurrent_calls",
        cfg.limits.max_concurrent_calls,
        b.max_concurrent_calls,
    );

    // Branding shapes.
    if !is_hex_colour(&cfg.branding.primary_color) {
        r.push(
            "branding.primary_color",
            format!(
                "{:?} is not a colour; use #RRGGBB such as #0055ff",
                cfg.branding.primary_color
            ),
        );
    }
    if !cfg.branding.logo_url.is_empty() && !is_https_url(&cfg.branding.logo_url) {
        r.push(
            "branding.logo_url",
            format!(
                "{:?} is not an https URL; use https://host/path or leave it out",
                cfg.branding.logo_url
            ),
        );
    }
    if !cfg.branding.domain.is_empty() && !is_domain(&cfg.branding.domain) {
        r.push(
            "branding.domain",
            format!(
                "{:?} is not a domain name; use a name such as help.acme.example",
                cfg.branding.domain
            ),
        );
    }

    // Prompt: forbidden patterns in everything that reaches the model.
    let mut texts: Vec<(String, &str)> = vec![
        ("agent.persona".into(), &cfg.agent.persona),
        ("agent.prompt".into(), &cfg.agent.prompt),
    ];
    for (k, v) in &cfg.agent.variables {
        texts.push((format!("agent.variables.{k}"), v));
    }
    for (field, text) in &texts {
        if let Some(pat) = forbidden_pattern(&p.forbidden_patterns, text) {
            r.push(
                field.clone(),
                format!("contains the forbidden pattern {pat:?}; Layer 1 policy refuses it, remove or reword it"),
            );
        }
    }

    match render::render(&cfg.agent.prompt, &cfg.agent.variables) {
        Ok(rendered) => {
            let chars = rendered.text.chars().count();
            if chars > p.max_prompt_chars {
                r.push(
                    "agent.prompt",
                    format!(
                        "the rendered prompt is {chars} characters; Layer 1 allows at most {}",
                        p.max_prompt_chars
                    ),
                );
            }
            Some(rendered)
        }
        Err(e) => {
            r.push("agent.prompt", e.to_string());
            None
        }
    }
}

fn check_key_ref(r: &mut Reporter<'_>, key_ref: &str) {
    // A key pasted here is reported once, by the secret scan.
    if key_ref.is_empty() || secrets::find_secret(key_ref).is_some() {
        return;
    }
    let is_ref = secrets::KEY_REF_SCHEMES
        .iter()
        .any(|s| key_ref.strip_prefix(s).is_some_and(|rest| !rest.is_empty()))
        && !key_ref.contains(char::is_whitespace);
    if !is_ref {
        r.push(
            "model.key_ref",
            format!(
                "is not a reference to a secret store; write one such as vault:tenants/<tenant>/openai (schemes: {}), never the key itself",
                secrets::KEY_REF_SCHEMES.join(" ")
            ),
        );
    }
}

/// Walks every string of a parsed tenant file and reports those shaped like
/// a secret. Runs on the raw document so no field escapes it.
pub(crate) fn check_secrets(r: &mut Reporter<'_>, doc: &toml::Value) {
    fn walk(r: &mut Reporter<'_>, path: String, v: &toml::Value) {
        match v {
            toml::Value::String(s) => {
                if let Some(why) = secrets::find_secret(s) {
                    r.push(
                        path,
                        format!("{why}; bundles reach every call node and must carry no secrets: store the key in a vault and set model.key_ref"),
                    );
                }
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(r, format!("{path}[{i}]"), item);
                }
            }
            toml::Value::Table(t) => {
                for (k, item) in t {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(r, p, item);
                }
            }
            _ => {}
        }
    }
    walk(r, String::new(), doc);
}

fn forbidden_pattern<'p>(patterns: &'p [String], text: &str) -> Option<&'p str> {
    let lower = text.to_lowercase();
    patterns
        .iter()
        .find(|p| lower.contains(&p.to_lowercase()))
        .map(String::as_str)
}

fn bound_f(r: &mut Reporter<'_>, field: &str, v: f64, [lo, hi]: [f64; 2]) {
    if !(lo..=hi).contains(&v) {
        r.push(
            field,
            format!("{v} is out of bounds; Layer 1 allows {lo} to {hi}"),
        );
    }
}

fn bound_u(r: &mut Reporter<'_>, field: &str, v: u32, [lo, hi]: [u32; 2]) {
    if !(lo..=hi).contains(&v) {
        r.push(
            field,
            format!("{v} is out of bounds; Layer 1 allows {lo} to {hi}"),
        );
    }
}

fn is_hex_colour(s: &str) -> bool {
    s.len() == 7 && s.starts_with('#') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn is_https_url(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("https://") else {
        return false;
    };
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host_port.split(':').next().unwrap_or("");
    is_domain(host) && !s.contains(|c: char| c.is_whitespace() || c.is_control())
}

/// Checks Layer 1 itself: at least one model, sane bounds, and defaults that
/// pass its own policy (a tenant that sets nothing must be valid).
pub(crate) fn check_layer1(r: &mut Reporter<'_>, layer1: &Layer1) {
    if layer1.policy.models.is_empty() {
        r.push("policy.models", "no model is approved; list at least one");
    }
    if layer1.base_prompt.trim().is_empty() {
        r.push(
            "base_prompt",
            "is empty; Layer 1 must carry the universal instructions",
        );
    }
    let probe = EffectiveConfig::merge(&layer1.defaults, &layer1.version, &Default::default());
    let mut inner = Reporter::new(r.file, None);
    check_policy(&mut inner, layer1, &probe);
    for p in inner.problems {
        r.push(format!("defaults.{}", p.field), p.reason);
    }
}

/// Phone numbers seen so far across the whole source, to enforce that each
/// number belongs to exactly one tenant.
#[derive(Debug, Default)]
pub struct PhoneIndex {
    owners: BTreeMap<String, String>,
}

impl PhoneIndex {
    /// Records that `tenant` claims `number`; returns the other owner if the
    /// number was already claimed.
    pub fn claim(&mut self, number: &str, tenant: &str) -> Option<String> {
        match self.owners.get(number) {
            Some(owner) if owner != tenant => Some(owner.clone()),
            Some(_) => None,
            None => {
                self.owners.insert(number.to_owned(), tenant.to_owned());
                None
            }
        }
    }

    /// Every number and its tenant, sorted by number.
    pub fn into_routes(self) -> BTreeMap<String, String> {
        self.owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(is_hex_colour("#0055ff"));
        assert!(!is_hex_colour("0055ff"));
        assert!(!is_hex_colour("#05f"));
        assert!(is_domain("help.acme.example"));
        assert!(!is_domain("localhost"));
        assert!(!is_domain("bad_domain.example"));
        assert!(is_https_url("https://acme.example/logo.png"));
        assert!(!is_https_url("http://acme.example/logo.png"));
        assert!(!is_https_url("javascript:alert(1)"));
    }
}
