//! Every active row, read in one consistent snapshot.
//!
//! [`open_snapshot`] starts a read-only repeatable-read transaction and
//! lists the active rows through a cursor (tenant, row id, version, and a
//! hash the server computes of everything the overlay is made of): 1M
//! rows never sit in memory at once. The compile then fetches the rows it
//! needs a batch at a time (an incremental publish: only those whose hash
//! is not in the channel's snapshot), in the same transaction, so every
//! row read belongs to one moment of the database.
//!
//! A row becomes the document a tenant file holds: `config` (JSONB) has
//! every field of the file except three, which are columns: `tenant_id`
//! is the tenant's `slug` (or its UUID, if it has no slug), `version` is
//! the row's, `agent.prompt` is `layer2_system_prompt`; `name` falls back
//! to `tenants.name`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Database, DatabaseError};
use crate::model::Layer1;
use crate::source::{Row, RowContent, RowReader, Source, SourceError};

/// Rows listed per cursor fetch.
const FETCH: usize = 10_000;

/// At most this many bytes of rows (prompt and config) per fetch: 2,048
/// rows of the largest allowed size must not sit in memory at once.
const FETCH_BYTES: u64 = 16 << 20;

/// What identifies a row's content: a change to any of it is a new hash
/// (and a salt, to be changed with the way a row becomes a document).
const HASHED: &str = "encode(sha256(convert_to((jsonb_build_array('strata-row-1', \
    COALESCE(t.slug, c.tenant_id::text), c.version, c.layer2_system_prompt, c.config, t.name) \
    || CASE WHEN c.canary_percent IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(c.canary_percent) END)::text, \
    'UTF8')), 'hex')";

/// A row's record key: the tenant's slug (or UUID), and `.canary` for a
/// row with `canary_percent` set (the tenant's canary arm).
const KEY: &str = "COALESCE(t.slug, c.tenant_id::text) \
    || CASE WHEN c.canary_percent IS NULL THEN '' ELSE '.canary' END";

/// An open snapshot of the database: its rows are read in the transaction
/// [`open_snapshot`] began, which ends when this is dropped.
pub struct Snapshot {
    db: Arc<Database>,
    /// Whether the transaction is still open.
    open: Mutex<bool>,
}

impl Snapshot {
    /// Ends the transaction (it only read).
    pub fn close(&self) -> Result<(), DatabaseError> {
        let Ok(mut open) = self.open.lock() else {
            return Ok(());
        };
        if !*open {
            return Ok(());
        }
        *open = false;
        self.db.execute_batch("ending the snapshot", "COMMIT")
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::debug!(error = %e, "ending the database snapshot");
        }
    }
}

/// Lists every active row of `db` in a new snapshot, and makes the source
/// a compile reads (Layer 1 as given), hashing the rows `hashes` does not
/// know. Two active rows of one tenant are listed as one, which the
/// compile refuses naming both.
pub fn open_snapshot(
    db: &Arc<Database>,
    layer1: Layer1,
    hashes: &mut RowHashes,
) -> Result<(Source, Arc<Snapshot>), SourceError> {
    let fail = |e: DatabaseError| SourceError::Database {
        source_name: db.name().to_owned(),
        reason: e.to_string(),
    };
    db.execute_batch(
        "starting a snapshot",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .map_err(fail)?;
    let snapshot = Arc::new(Snapshot {
        db: db.clone(),
        open: Mutex::new(true),
    });
    let max_bytes = layer1.policy.tenant_limits.max_file_bytes;
    let rows = list(db, hashes, max_bytes).map_err(fail)?;
    let reader = Arc::new(Reader {
        snapshot: snapshot.clone(),
        max_bytes,
    });
    let source = Source::from_rows(db.name(), layer1, rows, reader);
    Ok((source, snapshot))
}

/// Row hashes a follower keeps from one snapshot to the next, by row id
/// and the transaction that last wrote the row and its tenant (`xmin`): a
/// row not written since is not hashed again, so listing 100k rows reads
/// ids, not 300 MB of prompts. Any write gives a row a new `xmin`.
#[derive(Debug, Default)]
pub struct RowHashes {
    by_row: std::collections::HashMap<String, ((i64, i64), String)>,
}

impl RowHashes {
    /// Forgets every hash (the next snapshot hashes every row again).
    pub fn clear(&mut self) {
        self.by_row.clear();
    }
}

/// Rows hashed per query when their hashes are not known.
const HASH_BATCH: usize = 5_000;

/// The active rows, in tenant id order (bytewise, as tenant files sort),
/// hashed where `hashes` does not know them. A row over `max_bytes` (its
/// prompt and stored config) is neither hashed nor fetched: the compile
/// refuses it by its size.
fn list(db: &Database, hashes: &mut RowHashes, max_bytes: u64) -> Result<Vec<Row>, DatabaseError> {
    let what = "listing the active rows of tenant_configurations";
    let declare = format!(
        "DECLARE strata_rows NO SCROLL CURSOR FOR \
         SELECT ({KEY}) COLLATE \"C\", c.id::text, COALESCE(c.version, ''), \
                c.xmin::text::bigint, t.xmin::text::bigint, \
                (COALESCE(octet_length(c.layer2_system_prompt), 0) + COALESCE(pg_column_size(c.config), 0))::bigint \
         FROM tenant_configurations c JOIN tenants t ON t.id = c.tenant_id \
         WHERE c.is_active ORDER BY 1, 2"
    );
    db.execute_batch(what, &declare)?;
    let fetch = format!("FETCH {FETCH} FROM strata_rows");
    let mut rows: Vec<Row> = Vec::new();
    let mut written = Vec::new();
    let mut unknown = Vec::new();
    loop {
        let batch = db.run(what, async |c| c.query(fetch.as_str(), &[]).await)?;
        let n = batch.len();
        for r in batch {
            let cols = || -> Result<_, tokio_postgres::Error> {
                let text: (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                let numbers: (i64, i64, i64) = (r.try_get(3)?, r.try_get(4)?, r.try_get(5)?);
                Ok((text, numbers))
            };
            let ((tenant, id, version), (x1, x2, bytes)) =
                cols().map_err(|e| db.query_error(what, &e))?;
            let xmins = (x1, x2);
            let bytes = u64::try_from(bytes).unwrap_or(0);
            let known = hashes.by_row.get(&id).filter(|(x, _)| *x == xmins);
            let sha256 = known.map(|(_, sha)| sha.clone()).unwrap_or_default();
            match rows.last_mut() {
                Some(last) if last.tenant == tenant => last.others.push(id),
                _ => {
                    if sha256.is_empty() && bytes <= max_bytes {
                        unknown.push(rows.len());
                    }
                    written.push(xmins);
                    rows.push(Row {
                        tenant,
                        id,
                        version,
                        sha256,
                        bytes,
                        others: Vec::new(),
                    });
                }
            }
        }
        if n < FETCH {
            break;
        }
    }
    db.execute_batch(what, "CLOSE strata_rows")?;
    let hash = format!(
        "SELECT c.id::text, {HASHED} FROM tenant_configurations c JOIN tenants t ON t.id = c.tenant_id \
         WHERE c.id = ANY($1::text[]::uuid[])"
    );
    for part in unknown.chunks(HASH_BATCH) {
        let ids: Vec<String> = part.iter().map(|&i| rows[i].id.clone()).collect();
        let found = db.run("hashing rows", async |c| {
            c.query(hash.as_str(), &[&ids]).await
        })?;
        let found: HashMap<String, String> = found
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| db.query_error("hashing rows", &e))?;
        for &i in part {
            if let Some(sha) = found.get(&rows[i].id) {
                rows[i].sha256 = sha.clone();
            }
        }
    }
    hashes.by_row = rows
        .iter()
        .zip(written)
        .filter(|(r, _)| !r.sha256.is_empty())
        .map(|(r, x)| (r.id.clone(), (x, r.sha256.clone())))
        .collect();
    Ok(rows)
}

/// Fetches rows' contents in the snapshot.
struct Reader {
    snapshot: Arc<Snapshot>,
    /// Layer 1's `max_file_bytes`: a row listed over it is not fetched.
    max_bytes: u64,
}

impl RowReader for Reader {
    fn fetch(&self, rows: &[Row]) -> Result<Vec<RowContent>, SourceError> {
        let db = &self.snapshot.db;
        let fail = |e: DatabaseError| SourceError::Database {
            source_name: db.name().to_owned(),
            reason: e.to_string(),
        };
        let wanted: Vec<&Row> = rows.iter().filter(|r| r.bytes <= self.max_bytes).collect();
        let mut by_id: HashMap<String, Fetched> = HashMap::new();
        let mut part: Vec<String> = Vec::new();
        let mut part_bytes = 0u64;
        for (i, row) in wanted.iter().enumerate() {
            part.push(row.id.clone());
            part_bytes += row.bytes;
            if part_bytes >= FETCH_BYTES || i + 1 == wanted.len() {
                by_id.extend(fetch_rows(db, &part).map_err(fail)?);
                part.clear();
                part_bytes = 0;
            }
        }
        Ok(rows
            .iter()
            .map(|row| match by_id.remove(&row.id) {
                Some(f) => document(row, &f),
                None if row.bytes > self.max_bytes => RowContent::Invalid(vec![(
                    String::new(),
                    format!(
                        "the row holds about {} bytes (prompt and config); Layer 1 allows at most {} a tenant (policy.tenant_limits.max_file_bytes)",
                        row.bytes, self.max_bytes
                    ),
                )]),
                None => RowContent::Invalid(vec![(
                    String::new(),
                    "the row vanished within one snapshot (a bug; please report it)".into(),
                )]),
            })
            .collect())
    }
}

/// One row's columns as a document is made of them, a NULL read as empty.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// `layer2_system_prompt`.
    pub prompt: String,
    /// `config`, as JSON text.
    pub config: String,
    /// `tenants.name`.
    pub name: String,
    /// `canary_percent`, as text (empty when NULL).
    pub canary_percent: String,
}

/// Rows `ids`: each one's columns.
fn fetch_rows(db: &Database, ids: &[String]) -> Result<HashMap<String, Fetched>, DatabaseError> {
    let found = db.run("reading tenant_configurations rows", async |c| {
        c.query(
            "SELECT c.id::text, COALESCE(c.layer2_system_prompt, ''), COALESCE(c.config::text, '{}'), \
                    COALESCE(t.name, ''), COALESCE(c.canary_percent::text, '') \
             FROM tenant_configurations c JOIN tenants t ON t.id = c.tenant_id \
             WHERE c.id = ANY($1::text[]::uuid[])",
            &[&ids],
        )
        .await
    })?;
    found
        .into_iter()
        .map(|r| {
            let f = Fetched {
                prompt: r.try_get(1)?,
                config: r.try_get(2)?,
                name: r.try_get(3)?,
                canary_percent: r.try_get(4)?,
            };
            Ok((r.try_get(0)?, f))
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| db.query_error("reading tenant_configurations rows", &e))
}

/// The columns a row's `config` may not repeat, and where they are.
const COLUMNS: [(&str, &str); 2] = [
    ("tenant_id", "the tenant's slug (tenants.slug)"),
    ("version", "the row's version column"),
];

/// A row as the document a tenant file holds.
pub fn document(row: &Row, f: &Fetched) -> RowContent {
    let (prompt, config, name) = (f.prompt.as_str(), f.config.as_str(), f.name.as_str());
    let bytes = (prompt.len() + config.len()) as u64;
    let mut problems = Vec::new();
    let json: serde_json::Value = match serde_json::from_str(config) {
        Ok(v) => v,
        Err(e) => {
            return RowContent::Invalid(vec![("config".into(), format!("not JSON: {e}"))]);
        }
    };
    let serde_json::Value::Object(fields) = json else {
        return RowContent::Invalid(vec![(
            "config".into(),
            "is not a JSON object; it holds the tenant file's fields, {} for none".into(),
        )]);
    };
    let mut table = toml::Table::new();
    for (key, value) in fields {
        if let Some((_, column)) = COLUMNS.iter().find(|(c, _)| *c == key) {
            problems.push((
                format!("config.{key}"),
                format!("is {column}, not part of config: remove it from config"),
            ));
            continue;
        }
        match to_toml(&value, &key) {
            Ok(v) => {
                table.insert(key, v);
            }
            Err(p) => problems.push(p),
        }
    }
    // A canary row (`canary_percent` set) is the tenant's canary arm: its
    // record key ends in `.canary`, its tenant is the slug.
    let tenant = row
        .tenant
        .strip_suffix(crate::model::CANARY_SUFFIX)
        .unwrap_or(&row.tenant);
    table.insert("tenant_id".into(), toml::Value::String(tenant.to_owned()));
    if !f.canary_percent.is_empty() {
        match f.canary_percent.parse::<f64>() {
            Ok(p) => {
                table.insert("canary_percent".into(), toml::Value::Float(p));
            }
            Err(_) => problems.push((
                "canary_percent".into(),
                format!("{:?} is not a number", f.canary_percent),
            )),
        }
    }
    table.insert("version".into(), toml::Value::String(row.version.clone()));
    if !table.contains_key("name") {
        table.insert("name".into(), toml::Value::String(name.to_owned()));
    }
    let agent = table
        .entry("agent")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match agent {
        toml::Value::Table(agent) if agent.contains_key("prompt") => problems.push((
            "config.agent.prompt".into(),
            "is the layer2_system_prompt column, not part of config: remove it from config".into(),
        )),
        // An empty column is no prompt of the tenant's own, as a file
        // without `agent.prompt`: Layer 1's default applies.
        toml::Value::Table(_) if prompt.is_empty() => {}
        toml::Value::Table(agent) => {
            agent.insert("prompt".into(), toml::Value::String(prompt.to_owned()));
        }
        // The overlay's type check names the field.
        _ => {}
    }
    if problems.is_empty() {
        RowContent::Doc {
            doc: toml::Value::Table(table),
            bytes,
        }
    } else {
        RowContent::Invalid(problems)
    }
}

/// A JSON value as the TOML value a file would hold; `null` (which TOML
/// has not) and integers past 64 bits are problems on `path`.
fn to_toml(v: &serde_json::Value, path: &str) -> Result<toml::Value, (String, String)> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => {
            return Err((
                format!("config.{path}"),
                "is null; leave the field out for Layer 1's default".into(),
            ));
        }
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml::Value::Integer(i),
            (None, Some(f)) if n.is_f64() => toml::Value::Float(f),
            _ => {
                return Err((
                    format!("config.{path}"),
                    format!("{n} is out of range for a whole number"),
                ));
            }
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(items) => toml::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_toml(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        J::Object(fields) => toml::Value::Table(
            fields
                .iter()
                .map(|(k, item)| Ok((k.clone(), to_toml(item, &format!("{path}.{k}"))?)))
                .collect::<Result<_, (String, String)>>()?,
        ),
    })
}
