//! Which tenant owns each phone number across a whole source.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Phone numbers claimed so far across the whole source, to enforce that
/// each number belongs to exactly one tenant.
///
/// An incremental publish keeps most tenants as the channel's snapshot
/// holds them: their numbers are read from its routes (the `kept` base)
/// and only the compiled tenants' claims are recorded here. Claims are
/// hashed, not ordered, and the routes merged in order at the end: at 1M
/// tenants, claiming all 3 million numbers one by one into a B-tree took
/// longer than the rest of a one-tenant publish.
#[derive(Debug, Default)]
pub struct PhoneIndex<'b> {
    owners: HashMap<Box<str>, Arc<str>>,
    base: Option<Base<'b>>,
}

/// The routes of the channel's snapshot, and the tenants whose routes
/// there stand (kept unchanged).
#[derive(Debug)]
struct Base<'b> {
    routes: &'b BTreeMap<String, String>,
    kept: &'b HashSet<&'b str>,
}

impl<'b> PhoneIndex<'b> {
    /// An index over `routes` (number → tenant, the channel's snapshot's),
    /// where the numbers of the `kept` tenants are claimed already.
    pub fn over(routes: &'b BTreeMap<String, String>, kept: &'b HashSet<&'b str>) -> Self {
        Self {
            owners: HashMap::new(),
            base: Some(Base { routes, kept }),
        }
    }

    /// Who holds `number` in the base, if a kept tenant does.
    fn kept_owner(&self, number: &str) -> Option<&'b str> {
        let base = self.base.as_ref()?;
        let owner = base.routes.get(number)?;
        base.kept.contains(owner.as_str()).then_some(owner.as_str())
    }

    /// Records that `tenant` claims `number`; returns the other owner if the
    /// number was already claimed.
    pub fn claim(&mut self, number: &str, tenant: &str) -> Option<String> {
        match self.owners.get(number) {
            Some(owner) if &**owner != tenant => Some(owner.to_string()),
            Some(_) => None,
            None => match self.kept_owner(number) {
                Some(owner) if owner != tenant => Some(owner.to_owned()),
                _ => {
                    self.owners.insert(number.into(), tenant.into());
                    None
                }
            },
        }
    }

    /// Gives up what `tenant` claimed of `numbers` (a tenant held back on
    /// its last published record claims that record's numbers instead).
    pub fn release(&mut self, tenant: &str, numbers: &[String]) {
        for n in numbers {
            if self
                .owners
                .get(n.as_str())
                .is_some_and(|owner| &**owner == tenant)
            {
                self.owners.remove(n.as_str());
            }
        }
    }

    /// Every number and its tenant, in number order: the kept tenants'
    /// routes of the base and the claims, merged (a claim first where
    /// both name a number).
    pub fn routes(&self) -> Vec<(&str, &str)> {
        let mut claims: Vec<(&str, &str)> = self.owners.iter().map(|(n, t)| (&**n, &**t)).collect();
        claims.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let Some(base) = &self.base else {
            return claims;
        };
        let kept = base
            .routes
            .iter()
            .filter(|(_, t)| base.kept.contains(t.as_str()))
            .map(|(n, t)| (n.as_str(), t.as_str()));
        let mut out = Vec::with_capacity(base.routes.len().max(claims.len()));
        let mut claims = claims.into_iter().peekable();
        for (n, t) in kept {
            while let Some(c) = claims.next_if(|c| c.0 <= n) {
                out.push(c);
            }
            if out.last().is_none_or(|last| last.0 != n) {
                out.push((n, t));
            }
        }
        out.extend(claims);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_over_the_kept_tenants_routes_merge_in_number_order() {
        let served: BTreeMap<String, String> = [
            ("+1001", "kept"),
            ("+1002", "changed"),
            ("+1003", "kept"),
            ("+1005", "changed"),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
        let kept: HashSet<&str> = ["kept"].into_iter().collect();
        let mut index = PhoneIndex::over(&served, &kept);
        // A kept tenant's number is taken, whoever asks first.
        assert_eq!(index.claim("+1003", "new").as_deref(), Some("kept"));
        // A compiled tenant's old numbers are free: "changed" gave up
        // +1005 and kept +1002; "new" takes +1005 and +1000.
        assert_eq!(index.claim("+1002", "changed"), None);
        assert_eq!(index.claim("+1005", "new"), None);
        assert_eq!(index.claim("+1000", "new"), None);
        assert_eq!(index.claim("+1000", "changed").as_deref(), Some("new"));
        // A kept tenant claiming its own number again (its canary is
        // compiled) is one route.
        assert_eq!(index.claim("+1001", "kept"), None);
        assert_eq!(
            index.routes(),
            vec![
                ("+1000", "new"),
                ("+1001", "kept"),
                ("+1002", "changed"),
                ("+1003", "kept"),
                ("+1005", "new"),
            ]
        );
        index.release("new", &["+1005".to_owned(), "+1003".to_owned()]);
        assert_eq!(index.routes().len(), 4);
    }

    #[test]
    fn without_a_base_the_first_claim_holds() {
        let mut index = PhoneIndex::default();
        assert_eq!(index.claim("+2", "b"), None);
        assert_eq!(index.claim("+1", "a"), None);
        assert_eq!(index.claim("+2", "a").as_deref(), Some("b"));
        assert_eq!(index.routes(), vec![("+1", "a"), ("+2", "b")]);
    }
}
