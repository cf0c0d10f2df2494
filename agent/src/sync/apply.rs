//! The pipeline run on the deciding document, and what passes applied: a
//! stored version switched to in one small commit, or a new snapshot
//! decoded into one redb write transaction (a new node's first, into
//! durable parts and a last one), committed only if every record passed,
//! made durable, then swapped in as the served snapshot.

use std::time::Instant;

use strata_common::bundle::tree::read::ObjectSource;
use strata_common::bundle::tree::{Held, TreeFrames};
use strata_common::time;
use strata_common::verify::{self, Body, Checked, Named, Policy, Refusal, Stored, Verified};
use tracing::{info, warn};

use super::follow::Doc;
use super::{CheckError, Outcome, Syncer};
use crate::db::{DbError, Ingested, Reader, SnapshotMeta};

impl Syncer {
    /// Runs the verification pipeline ([`verify::verify`]) on `doc` against
    /// what this node serves, stores and has accepted, then applies what
    /// it found.
    pub(super) fn verify_and_apply(&mut self, doc: &Doc) -> Result<Outcome, CheckError> {
        let started = Instant::now();
        let marks = self.marks()?;
        let served = self.shared.served.load_full();
        let served_meta = served.as_ref().and_then(|r| r.current_meta());
        let retained = self.retained(served.as_deref());
        let policy = Policy {
            trust: &self.trust,
            channel: &self.channel,
            region: &self.region,
            limits: self.limits,
            now: time::now(),
            served: served_meta.map(|m| (m.version, m.bundle_sha256.as_str())),
            retained: &retained,
            high_water: marks.high_water,
            pin_floor: marks.pin_floor,
        };
        let checked = verify::verify(
            self.store.as_ref(),
            doc.version_doc(),
            &policy,
            &self.spool_dir,
        )?;
        drop(served);
        match checked {
            Checked::UpToDate(named) => {
                self.follow(&named);
                Ok(Outcome::UpToDate(named.version()))
            }
            Checked::Retained(named) => self.switch(&named, started),
            Checked::New(verified) => self.ingest(*verified, started),
        }
    }

    /// Stored versions today's keys still vouch for.
    fn retained(&self, served: Option<&Reader>) -> Vec<Stored> {
        served
            .map(|r| {
                r.metas
                    .values()
                    .filter(|m| self.vouches(m).is_ok())
                    .map(|m| Stored {
                        version: m.version,
                        bundle_sha256: m.bundle_sha256.clone(),
                        bundle_expires_at: bundle_expiry(&m.manifest),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes the verified payload into the database: a format 2 payload
    /// from the spool copy; a format 3 root's objects from this node's
    /// cache or the store, fetching no chunk the newest stored snapshot
    /// shares with it.
    fn apply_body(
        &self,
        meta: &SnapshotMeta,
        verified: &mut Verified,
    ) -> Result<Ingested, DbError> {
        let root = match &mut verified.payload {
            Body::Bundle(payload) => return self.db.ingest(meta, payload.as_mut(), self.keep),
            Body::Tree(root) => std::mem::take(root),
        };
        let held = self.db.held_chunks(meta.version)?;
        let db = &self.db;
        let cached = |h: &[u8; 32]| db.cached_object(h);
        let holding = Held {
            cached: &cached,
            chunks: &held,
        };
        // The chunks are fetched ahead on threads of this scope while the
        // last ones are written; `frames` (and with it the pool's handle,
        // which stops them) go before the scope waits for those threads, so
        // they end on every path.
        std::thread::scope(|s| {
            let mut frames = TreeFrames::open(
                ObjectSource::Store(self.store.as_ref()),
                &verified.manifest,
                &root,
                &holding,
                &self.limits,
            )
            .map_err(|e| DbError::Bundle(e.into()))?;
            frames.prefetch(s);
            self.db.ingest(meta, &mut frames, self.keep)
        })
    }

    /// Serves the stored version `named` names: one small commit (which
    /// raises the high-water mark for a channel pointer), no fetch.
    fn switch(&mut self, named: &Named, started: Instant) -> Result<Outcome, CheckError> {
        let version = named.version();
        let reader = self
            .db
            .switch(version, !named.is_pin())
            .and_then(|()| self.db.reader())
            .and_then(|r| r.ok_or(DbError::NoCurrent))
            .map_err(|source| CheckError::Ingest {
                bundle: named.bundle_key(),
                source,
                permanent: false,
            })?;
        self.serve(reader);
        self.follow(named);
        info!(
            version,
            pinned = named.is_pin(),
            "switched to a stored snapshot"
        );
        self.shared
            .metrics
            .count_apply(started.elapsed(), (0, 0), 0);
        Ok(Outcome::Applied(version))
    }

    /// Decodes the verified snapshot into one write transaction (a new
    /// node's first into parts; the last raises the high-water mark for a
    /// channel pointer), serves it once
    /// committed, then makes it durable if the commit was not.
    fn ingest(&mut self, mut verified: Verified, started: Instant) -> Result<Outcome, CheckError> {
        let verified_at = started.elapsed();
        let meta = SnapshotMeta {
            version: verified.manifest.version,
            bundle_sha256: verified.bundle_sha256.clone(),
            bundle_size: verified.bundle_size,
            created_at: verified.manifest.created_at.clone(),
            expires_at: verified.named.pointer().map_or_else(
                || verified.manifest.expires_at.clone(),
                |p| p.expires_at.clone(),
            ),
            layer1_version: verified.manifest.layer1_version.clone(),
            tenant_count: verified.manifest.tenant_count,
            source: self.store.url().to_string(),
            fetched_at: time::format(time::now()),
            pinned: verified.named.is_pin(),
            manifest: String::from_utf8_lossy(&verified.manifest_bytes).into_owned(),
            signatures: verified.signatures.clone(),
        };
        let bundle = verified.bundle.clone();
        self.shared.status().applying = Some(meta.version);
        let ingested = self.apply_body(&meta, &mut verified);
        self.shared.status().applying = None;
        let ingested = ingested.map_err(|e| match e {
            DbError::Bundle(source) => CheckError::Refused(Refusal::Bundle {
                bundle: bundle.clone(),
                source,
            }),
            other => CheckError::Ingest {
                bundle: bundle.clone(),
                permanent: matches!(other, DbError::AlreadyStored { .. }),
                source: other,
            },
        })?;
        let reader = self
            .db
            .reader()
            .and_then(|r| r.ok_or(DbError::NoCurrent))
            .map_err(|source| CheckError::Ingest {
                bundle: bundle.clone(),
                source,
                permanent: false,
            })?;
        // Counted before it is served: whoever sees the new version sees
        // what its apply fetched.
        self.shared.metrics.count_apply(
            started.elapsed(),
            (ingested.frames_decoded, ingested.frames_skipped),
            ingested.bytes_fetched,
        );
        self.serve(reader);
        self.follow(&verified.named);
        let version = meta.version;
        info!(
            version,
            pinned = meta.pinned,
            tenants = ingested.tenants,
            bodies_written = ingested.bodies_written,
            bodies_shared = ingested.bodies_shared,
            rows_written = ingested.rows_written,
            frames_decoded = ingested.frames_decoded,
            frames_skipped = ingested.frames_skipped,
            objects_fetched = ingested.objects_fetched,
            bytes_fetched = ingested.bytes_fetched,
            durable = ingested.durable,
            transactions = ingested.transactions,
            verify_seconds = verified_at.as_secs_f64(),
            seconds = started.elapsed().as_secs_f64(),
            "snapshot applied"
        );
        if !ingested.durable {
            let served_at = started.elapsed();
            match self.db.persist() {
                Ok(()) => info!(
                    version,
                    persist_seconds = (started.elapsed() - served_at).as_secs_f64(),
                    "snapshot durable"
                ),
                Err(e) => {
                    warn!("snapshot {version} is served but not yet durable: {e}");
                    self.db_write_failed();
                }
            }
        }
        Ok(Outcome::Applied(version))
    }
}

/// The `expires_at` of a stored manifest (empty if it does not parse,
/// which its verification at ingest ruled out).
fn bundle_expiry(manifest: &str) -> String {
    serde_json::from_str::<strata_common::bundle::Manifest>(manifest)
        .map(|m| m.expires_at)
        .unwrap_or_default()
}
