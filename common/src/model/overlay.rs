//! Layer 2 overlays as tenant files hold them: every field optional, a
//! field left out taking the Layer 1 default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Layer 2 overlay exactly as `tenants/<tenant_id>.toml` holds it: any
/// field left out takes the Layer 1 default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Must equal the file name.
    pub tenant_id: String,
    /// Display name.
    pub name: String,
    /// Semantic version of this overlay.
    pub version: String,
    /// The tenant's plan in Layer 1's `policy.plans` (default:
    /// `defaults.plan`).
    #[serde(default)]
    pub plan: Option<String>,
    /// E.164 numbers this tenant owns.
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    /// Agent overrides.
    #[serde(default)]
    pub agent: AgentOverlay,
    /// Model overrides.
    #[serde(default)]
    pub model: ModelOverlay,
    /// Generation overrides.
    #[serde(default)]
    pub generation: GenerationOverlay,
    /// Retrieval overrides.
    #[serde(default)]
    pub retrieval: RetrievalOverlay,
    /// Branding overrides.
    #[serde(default)]
    pub branding: BrandingOverlay,
    /// Limit overrides.
    #[serde(default)]
    pub limits: LimitsOverlay,
}

/// Overlay of [`AgentConfig`](super::AgentConfig).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentOverlay {
    /// See [`AgentConfig::persona`](super::AgentConfig::persona).
    pub persona: Option<String>,
    /// See [`AgentConfig::prompt`](super::AgentConfig::prompt).
    pub prompt: Option<String>,
    /// See [`AgentConfig::variables`](super::AgentConfig::variables).
    pub variables: Option<BTreeMap<String, String>>,
}

/// Overlay of [`ModelConfig`](super::ModelConfig).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOverlay {
    /// See [`ModelConfig::primary`](super::ModelConfig::primary).
    pub primary: Option<String>,
    /// See [`ModelConfig::fallbacks`](super::ModelConfig::fallbacks).
    pub fallbacks: Option<Vec<String>>,
    /// See [`ModelConfig::key_ref`](super::ModelConfig::key_ref).
    pub key_ref: Option<String>,
}

/// Overlay of [`Generation`](super::Generation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationOverlay {
    /// See [`Generation::temperature`](super::Generation::temperature).
    pub temperature: Option<f64>,
    /// See [`Generation::max_tokens`](super::Generation::max_tokens).
    pub max_tokens: Option<u32>,
}

/// Overlay of [`Retrieval`](super::Retrieval).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalOverlay {
    /// See [`Retrieval::top_k`](super::Retrieval::top_k).
    pub top_k: Option<u32>,
    /// See [`Retrieval::alpha`](super::Retrieval::alpha).
    pub alpha: Option<f64>,
    /// See [`Retrieval::rerank`](super::Retrieval::rerank).
    pub rerank: Option<bool>,
    /// See [`Retrieval::rerank_top_n`](super::Retrieval::rerank_top_n).
    pub rerank_top_n: Option<u32>,
}

/// Overlay of [`Branding`](super::Branding).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrandingOverlay {
    /// See [`Branding::primary_color`](super::Branding::primary_color).
    pub primary_color: Option<String>,
    /// See [`Branding::logo_url`](super::Branding::logo_url).
    pub logo_url: Option<String>,
    /// See [`Branding::domain`](super::Branding::domain).
    pub domain: Option<String>,
}

/// Overlay of [`Limits`](super::Limits).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverlay {
    /// See [`Limits::max_concurrent_calls`](super::Limits::max_concurrent_calls).
    pub max_concurrent_calls: Option<u32>,
    /// See [`Limits::max_queries_per_day`](super::Limits::max_queries_per_day).
    pub max_queries_per_day: Option<u64>,
    /// See [`Limits::max_documents`](super::Limits::max_documents).
    pub max_documents: Option<u64>,
}
