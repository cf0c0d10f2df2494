//! The data model: Layer 1 (platform base prompt, policy and defaults), the
//! Layer 2 tenant overlay as operators write it, and the effective config the
//! agent serves.
//!
//! Every struct that is read from a file denies unknown keys: a typo must not
//! silently become a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod overlay;
pub use overlay::*;

/// A tenant identifier: `[a-z0-9][a-z0-9-]{1,62}`.
///
/// Construction rejects anything else, so code holding a `TenantId` never has
/// to check again (and it is always safe as a file name or store key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// Checks `s` against the tenant id pattern.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::check(s).map(|s| Self(s.to_owned()))
    }

    /// [`TenantId::parse`] without the allocation, for the lookup path.
    pub fn check(s: &str) -> Result<&str, String> {
        let bytes = s.as_bytes();
        let ok_len = (2..=63).contains(&bytes.len());
        let ok_first = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok_rest = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok_len && ok_first && ok_rest {
            Ok(s)
        } else {
            Err(format!(
                "{s:?} is not a valid tenant id; use 2-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
            ))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A phone number in E.164 form: `+` then 2 to 15 digits, the first not 0.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Checks `s` is E.164.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::check(s).map(|s| Self(s.to_owned()))
    }

    /// [`PhoneNumber::parse`] without the allocation, for the lookup path.
    pub fn check(s: &str) -> Result<&str, String> {
        let digits = s.strip_prefix('+').unwrap_or("");
        let ok = (2..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(s)
        } else {
            Err(format!(
                "{s:?} is not an E.164 number; write it as + and country code and number, digits only, e.g. +14155550100"
            ))
        }
    }

    /// The number as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A snapshot version: a positive integer, monotonic per store.
///
/// In store keys it is written as 20 zero-padded digits so that keys sort in
/// version order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotVersion(pub u64);

impl SnapshotVersion {
    /// The store key of this version's bundle: `snapshots/<20 digits>.bundle`.
    pub fn bundle_key(self) -> String {
        crate::layout::bundle_key(self.0)
    }

    /// Parses a bundle key back into its version.
    pub fn from_bundle_key(key: &str) -> Option<Self> {
        crate::layout::bundle_version(key).map(Self)
    }
}

impl fmt::Display for SnapshotVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Layer 1: the universal base prompt, the platform policy and the defaults
/// of every Layer 2 field. One per platform, changed by code review.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer1 {
    /// Layer 1's own version, recorded in every effective config.
    pub version: String,
    /// The universal instructions every call starts with.
    pub base_prompt: String,
    /// What an overlay may and may not do.
    pub policy: Policy,
    /// The value of every overlay field the overlay leaves out.
    #[serde(default)]
    pub defaults: Defaults,
}

/// Platform policy that no overlay can weaken.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Phrases refused in every tenant string and in each rendered prompt,
    /// matched after normalisation (see [`crate::normalize`]), so that look-alike
    /// letters, invisible characters, entities or extra spaces do not evade them.
    #[serde(default)]
    pub forbidden_patterns: Vec<String>,
    /// What every tenant's `model.key_ref` must start with, `{tenant_id}`
    /// replaced by the tenant's id (`vault:tenants/{tenant_id}/`), so that no
    /// tenant can name another tenant's secret. Default: any reference.
    #[serde(default)]
    pub key_ref_prefix: Option<String>,
    /// [`Self::forbidden_patterns`], normalised and built into automata once.
    #[serde(skip)]
    pub(crate) pattern_set: std::sync::OnceLock<crate::matcher::PatternSet>,
    /// The longest rendered overlay prompt, in characters.
    #[serde(default = "default_max_prompt_chars")]
    pub max_prompt_chars: usize,
    /// Approved models and the largest `max_tokens` each allows.
    pub models: BTreeMap<String, ModelPolicy>,
    /// Inclusive numeric bounds.
    #[serde(default)]
    pub bounds: Bounds,
    /// What one tenant file may hold at most (`[policy.tenant_limits]`):
    /// one tenant's input must not make a snapshot every agent refuses.
    #[serde(default, skip_serializing_if = "TenantLimits::is_default")]
    pub tenant_limits: TenantLimits,
    /// Named plans (`[policy.plans.starter]`): ceilings a tenant naming the
    /// plan may not exceed. Left out of the served Layer 1 when none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plans: BTreeMap<String, Plan>,
}

/// A plan's ceilings: what a tenant on this plan may set at most, and the
/// value a limit it leaves out takes when the default is higher (or none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The most `limits.max_concurrent_calls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_calls: Option<u32>,
    /// The most `limits.max_queries_per_day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queries_per_day: Option<u64>,
    /// The most `limits.max_documents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_documents: Option<u64>,
    /// The models (primary and fallbacks) a tenant on this plan may use;
    /// every approved model when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

fn default_max_prompt_chars() -> usize {
    8000
}

/// Per-tenant ceilings, checked at validation so that a refusal names the
/// tenant: a file, its strings and its lists can be only so large.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// The largest tenant file, in bytes. Default 256 KiB.
    pub max_file_bytes: u64,
    /// The longest string value (a name, a persona, a variable), in
    /// characters. Default 16,384.
    pub max_string_chars: usize,
    /// The most `agent.variables`. Default 256.
    pub max_variables: usize,
    /// The most `phone_numbers`. Default 1,000.
    pub max_phone_numbers: usize,
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_file_bytes: 256 << 10,
            max_string_chars: 16_384,
            max_variables: 256,
            max_phone_numbers: 1_000,
        }
    }
}

impl TenantLimits {
    /// Whether these are the defaults (left out of the served Layer 1).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What Layer 1 allows of one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    /// The largest `generation.max_tokens` a tenant using this model may ask for.
    pub max_tokens: u32,
}

/// Inclusive `[min, max]` bounds on numeric overlay fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bounds {
    /// `generation.temperature`.
    pub temperature: [f64; 2],
    /// `generation.max_tokens`.
    pub max_tokens: [u32; 2],
    /// `retrieval.top_k`.
    pub top_k: [u32; 2],
    /// `retrieval.alpha`.
    pub alpha: [f64; 2],
    /// `retrieval.rerank_top_n`.
    pub rerank_top_n: [u32; 2],
    /// `limits.max_concurrent_calls`.
    pub max_concurrent_calls: [u32; 2],
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            temperature: [0.0, 2.0],
            max_tokens: [1, 4000],
            top_k: [1, 20],
            alpha: [0.0, 1.0],
            rerank_top_n: [1, 10],
            max_concurrent_calls: [1, 1000],
        }
    }
}

/// Platform defaults for every Layer 2 section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Agent persona and prompt.
    pub agent: AgentConfig,
    /// Model choice.
    pub model: ModelConfig,
    /// Generation parameters.
    pub generation: Generation,
    /// Retrieval parameters.
    pub retrieval: Retrieval,
    /// Branding.
    pub branding: Branding,
    /// Per-tenant limits.
    pub limits: Limits,
    /// The plan of a tenant that names none; required when Layer 1
    /// defines plans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// The agent section: who speaks and what it is told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The persona's name.
    pub persona: String,
    /// The overlay prompt template, with `{variables}`.
    pub prompt: String,
    /// Values of the template's variables.
    pub variables: BTreeMap<String, String>,
}

/// The model section. `key_ref` is a reference to a key held elsewhere
/// (`vault:…`, `aws-sm:…`), never a key; empty means the platform's key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The model used first.
    pub primary: String,
    /// Models tried in order when the primary fails.
    pub fallbacks: Vec<String>,
    /// Reference to the tenant's own API key (BYOK), or empty.
    pub key_ref: String,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            primary: "gpt-4o-mini".into(),
            fallbacks: Vec::new(),
            key_ref: String::new(),
        }
    }
}

/// Generation parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Generation {
    /// Sampling temperature.
    pub temperature: f64,
    /// Largest completion length.
    pub max_tokens: u32,
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            max_tokens: 1000,
        }
    }
}

/// Retrieval parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retrieval {
    /// Documents retrieved.
    pub top_k: u32,
    /// Hybrid search weight: 0 keyword only, 1 vector only.
    pub alpha: f64,
    /// Whether results are reranked.
    pub rerank: bool,
    /// Documents kept after reranking.
    pub rerank_top_n: u32,
}

impl Default for Retrieval {
    fn default() -> Self {
        Self {
            top_k: 5,
            alpha: 0.5,
            rerank: false,
            rerank_top_n: 3,
        }
    }
}

/// Branding shown in the tenant's UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Branding {
    /// `#RRGGBB`.
    pub primary_color: String,
    /// An `https://` URL, or empty.
    pub logo_url: String,
    /// A domain name, or empty.
    pub domain: String,
}

impl Default for Branding {
    fn default() -> Self {
        Self {
            primary_color: "#007bff".into(),
            logo_url: String::new(),
            domain: String::new(),
        }
    }
}

/// Per-tenant limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Calls the tenant may have in progress at once.
    pub max_concurrent_calls: u32,
    /// Knowledge-base queries a day the call worker allows; unlimited (and
    /// left out of the config) when neither Layer 1 nor a plan sets it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queries_per_day: Option<u64>,
    /// Documents the tenant's knowledge base may hold; as above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_documents: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_calls: 5,
            max_queries_per_day: None,
            max_documents: None,
        }
    }
}

/// What the agent serves for a tenant: Layer 1 defaults merged with the
/// overlay, every field present, plus where it came from and its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EffectiveConfig {
    /// The tenant.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// The overlay's semantic version.
    pub version: String,
    /// Numbers routed to this tenant.
    pub phone_numbers: Vec<String>,
    /// Agent persona and prompt template.
    pub agent: AgentConfig,
    /// Model choice.
    pub model: ModelConfig,
    /// Generation parameters.
    pub generation: Generation,
    /// Retrieval parameters.
    pub retrieval: Retrieval,
    /// Branding.
    pub branding: Branding,
    /// Limits.
    pub limits: Limits,
    /// The tenant's plan (its own or `defaults.plan`), when Layer 1
    /// defines plans; its ceilings are already applied to `limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// A canary arm's config only (`tenants/<id>.canary.toml`, or a
    /// second active row with `canary_percent`): its share of sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The Layer 1 version this config was merged with.
    pub layer1_version: String,
    /// Hex SHA-256 of the canonical JSON of this config without this field.
    pub config_hash: String,
}

/// The record key of tenant `id`'s canary arm: `<id>.canary` (a `.` is
/// never in a tenant id, so it names no tenant).
pub const CANARY_SUFFIX: &str = ".canary";

/// Whether a record key names a canary arm, not a tenant.
pub fn is_canary_key(key: &str) -> bool {
    key.ends_with(CANARY_SUFFIX)
}

/// What a canary arm's config carries beside the tenant's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The config hash the arm's config has without this section: what
    /// sessions are drawn with, so raising `percent` keeps every session
    /// drawn before and a new canary draws afresh.
    pub arm: String,
    /// The share of sessions answered with this arm, 0 to 100 in steps of
    /// 0.01 (10,000 buckets).
    pub percent: f64,
}

impl EffectiveConfig {
    /// Merges `overlay` over `defaults`; the result is not yet validated and
    /// its `config_hash` is empty until [`EffectiveConfig::seal`].
    /// A limit the overlay leaves out takes the default, lowered to the
    /// plan's ceiling (`plans`: Layer 1's).
    pub fn merge(
        defaults: &Defaults,
        plans: &BTreeMap<String, Plan>,
        layer1_version: &str,
        overlay: &Overlay,
    ) -> Self {
        let d = defaults;
        let o = overlay;
        let plan_name = o.plan.clone().or_else(|| d.plan.clone());
        let plan = plan_name.as_ref().and_then(|p| plans.get(p));
        let ceiling = |c: Option<u64>, v: Option<u64>| match (c, v) {
            (Some(c), Some(v)) => Some(v.min(c)),
            (c, v) => v.or(c),
        };
        let cap = |own: Option<u64>, default: Option<u64>, c: Option<u64>| {
            own.or_else(|| ceiling(c, default))
        };
        let calls = o.limits.max_concurrent_calls.unwrap_or_else(|| {
            let c = plan.and_then(|p| p.max_concurrent_calls);
            c.map_or(d.limits.max_concurrent_calls, |c| {
                c.min(d.limits.max_concurrent_calls)
            })
        });
        Self {
            tenant_id: o.tenant_id.clone(),
            name: o.name.clone(),
            version: o.version.clone(),
            phone_numbers: o.phone_numbers.clone(),
            agent: AgentConfig {
                persona: pick(&o.agent.persona, &d.agent.persona),
                prompt: pick(&o.agent.prompt, &d.agent.prompt),
                variables: pick(&o.agent.variables, &d.agent.variables),
            },
            model: ModelConfig {
                primary: pick(&o.model.primary, &d.model.primary),
                fallbacks: pick(&o.model.fallbacks, &d.model.fallbacks),
                key_ref: pick(&o.model.key_ref, &d.model.key_ref),
            },
            generation: Generation {
                temperature: pick(&o.generation.temperature, &d.generation.temperature),
                max_tokens: pick(&o.generation.max_tokens, &d.generation.max_tokens),
            },
            retrieval: Retrieval {
                top_k: pick(&o.retrieval.top_k, &d.retrieval.top_k),
                alpha: pick(&o.retrieval.alpha, &d.retrieval.alpha),
                rerank: pick(&o.retrieval.rerank, &d.retrieval.rerank),
                rerank_top_n: pick(&o.retrieval.rerank_top_n, &d.retrieval.rerank_top_n),
            },
            branding: Branding {
                primary_color: pick(&o.branding.primary_color, &d.branding.primary_color),
                logo_url: pick(&o.branding.logo_url, &d.branding.logo_url),
                domain: pick(&o.branding.domain, &d.branding.domain),
            },
            limits: Limits {
                max_concurrent_calls: calls,
                max_queries_per_day: cap(
                    o.limits.max_queries_per_day,
                    d.limits.max_queries_per_day,
                    plan.and_then(|p| p.max_queries_per_day),
                ),
                max_documents: cap(
                    o.limits.max_documents,
                    d.limits.max_documents,
                    plan.and_then(|p| p.max_documents),
                ),
            },
            plan: plan_name,
            canary: None,
            layer1_version: layer1_version.to_owned(),
            config_hash: String::new(),
        }
    }

    /// Computes `config_hash` and returns the canonical JSON (RFC 8785)
    /// that is served.
    pub fn seal(&mut self) -> Result<Vec<u8>, serde_json::Error> {
        let mut value = serde_json::to_value(&*self)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.remove("config_hash");
        }
        let hash = crate::canonical::sha256_hex(&crate::canonical::value_to_vec(&value)?);
        if let serde_json::Value::Object(map) = &mut value {
            map.insert(
                "config_hash".into(),
                serde_json::Value::String(hash.clone()),
            );
        }
        self.config_hash = hash;
        crate::canonical::value_to_vec(&value)
    }
}

fn pick<T: Clone>(overlay: &Option<T>, default: &T) -> T {
    overlay.as_ref().unwrap_or(default).clone()
}

impl Policy {
    /// The forbidden patterns, each with its normalised form.
    pub(crate) fn patterns(&self) -> &crate::matcher::PatternSet {
        self.pattern_set
            .get_or_init(|| crate::matcher::PatternSet::new(&self.forbidden_patterns))
    }
}
