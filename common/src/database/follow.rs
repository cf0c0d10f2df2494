//! What `strata-publisher follow` asks of the database: change
//! notifications (`LISTEN`, fed by the trigger `schema/postgres.sql`
//! installs), one leader among followers (a session advisory lock: the
//! leader's connection ends, the lock goes with it), and the problems of
//! held-back tenants written where the platform's dashboard reads them
//! (`strata_publish_problems`).

use std::collections::BTreeMap;

use super::{Database, DatabaseError};
use crate::source::Row;
use crate::validate::Problem;

/// The `NOTIFY` channel the schema's trigger announces changes on (the
/// payload is the tenant's UUID).
pub const NOTIFY_CHANNEL: &str = "strata_tenant_configurations";

/// Listens for changes of `tenant_configurations` and `tenants`.
pub fn listen(db: &Database) -> Result<(), DatabaseError> {
    db.execute_batch("listening for changes", &format!("LISTEN {NOTIFY_CHANNEL}"))
}

/// Tries to become the one follower that publishes for `key` (the store
/// and channel): `true` if this connection holds the lock now. It is held
/// until the connection ends.
pub fn try_lead(db: &Database, key: &str) -> Result<bool, DatabaseError> {
    let key = format!("strata follow {key}");
    let row = db.run("taking the followers' advisory lock", async |c| {
        c.query_one(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
            &[&key],
        )
        .await
    })?;
    Ok(row.get(0))
}

/// Whether this connection still holds an advisory lock (the followers'
/// lock [`try_lead`] took): checked before a follower moves the pointer.
pub fn holds_lock(db: &Database) -> Result<bool, DatabaseError> {
    let row = db.run("checking the followers' advisory lock", async |c| {
        c.query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted)",
            &[],
        )
        .await
    })?;
    Ok(row.get(0))
}

/// One problem of a held-back tenant, as `strata_publish_problems` holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    /// The tenant id.
    pub tenant: String,
    /// The row that was refused.
    pub row_id: String,
    /// Its version column.
    pub version: String,
    /// The field, dotted as in the tenant file (empty: the whole row).
    pub field: String,
    /// What is wrong and what would be valid.
    pub reason: String,
}

/// The held-back problems of a compile over `rows`, one per tenant and
/// field (several reasons on one field joined).
pub fn held_back(rows: &[Row], problems: &[Problem]) -> Vec<HeldBack> {
    let row_of: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.tenant.as_str(), r)).collect();
    let mut out: BTreeMap<(String, String), HeldBack> = BTreeMap::new();
    for p in problems {
        let tenant = p.tenant.clone().unwrap_or_default();
        let (row_id, version) = row_of
            .get(tenant.as_str())
            .map(|r| (r.id.clone(), r.version.clone()))
            .unwrap_or_default();
        out.entry((tenant.clone(), p.field.clone()))
            .and_modify(|h| {
                h.reason.push_str("; ");
                h.reason.push_str(&p.reason);
            })
            .or_insert(HeldBack {
                tenant,
                row_id,
                version,
                field: p.field.clone(),
                reason: p.reason.clone(),
            });
    }
    out.into_values().collect()
}

/// Makes `strata_publish_problems` hold exactly `problems` for `channel`,
/// in one transaction: a problem already there keeps when it was first
/// noticed, one no longer found (the tenant's next row was valid) goes.
pub fn report(db: &Database, channel: &str, problems: &[HeldBack]) -> Result<(), DatabaseError> {
    let col = |f: fn(&HeldBack) -> &String| -> Vec<String> {
        problems.iter().map(|p| f(p).clone()).collect()
    };
    let (tenants, rows, versions, fields, reasons) = (
        col(|p| &p.tenant),
        col(|p| &p.row_id),
        col(|p| &p.version),
        col(|p| &p.field),
        col(|p| &p.reason),
    );
    let result = db.run("writing strata_publish_problems", async |c| {
        c.batch_execute("BEGIN").await?;
        c.execute(
            "DELETE FROM strata_publish_problems p WHERE p.channel = $1 AND NOT EXISTS \
             (SELECT 1 FROM unnest($2::text[], $3::text[], $4::text[]) AS n(tenant, row_id, field) \
              WHERE n.tenant = p.tenant AND n.row_id = p.row_id AND n.field = p.field)",
            &[&channel, &tenants, &rows, &fields],
        )
        .await?;
        c.execute(
            "INSERT INTO strata_publish_problems (channel, tenant, row_id, version, field, reason) \
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
             ON CONFLICT (channel, tenant, row_id, field) DO UPDATE SET reason = EXCLUDED.reason, version = EXCLUDED.version",
            &[&channel, &tenants, &rows, &versions, &fields, &reasons],
        )
        .await?;
        c.batch_execute("COMMIT").await
    });
    if result.is_err() {
        let _ = db.execute_batch("abandoning the problems' update", "ROLLBACK");
    }
    result
}
