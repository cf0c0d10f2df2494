//! Which tenant owns each phone number across a whole source.

use std::collections::BTreeMap;

/// Phone numbers seen so far across the whole source, to enforce that each
/// number belongs to exactly one tenant.
#[derive(Debug, Default)]
pub struct PhoneIndex {
    owners: BTreeMap<String, String>,
}

impl PhoneIndex {
    /// Records that `tenant` claims `number`; returns the other owner if the
    /// number was already claimed.
    pub fn claim(&mut self, number: &str, tenant: &str) -> Option<String> {
        match self.owners.get(number) {
            Some(owner) if owner != tenant => Some(owner.clone()),
            Some(_) => None,
            None => {
                self.owners.insert(number.to_owned(), tenant.to_owned());
                None
            }
        }
    }

    /// Gives up what `tenant` claimed of `numbers` (a tenant held back on
    /// its last published record claims that record's numbers instead).
    pub fn release(&mut self, tenant: &str, numbers: &[String]) {
        for n in numbers {
            if self.owners.get(n).is_some_and(|owner| owner == tenant) {
                self.owners.remove(n);
            }
        }
    }

    /// Every number and its tenant, sorted by number.
    pub fn into_routes(self) -> BTreeMap<String, String> {
        self.owners
    }
}
