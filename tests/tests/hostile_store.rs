//! The agent's check and the publisher's library driven directly (a real
//! `Syncer`, a real redb file, a real file store) through a store that
//! misbehaves the way mirrors, proxies and S3-compatible gateways have
//! been seen to.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use strata_agent::db::Db;
use strata_agent::state::Shared;
use strata_agent::sync::{Outcome, Syncer};
use strata_common::channel::{self, PublishOptions};
use strata_common::operator;
use strata_common::store::{
    Fetched, FileStore, ListPage, ReadStore, StoreError, StoreUrl, WriteStore,
};
use strata_tests::Fixture;

/// A mirror that answers every conditional GET with 304 Not Modified,
/// whatever the object holds now.
struct Stuck304(FileStore);

impl ReadStore for Stuck304 {
    fn url(&self) -> &StoreUrl {
        self.0.url()
    }

    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        match etag {
            Some(_) => Ok(Fetched::NotModified),
            None => self.0.get_if_changed(key, None, max_bytes),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.0.get_range(key, range)
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.0.get_to(key, max_bytes, out)
    }
}

fn syncer(fx: &Fixture, store: Box<dyn ReadStore>) -> (Syncer, Arc<Shared>) {
    let (config, path) = fx.agent_config("a", "");
    std::fs::create_dir_all(&config.data_dir).expect("data dir");
    let db = Db::open_or_set_aside(&config.db_path(), config.cache_bytes).expect("db");
    let shared = Shared::new(store.url().to_string(), config.region.clone());
    let trust = config.trust(&path).expect("trust");
    let syncer = Syncer::new(&config, &path, store, trust, db, shared.clone());
    (syncer, shared)
}

#[test]
fn a_mirror_answering_304_for_ever_is_read_whole_now_and_then() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let (mut syncer, _shared) = syncer(&fx, Box::new(Stuck304(fx.store())));
    assert!(matches!(syncer.check(), Outcome::Applied(1)));
    fx.publish("v2", 3);
    // Every conditional read is a 304: with the default interval the node
    // keeps version 1 ...
    assert!(matches!(syncer.check(), Outcome::UpToDate(1)));
    // ... until the documents are next read whole.
    syncer.read_whole_every(Duration::ZERO);
    assert!(matches!(syncer.check(), Outcome::Applied(2)));
}

/// A file store seen through a gateway that ignores write conditions:
/// a create-only put overwrites, a compare-and-swap ignores the ETag.
struct NoConditions(FileStore);

impl ReadStore for NoConditions {
    fn url(&self) -> &StoreUrl {
        self.0.url()
    }

    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        self.0.get_if_changed(key, etag, max_bytes)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.0.get_range(key, range)
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.0.get_to(key, max_bytes, out)
    }
}

impl WriteStore for NoConditions {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_if(key, bytes, None).map(drop)
    }

    fn put_if(&self, key: &str, bytes: &[u8], _: Option<&str>) -> Result<String, StoreError> {
        let now = match self.0.get(key, u64::MAX) {
            Ok(obj) => Some(obj.etag),
            Err(_) => None,
        };
        self.0.put_if(key, bytes, now.as_deref())
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError> {
        self.0.list_page(prefix, after)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key)
    }
}

#[test]
fn publish_pin_and_refresh_refuse_a_store_that_ignores_write_conditions() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let store = NoConditions(fx.store());
    let (_, compiled) = fx.compile("v2", 3);
    let keys = std::slice::from_ref(&fx.key);
    let refused = channel::publish(
        &store,
        &compiled,
        keys,
        &PublishOptions::for_channel("stable"),
    )
    .expect_err("refused");
    assert!(
        refused
            .to_string()
            .contains("does not honour conditional writes")
            && refused.to_string().contains(&store.url().to_string()),
        "{refused}"
    );
    assert_eq!(channel::list_versions(&store).expect("list").len(), 1);
    let ops = strata_common::sign::SigningKey::from_bytes(&[7; 32]);
    let pinned = operator::pin(
        &store,
        "eu",
        1,
        std::slice::from_ref(&ops),
        None,
        Duration::from_secs(60),
    );
    assert!(matches!(
        pinned,
        Err(operator::OperatorError::Conditions(_))
    ));
    let trust = strata_common::sign::TrustedKeys::for_publisher(keys, &[]);
    let refreshed = operator::refresh(
        &store,
        "stable",
        keys,
        &trust,
        Duration::from_secs(60),
        false,
        operator::Signers::KeepAll,
    );
    assert!(matches!(
        refreshed,
        Err(operator::OperatorError::Conditions(_))
    ));
    // Refused before any write: no bundle was uploaded.
    assert!(
        fx.store()
            .get_range("snapshots/00000000000000000002.bundle", 0..1)
            .is_err()
    );
}

/// A file store where a `gc` runs at the worst moment: right after a pin is
/// written, the bundle it names is deleted (an outside attack saw `pin`
/// succeed in 3 of 4 races, and the region's nodes go `bundle_missing`).
struct GcAfterPin(FileStore);

impl ReadStore for GcAfterPin {
    fn url(&self) -> &StoreUrl {
        self.0.url()
    }

    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        self.0.get_if_changed(key, etag, max_bytes)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.0.get_range(key, range)
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.0.get_to(key, max_bytes, out)
    }
}

impl WriteStore for GcAfterPin {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.0.put_new(key, bytes)
    }

    fn put_if(&self, key: &str, bytes: &[u8], etag: Option<&str>) -> Result<String, StoreError> {
        let written = self.0.put_if(key, bytes, etag)?;
        if key.starts_with("pins/")
            && let Ok(pin) = strata_common::pointer::Pointer::parse_unverified(bytes)
        {
            self.0.delete(&pin.bundle)?;
        }
        Ok(written)
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError> {
        self.0.list_page(prefix, after)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0.delete(key)
    }
}

#[test]
fn a_pin_whose_bundle_a_gc_deleted_meanwhile_is_taken_back() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    fx.publish("v2", 3);
    let ops = strata_common::sign::SigningKey::from_bytes(&[7; 32]);
    let store = GcAfterPin(fx.store());
    let pinned = operator::pin(
        &store,
        "eu",
        1,
        std::slice::from_ref(&ops),
        None,
        Duration::from_secs(60),
    );
    assert!(
        matches!(pinned, Err(operator::OperatorError::Missing { .. })),
        "{pinned:?}"
    );
    // No pin to nothing is left for the region's nodes.
    assert!(
        fx.store()
            .get("pins/eu.json", 1 << 16)
            .is_err_and(|e| e.kind() == strata_common::store::ErrorKind::NotFound)
    );
}

/// A store where a region is pinned while `gc` runs, between its first
/// reading of the pins and its deletions: the pin's bundle is kept.
struct PinDuringGc {
    inner: FileStore,
    pin_once: std::sync::Mutex<Option<u64>>,
}

impl ReadStore for PinDuringGc {
    fn url(&self) -> &StoreUrl {
        self.inner.url()
    }

    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        self.inner.get_if_changed(key, etag, max_bytes)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(key, range)
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.inner.get_to(key, max_bytes, out)
    }
}

impl WriteStore for PinDuringGc {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.put_new(key, bytes)
    }

    fn put_if(&self, key: &str, bytes: &[u8], etag: Option<&str>) -> Result<String, StoreError> {
        self.inner.put_if(key, bytes, etag)
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError> {
        let page = self.inner.list_page(prefix, after)?;
        let planted = (prefix == "pins/")
            .then(|| self.pin_once.lock().ok().and_then(|mut p| p.take()))
            .flatten();
        if let Some(version) = planted {
            let ops = strata_common::sign::SigningKey::from_bytes(&[7; 32]);
            operator::pin(
                &self.inner,
                "eu",
                version,
                std::slice::from_ref(&ops),
                None,
                Duration::from_secs(60),
            )
            .map_err(|e| StoreError::Fatal {
                key: "pins/eu.json".into(),
                source: e.to_string().into(),
            })?;
        }
        Ok(page)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
}

#[test]
fn gc_keeps_a_bundle_a_pin_written_while_it_ran_names() {
    let fx = Fixture::new();
    for v in 1..=4 {
        fx.publish(&format!("v{v}"), 3);
    }
    let store = PinDuringGc {
        inner: fx.store(),
        pin_once: std::sync::Mutex::new(Some(1)),
    };
    let report =
        strata_common::gc::gc(&store, 1, false, strata_common::sweep::DEFAULT_GRACE).expect("gc");
    assert!(!report.deleted.contains(&1), "{report:?}");
    assert_eq!(report.deleted, [2, 3]);
    assert!(
        fx.store()
            .get_range("snapshots/00000000000000000001.bundle", 0..1)
            .is_ok()
    );
}

/// A store (or a proxy, a CDN) that hands out a new ETag on every read:
/// every compare-and-swap is refused although nobody else writes.
struct ChangingEtags {
    inner: FileStore,
    reads: std::sync::atomic::AtomicU64,
}

impl ReadStore for ChangingEtags {
    fn url(&self) -> &StoreUrl {
        self.inner.url()
    }

    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        let n = self
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(match self.inner.get_if_changed(key, etag, max_bytes)? {
            Fetched::Object(mut obj) => {
                obj.etag = format!("\"{n}-{}\"", obj.etag.trim_matches('"'));
                Fetched::Object(obj)
            }
            other => other,
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(key, range)
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        self.inner.get_to(key, max_bytes, out)
    }
}

impl WriteStore for ChangingEtags {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.put_new(key, bytes)
    }

    fn put_if(&self, key: &str, bytes: &[u8], etag: Option<&str>) -> Result<String, StoreError> {
        self.inner.put_if(key, bytes, etag)
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError> {
        self.inner.list_page(prefix, after)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
}

/// An outside attack saw the publisher retry for 120 s (about 220 PUTs)
/// and then blame "other publishers": it now names the store's ETags
/// within a second.
#[test]
fn etags_that_never_match_are_named_not_blamed_on_other_publishers() {
    let fx = Fixture::new();
    fx.publish("v1", 3);
    let store = ChangingEtags {
        inner: fx.store(),
        reads: Default::default(),
    };
    let (_, compiled) = fx.compile("v2", 3);
    let started = std::time::Instant::now();
    let refused = channel::publish(
        &store,
        &compiled,
        std::slice::from_ref(&fx.key),
        &PublishOptions::for_channel("stable"),
    )
    .expect_err("refused");
    assert!(
        matches!(refused, channel::PublishError::UnstableEtags { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("ETags change between reads"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A pin file that is a FIFO (or anything but a regular file) stops gc
/// before it deletes anything: skipped in silence, the bundle it names
/// would be deleted.
#[test]
fn gc_stops_at_a_pin_it_cannot_read() {
    let fx = Fixture::new();
    for v in 1..=3 {
        fx.publish(&format!("v{v}"), 3);
    }
    std::fs::create_dir_all(fx.store_dir().join("pins")).expect("pins");
    let made = std::process::Command::new("mkfifo")
        .arg(fx.store_dir().join("pins/eu.json"))
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let refused = strata_common::gc::gc(&fx.store(), 1, false, strata_common::sweep::DEFAULT_GRACE);
    assert!(refused.is_err(), "{refused:?}");
    for v in 1..=3 {
        assert!(
            fx.store()
                .get_range(&strata_common::layout::bundle_key(v), 0..1)
                .is_ok(),
            "bundle {v} kept"
        );
    }
}
