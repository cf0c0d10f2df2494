//! The checks a publish makes against the snapshot the channel serves,
//! shared by `publish` (asked again about every head it would move past)
//! and `validate --store` (so that a pull request fails, not the merge):
//! each tenant's version discipline, and no mass removal unless allowed.

use std::path::Path;

use strata_common::channel::PublishError;
use strata_common::compile::Compiled;
use strata_common::pointer::Pointer;
use strata_common::sign::TrustedKeys;
use strata_common::store::WriteStore;
use strata_common::versions;

/// How many removed tenants a refusal names, after its summary.
const NAMES_SHOWN: usize = 20;

/// Checks `compiled` (from the source in `dir`) against the snapshot `head`
/// names: problems and a refused mass removal are printed (summary first)
/// and returned as a refusal; a served bundle that is gone or damaged is
/// published over only when allowed (its signed tenant count still guards
/// removals).
pub(crate) fn check_against_head(
    store: &dyn WriteStore,
    head: &Pointer,
    trust: &TrustedKeys,
    compiled: &Compiled,
    dir: &Path,
    allow: Allow,
) -> Result<(), PublishError> {
    check_versions(store, head, trust, compiled, dir, allow)?;
    check_rollforward(store, head, trust, compiled, dir, allow.rollforward)
}

/// What a publish is allowed that the guards refuse by default.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Allow {
    /// Removing more than 10 % of the channel's tenants.
    pub(crate) removals: bool,
    /// Giving tenants back what a rollback took back.
    pub(crate) rollforward: bool,
    /// Publishing over a served snapshot too damaged to compare with.
    pub(crate) damaged: bool,
    /// Lowered tenant versions (a database source: the platform moved
    /// `is_active` back to an older row, its rollback).
    pub(crate) lower_versions: bool,
}

/// After a rollback (the channel's head is one), refuses a publish that
/// gives tenants back the content the rollback took back, unless allowed.
fn check_rollforward(
    store: &dyn WriteStore,
    head: &Pointer,
    trust: &TrustedKeys,
    compiled: &Compiled,
    dir: &Path,
    allow: bool,
) -> Result<(), PublishError> {
    use strata_common::rollforward::{self, Rollforward};
    let (marker, back, gone) = match rollforward::check(store, head, trust, compiled) {
        Ok(Rollforward::NotRolledBack) => return Ok(()),
        Ok(Rollforward::Unreadable(why)) => {
            note!(
                "warning: the channel's rollback marker cannot be used ({why}): not checked whether this publish undoes a rollback"
            );
            return Ok(());
        }
        Ok(Rollforward::Checked { marker, back, gone }) => (marker, back, gone),
        Err(e) => {
            note!("warning: not checked whether this publish undoes the channel's rollback ({e})");
            return Ok(());
        }
    };
    for v in &gone {
        note!(
            "warning: channel {} was rolled back from version {v}, whose bundle is gone: what this publish brings back of it is not checked",
            marker.channel
        );
    }
    let count: usize = back.iter().map(|(_, names)| names.len()).sum();
    if count == 0 {
        return Ok(());
    }
    if allow {
        note!(
            "note: {count} tenant(s) (or Layer 1) get back content that the rollback to {} took back (--allow-rollforward)",
            marker.to
        );
        return Ok(());
    }
    let _ = out!(
        "{}: this publish gives {count} tenant(s) (or Layer 1) back content that `rollback --to {}` (version {}) took back; they are:",
        dir.display(),
        marker.to,
        marker.version
    );
    let mut shown = 0;
    for (version, names) in &back {
        for name in names {
            if shown < NAMES_SHOWN {
                let what = if name == rollforward::LAYER1 {
                    name.clone()
                } else {
                    format!("tenant {name}")
                };
                let _ = out!("{}: {what}: as in version {version}", dir.display());
            }
            shown += 1;
        }
    }
    if shown > NAMES_SHOWN {
        let _ = out!("{}: … and {} more", dir.display(), shown - NAMES_SHOWN);
    }
    Err(PublishError::Refused(format!(
        "{}: {count} tenant(s) (or Layer 1) would be rolled forward again; nothing was published. Fix or revert them in the source, or publish with --allow-rollforward if the fix is in",
        dir.display()
    )))
}

/// Each tenant's version discipline, and no mass removal unless allowed.
fn check_versions(
    store: &dyn WriteStore,
    head: &Pointer,
    trust: &TrustedKeys,
    compiled: &Compiled,
    dir: &Path,
    allow: Allow,
) -> Result<(), PublishError> {
    match versions::check_against(store, head, trust, compiled, dir, allow.lower_versions) {
        Ok(c) if !c.problems.is_empty() => {
            for p in &c.problems {
                // The refusal is the error either way.
                let _ = out!("{p}");
            }
            Err(PublishError::Refused(format!(
                "{}: {} tenant version problem(s) against the channel's snapshot (version {}); nothing was published. Raise those versions and publish again",
                dir.display(),
                c.problems.len(),
                head.version
            )))
        }
        Ok(c) if c.is_mass_removal() && !allow.removals => {
            // The summary first, then the names (a log cut short keeps the
            // part that matters).
            let _ = out!(
                "{}: this publish removes {} of the {} tenants channel {} serves (version {}); they are:",
                dir.display(),
                c.removed.len(),
                c.served_tenants,
                head.name,
                head.version
            );
            for id in c.removed.iter().take(NAMES_SHOWN) {
                let _ = out!(
                    "{}: tenant {id}: served by version {}, not in this source",
                    dir.display(),
                    head.version
                );
            }
            if c.removed.len() > NAMES_SHOWN {
                let _ = out!(
                    "{}: … and {} more",
                    dir.display(),
                    c.removed.len() - NAMES_SHOWN
                );
            }
            Err(PublishError::Refused(format!(
                "{}: {} of {} tenants would be removed; nothing was published. \
                 Check --source (a wrong or empty directory, tenant files not named *.toml); if the removals are meant, publish again with --allow-removals",
                dir.display(),
                c.removed.len(),
                c.served_tenants,
            )))
        }
        Ok(c) => {
            // Removals go through: each is named, so a log says which.
            for id in &c.removed {
                note!(
                    "note: tenant {id} (served by version {}) is removed",
                    head.version
                );
            }
            Ok(())
        }
        // A served bundle that is gone or damaged cannot be compared
        // tenant by tenant. The removal guard still holds (the signed
        // pointer carries the count); the version guard cannot run, and
        // that is no longer passed over with a warning: the operator says
        // so (--allow-damaged), having checked the source. A store or disk
        // that failed this time is no reason to skip anything: try again.
        Err(e) if e.is_damage() => {
            // `head` is verified (the publish read it with its trust).
            let served = strata_common::operator::tenant_count(store, head);
            if let Some(served) = served
                && versions::is_mass_removal(served.saturating_sub(compiled.tenant_count), served)
                && !allow.removals
            {
                return Err(PublishError::Refused(format!(
                    "{}: this source has {} tenant(s), the channel's snapshot (version {}) {served}; its bundle cannot be compared tenant by tenant ({e}), and nothing was published. \
                     Check --source; if the removals are meant, publish again with --allow-removals",
                    dir.display(),
                    compiled.tenant_count,
                    head.version
                )));
            }
            if !allow.damaged {
                return Err(PublishError::Refused(format!(
                    "{}: the channel's snapshot (version {}) is damaged ({e}), so this source's tenant versions cannot be checked against it; nothing was published. \
                     Agents keep serving what they hold. If this source is what the channel should serve (check its versions), publish again with --allow-damaged: it replaces the damaged snapshot{}",
                    dir.display(),
                    head.version,
                    if served.is_some() {
                        " (the removal guard still holds: the signed pointer gives the tenant count)"
                    } else {
                        ""
                    }
                )));
            }
            note!(
                "warning: tenant versions not checked against the channel's snapshot, which is damaged ({e}); publishing over it (--allow-damaged)"
            );
            Ok(())
        }
        Err(e) => Err(PublishError::Refused(format!(
            "{}: the channel's snapshot (version {}) could not be read to check this publish against ({e}); nothing was published. Try again",
            dir.display(),
            head.version
        ))),
    }
}

/// Refuses a publish compiled against other rollback holds than `head`
/// has (another publisher rolled a tenant back meanwhile: this build would
/// undo it), or when `head`'s holds cannot be read (unless `damaged`).
pub fn same_holds(
    store: &dyn strata_common::store::ReadStore,
    head: &Pointer,
    trust: &TrustedKeys,
    compiled_with: &std::collections::BTreeMap<String, strata_common::bundle::Hold>,
    damaged: bool,
) -> Result<(), PublishError> {
    let now = match strata_common::bundle::signed_manifest(store, &head.bundle, head.version, trust)
    {
        Ok(m) => m.held,
        Err(_) if damaged => return Ok(()),
        Err(e) => {
            return Err(PublishError::Refused(format!(
                "cannot read which tenants a rollback holds back in snapshot {} ({e}); nothing was published. Try again, or pass --allow-damaged to publish over a damaged snapshot",
                head.version
            )));
        }
    };
    if &now != compiled_with {
        return Err(PublishError::Refused(format!(
            "snapshot {} holds other tenants back by rollback than this build was compiled against (a rollback ran meanwhile); nothing was published: publish again",
            head.version
        )));
    }
    Ok(())
}
