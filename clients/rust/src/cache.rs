//! The ETag cache: the last answers with an ETag, revalidated with
//! `If-None-Match`, so an unchanged config costs a 304 and no parse.
//!
//! Every ETag the agent sets is a hash of the content (the config hash; a
//! prompt's hash of its config and Layer 1; Layer 1's hash), so an answer
//! is cached by what it names (`tenant` `acme`), not by its path: one entry
//! serves every snapshot and every call's session that answers the same
//! bytes. A tenant with a canary has two answers; an entry keeps the last
//! [`ARMS`], and the request names them all (`If-None-Match: "a", "b"`);
//! the 304's `ETag` says which one is current.
//!
//! Eviction is by generation: entries go into a young map; when it holds
//! `size` names, it becomes the old map (the previous old one dropped),
//! and an old entry used again moves back to the young one. O(1), no
//! per-entry bookkeeping; a working set of up to `size` names is never
//! evicted, and at most twice that is held.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// How many answers (canary arms) are kept for one name.
pub(crate) const ARMS: usize = 2;

/// A decoded answer, shared between callers.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// A parsed JSON body (configs, Layer 1, the snapshot state).
    Json(Arc<serde_json::Value>),
    /// Text: a prompt, or the tenant id a route names.
    Text(Arc<str>),
}

/// The answers kept for one name, newest first: `(etag, value)`.
pub(crate) type Arms = Vec<(Arc<str>, Value)>;

#[derive(Default)]
struct Generations {
    young: HashMap<String, Arms>,
    old: HashMap<String, Arms>,
}

/// The cache; safe to share between tasks and threads.
pub(crate) struct Cache {
    size: usize,
    maps: Mutex<Generations>,
}

impl Cache {
    /// A cache of about `size` names (0: no cache).
    pub(crate) fn new(size: usize) -> Self {
        Self {
            size,
            maps: Mutex::default(),
        }
    }

    /// The answers kept for `name` (moved back to the young generation).
    pub(crate) fn get(&self, name: &str) -> Option<Arms> {
        if self.size == 0 {
            return None;
        }
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(arms) = maps.young.get(name) {
            return Some(arms.clone());
        }
        let arms = maps.old.remove(name)?;
        self.insert(&mut maps, name.to_owned(), arms.clone());
        Some(arms)
    }

    /// Keeps `value` as `name`'s answer with `etag`, newest first.
    pub(crate) fn put(&self, name: &str, etag: &str, value: Value) {
        if self.size == 0 {
            return;
        }
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let mut arms = maps
            .young
            .remove(name)
            .or_else(|| maps.old.remove(name))
            .unwrap_or_default();
        arms.retain(|(e, _)| &**e != etag);
        arms.insert(0, (etag.into(), value));
        arms.truncate(ARMS);
        self.insert(&mut maps, name.to_owned(), arms);
    }

    fn insert(&self, maps: &mut Generations, name: String, arms: Arms) {
        if maps.young.len() >= self.size {
            maps.old = std::mem::take(&mut maps.young);
        }
        maps.young.insert(name, arms);
    }
}

/// The `If-None-Match` value naming every kept answer.
pub(crate) fn if_none_match(arms: &Arms) -> String {
    let quoted: Vec<String> = arms.iter().map(|(e, _)| format!("\"{e}\"")).collect();
    quoted.join(", ")
}

/// The kept answer a 304 stands for: the one its `ETag` names (the only
/// one, if the 304 names none).
pub(crate) fn pick(arms: &Arms, etag: Option<&str>) -> Option<Value> {
    match etag {
        Some(etag) => arms.iter().find(|(e, _)| &**e == etag),
        None if arms.len() == 1 => arms.first(),
        None => None,
    }
    .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn keeps_two_arms_newest_first_and_picks_by_etag() {
        let c = Cache::new(8);
        c.put("t/a", "e1", text("one"));
        c.put("t/a", "e2", text("two"));
        c.put("t/a", "e3", text("three"));
        let arms = c.get("t/a").unwrap_or_default();
        assert_eq!(if_none_match(&arms), "\"e3\", \"e2\"");
        assert!(matches!(pick(&arms, Some("e2")), Some(Value::Text(t)) if &*t == "two"));
        assert!(pick(&arms, Some("e1")).is_none());
        assert!(
            pick(&arms, None).is_none(),
            "two arms and no ETag: ask again"
        );
    }

    #[test]
    fn a_working_set_within_the_size_stays_and_older_names_go() {
        let c = Cache::new(2);
        for i in 0..3 {
            c.put(&format!("t/{i}"), "e", text("v"));
        }
        // Used again: moved back to the young generation.
        assert!(c.get("t/0").is_some());
        for i in 3..6 {
            c.put(&format!("t/{i}"), "e", text("v"));
        }
        assert!(c.get("t/1").is_none(), "unused for two generations");
        assert!(c.get("t/5").is_some());
        // A working set of `size` names, asked round-robin: never evicted.
        let c = Cache::new(8);
        for round in 0..3 {
            for i in 0..8 {
                let name = format!("t/{i}");
                if round > 0 {
                    assert!(c.get(&name).is_some(), "{name} evicted in round {round}");
                }
                c.put(&name, "e", text("v"));
            }
        }
        let off = Cache::new(0);
        off.put("t/a", "e", text("v"));
        assert!(off.get("t/a").is_none());
    }
}
