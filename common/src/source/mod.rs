//! What a snapshot is compiled from: Layer 1 and the tenants' overlays.
//!
//! Two kinds of source hold the overlays:
//!
//! - a config-as-code directory ([`Source::open`]): `layer1.toml` and
//!   `tenants/<tenant_id>.toml`, one file per tenant;
//! - the platform's database ([`Tenants::Rows`], filled by
//!   database module, `postgres` feature): one active row per tenant, Layer 1 still a
//!   reviewed file.
//!
//! Either way the compile sees the tenants in id order, each with a name
//! its problems are filed under (the file, or the table and row id) and a
//! hash of its source (what an incremental publish compares).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::Layer1;
use crate::validate::Problem;

mod dir;
pub mod hash_cache;

pub use dir::read_layer1;

/// A source with its Layer 1 parsed and checked, and its tenants listed in
/// id order (so builds are deterministic).
#[derive(Clone)]
pub struct Source {
    /// What messages name the source by: the directory as given, or the
    /// database URL without its password.
    pub dir: PathBuf,
    /// Parsed Layer 1.
    pub layer1: Layer1,
    /// The tenants, in id order.
    pub tenants: Tenants,
    /// What was found but not read (a file in `tenants/` not named
    /// `*.toml`, no tenant at all): a tenant misnamed would otherwise drop
    /// out of the snapshot without a word.
    pub warnings: Vec<Problem>,
    /// A directory source: where its files' hashes are cached between
    /// compiles ([`hash_cache`]), so an incremental publish reads only the
    /// files that changed; `None` reads every file.
    pub hash_cache: Option<PathBuf>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("dir", &self.dir)
            .field("tenants", &self.tenants.len())
            .finish_non_exhaustive()
    }
}

/// Where a source's tenants are, in id order.
#[derive(Clone)]
pub enum Tenants {
    /// Tenant files (`tenants/*.toml`), read from under `root` (the
    /// directory's canonical path: every file read must lie under it).
    Files {
        /// The source directory's canonical path.
        root: PathBuf,
        /// The files, sorted by stem.
        files: Vec<PathBuf>,
        /// Their stems, the tenant ids, in the same order.
        ids: Ids,
    },
    /// Database rows, one per tenant, fetched a batch at a time.
    Rows {
        /// The rows, sorted by tenant id.
        rows: Vec<Row>,
        /// Where their contents are fetched from.
        reader: Arc<dyn RowReader>,
    },
}

/// One tenant's row of a database source, as listed (its content is
/// fetched when it is compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The tenant id (its slug).
    pub tenant: String,
    /// The row's id, as the database prints it.
    pub id: String,
    /// The row's `version` column.
    pub version: String,
    /// SHA-256 (hex) of what the row holds for Strata: equal hashes, equal
    /// overlays (empty for a row too large to hash).
    pub sha256: String,
    /// About how many bytes it holds (prompt and stored config): a row
    /// over Layer 1's `max_file_bytes` is not fetched.
    pub bytes: u64,
    /// Other active rows with the same record key: a tenant has one active
    /// row, and at most one more with `canary_percent` (keyed
    /// `<slug>.canary`), so two rows under one key are refused.
    pub others: Vec<String>,
}

/// One tenant's overlay as a database row gives it.
#[derive(Debug, Clone)]
pub enum RowContent {
    /// The overlay as a TOML document, with the size it was read from.
    Doc {
        /// The document: the row's fields, as a tenant file holds them.
        doc: toml::Value,
        /// The bytes the row holds (prompt and config): what
        /// `policy.tenant_limits.max_file_bytes` bounds.
        bytes: u64,
    },
    /// The row is not an overlay: the problems, field by field.
    Invalid(Vec<(String, String)>),
}

/// Fetches the contents of listed rows: the database source's side of a
/// compile. The database module (`postgres` feature) implements it.
pub trait RowReader: Send + Sync {
    /// The content of each of `rows`, in their order; an error if the
    /// database could not be read (no row is then compiled).
    fn fetch(&self, rows: &[Row]) -> Result<Vec<RowContent>, SourceError>;
}

impl Tenants {
    /// How many tenants.
    pub fn len(&self) -> usize {
        match self {
            Tenants::Files { files, .. } => files.len(),
            Tenants::Rows { rows, .. } => rows.len(),
        }
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th tenant's id: a file's stem, a row's tenant.
    pub fn id(&self, i: usize) -> &str {
        match self {
            Tenants::Files { ids, .. } => ids.get(i),
            Tenants::Rows { rows, .. } => rows.get(i).map_or("", |r| r.tenant.as_str()),
        }
    }

    /// The index of tenant `id`, if the source holds it (they are in id
    /// order).
    pub fn position(&self, id: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.id(mid).cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// What the `i`th tenant's problems are filed under: its file, or
    /// its table and row id.
    pub fn origin(&self, i: usize) -> PathBuf {
        match self {
            Tenants::Files { files, .. } => files.get(i).cloned().unwrap_or_default(),
            Tenants::Rows { rows, .. } => rows.get(i).map_or_else(PathBuf::new, row_origin),
        }
    }
}

/// Tenant ids packed in one string: a source's are asked for millions of
/// times a compile (sorting, planning, checking), and a path's stem is not
/// free to find.
#[derive(Debug, Clone, Default)]
pub struct Ids {
    text: String,
    ends: Vec<usize>,
}

impl Ids {
    /// The ids of `files`, sorting `files` by them (stems sort `ab` before
    /// `ab-c`, whole names the other way).
    pub fn sort(files: &mut Vec<PathBuf>) -> Self {
        let unsorted: Self = files.iter().map(|f| file_stem(f)).collect();
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_unstable_by(|&a, &b| unsorted.get(a).cmp(unsorted.get(b)));
        let mut taken: Vec<Option<PathBuf>> = std::mem::take(files).into_iter().map(Some).collect();
        *files = order
            .iter()
            .filter_map(|&i| taken.get_mut(i)?.take())
            .collect();
        order.iter().map(|&i| unsorted.get(i)).collect()
    }

    /// The `i`th id (empty past the end).
    pub fn get(&self, i: usize) -> &str {
        let start = match i.checked_sub(1) {
            Some(j) => self.ends.get(j).copied().unwrap_or(usize::MAX),
            None => 0,
        };
        self.ends
            .get(i)
            .and_then(|&end| self.text.get(start..end))
            .unwrap_or("")
    }
}

impl<'a> FromIterator<&'a str> for Ids {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut ids = Self::default();
        for id in iter {
            ids.text.push_str(id);
            ids.ends.push(ids.text.len());
        }
        ids
    }
}

/// How a problem names a row: `tenant_configurations row <id>`.
pub fn row_origin(row: &Row) -> PathBuf {
    PathBuf::from(format!("tenant_configurations row {}", row.id))
}

/// The tenant id a tenant file holds (its stem). Called for every tenant
/// several times a compile: a `*.toml` name is cut at its last `/`
/// without parsing the path's components (a third of a 1M-tenant
/// incremental publish went to that).
pub fn file_stem(file: &Path) -> &str {
    let bytes = file.as_os_str().as_encoded_bytes();
    let name = bytes
        .iter()
        .rposition(|&b| b == b'/')
        .map_or(bytes, |at| &bytes[at + 1..]);
    match name.strip_suffix(b".toml") {
        Some(stem) if !stem.is_empty() => std::str::from_utf8(stem).unwrap_or(""),
        _ => file.file_stem().and_then(|s| s.to_str()).unwrap_or(""),
    }
}

/// Why a source could not be read at all, or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database could not be read (connection, query); no tenant was
    /// judged.
    #[error("{source_name}: {reason}")]
    Database {
        /// The source, named as in messages (URL without password).
        source_name: String,
        /// What failed, and what to check.
        reason: String,
    },
    /// The source has problems; every one is listed.
    #[error("{} problem(s) in the source", problems.len())]
    Invalid {
        /// Every problem found.
        problems: Vec<Problem>,
        /// Warnings found along the way.
        warnings: Vec<Problem>,
    },
}

impl Source {
    /// A database source: Layer 1 (read by [`read_layer1`]) and listed
    /// rows, named `name` in messages.
    pub fn from_rows(
        name: &str,
        layer1: Layer1,
        rows: Vec<Row>,
        reader: Arc<dyn RowReader>,
    ) -> Self {
        let mut warnings = Vec::new();
        if rows.is_empty() {
            warnings.push(Problem {
                file: PathBuf::from(name),
                tenant: None,
                field: String::new(),
                reason: "no active row in tenant_configurations: a snapshot published from it serves no tenant".into(),
            });
        }
        Self {
            dir: PathBuf::from(name),
            layer1,
            tenants: Tenants::Rows { rows, reader },
            warnings,
            hash_cache: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_files_sort_by_stem_and_are_found_by_id() {
        let mut files: Vec<PathBuf> = [
            "t/ab.toml",
            "t/ab-c.toml",
            "t/a.b.toml",
            "t/b.toml",
            "t/a.toml",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        let ids = Ids::sort(&mut files);
        let stems: Vec<&str> = (0..files.len()).map(|i| ids.get(i)).collect();
        assert_eq!(stems, ["a", "a.b", "ab", "ab-c", "b"]);
        let by_file: Vec<&str> = files.iter().map(|f| file_stem(f)).collect();
        assert_eq!(by_file, stems);
        assert_eq!(ids.get(5), "");
        let tenants = Tenants::Files {
            root: PathBuf::from("/"),
            files,
            ids,
        };
        assert_eq!(tenants.position("ab-c"), Some(3));
        assert_eq!(tenants.position("a"), Some(0));
        assert_eq!(tenants.position("c"), None);
        assert_eq!(tenants.origin(3), PathBuf::from("t/ab-c.toml"));
        assert_eq!(file_stem(Path::new("dir/.toml")), ".toml");
        assert_eq!(file_stem(Path::new("x.json")), "x");
    }
}
