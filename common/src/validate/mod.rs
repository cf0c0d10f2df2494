//! Validation of overlays against Layer 1 policy.
//!
//! Validation never stops at the first problem: it reports every problem of the
//! whole source, one [`Problem`] each, naming the file, the tenant, the field,
//! what is wrong and what would be valid.

use std::fmt;
use std::path::PathBuf;

use crate::model::{EffectiveConfig, Layer1, PhoneNumber, Policy, TenantId};
use crate::normalize::Text;
use crate::render;
use crate::secrets;

mod chars;
mod parse;
mod phones;
mod plan;
mod shapes;
pub use chars::{Escaped, is_unsafe_char};
use chars::{check_characters, forbidden, located};
pub(crate) use parse::{parse_toml, typed};
pub use phones::PhoneIndex;
use shapes::{has_markup, is_domain, is_hex_colour, is_https_url};

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
    /// One line, whatever the file name, tenant id, field or quoted value
    /// holds: control characters, line breaks and bidi controls are
    /// written as `\u{…}` escapes, so that a hostile tenant cannot start a
    /// line of its own in a CI log (`::error …`, `::add-mask::`), move the
    /// cursor or reorder what a reader sees.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Escaped(&self.file.display().to_string()))?;
        if let Some(t) = &self.tenant {
            write!(f, ": tenant {}", Escaped(t))?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", Escaped(&self.field))?;
        }
        write!(f, ": {}", Escaped(&self.reason))
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
    } else if has_markup(&cfg.name) {
        r.push(
            "name",
            format!(
                "{:?} holds markup (<, > or an HTML entity); display names are shown as text, write the name itself",
                cfg.name
            ),
        );
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
    let limits = &p.tenant_limits;
    if cfg.phone_numbers.len() > limits.max_phone_numbers {
        r.push(
            "phone_numbers",
            format!(
                "{} numbers; Layer 1 allows at most {} a tenant (policy.tenant_limits.max_phone_numbers)",
                cfg.phone_numbers.len(),
                limits.max_phone_numbers
            ),
        );
    }
    if cfg.agent.variables.len() > limits.max_variables {
        r.push(
            "agent.variables",
            format!(
                "{} variables; Layer 1 allows at most {} (policy.tenant_limits.max_variables)",
                cfg.agent.variables.len(),
                limits.max_variables
            ),
        );
    }

    // Models: approved, and max_tokens within every used model's ceiling.
    let approved = || p.models.keys().cloned().collect::<Vec<_>>().join(", ");
    let mut used_models = vec![("model.primary".to_owned(), &cfg.model.primary)];
    for (i, m) in cfg.model.fallbacks.iter().enumerate() {
        // A fallback is what answers when the primary fails: the same
        // model again, or one listed twice, is no fallback.
        if *m == cfg.model.primary {
            r.push(
                format!("model.fallbacks[{i}]"),
                format!("{m:?} is model.primary; a fallback must be another model: remove it"),
            );
        } else if cfg.model.fallbacks[..i].contains(m) {
            r.push(
                format!("model.fallbacks[{i}]"),
                format!("{m:?} is listed twice; remove the repeat"),
            );
        }
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
    check_key_ref(r, p, &cfg.tenant_id, &cfg.model.key_ref);
    plan::check_tenant(r, p, cfg);
    // Variable names ship in the config too, and only these can be used
    // in a template: nothing else hides there.
    for name in cfg.agent.variables.keys() {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            r.push(
                format!("agent.variables.{name}"),
                "a variable name is a-z, 0-9 and _ only; rename it".to_owned(),
            );
        }
    }

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
    let domain_ok = is_domain(&cfg.branding.domain)
        && url::Url::parse(&format!("https://{}/", cfg.branding.domain))
            .is_ok_and(|u| u.host_str() == Some(cfg.branding.domain.to_ascii_lowercase().as_str()));
    if !cfg.branding.domain.is_empty() && !domain_ok {
        r.push(
            "branding.domain",
            format!(
                "{:?} is not a domain name; use a name such as help.acme.example",
                cfg.branding.domain
            ),
        );
    }

    match render::render_within(&cfg.agent.prompt, &cfg.agent.variables, p.max_prompt_chars) {
        Ok(rendered) => {
            check_prompt_texts(r, p, cfg, Some(&rendered));
            Some(rendered)
        }
        Err(e) => {
            r.push("agent.prompt", e.to_string());
            check_prompt_texts(r, p, cfg, None);
            None
        }
    }
}

fn check_key_ref(r: &mut Reporter<'_>, policy: &Policy, tenant: &str, key_ref: &str) {
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
        return;
    }
    // Safe without a prefix too: a path naming the secrets of a tenant
    // (`…/tenants/<id>/…`) must name this one's.
    let segments: Vec<&str> = key_ref.split(['/', ':']).collect();
    if let Some(other) = segments
        .windows(2)
        .find(|w| w[0] == "tenants" && w[1] != tenant)
        .map(|w| w[1])
    {
        r.push(
            "model.key_ref",
            format!(
                "{key_ref:?} names the secrets of tenant {other:?}, not this tenant's; a tenant may reference only its own, such as vault:tenants/{tenant}/openai (Layer 1's policy.key_ref_prefix = \"vault:tenants/{{tenant_id}}/\" enforces it for every tenant)"
            ),
        );
        return;
    }
    if let Some(prefix) = &policy.key_ref_prefix {
        let own = prefix.replace("{tenant_id}", tenant);
        let escapes = key_ref.split('/').any(|part| part == ".." || part == ".");
        if !key_ref.starts_with(&own) || escapes {
            r.push(
                "model.key_ref",
                format!(
                    "{key_ref:?} is not under this tenant's secrets; Layer 1 requires a reference starting with {own:?}"
                ),
            );
        }
    }
}

/// Checks the texts that make the prompt (the template and its variables)
/// for forbidden patterns and secrets: through the rendered prompt, so that
/// a pattern or a key split across variables, or completed by the template
/// around them, is found too. Each problem is reported on the field that
/// holds it, or on `agent.prompt` when only the rendered whole shows it.
/// Without a rendered prompt (the template is malformed), and for unused
/// variables (served in the config all the same), each text is checked
/// alone. The walk over the file ([`check_strings`]) leaves these fields to
/// this function, so the longest texts are scanned once.
fn check_prompt_texts(
    r: &mut Reporter<'_>,
    policy: &Policy,
    cfg: &EffectiveConfig,
    rendered: Option<&render::Rendered>,
) {
    let parts: Vec<(String, &str)> =
        std::iter::once(("agent.prompt".to_owned(), cfg.agent.prompt.as_str()))
            .chain(
                cfg.agent
                    .variables
                    .iter()
                    .map(|(k, v)| (format!("agent.variables.{k}"), v.as_str())),
            )
            .collect();
    let alone = |r: &mut Reporter<'_>, field: &str, text: &str| {
        check_text(r, Some(policy), field, text);
    };
    let Some(rendered) = rendered else {
        for (field, text) in &parts {
            alone(r, field, text);
        }
        return;
    };
    for name in &rendered.unused {
        if let Some(v) = cfg.agent.variables.get(name) {
            alone(r, &format!("agent.variables.{name}"), v);
        }
    }
    let whole = Text::new(&rendered.text);
    let set = policy.patterns();
    for (pattern, normalized) in set.matching(&whole).into_iter().filter_map(|i| set.get(i)) {
        let culprits: Vec<(&String, &str)> = parts
            .iter()
            .filter(|(_, t)| Text::new(t).contains(normalized))
            .map(|(f, t)| (f, *t))
            .collect();
        if culprits.is_empty() {
            r.push(
                "agent.prompt",
                format!(
                    "the rendered prompt (variables substituted) contains the forbidden pattern {pattern:?}{}; Layer 1 policy refuses it, reword the prompt or the variables",
                    located(&rendered.text, normalized)
                ),
            );
        }
        for (field, text) in culprits {
            r.push(field.clone(), forbidden(pattern, text, normalized));
        }
    }
    if let Some(why) = secrets::find_secret(&rendered.text) {
        let mut any = false;
        for (field, text) in &parts {
            if let Some(why) = secrets::find_secret(text) {
                any = true;
                r.push(
                    field.clone(),
                    format!("{why}; bundles reach every call node and must carry no secrets: store the key in a secret store and name it instead, such as key_ref = \"vault:tenants/<tenant>/openai\" under [model]"),
                );
            }
        }
        if !any {
            r.push(
                "agent.prompt",
                format!(
                    "the rendered prompt (variables substituted) {why}; bundles reach every call node and must carry no secrets"
                ),
            );
        }
    }
}

/// Reports a secret, and (with `policy`) a forbidden pattern, in `text`.
fn check_text(r: &mut Reporter<'_>, policy: Option<&Policy>, field: &str, text: &str) {
    if let Some(why) = secrets::find_secret(text) {
        r.push(
            field,
            format!("{why}; bundles reach every call node and must carry no secrets: store the key in a secret store and name it instead, such as key_ref = \"vault:tenants/<tenant>/openai\" under [model]"),
        );
    }
    if let Some(policy) = policy {
        let normalized = Text::new(text);
        if let Some((pattern, p)) = policy.patterns().first(&normalized) {
            r.push(field, forbidden(pattern, text, p));
        }
    }
}

/// Walks every string of a parsed file and reports those shaped like a
/// secret, and (with `policy`) those holding a forbidden pattern. Runs on
/// the raw document, so that no field escapes it.
pub(crate) fn check_strings(r: &mut Reporter<'_>, doc: &toml::Value, policy: Option<&Policy>) {
    /// `path` is the value's field path; each level appends to it and
    /// cuts it back (one buffer for the walk, not a string a value).
    fn walk(r: &mut Reporter<'_>, policy: Option<&Policy>, path: &mut String, v: &toml::Value) {
        if let toml::Value::String(text) = v {
            check_characters(r, path, text);
            if let Some(max) = policy.map(|p| p.tenant_limits.max_string_chars)
                && text.len() > max
                && text.chars().count() > max
            {
                r.push(
                    path.as_str(),
                    format!(
                        "{} characters; Layer 1 allows at most {max} in one value (policy.tenant_limits.max_string_chars)",
                        text.chars().count()
                    ),
                );
            }
        }
        let len = path.len();
        match v {
            // The prompt's texts are checked through the rendered prompt
            // (check_prompt_texts), once.
            toml::Value::String(_)
                if policy.is_some()
                    && (path.as_str() == "agent.prompt"
                        || path.starts_with("agent.variables.")) => {}
            toml::Value::String(s) => check_text(r, policy, path, s),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    use std::fmt::Write;
                    let _ = write!(path, "[{i}]");
                    walk(r, policy, path, item);
                    path.truncate(len);
                }
            }
            toml::Value::Table(t) => {
                for (k, item) in t {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    walk(r, policy, path, item);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    walk(r, policy, &mut String::new(), doc);
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

/// Checks Layer 1 itself: at least one model, sane bounds, and defaults that
/// pass its own policy (a tenant that sets nothing must be valid).
pub(crate) fn check_layer1(r: &mut Reporter<'_>, layer1: &Layer1) {
    if let Some(prefix) = &layer1.policy.key_ref_prefix {
        // `vault:tenants/{tenant_id}` alone would let `acme` name
        // `acme-hvac`'s secrets: the id must end a path segment.
        let scoped = prefix.contains("{tenant_id}/") || prefix.contains("{tenant_id}:");
        if !scoped {
            r.push(
                "policy.key_ref_prefix",
                format!(
                    "{prefix:?} does not end the tenant id with / or :; write one such as \"vault:tenants/{{tenant_id}}/\""
                ),
            );
        }
    }
    plan::check_layer1(r, layer1);
    if layer1.policy.models.is_empty() {
        r.push("policy.models", "no model is approved; list at least one");
    }
    if layer1.base_prompt.trim().is_empty() {
        r.push(
            "base_prompt",
            "is empty; Layer 1 must carry the universal instructions",
        );
    }
    // JSON readers (RFC 8785 among them) hold numbers as doubles: an
    // integer past 2^53 would reach them as another number.
    if let Ok(value) = serde_json::to_value(layer1)
        && let Some((field, n)) = crate::canonical::inexact_integer(&value)
    {
        r.push(
            field,
            format!("{n} is above 2^53, which JSON readers round; use a smaller value"),
        );
    }
    let probe = EffectiveConfig::merge(
        &layer1.defaults,
        &layer1.policy.plans,
        &layer1.version,
        &Default::default(),
    );
    let mut inner = Reporter::new(r.file, None);
    check_policy(&mut inner, layer1, &probe);
    for p in inner.problems {
        r.push(format!("defaults.{}", p.field), p.reason);
    }
}
