//! Rolling back one tenant (`rollback --tenant X --to N`): the channel's
//! snapshot published again with only X's record taken from snapshot N.
//! Every other tenant is served exactly as before; X is held back
//! (recorded in the signed manifest, [`crate::bundle::Hold`]) until its
//! source rises above the version rolled back from, so that the next
//! routine publish does not bring the bad config back.
//!
//! A format 3 snapshot keeps every chunk but X's as it is (same objects,
//! nothing uploaded or fetched again); X's chunk is written anew and ends
//! where it ended. A format 2 bundle is written again whole.

use std::collections::{BTreeMap, BTreeSet};

use crate::bundle::tree::{ChunkRef, TreeWriter};
use crate::bundle::{Group, Hold, Limits, MAX_HOLDS, Payload, PayloadWriter, SignatureCheck};
use crate::channel::{self, PublishOptions, Published};
use crate::compile::Compiled;
use crate::history::{TenantRecord, tenant_record};
use crate::model::SnapshotVersion;
use crate::operator::{OperatorError, StoredBundle, fetch_bundle};
use crate::pointer::{Pointer, PointerReadError};
use crate::sign::{SigningKey, TrustedKeys};
use crate::store::WriteStore;

/// Why a tenant could not be rolled back; nothing was published.
#[derive(Debug, thiserror::Error)]
pub enum TenantRollbackError {
    /// Reading or publishing failed.
    #[error(transparent)]
    Operator(#[from] OperatorError),
    /// The channel's pointer could not be read or verified.
    #[error("channel {channel}: {source}")]
    Pointer {
        /// The channel.
        channel: String,
        /// Why.
        source: PointerReadError,
    },
    /// The channel serves nothing yet.
    #[error("channel {0} has no snapshot yet; publish one first")]
    NoChannel(String),
    /// Snapshot N does not hold the tenant.
    #[error(
        "tenant {tenant} is not in snapshot {version}; `strata-publisher history --tenant {tenant}` lists the snapshots that hold it"
    )]
    NotInSnapshot {
        /// The tenant.
        tenant: String,
        /// The snapshot.
        version: u64,
    },
    /// Snapshot N was built under another Layer 1: its prompt would be
    /// served under the wrong guardrails.
    #[error(
        "snapshot {version} was built under another Layer 1 than the channel's; its record of {tenant} cannot be served under today's Layer 1: put the old content back in the tenant's source (with a higher version) and publish"
    )]
    OtherLayer1 {
        /// The tenant.
        tenant: String,
        /// The snapshot.
        version: u64,
    },
    /// A number the old record claims belongs to another tenant now.
    #[error(
        "tenant {tenant} in snapshot {version} owns {number}, which the channel now gives to tenant {owner}; free the number first"
    )]
    NumberTaken {
        /// The tenant.
        tenant: String,
        /// The snapshot.
        version: u64,
        /// The number.
        number: String,
        /// Who owns it in the channel's snapshot.
        owner: String,
    },
    /// Too many tenants held at once for one manifest.
    #[error(
        "{MAX_HOLDS} tenants are held back by rollbacks already; publish their sources at higher versions to release some"
    )]
    TooManyHolds,
    /// Writing the new payload failed.
    #[error("writing the snapshot: {0}")]
    Write(#[from] std::io::Error),
}

/// What [`rollback_tenant`] published.
#[derive(Debug)]
pub struct TenantRolledBack {
    /// The publish.
    pub published: Published,
    /// The tenant's version before (`None`: the channel did not hold it).
    pub from: Option<String>,
    /// The version it serves now, from snapshot `to`.
    pub to_version: String,
    /// The hold recorded.
    pub hold: Hold,
}

/// Publishes the channel's snapshot with `tenant`'s record from snapshot
/// `to`, held back (see the module docs). Both snapshots must verify with
/// the signing keys or `opts.trusted`.
pub fn rollback_tenant(
    store: &dyn WriteStore,
    tenant: &str,
    to: u64,
    keys: &[SigningKey],
    opts: &PublishOptions,
) -> Result<TenantRolledBack, TenantRollbackError> {
    let trust = TrustedKeys::for_publisher(keys, &opts.trusted);
    let check = SignatureCheck::Trusted(&trust);
    let limits = Limits::agents();
    let pointer_err = |source| TenantRollbackError::Pointer {
        channel: opts.channel.clone(),
        source,
    };
    let (head, _) = Pointer::read_channel(store, &opts.channel, &trust)
        .map_err(pointer_err)?
        .ok_or_else(|| TenantRollbackError::NoChannel(opts.channel.clone()))?;
    let old_key = SnapshotVersion(to).bundle_key();
    let old = fetch_bundle(store, to, check, &limits)?;
    let (old_layer1, record) = tenant_record(store, &old, &old_key, tenant, &limits)?;
    let record = record.ok_or_else(|| TenantRollbackError::NotInSnapshot {
        tenant: tenant.to_owned(),
        version: to,
    })?;
    let head_key = head.bundle.clone();
    let current = fetch_bundle(store, head.version, check, &limits)?;
    let (head_layer1, before) = tenant_record(store, &current, &head_key, tenant, &limits)?;
    if head_layer1 != old_layer1 {
        return Err(TenantRollbackError::OtherLayer1 {
            tenant: tenant.to_owned(),
            version: to,
        });
    }
    let mut holds = current.header.manifest.held.clone();
    let above = match (holds.get(tenant), &before) {
        // Rolled back again: the source must still pass the first bad one.
        (Some(h), _) => h.above.clone(),
        (None, Some(b)) => b.version.clone(),
        (None, None) => record.version.clone(),
    };
    let hold = Hold {
        version: record.version.clone(),
        above,
        snapshot: to,
        since: 0,
    };
    holds.insert(tenant.to_owned(), hold.clone());
    if holds.len() > MAX_HOLDS {
        return Err(TenantRollbackError::TooManyHolds);
    }
    let present = crate::versions::served_objects(store, head.version, &trust)?;
    let mut compiled = rewrite(
        store,
        (&current, &head_key),
        tenant,
        (to, &record),
        before.is_some(),
        present.as_ref(),
    )?;
    compiled.holds = holds;
    let mut opts = opts.clone();
    if let Some(p) = present {
        opts.present = p.objects;
    }
    // Built on `head`: a publish that moved the channel since would be
    // undone by this one, so it is refused instead (run it again).
    let built_on = head.version;
    let mut gate = |now: Option<&Pointer>| match now {
        Some(p) if p.version == built_on => Ok(()),
        _ => Err(channel::PublishError::Refused(format!(
            "the channel moved past snapshot {built_on} while tenant {tenant} was rolled back; nothing was published: run the rollback again"
        ))),
    };
    let published = channel::publish_gated(store, &compiled, keys, &opts, &mut gate)
        .map_err(OperatorError::from)?;
    let since = published.pointer.version;
    Ok(TenantRolledBack {
        published,
        from: before.map(|b| b.version),
        to_version: record.version,
        hold: Hold { since, ..hold },
    })
}

/// The channel's snapshot (`current`, at `key`) with `tenant`'s record
/// replaced by (or, if absent: `in_head` false, given) `record`.
fn rewrite(
    store: &dyn WriteStore,
    (current, key): (&StoredBundle, &str),
    tenant: &str,
    (to, record): (u64, &TenantRecord),
    in_head: bool,
    present: Option<&crate::versions::Present>,
) -> Result<Compiled, TenantRollbackError> {
    let limits = Limits::agents();
    let bad = |source| OperatorError::Bundle {
        key: key.to_owned(),
        source,
    };
    let m = &current.header.manifest;
    let mut reader = current.reader(store, key, &limits)?;
    let format3 = m.format == crate::bundle::FORMAT_TREE;
    // Format 3 with a dictionary: every chunk but the tenant's is kept.
    let chunks: &[ChunkRef] = match present {
        Some(p) if format3 && p.dictionary.is_some() => {
            reader.only_tenants(&BTreeSet::from([tenant.to_owned()]));
            &p.reuse.chunks
        }
        _ => &[],
    };
    let mut w = if format3 {
        Sink::Tree(Box::new(TreeWriter::new(
            3,
            present.and_then(|p| p.dictionary.clone()),
        )?))
    } else {
        Sink::Bundle(Box::new(PayloadWriter::new(1)?))
    };
    w.layer1(reader.layer1())?;
    let mut written = false;
    let put = |w: &mut Sink| w.tenant(tenant, &record.config_hash, &record.config, &record.prompt);
    let mut at = 0;
    while let Some(group) = reader.next_group().map_err(bad)? {
        let chunk = chunks.get(at);
        at += 1;
        let frame = match group {
            Group::Held { first, .. } => {
                if !written && chunk.is_none_or(|c| tenant < c.first.as_str()) {
                    put(&mut w)?;
                    w.cut()?;
                    written = true;
                }
                let c = chunk.filter(|c| c.first == first).ok_or_else(|| {
                    std::io::Error::other(format!("the chunk from {first} is not the root's next"))
                })?;
                w.reuse(c)?;
                continue;
            }
            Group::Listed(frame) => frame,
        };
        let bodies = reader.bodies(&frame).map_err(bad)?;
        for (i, entry) in frame.tenants.iter().enumerate() {
            let id = entry.tenant.as_str();
            if !written && tenant <= id {
                put(&mut w)?;
                written = true;
            }
            if id != tenant {
                let hash = String::from_utf8_lossy(&entry.config_hash).into_owned();
                let (config, prompt) = (
                    bodies.config(i).map_err(bad)?,
                    bodies.prompt(i).map_err(bad)?,
                );
                w.tenant(id, &hash, config, prompt)?;
            }
        }
        if !chunks.is_empty() {
            if !written
                && chunks
                    .get(at)
                    .is_none_or(|next| tenant < next.first.as_str())
            {
                put(&mut w)?;
                written = true;
            }
            w.cut()?;
        }
    }
    if !written {
        put(&mut w)?;
    }
    // Routes: the tenant's numbers are the old record's.
    let mut routes = BTreeMap::new();
    while let Some((number, owner)) = reader.next_route().map_err(bad)? {
        if owner != tenant {
            routes.insert(number.to_owned(), owner.to_owned());
        }
    }
    for number in &record.phones {
        if let Some(owner) = routes.insert(number.clone(), tenant.to_owned()) {
            return Err(TenantRollbackError::NumberTaken {
                tenant: tenant.to_owned(),
                version: to,
                number: number.clone(),
                owner,
            });
        }
    }
    for (number, owner) in &routes {
        w.route(number, owner)?;
    }
    let (payload, objects) = w.finish()?;
    Ok(Compiled {
        payload,
        objects,
        layer1_version: m.layer1_version.clone(),
        tenant_count: m.tenant_count + u64::from(!in_head),
        warnings: Vec::new(),
        held_back: Vec::new(),
        holds: BTreeMap::new(),
    })
}

/// Where [`rewrite`] writes: the snapshot's own format.
enum Sink {
    Bundle(Box<PayloadWriter>),
    Tree(Box<TreeWriter>),
}

/// A rolled-back tenant's chunk is compiled again by the next publish.
const NO_SOURCE: &str = "rolled back";

impl Sink {
    fn layer1(&mut self, json: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Bundle(w) => w.layer1(json),
            Sink::Tree(w) => w.layer1(json),
        }
    }

    fn tenant(
        &mut self,
        id: &str,
        hash: &str,
        config: &[u8],
        prompt: &[u8],
    ) -> std::io::Result<()> {
        match self {
            Sink::Bundle(w) => w.tenant(id, hash, config, prompt),
            Sink::Tree(w) => w.tenant(id, hash, config, prompt, NO_SOURCE),
        }
    }

    fn cut(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Bundle(_) => Ok(()),
            Sink::Tree(w) => w.cut(),
        }
    }

    fn reuse(&mut self, c: &ChunkRef) -> std::io::Result<()> {
        match self {
            Sink::Bundle(_) => Err(std::io::Error::other("format 2 has no chunks to keep")),
            Sink::Tree(w) => w.reuse_chunk(c, &c.first),
        }
    }

    fn route(&mut self, number: &str, tenant: &str) -> std::io::Result<()> {
        match self {
            Sink::Bundle(w) => w.route(number, tenant),
            Sink::Tree(w) => w.route(number, tenant),
        }
    }

    fn finish(self) -> std::io::Result<(Payload, crate::bundle::tree::write::Objects)> {
        match self {
            Sink::Bundle(w) => Ok((w.finish()?, Default::default())),
            Sink::Tree(w) => {
                let built = w.finish()?;
                Ok((built.root, built.objects))
            }
        }
    }
}
