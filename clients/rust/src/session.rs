//! A call's session: the session rule, built in.

use std::sync::Arc;

use crate::cache::Value;
use crate::{At, Client, Error, Kind, json, text};

/// One call's lookups. The first answers from the snapshot the agent
/// serves and fixes it ([`Session::snapshot`]); every later one asks for
/// that snapshot, and tenant and prompt lookups pass the call id as
/// `session`, so the whole call sees one snapshot and one canary arm even
/// while new snapshots are published.
///
/// When the call's snapshot leaves the node's retention mid-call (410
/// `snapshot_gone`: rare, the agent keeps every snapshot it served within
/// `retain_for`, default 2 h), the session moves to the snapshot the agent
/// serves now and counts it in [`Session::relocked`]: the call goes on
/// with a consistent, newer snapshot rather than failing.
#[derive(Debug)]
pub struct Session {
    client: Client,
    call_id: String,
    snapshot: Option<u64>,
    relocked: u32,
}

impl Session {
    pub(crate) fn new(client: Client, call_id: String) -> Self {
        Self {
            client,
            call_id,
            snapshot: None,
            relocked: 0,
        }
    }

    /// The call's id (its canary draw).
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The snapshot this call is locked to (after its first lookup).
    pub fn snapshot(&self) -> Option<u64> {
        self.snapshot
    }

    /// How many times the call moved to a newer snapshot because its own
    /// left the node's retention.
    pub fn relocked(&self) -> u32 {
        self.relocked
    }

    /// The tenant's effective config, for this call.
    pub async fn tenant(&mut self, id: &str) -> Result<Arc<serde_json::Value>, Error> {
        Ok(json(self.lookup(Kind::Tenant, id).await?))
    }

    /// The tenant's system prompt, for this call.
    pub async fn prompt(&mut self, id: &str) -> Result<Arc<str>, Error> {
        Ok(text(self.lookup(Kind::Prompt, id).await?))
    }

    /// The tenant owning a dialled number, in this call's snapshot.
    pub async fn route(&mut self, e164: &str) -> Result<Arc<str>, Error> {
        Ok(text(self.lookup(Kind::Route, e164).await?))
    }

    /// Layer 1, in this call's snapshot.
    pub async fn layer1(&mut self) -> Result<Arc<serde_json::Value>, Error> {
        Ok(json(self.lookup(Kind::Layer1, "").await?))
    }

    async fn lookup(&mut self, kind: Kind, key: &str) -> Result<Value, Error> {
        // One deadline for the lookup, a move to a newer snapshot included.
        let deadline = self.client.inner.pool.deadline();
        let (value, snapshot) = match self.client.lookup(kind, key, self.at(kind), deadline).await {
            Err(Error::SnapshotGone(_)) if self.snapshot.is_some() => {
                self.snapshot = None;
                self.relocked += 1;
                self.client
                    .lookup(kind, key, self.at(kind), deadline)
                    .await?
            }
            answer => answer?,
        };
        if self.snapshot.is_none() {
            self.snapshot = snapshot;
        }
        Ok(value)
    }

    /// The snapshot and session a lookup of `kind` passes.
    fn at(&self, kind: Kind) -> At<'_> {
        At {
            snapshot: self.snapshot,
            session: matches!(kind, Kind::Tenant | Kind::Prompt).then_some(self.call_id.as_str()),
        }
    }
}
