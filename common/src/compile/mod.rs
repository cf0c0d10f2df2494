//! The publisher's main pass: parse, merge, validate and render every tenant
//! of a source, in parallel, and stream the results into a bundle payload.
//!
//! Tenants are processed in batches so memory stays bounded whatever the
//! tenant count: each batch is split across worker threads, then its results
//! are checked for cross-tenant conflicts (phone numbers) and written in
//! tenant order, which keeps the output deterministic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bundle::tree::TreeWriter;
use crate::bundle::{Hold, Payload, PayloadWriter};
use crate::source::{Source, SourceError, Tenants};
use crate::validate::{PhoneIndex, Problem};

mod canary;
mod learned;
mod reuse;
mod rolled_back;
mod tenant;
mod writer;

use learned::Learned;
pub use reuse::Reuse;
use reuse::Step;
use rolled_back::hold_rolled_back;
pub use tenant::tenant_problems;
use tenant::{TenantResult, compile_batch};
use writer::{Writer, check_agent_limits};

/// A tenant's record as the channel's snapshot holds it: what a
/// quarantined tenant keeps serving.
#[derive(Debug, Clone)]
pub struct KeptRecord {
    /// Its `config_hash`.
    pub config_hash: String,
    /// Its effective config (canonical JSON).
    pub config: Vec<u8>,
    /// Its combined prompt.
    pub prompt: String,
    /// The numbers it owns.
    pub phones: Vec<String>,
}

/// Where a quarantining compile finds a held-back tenant's last published
/// record (`None`: the tenant was never published, it stays out).
#[derive(Clone)]
pub struct LastPublished(pub Arc<LookUp>);

/// The look-up [`LastPublished`] holds.
pub type LookUp = dyn Fn(&str) -> Option<KeptRecord> + Send + Sync;

impl std::fmt::Debug for LastPublished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LastPublished")
    }
}

/// Tenants per batch: enough to keep every thread busy, few enough that a
/// batch's rendered prompts stay a few tens of MiB.
const BATCH: usize = 2048;

/// How a compile should run.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// Worker threads for parse/validate/render (and zstd).
    pub threads: usize,
    /// zstd level.
    pub level: i32,
    /// The limits the snapshot must pass: the agents' (their defaults,
    /// unless every node was configured otherwise).
    pub agent_limits: crate::bundle::Limits,
    /// Who owns each phone number in the snapshot the channel serves
    /// (number → tenant), when known: of two tenants claiming one number,
    /// the one that holds it there keeps it and the other is refused.
    /// Without it, the tenant read first keeps it.
    pub served_owners: Option<std::sync::Arc<BTreeMap<String, String>>>,
    /// The snapshot format to write: 2 (one bundle file) or 3 (a root
    /// over content-addressed objects, [`crate::bundle::tree`]).
    pub format: u32,
    /// Format 3: the dictionary the channel's snapshot uses (kept, so the
    /// chunks of unchanged tenants keep their names); `None` trains one.
    pub dictionary: Option<Vec<u8>>,
    /// Format 3: the channel's snapshot, whose chunks of unchanged tenants
    /// are kept without compiling them again (needs `served_owners` and
    /// `dictionary`).
    pub reuse: Option<std::sync::Arc<Reuse>>,
    /// Quarantine: a tenant with problems does not refuse the build; it
    /// keeps the record this gives (its last published one), or stays out,
    /// and its problems are listed in [`Compiled::held_back`].
    pub quarantine: Option<LastPublished>,
    /// Tenants held back whatever their source holds, with why (with
    /// `quarantine`: those whose new version the channel's snapshot
    /// refuses, found by a first compile).
    pub hold: Arc<BTreeMap<String, Vec<Problem>>>,
    /// Tenants a rollback holds back (the channel's manifest's `held`),
    /// and where their served record is: each keeps it, whatever its
    /// source holds, until its source's version is above the hold's.
    pub rollback_holds: Option<(Arc<BTreeMap<String, Hold>>, LastPublished)>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            level: 1,
            agent_limits: crate::bundle::Limits::agents(),
            served_owners: None,
            format: crate::bundle::FORMAT_VERSION,
            dictionary: None,
            reuse: None,
            quarantine: None,
            hold: Arc::default(),
            rollback_holds: None,
        }
    }
}

/// A compiled source: the payload and what it holds.
#[derive(Debug)]
pub struct Compiled {
    /// The compressed records (format 2), or the root (format 3).
    pub payload: Payload,
    /// Format 3: every object the root reaches (empty for format 2).
    pub objects: crate::bundle::tree::write::Objects,
    /// Layer 1's version.
    pub layer1_version: String,
    /// Tenants compiled.
    pub tenant_count: u64,
    /// Non-fatal findings (unused variables).
    pub warnings: Vec<Problem>,
    /// Quarantine: the problems of the tenants held back (on their last
    /// published record, or out of the snapshot if they have none).
    pub held_back: Vec<Problem>,
    /// Tenants a rollback holds back, as the manifest records them.
    pub holds: BTreeMap<String, crate::bundle::Hold>,
}

/// Validates the whole source without writing anything: every problem, then
/// every warning.
pub fn validate(source: &Source, opts: CompileOptions) -> Result<Vec<Problem>, SourceError> {
    run(source, opts, None, &mut Learned::default()).map(|out| out.warnings)
}

/// Compiles the source into a payload, or reports every problem.
pub fn compile(source: &Source, mut opts: CompileOptions) -> Result<Compiled, SourceError> {
    // Quarantine may find, part way, a tenant already written that must be
    // held back (a number the channel gives to a later tenant; a tenant of
    // a chunk kept whole): the compile runs again holding it. Each round
    // holds more tenants, and a held tenant is settled, so this ends.
    let mut rounds = 0;
    let mut learned = Learned::load(source);
    let (writer, warnings, held_back, holds) = loop {
        let writer = if opts.format == crate::bundle::FORMAT_TREE {
            let level = opts.level.max(3);
            Writer::Tree(TreeWriter::new(level, opts.dictionary.clone()).map_err(payload_err)?)
        } else {
            Writer::Bundle(PayloadWriter::new(opts.level).map_err(payload_err)?)
        };
        let out = run(source, opts.clone(), Some(writer), &mut learned)?;
        if out.retry.is_empty() {
            break (out.writer, out.warnings, out.held_back, out.holds);
        }
        rounds += 1;
        if rounds > 8 {
            return Err(payload_err(std::io::Error::other(
                "quarantine did not settle after 8 rounds (a bug; please report it)",
            )));
        }
        let mut hold = (*opts.hold).clone();
        for (tenant, problems) in out.retry {
            hold.entry(tenant).or_default().extend(problems);
        }
        opts.hold = Arc::new(hold);
    };
    let Some((tenant_count, writer)) = writer else {
        return Err(payload_err(std::io::Error::other("payload writer missing")));
    };
    // What agents add up against their limits: the payload (format 2),
    // or the chunks (format 3).
    let (payload, objects, totals) = match writer {
        Writer::Bundle(w) => {
            let p = w.finish().map_err(payload_err)?;
            let totals = (p.compressed.len() as u64, p.raw_size);
            (p, Default::default(), totals)
        }
        Writer::Tree(w) => {
            let built = w.finish().map_err(payload_err)?;
            let totals = built.chunks.iter().fold((0u64, 0u64), |(c, r), k| {
                (c + k.obj.size, r + k.obj.raw_size)
            });
            (built.root, built.objects, totals)
        }
    };
    learned.save(source);
    check_agent_limits(source, &payload, totals, &opts.agent_limits)?;
    Ok(Compiled {
        payload,
        objects,
        layer1_version: source.layer1.version.clone(),
        tenant_count,
        warnings,
        held_back,
        holds,
    })
}

/// Writing the in-memory payload failed (out of memory, or a record over 4 GiB).
fn payload_err(source: std::io::Error) -> SourceError {
    SourceError::Io {
        path: PathBuf::from("<bundle payload>"),
        source,
    }
}

/// What one compile pass made.
struct RunOutput {
    /// The tenant count and the writer holding the payload.
    writer: Option<(u64, Writer)>,
    warnings: Vec<Problem>,
    /// Quarantine: the problems of the tenants held back.
    held_back: Vec<Problem>,
    /// Quarantine: tenants found to need holding back after they were
    /// written; the pass is run again holding them.
    retry: BTreeMap<String, Vec<Problem>>,
    /// Tenants a rollback still holds back.
    holds: BTreeMap<String, Hold>,
}

/// How [`run`] took one tenant.
enum Took {
    /// Written (or counted, in a kept chunk) as compiled.
    Clean,
    /// Held back (quarantine), for these problems.
    Held(Vec<Problem>),
    /// It has problems: the compile is refused.
    Refused,
}

fn run(
    source: &Source,
    opts: CompileOptions,
    mut writer: Option<Writer>,
    learned: &mut Learned,
) -> Result<RunOutput, SourceError> {
    let layer1 = &source.layer1;
    let layer1_json =
        serde_json::to_vec(layer1).map_err(|e| payload_err(std::io::Error::other(e)))?;
    if let Some(w) = writer.as_mut() {
        w.layer1(&layer1_json).map_err(payload_err)?;
    }
    let mut problems = Vec::new();
    let mut held_back = Vec::new();
    let mut retry: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
    // Tenants held back inside a chunk kept whole: its chunk is compiled
    // in the next pass.
    let mut held_in_kept: Vec<(String, Vec<Problem>)> = Vec::new();
    let mut warnings = source.warnings.clone();
    let mut holds = BTreeMap::new();
    let mut arms = canary::Arms::new((0..source.tenants.len()).map(|i| source.tenants.id(i)));
    let mut count = 0u64;
    let threads = opts.threads.max(1);
    let served = opts.served_owners.as_deref();
    let tenants = &source.tenants;
    // Format 3 over the channel's snapshot: chunks whose sources did not
    // change are kept as they are (their tenants' numbers from the routes
    // it serves), under the same Layer 1 and dictionary.
    let reuse = match (&opts.reuse, served, &writer) {
        (Some(r), Some(_), Some(Writer::Tree(_)))
            if r.layer1 == layer1_json && opts.dictionary.is_some() =>
        {
            Some(r.as_ref())
        }
        _ => None,
    };
    let plan = match reuse {
        Some(r) => {
            let max_file = layer1.policy.tenant_limits.max_file_bytes;
            let mut shas = reuse::source_hashes(tenants, max_file, threads, learned);
            // A tenant held back is compiled (its chunk is not kept).
            for (i, sha) in shas.iter_mut().enumerate() {
                let id = tenants.id(i);
                let rolled_back = opts
                    .rollback_holds
                    .as_ref()
                    .is_some_and(|(h, _)| h.contains_key(id));
                if opts.hold.contains_key(id) || rolled_back {
                    *sha = None;
                }
            }
            canary::compile_with_tenant(tenants, &mut shas);
            reuse::plan(tenants, &shas, &r.chunks)
        }
        None => vec![Step::Compile(0..tenants.len())],
    };
    // The tenants kept in their chunks hold the numbers the channel's
    // snapshot routes to them: only the compiled tenants' claims are
    // recorded, over those routes (a compiled tenant claiming a kept
    // tenant's number is refused whether it sorts before or after it).
    let kept: HashSet<&str> = plan
        .iter()
        .filter_map(|s| match s {
            Step::Reuse { tenants: r, .. } => Some(r.clone()),
            Step::Compile(_) => None,
        })
        .flatten()
        .map(|i| tenants.id(i))
        .collect();
    let mut phones = match (reuse, served) {
        (Some(_), Some(served)) => PhoneIndex::over(served, &kept),
        _ => PhoneIndex::default(),
    };
    // Kept tenants whose canary the source holds: their numbers, which
    // the canary's must match.
    let mut numbers_of: HashMap<&str, Vec<String>> = match reuse {
        Some(_) => (0..tenants.len())
            .filter_map(|i| tenants.id(i).strip_suffix(crate::model::CANARY_SUFFIX))
            .filter(|base| kept.contains(base))
            .map(|base| (base, Vec::new()))
            .collect(),
        None => HashMap::new(),
    };
    if let (false, Some(served)) = (numbers_of.is_empty(), served) {
        for (number, tenant) in served {
            if let Some(numbers) = numbers_of.get_mut(tenant.as_str()) {
                numbers.push(number.clone());
            }
        }
    }
    let to_compile: Vec<usize> = plan
        .iter()
        .filter_map(|s| match s {
            Step::Compile(r) => Some(r.clone()),
            Step::Reuse { .. } => None,
        })
        .flatten()
        .collect();
    let quarantine = opts.quarantine.as_ref();
    // Compile batch N+1 on worker threads while this thread checks and
    // writes batch N.
    std::thread::scope(|s| -> Result<(), SourceError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let to_compile = &to_compile;
        s.spawn(move || {
            for batch in to_compile.chunks(BATCH) {
                let compiled = compile_batch(layer1, tenants, batch, threads);
                let failed = compiled.is_err();
                if tx.send(compiled).is_err() || failed {
                    break;
                }
            }
        });
        let mut compiled = std::collections::VecDeque::new();
        // Checks and writes one tenant.
        let mut take = |mut t: TenantResult,
                        writer: &mut Option<Writer>|
         -> Result<Took, SourceError> {
            warnings.append(&mut t.warnings);
            if let Some((held, kept_from)) = &opts.rollback_holds
                && let Some(h) = held.get(&t.tenant_id)
            {
                let still;
                (t, still) = hold_rolled_back(t, h, kept_from, &mut warnings);
                if still {
                    holds.insert(t.tenant_id.clone(), h.clone());
                } else if !t.problems.is_empty() {
                    // Held, but its record cannot be carried: never
                    // quarantined (that would drop the tenant and its hold).
                    problems.append(&mut t.problems);
                    return Ok(Took::Refused);
                }
            }
            if let Some(why) = opts.hold.get(&t.tenant_id) {
                t.problems.extend(why.iter().cloned());
            }
            if let Some(arm) = t.canary_phones.as_ref().filter(|_| t.output.is_some())
                && let Some(p) = arms.check(&t.tenant_id, arm, &t.file)
            {
                t.problems.push(p);
            }
            claim_numbers(&mut phones, tenants, served, &mut t);
            let mut took = Took::Clean;
            if !t.problems.is_empty() {
                let Some(last_published) = quarantine else {
                    problems.append(&mut t.problems);
                    return Ok(Took::Refused);
                };
                // A problem filed on a tenant written already (its number
                // belongs to this one in the channel's snapshot): that one
                // is held back, in the next pass.
                let (theirs, ours): (Vec<Problem>, Vec<Problem>) =
                    t.problems.drain(..).partition(|p| {
                        // A canary's problems name its tenant: they are its own.
                        let own = canary::base_of(&t.tenant_id).0;
                        p.tenant.as_deref().is_some_and(|o| o != own)
                    });
                for p in theirs {
                    retry
                        .entry(p.tenant.clone().unwrap_or_default())
                        .or_default()
                        .push(p);
                }
                if !ours.is_empty() {
                    held_back.extend(ours.iter().cloned());
                    phones.release(&t.tenant_id, &t.phones);
                    let Some(kept) = (last_published.0)(&t.tenant_id) else {
                        return Ok(Took::Held(ours));
                    };
                    // Its numbers are its last record's; a held-back tenant is
                    // compiled again next time (no source hash matches).
                    t = TenantResult {
                        // A canary routes no number of its own.
                        phones: if canary::base_of(&t.tenant_id).1 {
                            Vec::new()
                        } else {
                            kept.phones
                        },
                        output: Some((kept.config_hash, kept.config, kept.prompt)),
                        source_sha256: "held back".into(),
                        ..TenantResult::named(t.file, &t.tenant_id)
                    };
                    claim_numbers(&mut phones, tenants, served, &mut t);
                    if !t.problems.is_empty() {
                        held_back.append(&mut t.problems);
                    }
                    took = Took::Held(ours);
                }
            }
            arms.stable(&t.tenant_id, &t.phones);
            if let (Some(w), Some((hash, config, prompt))) = (writer.as_mut(), t.output.as_ref())
                && problems.is_empty()
            {
                w.tenant(&t, hash, config, prompt.as_bytes())
                    .map_err(payload_err)?;
            }
            count += 1;
            Ok(took)
        };
        for step in &plan {
            match step {
                Step::Compile(r) => {
                    for i in r.clone() {
                        if compiled.is_empty() {
                            match rx.recv() {
                                Ok(batch) => compiled.extend(batch?),
                                Err(_) => break,
                            }
                        }
                        let t = compiled.pop_front().ok_or_else(|| {
                            payload_err(std::io::Error::other("a compile batch went missing"))
                        })?;
                        learned.compiled(i, &t);
                        take(t, &mut writer)?;
                    }
                }
                Step::Reuse { chunk, tenants: r } => {
                    let fits = writer.as_ref().is_some_and(Writer::between_chunks);
                    let (Some(reuse), true) = (reuse, fits) else {
                        // The cut before it moved: its tenants are compiled.
                        let all: Vec<usize> = r.clone().collect();
                        for (i, t) in all.iter().zip(compile_batch(layer1, tenants, &all, 1)?) {
                            learned.compiled(*i, &t);
                            take(t, &mut writer)?;
                        }
                        continue;
                    };
                    let mut clean = true;
                    for i in r.clone() {
                        let id = tenants.id(i);
                        let t = TenantResult {
                            phones: numbers_of.get(id).cloned().unwrap_or_default(),
                            ..TenantResult::named(tenants.origin(i), id)
                        };
                        match take(t, &mut writer)? {
                            Took::Clean => {}
                            // Its chunk must be compiled, holding it: again.
                            Took::Held(why) => {
                                held_in_kept.push((id.to_owned(), why));
                                clean = false;
                            }
                            Took::Refused => clean = false,
                        }
                    }
                    let last = r.end.checked_sub(1).map_or("", |i| tenants.id(i));
                    if let Some(w) = writer.as_mut()
                        && clean
                    {
                        w.reuse_chunk(&reuse.chunks[*chunk], last)
                            .map_err(payload_err)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    if !problems.is_empty() {
        return Err(SourceError::Invalid { problems, warnings });
    }
    for (tenant, why) in held_in_kept {
        retry.entry(tenant).or_default().extend(why);
    }
    if let Some(w) = writer.as_mut() {
        phones
            .routes(|number, tenant| w.route(number, tenant))
            .map_err(payload_err)?;
    }
    Ok(RunOutput {
        writer: writer.map(|w| (count, w)),
        warnings,
        held_back,
        retry,
        holds,
    })
}

/// Claims the tenant's numbers. A number another tenant claimed already
/// is a problem on the claimant: this tenant, unless the snapshot the
/// channel serves gives the number to this tenant, when it is the other
/// one (a new tenant cannot take a number by sorting first).
fn claim_numbers(
    phones: &mut PhoneIndex,
    tenants: &Tenants,
    served: Option<&BTreeMap<String, String>>,
    t: &mut TenantResult,
) {
    let file_of = |id: &str| {
        tenants
            .position(id)
            .map(|i| tenants.origin(i))
            .unwrap_or_default()
    };
    for (i, n) in t.phones.iter().enumerate() {
        let Some(other) = phones.claim(n, &t.tenant_id) else {
            continue;
        };
        let holder = served.and_then(|s| s.get(n.as_str()));
        // The number's holder in the channel keeps it; the other is refused.
        let belongs = |taker: &str, taker_file: PathBuf, holder: &str, holder_file: &Path| {
            Problem {
                file: taker_file,
                tenant: Some(taker.to_owned()),
                field: "phone_numbers".into(),
                reason: format!(
                    "{n} belongs to tenant {holder} ({}) in the snapshot the channel serves; each number belongs to exactly one tenant: remove it here, or have {holder} release it in a publish first",
                    holder_file.display(),
                ),
            }
        };
        let problem = if holder == Some(&t.tenant_id) {
            belongs(&other, file_of(&other), &t.tenant_id, &t.file)
        } else if holder == Some(&other) && other.as_str() > t.tenant_id.as_str() {
            // A kept tenant sorting after this one (an incremental compile
            // claims the kept tenants' numbers first): the problem a full
            // build files when the holder's claim comes second.
            belongs(&t.tenant_id, t.file.clone(), &other, &file_of(&other))
        } else {
            let reason = if served.is_none() {
                // Without the channel's snapshot, who holds the number is
                // not known: the problem is filed on the later file.
                format!(
                    "{n} is also claimed by tenant {other} ({}); each number belongs to exactly one tenant, remove it from one of them (which of the two holds it in the channel is not known here: `validate --store` tells)",
                    file_of(&other).display()
                )
            } else {
                let whose = if holder == Some(&other) {
                    " in the snapshot the channel serves"
                } else {
                    ""
                };
                format!(
                    "{n} is already owned by tenant {other} ({}){whose}; each number belongs to exactly one tenant, remove it from one of them",
                    file_of(&other).display()
                )
            };
            Problem {
                file: t.file.clone(),
                tenant: Some(t.tenant_id.clone()),
                field: format!("phone_numbers[{i}]"),
                reason,
            }
        };
        t.problems.push(problem);
    }
}
