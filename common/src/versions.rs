//! Version discipline per tenant: a publish compares each tenant with the
//! snapshot the channel serves. A tenant whose content changed must carry a
//! higher semantic `version`; a lowered version, or the same version with
//! other content, is refused, naming the tenant, both versions and both
//! config hashes. Old content comes back only through `rollback`, which
//! republishes a whole old snapshot.
//!
//! Both payloads are read frame by frame in tenant order (a merge of two
//! sorted streams), so memory stays one frame per side whatever the tenant
//! count.
//!
//! "Content" is the tenant's own: under the same Layer 1, equal config
//! hashes. When Layer 1 changed between the two snapshots every config
//! hash changes with it, so the effective configs are compared field by
//! field, and a field that holds Layer 1's default on both sides (the
//! default changed, the tenant did not) is not a change of the tenant's.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::io::Cursor;
use std::path::Path;

use serde_json::Value;

use crate::bundle::{self, BundleError, Frames, Limits, SignatureCheck};
use crate::channel::{self, PublishError};
use crate::compile::Compiled;
use crate::model::is_canary_key;
use crate::operator::{OperatorError, fetch_bundle};
use crate::pointer::Pointer;
use crate::sign::{SigningKey, TrustedKeys};
use crate::store::WriteStore;
use crate::validate::Problem;

/// Why the comparison itself could not run.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    /// The served snapshot could not be read or verified.
    #[error(transparent)]
    Served(#[from] OperatorError),
    /// The channel pointer could not be read.
    #[error(transparent)]
    Channel(#[from] PublishError),
    /// A payload could not be decoded.
    #[error("{what}: {source}")]
    Payload {
        /// Which snapshot.
        what: &'static str,
        /// Why.
        source: BundleError,
    },
}

/// How [`VersionsError::Payload`] names the snapshot the channel serves.
const SERVED: &str = "the channel's snapshot";

impl VersionsError {
    /// Whether the served snapshot is gone or damaged (its bundle missing,
    /// refused, or its payload undecodable), which no retry mends: the
    /// publish that replaces it is the fix. A store or disk that failed
    /// this time is not damage.
    pub fn is_damage(&self) -> bool {
        match self {
            VersionsError::Served(e) => e.is_damage(),
            VersionsError::Payload { what, source } => {
                *what == SERVED && !matches!(source, BundleError::Io(_))
            }
            VersionsError::Channel(_) => false,
        }
    }
}

/// Compares `compiled` (to be published from the source in `dir`) with
/// the snapshot `pointer` names (verified with `trust`): one problem per
/// tenant that breaks the discipline, and the tenants it would remove. A
/// publish asks again when another publisher moved the channel first.
/// With `lower_ok` (a database source, where each version is one row and
/// moving `is_active` back to an older row is the platform's rollback), a
/// lowered version is not a problem; the same version with other content
/// still is.
pub fn check_against(
    store: &dyn WriteStore,
    pointer: &Pointer,
    trust: &TrustedKeys,
    compiled: &Compiled,
    dir: &Path,
    lower_ok: bool,
) -> Result<Comparison, VersionsError> {
    let old = served_reader(store, pointer, trust)?;
    let new = payload_reader(compiled, store).map_err(|source| VersionsError::Payload {
        what: "the new snapshot",
        source,
    })?;
    compare(old, new, (pointer.version, lower_ok), dir)
}

/// Who owns each phone number (number → tenant) in the snapshot `pointer`
/// names, verified with `trust`: what a publish gives to the tenant that
/// already holds a number when another claims it too.
pub fn served_owners(
    store: &dyn WriteStore,
    pointer: &Pointer,
    trust: &TrustedKeys,
) -> Result<std::collections::BTreeMap<String, String>, VersionsError> {
    let mut reader = served_reader(store, pointer, trust)?;
    let err = |source| VersionsError::Payload {
        what: SERVED,
        source,
    };
    // Only the routes are wanted: format 3's chunks are passed over unread.
    if let Some(all) = reader.chunk_hashes() {
        reader.skip_chunks(&all);
    }
    while reader.next_group().map_err(err)?.is_some() {}
    // Routes come sorted by number: collected, then built in bulk (a
    // third of the time of 3 million inserts).
    let mut owners = Vec::new();
    while let Some((number, tenant)) = reader.next_route().map_err(err)? {
        owners.push((number.to_owned(), tenant.to_owned()));
    }
    Ok(owners.into_iter().collect())
}

/// A payload reader over the snapshot `pointer` names, its bundle fetched
/// and verified with `trust` (the agents' default limits).
pub(crate) fn served_reader<'s>(
    store: &'s dyn WriteStore,
    pointer: &Pointer,
    trust: &TrustedKeys,
) -> Result<Box<dyn Frames + 's>, VersionsError> {
    let limits = Limits::agents();
    let served = fetch_bundle(
        store,
        pointer.version,
        SignatureCheck::Trusted(trust),
        &limits,
    )?;
    let key = crate::model::SnapshotVersion(pointer.version).bundle_key();
    Ok(served.reader(store, &key, &limits)?)
}

/// A payload reader over the compiled payload, through a bundle signed by
/// a throwaway key (only the payload's structure is read).
/// Chunks the publish kept from the channel's snapshot are read from `store`.
pub(crate) fn payload_reader<'a>(
    compiled: &'a Compiled,
    store: &'a dyn crate::store::ReadStore,
) -> Result<Box<dyn Frames + 'a>, BundleError> {
    let manifest = channel::manifest(
        compiled,
        1,
        crate::time::now(),
        std::time::Duration::from_secs(3600),
        &bundle::Provenance::default(),
    );
    let throwaway = SigningKey::from_bytes(&[7; 32]);
    let bytes = bundle::write_bundle(
        &manifest,
        &compiled.payload.compressed,
        std::slice::from_ref(&throwaway),
    )?;
    let limits = Limits::agents();
    let verified = bundle::verify(
        Cursor::new(bytes),
        SignatureCheck::SkipForInspection,
        &limits,
    )?;
    crate::bundle::tree::frames_of(
        verified,
        crate::bundle::tree::read::ObjectSource::Built(&compiled.objects, Some(store)),
        &limits,
    )
}

/// The records of `tenants` in the snapshot `pointer` names (verified
/// with `trust`), if its Layer 1 is `layer1` (a record made under another
/// Layer 1 would not match the snapshot it joins): what a quarantined
/// tenant keeps serving. Format 3 reads only the chunks holding them.
pub fn served_records(
    store: &dyn WriteStore,
    pointer: &Pointer,
    trust: &TrustedKeys,
    layer1: &[u8],
    tenants: &std::collections::BTreeSet<String>,
) -> Result<std::collections::BTreeMap<String, crate::compile::KeptRecord>, VersionsError> {
    let mut reader = served_reader(store, pointer, trust)?;
    let mut found = std::collections::BTreeMap::new();
    if reader.layer1() != layer1 {
        return Ok(found);
    }
    let err = |source| VersionsError::Payload {
        what: SERVED,
        source,
    };
    reader.only_tenants(tenants);
    while let Some(group) = reader.next_group().map_err(err)? {
        let bundle::Group::Listed(frame) = group else {
            continue;
        };
        let bodies = reader.bodies(&frame).map_err(err)?;
        for (i, t) in frame.tenants.iter().enumerate() {
            if !tenants.contains(&t.tenant) {
                continue;
            }
            let config = bodies.config(i).map_err(err)?.to_vec();
            let prompt = String::from_utf8_lossy(bodies.prompt(i).map_err(err)?).into_owned();
            let phones = serde_json::from_slice::<Value>(&config)
                .ok()
                .and_then(|c| serde_json::from_value(c.get("phone_numbers")?.clone()).ok())
                .unwrap_or_default();
            let config_hash = String::from_utf8_lossy(&t.config_hash).into_owned();
            found.insert(
                t.tenant.clone(),
                crate::compile::KeptRecord {
                    config_hash,
                    config,
                    prompt,
                    phones,
                },
            );
        }
    }
    Ok(found)
}

/// What the store holds of a channel's format 3 snapshot.
#[derive(Debug, Clone, Default)]
pub struct Present {
    /// The dictionary its chunks were compressed with.
    pub dictionary: Option<Vec<u8>>,
    /// Every object it reaches: those a publish need not upload.
    pub objects: HashSet<[u8; 32]>,
    /// Its Layer 1 and chunks: what a publish keeps of it.
    pub reuse: crate::compile::Reuse,
    /// Its payload's SHA-256 (hex): a build with the same one changes
    /// nothing (the root is a function of its content).
    pub payload_sha256: String,
}

/// What the store holds of snapshot `version` (verified with `trust`), if
/// it is a format 3 snapshot; `None` for a format 2 bundle.
pub fn served_objects(
    store: &dyn WriteStore,
    version: u64,
    trust: &TrustedKeys,
) -> Result<Option<Present>, OperatorError> {
    let limits = Limits::agents();
    let key = crate::model::SnapshotVersion(version).bundle_key();
    let stored = fetch_bundle(store, version, SignatureCheck::Trusted(trust), &limits)?;
    if stored.header.manifest.format != crate::bundle::FORMAT_TREE {
        return Ok(None);
    }
    let refused = |source| OperatorError::Bundle {
        key: key.clone(),
        source,
    };
    let mut file = stored
        .file
        .try_clone()
        .map_err(|source| OperatorError::Spool {
            key: key.clone(),
            source,
        })?;
    std::io::Seek::rewind(&mut file).map_err(|source| OperatorError::Spool {
        key: key.clone(),
        source,
    })?;
    let verified = crate::bundle::verify(
        std::io::BufReader::new(file),
        SignatureCheck::SkipForInspection,
        &limits,
    )
    .map_err(refused)?;
    let manifest = verified.manifest().clone();
    let raw = verified.root().map_err(refused)?;
    let frames = crate::bundle::tree::TreeFrames::open(
        crate::bundle::tree::read::ObjectSource::Store(store),
        &manifest,
        &raw,
        &crate::bundle::tree::Held::nothing(),
        &limits,
    )
    .map_err(|e| refused(e.into()))?;
    let mut objects: HashSet<[u8; 32]> = frames.root().objects().map(|o| o.sha256).collect();
    objects.extend(frames.chunks().iter().map(|c| c.obj.sha256));
    Ok(Some(Present {
        dictionary: frames.dictionary().map(<[u8]>::to_vec),
        objects,
        reuse: crate::compile::Reuse {
            layer1: crate::bundle::Frames::layer1(&frames).to_vec(),
            chunks: frames.chunks().to_vec(),
        },
        payload_sha256: manifest.payload_sha256.clone(),
    }))
}

/// One tenant as a payload holds it.
struct Tenant {
    id: String,
    hash: [u8; 64],
    config: Vec<u8>,
}

/// The tenants of a payload in order, one decoded frame at a time.
struct Tenants<'a> {
    reader: Box<dyn Frames + 'a>,
    /// Tenants of chunks skipped as the same on both sides.
    skipped: u64,
    pending: VecDeque<Tenant>,
    what: &'static str,
}

impl Tenants<'_> {
    fn next(&mut self) -> Result<Option<Tenant>, VersionsError> {
        let what = self.what;
        let err = |source| VersionsError::Payload { what, source };
        while self.pending.is_empty() {
            let frame = match self.reader.next_group().map_err(err)? {
                None => return Ok(None),
                Some(bundle::Group::Listed(frame)) => frame,
                Some(bundle::Group::Held { count, .. }) => {
                    self.skipped += count;
                    continue;
                }
            };
            let bodies = self.reader.bodies(&frame).map_err(err)?;
            for (i, t) in frame.tenants.iter().enumerate() {
                self.pending.push_back(Tenant {
                    id: t.tenant.clone(),
                    hash: t.config_hash,
                    config: bodies.config(i).map_err(err)?.to_vec(),
                });
            }
        }
        Ok(self.pending.pop_front())
    }
}

/// What a publish would change against the snapshot a channel serves.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// One per tenant that breaks the version discipline.
    pub problems: Vec<Problem>,
    /// Tenants the served snapshot has: none for an empty channel.
    pub served_tenants: u64,
    /// Tenants it has and the new snapshot has not, in order.
    pub removed: Vec<String>,
}

impl Comparison {
    /// Whether the publish removes more tenants than a routine offboarding
    /// does: more than one, and more than [`MASS_REMOVAL_PERCENT`] % of the
    /// served ones. Such a publish is far more often a wrong or empty
    /// source than a decision, and it takes the tenants off every node.
    pub fn is_mass_removal(&self) -> bool {
        is_mass_removal(self.removed.len() as u64, self.served_tenants)
    }
}

/// Whether removing `removed` of `served` tenants is more than a routine
/// offboarding (see [`Comparison::is_mass_removal`]).
pub fn is_mass_removal(removed: u64, served: u64) -> bool {
    removed > 1 && removed.saturating_mul(100) > served.saturating_mul(MASS_REMOVAL_PERCENT)
}

/// The share of a channel's tenants one publish may remove unasked.
pub const MASS_REMOVAL_PERCENT: u64 = 10;

fn compare(
    mut old: Box<dyn Frames + '_>,
    mut new: Box<dyn Frames + '_>,
    served: (u64, bool),
    dir: &Path,
) -> Result<Comparison, VersionsError> {
    let same_layer1 = old.layer1() == new.layer1();
    let defaults = |layer1: &[u8]| {
        serde_json::from_slice::<Value>(layer1)
            .ok()
            .and_then(|l| l.get("defaults").cloned())
            .unwrap_or(Value::Null)
    };
    let (old_defaults, new_defaults) = (defaults(old.layer1()), defaults(new.layer1()));
    // Format 3: chunks both snapshots share hold the same tenants, byte
    // for byte: only the others are read and compared.
    if let (Some(a), Some(b)) = (old.chunk_hashes(), new.chunk_hashes()) {
        let shared: HashSet<[u8; 32]> = a.intersection(&b).copied().collect();
        old.skip_chunks(&shared);
        new.skip_chunks(&shared);
    }
    let mut old = Tenants {
        reader: old,
        skipped: 0,
        pending: VecDeque::new(),
        what: SERVED,
    };
    let mut new = Tenants {
        reader: new,
        skipped: 0,
        pending: VecDeque::new(),
        what: "the new snapshot",
    };
    let mut problems = Vec::new();
    let mut removed = Vec::new();
    let mut served_tenants = 0u64;
    let (mut a, mut b) = (old.next()?, new.next()?);
    while let Some(o) = a.take() {
        match b.as_ref().map(|n| (o.id.cmp(&n.id), n)) {
            Some((std::cmp::Ordering::Greater, _)) => {
                b = new.next()?;
                a = Some(o);
                continue;
            }
            // A canary arm is an experiment: it ends, and its content and
            // percent change, without a version of its own to raise.
            None | Some((std::cmp::Ordering::Less, _)) if is_canary_key(&o.id) => {}
            None | Some((std::cmp::Ordering::Less, _)) => removed.push(o.id.clone()),
            Some((std::cmp::Ordering::Equal, _)) if is_canary_key(&o.id) => b = new.next()?,
            Some((std::cmp::Ordering::Equal, n)) => {
                if !(same_layer1 && o.hash == n.hash)
                    && let Some(p) = check_tenant(
                        &o,
                        n,
                        same_layer1,
                        (&old_defaults, &new_defaults),
                        served,
                        dir,
                    )
                {
                    problems.push(p);
                }
                b = new.next()?;
            }
        }
        served_tenants += u64::from(!is_canary_key(&o.id));
        a = old.next()?;
    }
    Ok(Comparison {
        problems,
        served_tenants: served_tenants + old.skipped,
        removed,
    })
}

/// The discipline for one tenant present on both sides.
fn check_tenant(
    old: &Tenant,
    new: &Tenant,
    same_layer1: bool,
    (old_defaults, new_defaults): (&Value, &Value),
    (served, lower_ok): (u64, bool),
    dir: &Path,
) -> Option<Problem> {
    let parse = |c: &[u8]| serde_json::from_slice::<Value>(c).ok();
    let (old_cfg, new_cfg) = (parse(&old.config)?, parse(&new.config)?);
    let version = |c: &Value| {
        c.get("version")
            .and_then(Value::as_str)
            .and_then(|v| semver::Version::parse(v).ok())
    };
    let (old_v, new_v) = (version(&old_cfg)?, version(&new_cfg)?);
    let changed = if same_layer1 {
        old.hash != new.hash
    } else {
        tenant_changed(&old_cfg, &new_cfg, old_defaults, new_defaults, "")
    };
    let hashes = format!(
        "config_hash {} → {}",
        String::from_utf8_lossy(&old.hash[..12]),
        String::from_utf8_lossy(&new.hash[..12])
    );
    let reason = if new_v < old_v && lower_ok {
        return None;
    } else if new_v < old_v {
        format!(
            "{new_v} is lower than {old_v}, the version snapshot {served} serves ({hashes}); versions only go up: raise it above {old_v} (old content returns with `strata-publisher rollback`)"
        )
    } else if changed && new_v == old_v {
        format!(
            "the content changed but the version stays {old_v} ({hashes}); raise it above {old_v}"
        )
    } else {
        return None;
    };
    // A file source names the tenant's file; a database source itself.
    let file = if lower_ok {
        dir.to_path_buf()
    } else {
        dir.join("tenants").join(format!("{}.toml", new.id))
    };
    Some(Problem {
        file,
        tenant: Some(new.id.clone()),
        field: "version".to_owned(),
        reason,
    })
}

/// Whether the tenant's own settings differ between two effective configs
/// made under different Layer 1s: every field but `version`,
/// `layer1_version` and `config_hash` is compared, and a field holding its
/// Layer 1 default on both sides is the platform's change, not the tenant's.
fn tenant_changed(old: &Value, new: &Value, old_def: &Value, new_def: &Value, at: &str) -> bool {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
            keys.into_iter().any(|k| {
                if at.is_empty()
                    && matches!(k.as_str(), "version" | "layer1_version" | "config_hash")
                {
                    return false;
                }
                let (Some(ov), Some(nv)) = (o.get(k), n.get(k)) else {
                    return true;
                };
                let (od, nd) = (
                    old_def.get(k).unwrap_or(&Value::Null),
                    new_def.get(k).unwrap_or(&Value::Null),
                );
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                tenant_changed(ov, nv, od, nd, &path)
            })
        }
        _ => old != new && !(old == old_def && new == new_def),
    }
}

#[cfg(test)]
mod tests {
    use super::tenant_changed;
    use serde_json::json;

    #[test]
    fn a_default_that_changed_under_a_tenant_is_not_the_tenant_s_change() {
        let old_def = json!({"generation": {"temperature": 0.7}});
        let new_def = json!({"generation": {"temperature": 0.5}});
        let on_default_old =
            json!({"version": "1.0.0", "layer1_version": "a", "generation": {"temperature": 0.7}});
        let on_default_new =
            json!({"version": "1.0.0", "layer1_version": "b", "generation": {"temperature": 0.5}});
        assert!(!tenant_changed(
            &on_default_old,
            &on_default_new,
            &old_def,
            &new_def,
            ""
        ));
        let own_old = json!({"generation": {"temperature": 0.4}});
        let own_new = json!({"generation": {"temperature": 0.3}});
        assert!(tenant_changed(&own_old, &own_new, &old_def, &new_def, ""));
        let kept = json!({"generation": {"temperature": 0.4}});
        assert!(!tenant_changed(&kept, &kept, &old_def, &new_def, ""));
    }
}
