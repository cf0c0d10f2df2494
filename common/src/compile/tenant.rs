//! One tenant, compiled: its overlay read (a file's text, or a database
//! row's document), merged over Layer 1's defaults, validated and
//! rendered. Batches run on worker threads.

use std::path::{Path, PathBuf};

use super::SourceError;
use crate::model::{EffectiveConfig, Layer1, Overlay};
use crate::render;
use crate::source::hash_cache::Stamp;
use crate::source::{Row, RowContent, Tenants};
use crate::validate::{self, Problem, Reporter};

/// One tenant's result.
pub(super) struct TenantResult {
    /// What its problems are filed under (its file, or its row).
    pub(super) file: PathBuf,
    pub(super) tenant_id: String,
    pub(super) phones: Vec<String>,
    /// Config hash, config JSON and combined prompt.
    pub(super) output: Option<(String, Vec<u8>, String)>,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
    /// SHA-256 (hex) of the tenant's source (file bytes, or the row's hash).
    pub(super) source_sha256: String,
    /// The `version` its source names, once it parsed.
    pub(super) version: Option<String>,
    /// A canary arm: its `phone_numbers`, which must be the stable arm's.
    pub(super) canary_phones: Option<Vec<String>>,
    /// A file's status when it was read (what the source hash cache keys
    /// `source_sha256` by); none for a row.
    pub(super) stamp: Option<Stamp>,
}

impl TenantResult {
    /// The result for tenant `id` filed under `file`, nothing found yet.
    pub(super) fn named(file: PathBuf, id: &str) -> Self {
        Self {
            file,
            tenant_id: id.to_owned(),
            phones: Vec::new(),
            output: None,
            problems: Vec::new(),
            warnings: Vec::new(),
            version: None,
            canary_phones: None,
            source_sha256: String::new(),
            stamp: None,
        }
    }

    /// The result holding one problem on the whole tenant.
    fn refused(mut self, reason: String) -> Self {
        let mut r = Reporter::new(&self.file, Some(&self.tenant_id));
        r.push("", reason);
        self.problems = r.problems;
        self
    }
}

/// Compiles tenants `batch` (indices into `tenants`) on `threads` threads.
/// A database source's rows are fetched first, in one query; a database
/// that cannot be read fails the batch (no tenant is judged on it).
pub(super) fn compile_batch(
    layer1: &Layer1,
    tenants: &Tenants,
    batch: &[usize],
    threads: usize,
) -> Result<Vec<TenantResult>, SourceError> {
    match tenants {
        Tenants::Files { root, files, .. } => {
            let files: Vec<&PathBuf> = batch.iter().filter_map(|&i| files.get(i)).collect();
            Ok(parallel(
                &files,
                threads,
                |f| compile_file(layer1, root, f),
                |f| TenantResult::named(f.to_path_buf(), crate::source::file_stem(f)),
            ))
        }
        Tenants::Rows { rows, reader } => {
            let rows: Vec<Row> = batch.iter().filter_map(|&i| rows.get(i).cloned()).collect();
            let contents = reader.fetch(&rows)?;
            let pairs: Vec<(&Row, &RowContent)> = rows.iter().zip(&contents).collect();
            Ok(parallel(
                &pairs,
                threads,
                |(row, content)| compile_row(layer1, row, content),
                |(row, _)| TenantResult::named(crate::source::row_origin(row), &row.tenant),
            ))
        }
    }
}

/// `f` over `items` on `threads` threads, in order. Each thread takes the
/// next item not yet taken (tenants differ in size: a fixed share each
/// left one thread idle while the other finished its share). A worker that
/// panicked must not silently drop its tenants from the snapshot: each it
/// took becomes a problem of that tenant (`blank` names it), so the build
/// is refused, or under quarantine the tenant keeps its last config.
fn parallel<T: Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> TenantResult + Sync,
    blank: impl Fn(&T) -> TenantResult,
) -> Vec<TenantResult> {
    if threads <= 1 || items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (next, f) = (&next, &f);
    let mut slots: Vec<Option<TenantResult>> = Vec::new();
    slots.resize_with(items.len(), || None);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(items.len()))
            .map(|_| {
                s.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return done;
                        };
                        done.push((i, f(item)));
                    }
                })
            })
            .collect();
        for h in handles {
            // A panicked worker's results are lost with it: its slots stay
            // empty and are filled below.
            for (i, result) in h.join().unwrap_or_default() {
                slots[i] = Some(result);
            }
        }
    });
    slots
        .into_iter()
        .zip(items)
        .map(|(slot, item)| {
            slot.unwrap_or_else(|| {
                blank(item).refused(
                    "internal error while compiling this tenant (a bug in strata; please report it with the source)".into(),
                )
            })
        })
        .collect()
}

/// Parses, merges, validates and renders one tenant file.
pub(super) fn compile_file(layer1: &Layer1, root: &Path, file: &Path) -> TenantResult {
    let result = TenantResult::named(file.to_path_buf(), crate::source::file_stem(file));
    let max_file = layer1.policy.tenant_limits.max_file_bytes;
    let (text, meta) = match crate::localfile::read_text_inside_with_status(file, max_file, root) {
        Ok(read) => read,
        Err(e) => {
            let too_large = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<crate::localfile::TooLarge>());
            return result.refused(match too_large {
                Some(t) => format!(
                    "the file is {} bytes or more; Layer 1 allows at most {max_file} a tenant (policy.tenant_limits.max_file_bytes)",
                    t.size
                ),
                None => format!("cannot read the file: {e}"),
            });
        }
    };
    TenantResult {
        stamp: Some(Stamp::of(&meta)),
        ..compile_text(layer1, result, &text)
    }
}

/// Merges, validates and renders one database row.
pub(super) fn compile_row(layer1: &Layer1, row: &Row, content: &RowContent) -> TenantResult {
    let mut result = TenantResult::named(crate::source::row_origin(row), &row.tenant);
    result.source_sha256 = row.sha256.clone();
    if !row.others.is_empty() {
        return result.refused(format!(
            "tenant {} has {} active rows ({} and {}); a tenant serves one active row, and at most one more with canary_percent set (its canary): set is_active = false on the others",
            row.tenant,
            row.others.len() + 1,
            row.id,
            row.others.join(", ")
        ));
    }
    let max_file = layer1.policy.tenant_limits.max_file_bytes;
    match content {
        RowContent::Doc { bytes, .. } if *bytes > max_file => result.refused(format!(
            "the row holds {bytes} bytes (prompt and config); Layer 1 allows at most {max_file} a tenant (policy.tenant_limits.max_file_bytes)"
        )),
        RowContent::Doc { doc, .. } => compile_doc(layer1, result, doc.clone()),
        RowContent::Invalid(problems) => {
            let mut r = Reporter::new(&result.file, Some(&row.tenant));
            for (field, reason) in problems {
                r.push(field.as_str(), reason.as_str());
            }
            result.problems = r.problems;
            result
        }
    }
}

/// What `validate` finds in one tenant file's `text` (named `file`): its
/// problems, empty for a valid tenant. For the fuzzer and tools that check
/// one file without a source directory.
pub fn tenant_problems(layer1: &Layer1, file: &Path, text: &str) -> Vec<Problem> {
    let result = TenantResult::named(file.to_path_buf(), crate::source::file_stem(file));
    compile_text(layer1, result, text).problems
}

/// Parses one tenant file's text into `result` (which names the file),
/// then compiles it.
fn compile_text(layer1: &Layer1, mut result: TenantResult, text: &str) -> TenantResult {
    result.source_sha256 = crate::canonical::sha256_hex(text.as_bytes());
    let max_file = layer1.policy.tenant_limits.max_file_bytes;
    if text.len() as u64 > max_file {
        let n = text.len();
        return result.refused(format!(
            "the file is {n} bytes; Layer 1 allows at most {max_file} a tenant (policy.tenant_limits.max_file_bytes)"
        ));
    }
    let parsed = {
        let mut r = Reporter::new(&result.file, Some(&result.tenant_id));
        validate::parse_toml(&mut r, text).ok_or(r.problems)
    };
    match parsed {
        Ok(doc) => compile_doc(layer1, result, doc),
        Err(problems) => {
            result.problems = problems;
            result
        }
    }
}

/// Merges, validates and renders one overlay document into `result`.
fn compile_doc(layer1: &Layer1, mut result: TenantResult, mut doc: toml::Value) -> TenantResult {
    let file_buf = result.file.clone();
    let key = result.tenant_id.clone();
    let (stem, is_canary) = super::canary::base_of(&key);
    let stem = stem.to_owned();
    // Problems are filed under the key's tenant, whatever id the document
    // claims (a claimed id that differs is one of them).
    let tenant = stem.clone();
    let mut r = Reporter::new(&file_buf, Some(&tenant));
    let percent = is_canary
        .then(|| super::canary::take_percent(&mut r, &mut doc))
        .flatten();
    validate::check_strings(&mut r, &doc, Some(&layer1.policy));
    // A type error names its field: `generation.temperature: expected a
    // number, found the string "0.5"`.
    let Some(overlay) = validate::typed::<Overlay>(&mut r, doc) else {
        result.problems = r.problems;
        return result;
    };
    result.version = Some(overlay.version.clone());
    let mut cfg = EffectiveConfig::merge(
        &layer1.defaults,
        &layer1.policy.plans,
        &layer1.version,
        &overlay,
    );
    validate::check_identity(&mut r, &cfg, &stem);
    let rendered = validate::check_policy(&mut r, layer1, &cfg);
    // The tenant stays under its key (its file's stem, its row's slug),
    // whatever id its document claims (a mismatch is a problem above): a
    // copy of tenant k's file under another name must neither claim nor
    // release k's numbers, nor be written at k's place.
    // Over the ceiling, the tenant is refused; its numbers are not claimed.
    // A canary's are the stable arm's: checked against them, not claimed.
    if is_canary {
        result.canary_phones = Some(cfg.phone_numbers.clone());
    } else if cfg.phone_numbers.len() <= layer1.policy.tenant_limits.max_phone_numbers {
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
        let sealed = match percent {
            Some(p) => super::canary::seal(&mut cfg, p),
            None => cfg.seal(),
        };
        match sealed {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that panics loses no tenant: each it had taken comes back
    /// refused under its own name (so quarantine holds that tenant, not
    /// an unnamed one), the others compiled, all in order.
    #[test]
    fn a_panicking_worker_s_tenants_are_refused_by_name() {
        let ids: Vec<String> = (0..64).map(|i| format!("tenant-{i:02}")).collect();
        let blank = |id: &String| TenantResult::named(PathBuf::from(format!("{id}.toml")), id);
        let results = parallel(
            &ids,
            2,
            |id| {
                assert!(id != "tenant-05", "a bug while compiling {id}");
                blank(id)
            },
            blank,
        );
        assert_eq!(results.len(), ids.len());
        for (id, r) in ids.iter().zip(&results) {
            assert_eq!(&r.tenant_id, id, "in order");
            if !r.problems.is_empty() {
                assert_eq!(r.problems[0].tenant.as_deref(), Some(id.as_str()));
            }
        }
        assert!(
            !results[5].problems.is_empty(),
            "the tenant that panicked is refused"
        );
    }
}
