//! `import --source DIR --to postgres://…`: a directory source loaded into
//! the schema the seed's way, in one transaction. A tenant whose file
//! differs from its active row gets a new row (next to its old ones,
//! `parent_version_id` naming the one it replaces) and `is_active` moves to
//! it; an unchanged tenant gets nothing; a tenant new to the database gets
//! a `tenants` row too. Rows are streamed in with binary `COPY`.

use std::path::PathBuf;

use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::{Database, DatabaseError};
use crate::source::{Source, Tenants};

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Tenant files read.
    pub files: u64,
    /// Tenants new to the database (a `tenants` row made).
    pub new_tenants: u64,
    /// New rows made active (new tenants and changed ones).
    pub new_rows: u64,
    /// Tenants whose active row already held their file.
    pub unchanged: u64,
}

/// Why an import wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A tenant file is not a document an import can load.
    #[error("{}: {reason}", file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// Tenants whose content changed kept a version that already has a
    /// row: each version is one content (UNIQUE (tenant_id, version)).
    #[error("nothing was imported: {}", .0.join("; "))]
    VersionTaken(Vec<String>),
    /// The database refused or failed.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

/// One tenant file as the columns it becomes.
struct FileRow {
    slug: String,
    name: String,
    version: String,
    prompt: String,
    config: String,
}

/// Loads every tenant of `source` (a directory) into `db`.
pub fn import(db: &Database, source: &Source) -> Result<Imported, ImportError> {
    let Tenants::Files { root, files, .. } = &source.tenants else {
        return Err(ImportError::File {
            file: source.dir.clone(),
            reason: "import reads a directory source".into(),
        });
    };
    let max = source.layer1.policy.tenant_limits.max_file_bytes;
    let mut rows = Vec::with_capacity(files.len());
    for file in files {
        rows.push(file_row(file, root, max)?);
    }
    let imported = db.run("importing", async |c| load(c, &rows).await);
    if imported.is_err() {
        // The transaction failed part way: nothing of it stays.
        let _ = db.execute_batch("abandoning the import", "ROLLBACK");
    }
    match imported? {
        Ok(counts) => Ok(counts),
        Err(taken) => Err(ImportError::VersionTaken(taken)),
    }
}

/// A tenant file's columns: `config` is every field but `tenant_id`,
/// `version` and `agent.prompt`.
fn file_row(
    file: &std::path::Path,
    root: &std::path::Path,
    max: u64,
) -> Result<FileRow, ImportError> {
    let refused = |reason: String| ImportError::File {
        file: file.to_owned(),
        reason,
    };
    if crate::model::is_canary_key(crate::source::file_stem(file)) {
        return Err(refused(
            "a canary file is not imported: start the canary in the database (a second active row of the tenant with canary_percent set), or move the file out of tenants/".into(),
        ));
    }
    let text = crate::localfile::read_text_inside(file, max, root)
        .map_err(|e| refused(format!("cannot read it: {e}")))?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| refused(format!("not valid TOML: {}", e.message().trim())))?;
    let slug = crate::source::file_stem(file).to_owned();
    let text_field = |doc: &mut toml::Table, key: &str| match doc.remove(key) {
        Some(toml::Value::String(s)) => Ok(s),
        None => Ok(String::new()),
        Some(_) => Err(refused(format!("{key} is not a string"))),
    };
    match doc.remove("tenant_id") {
        Some(toml::Value::String(id)) if id == slug => {}
        None => {}
        Some(_) => {
            return Err(refused(format!(
                "tenant_id does not match the file name; rename the file or set tenant_id = {slug:?}"
            )));
        }
    }
    let version = text_field(&mut doc, "version")?;
    let name = match doc.get("name") {
        Some(toml::Value::String(s)) => s.clone(),
        _ => slug.clone(),
    };
    let prompt = match doc.get_mut("agent") {
        Some(toml::Value::Table(agent)) => text_field(agent, "prompt")?,
        _ => String::new(),
    };
    let config = serde_json::to_string(&doc).map_err(|e| refused(e.to_string()))?;
    Ok(FileRow {
        slug,
        name,
        version,
        prompt,
        config,
    })
}

/// The import's one transaction: `Err` lists the versions taken (and
/// nothing is written).
async fn load(
    c: &tokio_postgres::Client,
    rows: &[FileRow],
) -> Result<Result<Imported, Vec<String>>, tokio_postgres::Error> {
    c.batch_execute(
        "BEGIN; \
         CREATE TEMP TABLE strata_import (slug text, name text, version text, prompt text, config text) ON COMMIT DROP",
    )
    .await?;
    let sink = c
        .copy_in("COPY strata_import FROM STDIN (FORMAT binary)")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT; 5]);
    pin_mut!(writer);
    for r in rows {
        writer
            .as_mut()
            .write(&[&r.slug, &r.name, &r.version, &r.prompt, &r.config])
            .await?;
    }
    writer.finish().await?;
    let new_tenants = c
        .execute(
            "INSERT INTO tenants (id, name, slug) \
             SELECT gen_random_uuid(), i.name, i.slug FROM strata_import i \
             WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.slug = i.slug OR t.id::text = i.slug)",
            &[],
        )
        .await?;
    c.batch_execute(
        "CREATE TEMP TABLE strata_changed ON COMMIT DROP AS \
         SELECT i.slug, i.version, i.prompt, i.config::jsonb AS config, t.id AS tenant, a.id AS active \
         FROM strata_import i \
         JOIN tenants t ON t.slug = i.slug OR (t.slug IS NULL AND t.id::text = i.slug) \
         LEFT JOIN tenant_configurations a ON a.tenant_id = t.id AND a.is_active \
         WHERE a.id IS NULL OR a.version <> i.version \
            OR a.layer2_system_prompt <> i.prompt OR a.config <> i.config::jsonb",
    )
    .await?;
    let taken = c
        .query(
            "SELECT ch.slug, ch.version, o.id::text FROM strata_changed ch \
             JOIN tenant_configurations o ON o.tenant_id = ch.tenant AND o.version = ch.version \
             ORDER BY 1",
            &[],
        )
        .await?;
    if !taken.is_empty() {
        c.batch_execute("ROLLBACK").await?;
        return Ok(Err(taken
            .iter()
            .map(|r| {
                let (slug, version, id): (String, String, String) = (r.get(0), r.get(1), r.get(2));
                format!(
                    "tenant {slug}: its file changed but version {version} already has a row ({id}) with other content; raise version in tenants/{slug}.toml"
                )
            })
            .collect()));
    }
    c.batch_execute(
        "UPDATE tenant_configurations SET is_active = false \
         WHERE is_active AND tenant_id IN (SELECT tenant FROM strata_changed)",
    )
    .await?;
    let new_rows = c
        .execute(
            "INSERT INTO tenant_configurations \
               (id, tenant_id, version, version_hash, layer2_system_prompt, config, is_active, parent_version_id) \
             SELECT gen_random_uuid(), tenant, version, \
               encode(sha256(convert_to(jsonb_build_array(version, prompt, config)::text, 'UTF8')), 'hex'), \
               prompt, config, true, active \
             FROM strata_changed",
            &[],
        )
        .await?;
    c.batch_execute("COMMIT").await?;
    let files = rows.len() as u64;
    Ok(Ok(Imported {
        files,
        new_tenants,
        new_rows,
        unchanged: files.saturating_sub(new_rows),
    }))
}
