//! Reading a config-as-code source directory:
//!
//! ```text
//! layer1.toml
//! tenants/<tenant_id>.toml
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use super::{Source, SourceError, Tenants};
use crate::localfile;
use crate::model::Layer1;
use crate::validate::{self, Problem, Reporter};

impl Source {
    /// Reads `dir/layer1.toml` and lists `dir/tenants/*.toml`.
    pub fn open(dir: &Path) -> Result<Self, SourceError> {
        let layer1_path = dir.join("layer1.toml");
        if !dir.is_dir() {
            return Err(refused(
                dir.to_owned(),
                "no such directory: --source names the config repository's directory, the one holding layer1.toml and tenants/".to_owned(),
            ));
        }
        if !layer1_path.exists() && !dir.join("tenants").exists() {
            return Err(refused(
                dir.to_owned(),
                "holds neither layer1.toml nor tenants/: --source names the config repository's directory, the one holding both".to_owned(),
            ));
        }
        let root = fs::canonicalize(dir).map_err(|source| SourceError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let layer1 = read_layer1(&layer1_path, &root)?;
        let tenants_dir = dir.join("tenants");
        // A tenants/ linked elsewhere is refused before it is listed.
        if let Some(reason) = leaves(&root, &tenants_dir) {
            return Err(refused(tenants_dir, reason));
        }
        let entries = fs::read_dir(&tenants_dir).map_err(|source| SourceError::Io {
            path: tenants_dir.clone(),
            source,
        })?;
        let mut tenant_files = Vec::new();
        let mut ignored = Vec::new();
        // Entries that are not plain files of tenants/ (links, or of a type
        // the directory listing does not give): only these can lead out.
        let mut maybe_links = std::collections::HashSet::new();
        for entry in entries {
            let entry = entry.map_err(|source| SourceError::Io {
                path: tenants_dir.clone(),
                source,
            })?;
            let path = entry.path();
            // Dot files (.gitkeep, an editor's .#lock, macOS's ._x.toml)
            // are a repository's or a tool's own, whatever they end in.
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            if path.extension().is_some_and(|e| e == "toml") {
                if !entry.file_type().is_ok_and(|t| t.is_file()) {
                    maybe_links.insert(path.clone());
                }
                tenant_files.push(path);
            } else {
                ignored.push(path);
            }
        }
        // In tenant id order, which is the payload's: by file stem, since
        // by whole name `ab-c.toml` sorts before `ab.toml` ('-' < '.').
        let ids = super::Ids::sort(&mut tenant_files);
        ignored.sort();
        // A link may point within the source (a shared file, a renamed
        // tenant), never out of it: a tenant file linked to /etc/passwd or
        // /proc/self/environ, or a tenants/ linked elsewhere, is refused
        // before it is read.
        let outside: Vec<Problem> = tenant_files
            .iter()
            .filter(|file| maybe_links.contains(*file))
            .filter_map(|file| leaves(&root, file).map(|reason| (file, reason)))
            .map(|(file, reason)| Problem {
                file: file.clone(),
                tenant: None,
                field: String::new(),
                reason,
            })
            .collect();
        if !outside.is_empty() {
            return Err(SourceError::Invalid {
                problems: outside,
                warnings: Vec::new(),
            });
        }
        let mut warnings: Vec<Problem> = ignored
            .into_iter()
            .map(|file| Problem {
                file,
                tenant: None,
                field: String::new(),
                reason:
                    "not read: only *.toml files in tenants/ are tenants; if this is a tenant, \
                         rename it to <tenant_id>.toml, otherwise move it out of tenants/"
                        .into(),
            })
            .collect();
        if tenant_files.is_empty() {
            warnings.push(Problem {
                file: tenants_dir,
                tenant: None,
                field: String::new(),
                reason: "no *.toml file: this source has no tenants, and a snapshot published \
                         from it serves none"
                    .into(),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            layer1,
            tenants: Tenants::Files {
                root,
                files: tenant_files,
                ids,
            },
            warnings,
            hash_cache: None,
        })
    }
}

/// Reads and checks Layer 1 from `path`, which must lie under `root` (a
/// canonical directory; for a database source, the file's own directory).
pub fn read_layer1(path: &Path, root: &Path) -> Result<Layer1, SourceError> {
    if let Some(reason) = leaves(root, path) {
        return Err(refused(path.to_owned(), reason));
    }
    // Checked again on the open file: a link swapped in after the
    // check above cannot lead outside.
    let text =
        localfile::read_text_inside(path, localfile::MAX_LAYER1_BYTES, root).map_err(|source| {
            SourceError::Io {
                path: path.to_owned(),
                source,
            }
        })?;
    let path = path.to_owned();
    let mut r = Reporter::new(&path, None);
    let invalid = |r: Reporter| SourceError::Invalid {
        problems: r.problems,
        warnings: Vec::new(),
    };
    let Some(doc) = validate::parse_toml(&mut r, &text) else {
        return Err(invalid(r));
    };
    let Some(layer1) = validate::typed::<Layer1>(&mut r, doc.clone()) else {
        return Err(invalid(r));
    };
    // Layer 1 reaches every tenant's prompt: no secret in it either.
    validate::check_strings(&mut r, &doc, None);
    validate::check_layer1(&mut r, &layer1);
    if !r.problems.is_empty() {
        return Err(invalid(r));
    }
    Ok(layer1)
}

/// A source refused for one problem on `file`, which belongs to no tenant.
fn refused(file: PathBuf, reason: String) -> SourceError {
    SourceError::Invalid {
        problems: vec![Problem {
            file,
            tenant: None,
            field: String::new(),
            reason,
        }],
        warnings: Vec::new(),
    }
}

/// Why `file` may not be read as part of the source rooted at `root` (its
/// canonical path): it resolves outside it. `None` if it stays inside (or
/// does not resolve: reading it then says what is wrong).
fn leaves(root: &Path, file: &Path) -> Option<String> {
    let real = fs::canonicalize(file).ok()?;
    (!real.starts_with(root)).then(|| {
        format!(
            "is a link that leaves the source (to {}): only files inside the source directory are read; copy the file in, or link to a file inside it",
            real.display()
        )
    })
}
