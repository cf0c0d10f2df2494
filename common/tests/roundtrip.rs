//! Property: random valid overlays always build bundles that verify and decode
//! to the same effective configs as merging them directly.

use std::collections::BTreeMap;
use std::io::Cursor;

use proptest::prelude::*;
use strata_common::bundle::{self, Contents, Limits, Provenance, SignatureCheck};
use strata_common::channel;
use strata_common::compile::{self, CompileOptions};
use strata_common::generate::LAYER1_TOML;
use strata_common::model::*;
use strata_common::sign::{Role, SigningKey, TrustedKeys};
use strata_common::source::Source;
use strata_common::time;

const MODELS: &[&str] = &["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"];
const WORDS: &[&str] = &[
    "Book", "visits", "for", "callers", "politely", "today", "and", "confirm", "details",
];

fn overlay(i: usize) -> impl Strategy<Value = Overlay> {
    (
        prop::option::of(0.0f64..=2.0),
        prop::option::of(1u32..=4000),
        prop::option::of(1u32..=20),
        prop::option::of(0.0f64..=1.0),
        prop::option::of(prop::sample::select(MODELS)),
        prop::collection::vec(prop::sample::select(WORDS), 1..40),
        prop::option::of(1u32..=1000),
        1usize..=5,
        any::<bool>(),
    )
        .prop_map(
            move |(
                temperature,
                max_tokens,
                top_k,
                alpha,
                primary,
                words,
                calls,
                phones,
                use_var,
            )| {
                let mut variables = BTreeMap::new();
                let mut prompt = words.join(" ");
                if use_var {
                    prompt.push_str(" at {business}.");
                    variables.insert("business".to_owned(), format!("Business {i}"));
                }
                Overlay {
                    tenant_id: format!("tenant-{i:03}"),
                    name: format!("Tenant {i}"),
                    version: "1.0.0".into(),
                    phone_numbers: (0..phones)
                        .map(|j| format!("+1555{:03}{:04}", i, j))
                        .collect(),
                    agent: AgentOverlay {
                        persona: Some("Ava".into()),
                        prompt: Some(prompt),
                        variables: Some(variables),
                    },
                    model: ModelOverlay {
                        primary: primary.map(str::to_owned),
                        fallbacks: None,
                        key_ref: Some(format!("vault:tenants/tenant-{i:03}/llm")),
                    },
                    generation: GenerationOverlay {
                        temperature,
                        max_tokens,
                    },
                    retrieval: RetrievalOverlay {
                        top_k,
                        alpha,
                        rerank: None,
                        rerank_top_n: None,
                    },
                    branding: BrandingOverlay::default(),
                    limits: LimitsOverlay {
                        max_concurrent_calls: calls,
                        ..LimitsOverlay::default()
                    },
                    plan: None,
                }
            },
        )
}

fn overlays() -> impl Strategy<Value = Vec<Overlay>> {
    (1usize..6).prop_flat_map(|n| (0..n).map(overlay).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn valid_overlays_round_trip(overlays in overlays()) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("tenants")).expect("mkdir");
        std::fs::write(dir.path().join("layer1.toml"), LAYER1_TOML).expect("layer1");
        for o in &overlays {
            let text = toml::to_string(o).expect("toml");
            std::fs::write(dir.path().join("tenants").join(format!("{}.toml", o.tenant_id)), text).expect("write");
        }
        let source = Source::open(dir.path()).expect("open");
        let compiled = compile::compile(&source, CompileOptions::default()).expect("valid overlays compile");
        let key = SigningKey::from_bytes(&[9; 32]);
        let manifest = channel::manifest(&compiled, 1, time::now(), channel::DEFAULT_BUNDLE_EXPIRY, &Provenance::default());
        let bytes = bundle::write_bundle(&manifest, &compiled.payload.compressed, std::slice::from_ref(&key)).expect("write");
        let mut trust = TrustedKeys::new(1, 1);
        trust.add(Role::Publisher, key.verifying_key());
        let verified = bundle::verify(Cursor::new(&bytes), SignatureCheck::Trusted(&trust), &Limits::default()).expect("verifies");
        let contents = Contents::collect(verified.records().expect("records")).expect("decodes");
        prop_assert_eq!(contents.configs.len(), overlays.len());
        for o in &overlays {
            let mut expected = EffectiveConfig::merge(&source.layer1.defaults, &source.layer1.policy.plans, &source.layer1.version, o);
            let json = expected.seal().expect("seal");
            prop_assert_eq!(&contents.configs[&o.tenant_id], &json);
            let decoded: EffectiveConfig = serde_json::from_slice(&json).expect("parse");
            prop_assert_eq!(decoded, expected);
        }
    }
}
