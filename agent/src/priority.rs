//! Thread priority: the agent's background work (the sync thread, redb's
//! early writeback) runs at `SCHED_IDLE`, so that a lookup, or the call
//! worker beside the agent, always runs first. Its own module so that
//! storage and sync both use it without depending on each other.

use tracing::warn;

/// Puts the calling thread at `SCHED_IDLE` (the sync thread, early writeback: see `sync::spawn_sync_thread`).
pub(crate) fn lowest_priority(thread: &str) {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        warn!("cannot run {thread} at SCHED_IDLE ({e:?}); an apply may slow lookups");
    }
}
