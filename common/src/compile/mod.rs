//! The publisher's main pass: parse, merge, validate and render every tenant
//! of a source, in parallel, and stream the results into a bundle payload.
//!
//! Tenants are processed in batches so memory stays bounded whatever the
//! tenant count: each batch is split across worker threads, then its results
//! are checked for cross-tenant conflicts (phone numbers) and written in
//! tenant order, which keeps the output deterministic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::bundle::tree::TreeWriter;
use crate::bundle::{Payload, PayloadWriter};
use crate::model::{EffectiveConfig, Layer1, Overlay};
use crate::render;
use crate::source::{Source, SourceError};
use crate::validate::{self, PhoneIndex, Problem, Reporter};

mod reuse;
mod writer;

pub use reuse::Reuse;
use reuse::Step;
use writer::{Writer, check_agent_limits};

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
        }
    }
}

/// A compiled source: the payload and what it holds.
#[derive(Debug, Clone)]
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
}

/// One tenant's result.
struct TenantResult {
    file: PathBuf,
    tenant_id: String,
    phones: Vec<String>,
    /// Config hash, config JSON and combined prompt.
    output: Option<(String, Vec<u8>, String)>,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    /// SHA-256 (hex) of the tenant's source file.
    source_sha256: String,
}

impl TenantResult {
    /// The result for `file` (its stem the tenant id), nothing found yet.
    fn named(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            tenant_id: reuse::stem(file).to_owned(),
            phones: Vec::new(),
            output: None,
            problems: Vec::new(),
            warnings: Vec::new(),
            source_sha256: String::new(),
        }
    }
}

/// Validates the whole source without writing anything: every problem, then
/// every warning.
pub fn validate(source: &Source, opts: CompileOptions) -> Result<Vec<Problem>, SourceError> {
    run(source, opts, None).map(|(_, w)| w)
}

/// Compiles the source into a payload, or reports every problem.
pub fn compile(source: &Source, opts: CompileOptions) -> Result<Compiled, SourceError> {
    let writer = if opts.format == crate::bundle::FORMAT_TREE {
        let level = opts.level.max(3);
        Writer::Tree(TreeWriter::new(level, opts.dictionary.clone()).map_err(payload_err)?)
    } else {
        Writer::Bundle(PayloadWriter::new(opts.level).map_err(payload_err)?)
    };
    let (writer, warnings) = run(source, opts.clone(), Some(writer))?;
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
    check_agent_limits(source, &payload, totals, &opts.agent_limits)?;
    Ok(Compiled {
        payload,
        objects,
        layer1_version: source.layer1.version.clone(),
        tenant_count,
        warnings,
    })
}

/// Writing the in-memory payload failed (out of memory, or a record over 4 GiB).
fn payload_err(source: std::io::Error) -> SourceError {
    SourceError::Io {
        path: PathBuf::from("<bundle payload>"),
        source,
    }
}

type RunOutput = (Option<(u64, Writer)>, Vec<Problem>);

fn run(
    source: &Source,
    opts: CompileOptions,
    mut writer: Option<Writer>,
) -> Result<RunOutput, SourceError> {
    let layer1 = &source.layer1;
    let layer1_json =
        serde_json::to_vec(layer1).map_err(|e| payload_err(std::io::Error::other(e)))?;
    if let Some(w) = writer.as_mut() {
        w.layer1(&layer1_json).map_err(payload_err)?;
    }
    let mut problems = Vec::new();
    let mut warnings = source.warnings.clone();
    let mut phones = PhoneIndex::default();
    let mut tenant_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut count = 0u64;
    let threads = opts.threads.max(1);
    let served = opts.served_owners.as_deref();
    let files = &source.tenant_files;
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
            let shas = reuse::source_hashes(files, &source.root, max_file, threads);
            reuse::plan(files, &shas, &r.chunks)
        }
        None => vec![Step::Compile(0..files.len())],
    };
    let numbers_of: BTreeMap<&str, Vec<String>> = match (reuse, served) {
        (Some(_), Some(served)) => {
            let mut m: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for (number, tenant) in served {
                m.entry(tenant.as_str()).or_default().push(number.clone());
            }
            m
        }
        _ => BTreeMap::new(),
    };
    let to_compile: Vec<PathBuf> = plan
        .iter()
        .filter_map(|s| match s {
            Step::Compile(r) => Some(files[r.clone()].iter().cloned()),
            Step::Reuse { .. } => None,
        })
        .flatten()
        .collect();
    // Compile batch N+1 on worker threads while this thread checks and
    // writes batch N.
    std::thread::scope(|s| -> Result<(), SourceError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let to_compile = &to_compile;
        s.spawn(move || {
            for batch in to_compile.chunks(BATCH) {
                if tx
                    .send(compile_batch(layer1, &source.root, batch, threads))
                    .is_err()
                {
                    break;
                }
            }
        });
        let mut compiled = std::collections::VecDeque::new();
        // Checks and writes one tenant; whether there is no problem so far.
        let mut take = |mut t: TenantResult,
                        writer: &mut Option<Writer>|
         -> Result<bool, SourceError> {
            warnings.append(&mut t.warnings);
            claim_numbers(&mut phones, &tenant_files, served, &mut t);
            tenant_files.insert(t.tenant_id.clone(), t.file.clone());
            if !t.problems.is_empty() {
                problems.append(&mut t.problems);
                return Ok(false);
            }
            if let (Some(w), Some((hash, config, prompt))) = (writer.as_mut(), t.output.as_ref())
                && problems.is_empty()
            {
                w.tenant(&t, hash, config, prompt.as_bytes())
                    .map_err(payload_err)?;
            }
            count += 1;
            Ok(problems.is_empty())
        };
        for step in &plan {
            match step {
                Step::Compile(r) => {
                    for _ in r.clone() {
                        if compiled.is_empty() {
                            compiled.extend(rx.recv().unwrap_or_default());
                        }
                        let t = compiled.pop_front().ok_or_else(|| {
                            payload_err(std::io::Error::other("a compile batch went missing"))
                        })?;
                        take(t, &mut writer)?;
                    }
                }
                Step::Reuse { chunk, files: r } => {
                    let fits = writer.as_ref().is_some_and(Writer::between_chunks);
                    let (Some(reuse), true) = (reuse, fits) else {
                        // The cut before it moved: its tenants are compiled.
                        for f in &files[r.clone()] {
                            take(compile_tenant(layer1, &source.root, f), &mut writer)?;
                        }
                        continue;
                    };
                    let mut clean = true;
                    for f in &files[r.clone()] {
                        let id = reuse::stem(f);
                        let t = TenantResult {
                            phones: numbers_of.get(id).cloned().unwrap_or_default(),
                            ..TenantResult::named(f)
                        };
                        clean = take(t, &mut writer)?;
                    }
                    let last = r
                        .end
                        .checked_sub(1)
                        .map(|i| reuse::stem(&files[i]))
                        .unwrap_or("");
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
    if let Some(w) = writer.as_mut() {
        for (number, tenant) in phones.into_routes() {
            w.route(&number, &tenant).map_err(payload_err)?;
        }
    }
    Ok((writer.map(|w| (count, w)), warnings))
}

/// Claims the tenant's numbers. A number another tenant claimed already
/// is a problem on the claimant: this tenant, unless the snapshot the
/// channel serves gives the number to this tenant, when it is the other
/// one (a new tenant cannot take a number by sorting first).
fn claim_numbers(
    phones: &mut PhoneIndex,
    files: &BTreeMap<String, PathBuf>,
    served: Option<&BTreeMap<String, String>>,
    t: &mut TenantResult,
) {
    let file_of = |id: &str| files.get(id).cloned().unwrap_or_default();
    for (i, n) in t.phones.iter().enumerate() {
        let Some(other) = phones.claim(n, &t.tenant_id) else {
            continue;
        };
        let holder = served.and_then(|s| s.get(n.as_str()));
        let problem = if holder == Some(&t.tenant_id) {
            Problem {
                file: file_of(&other),
                tenant: Some(other.clone()),
                field: "phone_numbers".into(),
                reason: format!(
                    "{n} belongs to tenant {} ({}) in the snapshot the channel serves; each number belongs to exactly one tenant: remove it here, or have {} release it in a publish first",
                    t.tenant_id,
                    t.file.display(),
                    t.tenant_id
                ),
            }
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

fn compile_batch(
    layer1: &Layer1,
    root: &Path,
    files: &[PathBuf],
    threads: usize,
) -> Vec<TenantResult> {
    if threads <= 1 || files.len() < 2 {
        return files
            .iter()
            .map(|f| compile_tenant(layer1, root, f))
            .collect();
    }
    let per = files.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|chunk| {
                let h = s.spawn(move || {
                    chunk
                        .iter()
                        .map(|f| compile_tenant(layer1, root, f))
                        .collect::<Vec<_>>()
                });
                (chunk, h)
            })
            .collect();
        // A worker that panicked must not silently drop its tenants from the
        // snapshot: each becomes a problem, and the build is refused.
        handles
            .into_iter()
            .flat_map(|(chunk, h)| {
                h.join()
                    .unwrap_or_else(|_| chunk.iter().map(|f| internal_error(f)).collect())
            })
            .collect()
    })
}

fn internal_error(file: &Path) -> TenantResult {
    let mut t = TenantResult::named(file);
    t.problems.push(Problem {
        file: file.to_path_buf(),
        tenant: Some(t.tenant_id.clone()),
        field: String::new(),
        reason: "internal error while compiling this file (a bug in strata; please report it with the file)".into(),
    });
    t
}

/// Parses, merges, validates and renders one tenant file.
fn compile_tenant(layer1: &Layer1, root: &Path, file: &Path) -> TenantResult {
    let file_buf = file.to_path_buf();
    let mut result = TenantResult::named(file);
    let stem = result.tenant_id.clone();
    let max_file = layer1.policy.tenant_limits.max_file_bytes;
    let text = match crate::localfile::read_text_inside(file, max_file, root) {
        Ok(t) => t,
        Err(e) => {
            let mut r = Reporter::new(&file_buf, Some(&stem));
            let too_large = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<crate::localfile::TooLarge>());
            match too_large {
                Some(t) => r.push(
                    "",
                    format!(
                        "the file is {} bytes or more; Layer 1 allows at most {max_file} a tenant (policy.tenant_limits.max_file_bytes)",
                        t.size
                    ),
                ),
                None => r.push("", format!("cannot read the file: {e}")),
            }
            result.problems = r.problems;
            return result;
        }
    };
    compile_tenant_text(layer1, result, &text)
}

/// What `validate` finds in one tenant file's `text` (named `file`): its
/// problems, empty for a valid tenant. For the fuzzer and tools that check
/// one file without a source directory.
pub fn tenant_problems(layer1: &Layer1, file: &Path, text: &str) -> Vec<Problem> {
    let result = TenantResult::named(file);
    compile_tenant_text(layer1, result, text).problems
}

/// Parses, merges, validates and renders one tenant file's text into
/// `result` (which names the file).
fn compile_tenant_text(layer1: &Layer1, mut result: TenantResult, text: &str) -> TenantResult {
    result.source_sha256 = crate::canonical::sha256_hex(text.as_bytes());
    let file_buf = result.file.clone();
    let stem = result.tenant_id.clone();
    let max_file = layer1.policy.tenant_limits.max_file_bytes;
    if text.len() as u64 > max_file {
        let mut r = Reporter::new(&file_buf, Some(&stem));
        r.push(
            "",
            format!(
                "the file is {} bytes; Layer 1 allows at most {max_file} a tenant (policy.tenant_limits.max_file_bytes)",
                text.len()
            ),
        );
        result.problems = r.problems;
        return result;
    }
    let parsed = {
        let mut r = Reporter::new(&file_buf, Some(&stem));
        validate::parse_toml(&mut r, text).ok_or(r.problems)
    };
    let doc = match parsed {
        Ok(doc) => doc,
        Err(problems) => {
            result.problems = problems;
            return result;
        }
    };
    let tenant = doc
        .get("tenant_id")
        .and_then(|v| v.as_str())
        .unwrap_or(&stem)
        .to_owned();
    let mut r = Reporter::new(&file_buf, Some(&tenant));
    validate::check_strings(&mut r, &doc, Some(&layer1.policy));
    // A type error names its field: `generation.temperature: expected a
    // number, found the string "0.5"`.
    let Some(overlay) = validate::typed::<Overlay>(&mut r, doc) else {
        result.problems = r.problems;
        return result;
    };
    let mut cfg = EffectiveConfig::merge(&layer1.defaults, &layer1.version, &overlay);
    validate::check_identity(&mut r, &cfg, &stem);
    let rendered = validate::check_policy(&mut r, layer1, &cfg);
    result.tenant_id = tenant.clone();
    // Over the ceiling, the tenant is refused; its numbers are not claimed.
    if cfg.phone_numbers.len() <= layer1.policy.tenant_limits.max_phone_numbers {
        result.phones = cfg.phone_numbers.clone();
    }
    // Over the ceiling, the tenant is refused for it: no warning a variable.
    let within = cfg.agent.variables.len() <= layer1.policy.tenant_limits.max_variables;
    if let Some(rendered) = rendered.as_ref().filter(|_| within) {
        for name in &rendered.unused {
            result.warnings.push(Problem {
                file: file_buf.clone(),
                tenant: Some(tenant.clone()),
                field: format!("agent.variables.{name}"),
                reason: "is defined but not used in agent.prompt".into(),
            });
        }
    }
    if r.problems.is_empty()
        && let Some(rendered) = rendered
    {
        match cfg.seal() {
            Ok(json) => {
                let prompt = render::system_prompt(&layer1.base_prompt, &rendered.text);
                let max = u64::from(crate::bundle::Limits::default().max_value_bytes);
                let largest = json.len().max(prompt.len()) as u64;
                if largest > max {
                    r.push(
                        "",
                        format!(
                            "the effective config or prompt is {largest} bytes; agents refuse a record over {max} bytes: shorten the tenant's texts"
                        ),
                    );
                } else {
                    result.output = Some((cfg.config_hash.clone(), json, prompt));
                }
            }
            Err(e) => r.push("", format!("cannot serialise the effective config: {e}")),
        }
    }
    result.problems = r.problems;
    result
}
