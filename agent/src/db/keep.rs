//! Which stored snapshots stay: the newest `retain`, the one served, and
//! every one this node served within `retain_for` (a call locked to its
//! snapshot keeps it for the call's length), at most [`MAX_TIMED`] of
//! those. When each snapshot stopped being served is recorded in
//! [`SERVED_UNTIL`] whenever another becomes current.

use std::time::Duration;

use redb::{ReadableTable, Table, TableDefinition};

use super::DbError;

/// version → when it stopped being served (seconds since the epoch).
pub(super) const SERVED_UNTIL: TableDefinition<u64, u64> = TableDefinition::new("served_until");

/// The most snapshots kept by `retain_for` alone: a channel published
/// every second must not grow the file without bound (each costs its
/// metadata, Layer 1 copy and chunk list, BENCHMARKS.md "Sessions keep
/// their snapshot").
pub const MAX_TIMED: usize = 256;

/// What the node keeps (agent.toml `retain` and `retain_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// The newest this many snapshots, at least 1.
    pub count: usize,
    /// Every snapshot served within this window.
    pub served_within: Duration,
}

impl Keep {
    /// Only the newest `count` (tests, and `retain_for = "0s"`).
    pub fn newest(count: usize) -> Self {
        Self {
            count,
            served_within: Duration::ZERO,
        }
    }

    /// The versions of `stored` (ascending) to keep, `current` always
    /// among them, ascending.
    pub(super) fn kept(
        &self,
        stored: &[u64],
        current: u64,
        served_until: &Table<u64, u64>,
        now: u64,
    ) -> Result<Vec<u64>, DbError> {
        let newest = &stored[stored.len().saturating_sub(self.count.max(1))..];
        let since = now.saturating_sub(self.served_within.as_secs());
        let mut timed = Vec::new();
        if !self.served_within.is_zero() {
            for v in stored.iter().rev() {
                if timed.len() == MAX_TIMED {
                    break;
                }
                if !newest.contains(v)
                    && *v != current
                    && served_until.get(*v)?.is_some_and(|g| g.value() >= since)
                {
                    timed.push(*v);
                }
            }
        }
        let mut kept: Vec<u64> = newest.iter().copied().chain(timed).collect();
        if stored.contains(&current) {
            kept.push(current);
        }
        kept.sort_unstable();
        kept.dedup();
        Ok(kept)
    }
}

/// Records that `was` (the version served until now, if any) stops being
/// served at `now`, because `next` is served from now on.
pub(super) fn note_switch(
    served_until: &mut Table<u64, u64>,
    was: Option<u64>,
    next: u64,
    now: u64,
) -> Result<(), DbError> {
    if let Some(was) = was.filter(|w| *w != next) {
        served_until.insert(was, now)?;
    }
    served_until.remove(next)?;
    Ok(())
}

/// Seconds since the epoch.
pub(super) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
