//! The snapshot writer a compile streams into: format 2's payload or
//! format 3's objects, behind one interface.

use super::TenantResult;
use crate::bundle::PayloadWriter;
use crate::bundle::tree::{ChunkRef, TreeWriter};
use crate::source::{Source, SourceError};
use crate::validate::Problem;

/// The writer of the format being compiled (one per compile: their sizes
/// do not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Writer {
    Bundle(PayloadWriter),
    Tree(TreeWriter),
}

impl Writer {
    pub(super) fn layer1(&mut self, json: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Bundle(w) => w.layer1(json),
            Writer::Tree(w) => w.layer1(json),
        }
    }

    pub(super) fn tenant(
        &mut self,
        t: &TenantResult,
        hash: &str,
        config: &[u8],
        prompt: &[u8],
    ) -> std::io::Result<()> {
        match self {
            Writer::Bundle(w) => w.tenant(&t.tenant_id, hash, config, prompt),
            Writer::Tree(w) => w.tenant(&t.tenant_id, hash, config, prompt, &t.source_sha256),
        }
    }

    pub(super) fn route(&mut self, number: &str, tenant: &str) -> std::io::Result<()> {
        match self {
            Writer::Bundle(w) => w.route(number, tenant),
            Writer::Tree(w) => w.route(number, tenant),
        }
    }

    /// Whether the writer is between chunks (format 3), so that a chunk of
    /// the channel's snapshot can follow as it is.
    pub(super) fn between_chunks(&self) -> bool {
        matches!(self, Writer::Tree(w) if !w.chunk_open())
    }

    /// Takes the channel's chunk `c` as it is (see [`TreeWriter::reuse_chunk`]).
    pub(super) fn reuse_chunk(&mut self, c: &ChunkRef, last: &str) -> std::io::Result<()> {
        match self {
            Writer::Tree(w) => w.reuse_chunk(c, last),
            Writer::Bundle(_) => Err(std::io::Error::other("format 2 has no chunks to reuse")),
        }
    }
}

/// Refuses a payload that agents with their default limits would refuse:
/// published, it would stall the channel for every tenant. Names the limit
/// and the agent setting that raises it.
pub(super) fn check_agent_limits(
    source: &Source,
    payload: &crate::bundle::Payload,
    (compressed, raw): (u64, u64),
    limits: &crate::bundle::Limits,
) -> Result<(), SourceError> {
    let over = [
        (
            compressed,
            limits.max_bundle_bytes,
            "bytes compressed",
            "max_bundle_bytes",
        ),
        (
            raw,
            limits.max_decompressed_bytes,
            "bytes of records",
            "max_bundle_bytes",
        ),
        (
            payload.record_count,
            limits.max_records,
            "records",
            "(a fixed limit)",
        ),
    ];
    let problems: Vec<Problem> = over
        .iter()
        .filter(|(found, limit, ..)| found > limit)
        .map(|(found, limit, what, setting)| Problem {
            file: source.dir.clone(),
            tenant: None,
            field: String::new(),
            reason: format!(
                "the snapshot would hold {found} {what}; agents refuse more than {limit} ({setting}): nothing was signed; raise the agents' limit on every node first and say so with --agent-max-bundle-bytes, or publish fewer tenants per channel"
            ),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SourceError::Invalid {
            problems,
            warnings: Vec::new(),
        })
    }
}
