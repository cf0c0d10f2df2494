//! The verification pipeline called directly, one scenario per rule: each
//! builds a real store (a `file://` directory with signed bundles,
//! pointers and pins), a [`Policy`] as a node in that situation would hold
//! it, and asserts the step's outcome by variant. The agent runs the same
//! function on every check.

use std::path::Path;
use std::time::Duration;

use strata_common::bundle::Limits;
use strata_common::channel::{self, PublishOptions};
use strata_common::compile::{self, CompileOptions};
use strata_common::layout;
use strata_common::operator;
use strata_common::pointer::{PointerError, PointerKind};
use strata_common::sign::{Role, SignatureError, SigningKey, TrustedKeys};
use strata_common::source::Source;
use strata_common::store::{self, StoreUrl, WriteStore};
use strata_common::time;
use strata_common::verify::{self, Checked, Named, Policy, Refusal, Stored, VersionDoc};

/// A store holding versions 1 and 2 of channel `stable` (2 is the head) and
/// a pin of region `eu` to version 1.
struct Fixture {
    _dir: tempfile::TempDir,
    store: Box<dyn WriteStore>,
    spool: tempfile::TempDir,
    publisher: SigningKey,
    operator: SigningKey,
    trust: TrustedKeys,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        strata_common::generate::generate(&src, 5).expect("generate");
        let source = Source::open(&src).expect("source");
        let compiled = compile::compile(&source, CompileOptions::default()).expect("compile");
        let root = dir.path().join("store");
        std::fs::create_dir_all(&root).expect("store dir");
        let store = store::open_write(&StoreUrl::File(root)).expect("store");
        let publisher = SigningKey::from_bytes(&[1; 32]);
        let operator = SigningKey::from_bytes(&[2; 32]);
        let opts = PublishOptions::for_channel("stable");
        for _ in 0..2 {
            channel::publish(
                store.as_ref(),
                &compiled,
                std::slice::from_ref(&publisher),
                &opts,
            )
            .expect("publish");
        }
        operator::pin(
            store.as_ref(),
            "eu",
            1,
            std::slice::from_ref(&operator),
            None,
            Duration::from_secs(3600),
        )
        .expect("pin");
        let mut trust = TrustedKeys::new(1, 1);
        trust.add(Role::Publisher, publisher.verifying_key());
        trust.add(Role::Operator, operator.verifying_key());
        Self {
            _dir: dir,
            store,
            spool: tempfile::tempdir().expect("spool"),
            publisher,
            operator,
            trust,
        }
    }

    /// A new node's policy: nothing served or stored, no marks.
    fn policy(&self) -> Policy<'_> {
        Policy {
            trust: &self.trust,
            channel: "stable",
            region: "eu",
            limits: Limits::default(),
            now: time::now(),
            served: None,
            retained: &[],
            high_water: 0,
            pin_floor: 0,
        }
    }

    fn doc(&self, kind: PointerKind, name: &str) -> Vec<u8> {
        let key = kind.store_key(name);
        layout::read(self.store.as_ref(), &key)
            .expect("read")
            .expect("present")
            .bytes
    }

    fn channel(&self) -> Vec<u8> {
        self.doc(PointerKind::Channel, "stable")
    }

    fn pin(&self) -> Vec<u8> {
        self.doc(PointerKind::Pin, "eu")
    }

    fn verify(&self, doc: VersionDoc<'_>, policy: &Policy<'_>) -> Result<Checked, Refusal> {
        verify::verify(self.store.as_ref(), doc, policy, self.spool.path())
    }

    fn sha(&self, version: u64) -> String {
        strata_common::canonical::sha256_hex(&read_file(
            &self._dir.path().join("store"),
            &layout::bundle_key(version),
        ))
    }
}

fn read_file(root: &Path, key: &str) -> Vec<u8> {
    std::fs::read(root.join(key)).expect("read bundle")
}

fn new_version(store: &dyn strata_common::store::ReadStore, checked: Checked) -> u64 {
    match checked {
        Checked::New(v) => {
            let version = v.named.version();
            let counts = v.check_payload(store).expect("payload verifies");
            assert_eq!(counts.tenants, 5);
            version
        }
        Checked::UpToDate(n) => panic!("up to date at {}", n.version()),
        Checked::Retained(n) => panic!("retained {}", n.version()),
    }
}

#[test]
fn a_new_node_fetches_the_channel_head_and_every_record_verifies() {
    let fx = Fixture::new();
    let checked = fx
        .verify(VersionDoc::Channel(&fx.channel()), &fx.policy())
        .expect("verifies");
    assert_eq!(new_version(fx.store.as_ref(), checked), 2);
    // What `inspect --store` runs: the region's pin wins over the channel.
    let checked = verify::check(fx.store.as_ref(), &fx.policy(), fx.spool.path()).expect("check");
    assert_eq!(new_version(fx.store.as_ref(), checked), 1);
}

#[test]
fn a_channel_pointer_below_the_high_water_mark_is_a_refused_rollback() {
    let fx = Fixture::new();
    let policy = Policy {
        high_water: 3,
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Channel(&fx.channel()), &policy)
        .err()
        .expect("refused");
    assert!(
        matches!(
            refused,
            Refusal::OlderVersion {
                version: 2,
                served: 3,
                ..
            }
        ),
        "{refused}"
    );
}

#[test]
fn a_pin_may_go_below_the_high_water_mark() {
    let fx = Fixture::new();
    let policy = Policy {
        high_water: 2,
        ..fx.policy()
    };
    let checked = fx.verify(VersionDoc::Pin(&fx.pin()), &policy).expect("pin");
    assert_eq!(new_version(fx.store.as_ref(), checked), 1);
}

#[test]
fn the_version_served_is_up_to_date_and_another_bundle_under_it_a_conflict() {
    let fx = Fixture::new();
    let sha = fx.sha(2);
    let policy = Policy {
        served: Some((2, sha.as_str())),
        ..fx.policy()
    };
    let checked = fx
        .verify(VersionDoc::Channel(&fx.channel()), &policy)
        .expect("up to date");
    assert!(matches!(checked, Checked::UpToDate(Named::Channel(p)) if p.version == 2));
    let other = Policy {
        served: Some((2, "0000")),
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Channel(&fx.channel()), &other)
        .err()
        .expect("conflict");
    assert!(
        matches!(refused, Refusal::VersionConflict { version: 2, .. }),
        "{refused}"
    );
}

#[test]
fn a_stored_version_is_switched_to_unless_its_bundle_expired() {
    let fx = Fixture::new();
    let stored = [Stored {
        version: 1,
        bundle_sha256: fx.sha(1),
        bundle_expires_at: "2999-01-01T00:00:00Z".into(),
    }];
    let policy = Policy {
        retained: &stored,
        ..fx.policy()
    };
    let checked = fx.verify(VersionDoc::Pin(&fx.pin()), &policy).expect("pin");
    assert!(matches!(checked, Checked::Retained(Named::Pin(p)) if p.version == 1));
    let expired = [Stored {
        bundle_expires_at: "2020-01-01T00:00:00Z".into(),
        ..stored[0].clone()
    }];
    let policy = Policy {
        retained: &expired,
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Pin(&fx.pin()), &policy)
        .err()
        .expect("expired");
    assert!(
        matches!(refused, Refusal::BundleExpired { .. }),
        "{refused}"
    );
}

#[test]
fn a_pin_signed_before_the_floor_is_a_replay() {
    let fx = Fixture::new();
    let policy = Policy {
        pin_floor: u64::MAX,
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Pin(&fx.pin()), &policy)
        .err()
        .expect("replay");
    assert!(matches!(refused, Refusal::PinReplayed { .. }), "{refused}");
}

#[test]
fn each_document_is_checked_against_its_own_role() {
    let fx = Fixture::new();
    // Trust the operator key as a publisher only: the pin no longer has
    // an operator signature it trusts, the channel no publisher one.
    let mut swapped = TrustedKeys::new(1, 1);
    swapped.add(Role::Publisher, fx.operator.verifying_key());
    swapped.add(Role::Operator, fx.publisher.verifying_key());
    let policy = Policy {
        trust: &swapped,
        ..fx.policy()
    };
    for doc in [
        VersionDoc::Pin(&fx.pin()),
        VersionDoc::Channel(&fx.channel()),
    ] {
        let refused = fx.verify(doc, &policy).err().expect("refused");
        assert!(
            matches!(
                refused,
                Refusal::Pointer {
                    source: PointerError::Signature(SignatureError::ThresholdNotMet { .. }),
                    ..
                }
            ),
            "{refused}"
        );
        assert_eq!(refused.reason(), "pointer_signature");
    }
}

#[test]
fn an_expired_or_future_document_is_refused() {
    let fx = Fixture::new();
    let later = Policy {
        now: time::now() + Duration::from_secs(30 * 24 * 3600),
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Channel(&fx.channel()), &later)
        .err()
        .expect("expired");
    assert!(
        matches!(refused, Refusal::PointerExpired { .. }),
        "{refused}"
    );
    let earlier = Policy {
        now: time::now() - Duration::from_secs(3600),
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Channel(&fx.channel()), &earlier)
        .err()
        .expect("future");
    assert!(
        matches!(refused, Refusal::SignedInFuture { .. }),
        "{refused}"
    );
}

#[test]
fn a_bundle_over_the_limit_is_not_fetched() {
    let fx = Fixture::new();
    let policy = Policy {
        limits: Limits {
            max_bundle_bytes: 100,
            ..Limits::default()
        },
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Channel(&fx.channel()), &policy)
        .err()
        .expect("too large");
    assert!(
        matches!(refused, Refusal::BundleTooLarge { limit: 100, .. }),
        "{refused}"
    );
}

#[test]
fn a_bundle_altered_in_the_store_fails_its_hash() {
    let fx = Fixture::new();
    let key = layout::bundle_key(2);
    let mut bytes = read_file(&fx._dir.path().join("store"), &key);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(fx._dir.path().join("store").join(&key), &bytes).expect("alter");
    let refused = fx
        .verify(VersionDoc::Channel(&fx.channel()), &fx.policy())
        .err()
        .expect("hash");
    assert!(matches!(refused, Refusal::BundleHash { .. }), "{refused}");
}

#[test]
fn a_local_pin_is_served_only_from_a_signed_bundle_that_exists() {
    let fx = Fixture::new();
    let checked = fx
        .verify(VersionDoc::Local(1), &fx.policy())
        .expect("local pin");
    assert_eq!(new_version(fx.store.as_ref(), checked), 1);
    let refused = fx
        .verify(VersionDoc::Local(9), &fx.policy())
        .err()
        .expect("missing");
    assert!(
        matches!(refused, Refusal::BundleMissing { .. }),
        "{refused}"
    );
    let untrusted = TrustedKeys::new(1, 1);
    let policy = Policy {
        trust: &untrusted,
        ..fx.policy()
    };
    let refused = fx
        .verify(VersionDoc::Local(1), &policy)
        .err()
        .expect("unsigned");
    assert_eq!(refused.reason(), "bundle_signature");
}

/// The channel pointer signs the snapshot's tenant count (what guards a
/// publish over a damaged bundle); one that disagrees with the manifest
/// is refused at step 9, and both the pointer and a pin carry it.
#[test]
fn a_pointer_whose_tenant_count_is_not_the_manifest_s_is_refused() {
    let fx = Fixture::new();
    for doc in [fx.channel(), fx.pin()] {
        let pointer = strata_common::pointer::Pointer::parse_unverified(&doc).expect("parse");
        assert_eq!(pointer.tenants, Some(5), "{pointer:?}");
    }
    let mut pointer =
        strata_common::pointer::Pointer::parse_unverified(&fx.channel()).expect("parse");
    pointer.tenants = Some(4);
    let forged = pointer
        .sign(std::slice::from_ref(&fx.publisher))
        .expect("sign");
    let refused = fx
        .verify(VersionDoc::Channel(&forged), &fx.policy())
        .err()
        .expect("refused");
    assert!(
        matches!(
            refused,
            Refusal::ManifestTenants {
                manifest: 5,
                pointer: 4,
                ..
            }
        ),
        "{refused}"
    );
    assert_eq!(refused.reason(), "tenant_count_mismatch");
}
