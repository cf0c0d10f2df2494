//! Whether a store honours the conditional writes every publish relies on:
//! a create-only put (`If-None-Match: *`) refused when the key exists, and
//! a compare-and-swap (`If-Match`) refused on another ETag. A store, an
//! S3-compatible gateway or a proxy that ignores them accepts both, and
//! concurrent publishes then overwrite each other without a word; so each
//! publishing command probes once before it writes anything.

use super::{StoreError, WriteStore};

/// Where the probe writes (and removes) its object.
const PROBE_PREFIX: &str = "probes/conditional-write-";

/// Why a store cannot be published to.
#[derive(Debug, thiserror::Error)]
pub enum ConditionsError {
    /// The store failed during the probe.
    #[error("probing conditional writes: {0}")]
    Store(#[from] StoreError),
    /// The store accepted a write its condition should have refused.
    #[error(
        "{store} does not honour conditional writes: {which} was accepted; concurrent publishes would overwrite each other without a word, so nothing was published. Publish to a store that supports If-None-Match and If-Match on PUT (AWS S3 does; on an S3-compatible server or gateway, turn its conditional-write support on), and not through a proxy that strips those headers"
    )]
    Ignored {
        /// The store's URL.
        store: String,
        /// The write that should have been refused.
        which: &'static str,
    },
}

/// Writes a probe object twice under conditions that must refuse the
/// second write, then removes it: `Ok` if the store refused both. Callers
/// run it right before their first write, so that a command refused for
/// another reason leaves the store untouched; a store that enforces the
/// conditions itself (a local directory) is not probed.
pub fn check_conditions(store: &dyn WriteStore) -> Result<(), ConditionsError> {
    if store.enforces_conditions_locally() {
        return Ok(());
    }
    let key = format!("{PROBE_PREFIX}{:016x}", rand::random::<u64>());
    let ignored = |which| ConditionsError::Ignored {
        store: store.url().to_string(),
        which,
    };
    store.put_new(&key, b"1")?;
    let outcome = (|| {
        match store.put_new(&key, b"2") {
            Err(StoreError::AlreadyExists { .. }) => {}
            Ok(()) => {
                return Err(ignored(
                    "a create-only put (If-None-Match: *) of an existing key",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        match store.put_if(&key, b"3", Some("\"strata-probe-no-such-etag\"")) {
            Err(StoreError::PreconditionFailed { .. }) => Ok(()),
            Ok(_) => Err(ignored("a compare-and-swap put (If-Match) on a wrong ETag")),
            Err(e) => Err(e.into()),
        }
    })();
    let removed = store.delete(&key);
    outcome?;
    removed?;
    Ok(())
}
