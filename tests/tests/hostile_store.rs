//! The agent's check driven directly (a real `Syncer`, a real redb file)
//! over a store that misbehaves the way mirrors, proxies and S3-compatible
//! gateways have been seen to.

use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use strata_agent::db::Db;
use strata_agent::state::Shared;
use strata_agent::sync::{Outcome, Syncer};
use strata_common::store::{Fetched, FileStore, ReadStore, StoreError, StoreUrl};
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
