//! Tenants a rollback holds back (`rollback --tenant`): while the source
//! has not moved above the version rolled back from, a publish carries the
//! record the rollback put back, not the source, so the next routine
//! publish does not bring the bad config back.

use super::LastPublished;
use super::tenant::TenantResult;
use crate::bundle::Hold;
use crate::validate::Problem;

/// A tenant `h` holds back by rollback, and whether it still is: while
/// its source's version is not above `h.above`, its record of the
/// channel's snapshot (`kept_from`), with a warning saying so (or, if
/// that record cannot be carried, `t` with a problem that refuses the
/// build, quarantine or not); once it is, `t` itself.
pub(super) fn hold_rolled_back(
    mut t: TenantResult,
    h: &Hold,
    kept_from: &LastPublished,
    warnings: &mut Vec<Problem>,
) -> (TenantResult, bool) {
    let above = semver::Version::parse(&h.above).ok();
    let version = t
        .version
        .as_deref()
        .and_then(|v| semver::Version::parse(v).ok());
    let note = |t: &TenantResult, reason: String| Problem {
        file: t.file.clone(),
        tenant: Some(t.tenant_id.clone()),
        field: "version".into(),
        reason,
    };
    if let (Some(v), Some(a)) = (&version, &above)
        && v > a
    {
        warnings.push(note(
            &t,
            format!(
                "{v} is above {a}: the rollback in snapshot {} no longer holds this tenant back, its source is published",
                h.since
            ),
        ));
        return (t, false);
    }
    let Some(kept) = (kept_from.0)(&t.tenant_id) else {
        t.problems = vec![note(
            &t,
            format!(
                "held at {} by the rollback in snapshot {}, but that record cannot be carried into this snapshot (Layer 1 changed, or the channel's snapshot is unreadable); raise the tenant's version above {} to publish its source",
                h.version, h.since, h.above
            ),
        )];
        return (t, false);
    };
    let shown = t
        .version
        .clone()
        .unwrap_or_else(|| "no readable version".into());
    warnings.push(note(
        &t,
        format!(
            "held at {} by the rollback in snapshot {} until its source is above {} (the source has {shown}); its source is not published",
            h.version, h.since, h.above
        ),
    ));
    let kept = TenantResult {
        phones: kept.phones,
        output: Some((kept.config_hash, kept.config, kept.prompt)),
        source_sha256: "held by a rollback".into(),
        ..TenantResult::named(t.file, &t.tenant_id)
    };
    (kept, true)
}
