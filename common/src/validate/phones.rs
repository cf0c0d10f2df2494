//! Which tenant owns each phone number across a whole source.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Phone numbers claimed so far across the whole source, to enforce that
/// each number belongs to exactly one tenant.
///
/// An incremental publish keeps most tenants as the channel's snapshot
/// holds them: their numbers are read from its routes (the `kept` base)
/// and only the compiled tenants' claims are recorded here. Claims are
/// hashed, not ordered, and the routes merged in order at the end: at 1M
/// tenants, claiming all 3 million numbers one by one into a B-tree took
/// longer than the rest of a one-tenant publish. A number in E.164 form is
/// held as an integer and its claimant as an index into the names of the
/// claimants: a full build of 1M tenants held 3 million numbers and their
/// owners as strings, ~330 MB, now ~70 MB.
#[derive(Debug, Default)]
pub struct PhoneIndex<'b> {
    /// Claims of numbers in E.164 form ([`pack`]) → index into `names`.
    packed: HashMap<u64, usize>,
    /// Claims of any other number (validation refuses those) → the same.
    other: HashMap<Box<str>, usize>,
    /// The claimants, in the order they claimed (a tenant's consecutive
    /// claims share an entry).
    names: Vec<Box<str>>,
    base: Option<Base<'b>>,
}

/// The routes of the channel's snapshot, and the tenants whose routes
/// there stand (kept unchanged).
#[derive(Debug)]
struct Base<'b> {
    routes: &'b BTreeMap<String, String>,
    kept: &'b HashSet<&'b str>,
}

/// Digits an E.164 number has at most.
const E164_DIGITS: u32 = 15;

/// `+` and 1 to 15 digits, the first not 0 (E.164), as the integer the
/// digits spell: one number, one integer, and back ([`unpack`]).
fn pack(number: &str) -> Option<u64> {
    let digits = number.strip_prefix('+')?;
    let ok = (1..=E164_DIGITS as usize).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    if ok { digits.parse().ok() } else { None }
}

/// The number [`pack`] made `n` of, written into `out`.
fn unpack(n: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    // Writing to a String does not fail.
    let _ = write!(out, "+{n}");
}

/// A key ordering packed numbers as their strings order: the digits scaled
/// to 15 places, then the number of digits ("+10" before "+9", "+1"
/// before "+10").
fn string_order(n: u64) -> (u64, u32) {
    let digits = n.checked_ilog10().map_or(1, |l| l + 1);
    (n * 10u64.pow(E164_DIGITS - digits), digits)
}

impl<'b> PhoneIndex<'b> {
    /// An index over `routes` (number → tenant, the channel's snapshot's),
    /// where the numbers of the `kept` tenants are claimed already.
    pub fn over(routes: &'b BTreeMap<String, String>, kept: &'b HashSet<&'b str>) -> Self {
        Self {
            base: Some(Base { routes, kept }),
            ..Self::default()
        }
    }

    /// Who holds `number` in the base, if a kept tenant does.
    fn kept_owner(&self, number: &str) -> Option<&'b str> {
        let base = self.base.as_ref()?;
        let owner = base.routes.get(number)?;
        base.kept.contains(owner.as_str()).then_some(owner.as_str())
    }

    /// Who claimed `number`, as an index into `names`.
    fn claimant(&self, number: &str) -> Option<usize> {
        match pack(number) {
            Some(n) => self.packed.get(&n).copied(),
            None => self.other.get(number).copied(),
        }
    }

    /// Records that `tenant` claims `number`; returns the other owner if the
    /// number was already claimed.
    pub fn claim(&mut self, number: &str, tenant: &str) -> Option<String> {
        match self.claimant(number) {
            Some(i) if *self.names[i] != *tenant => Some(self.names[i].to_string()),
            Some(_) => None,
            None => match self.kept_owner(number) {
                Some(owner) if owner != tenant => Some(owner.to_owned()),
                _ => {
                    if self.names.last().is_none_or(|last| **last != *tenant) {
                        self.names.push(tenant.into());
                    }
                    let i = self.names.len() - 1;
                    match pack(number) {
                        Some(n) => self.packed.insert(n, i),
                        None => self.other.insert(number.into(), i),
                    };
                    None
                }
            },
        }
    }

    /// Gives up what `tenant` claimed of `numbers` (a tenant held back on
    /// its last published record claims that record's numbers instead).
    pub fn release(&mut self, tenant: &str, numbers: &[String]) {
        for n in numbers {
            if self.claimant(n).is_some_and(|i| *self.names[i] == *tenant) {
                match pack(n) {
                    Some(p) => self.packed.remove(&p),
                    None => self.other.remove(n.as_str()),
                };
            }
        }
    }

    /// Hands every number and its tenant to `route`, in number order: the
    /// kept tenants' routes of the base and the claims, merged (a claim
    /// first where both name a number).
    pub fn routes<E>(&self, mut route: impl FnMut(&str, &str) -> Result<(), E>) -> Result<(), E> {
        let mut claims = Claims::new(self);
        if let Some(base) = &self.base {
            let kept = base
                .routes
                .iter()
                .filter(|(_, t)| base.kept.contains(t.as_str()));
            for (n, t) in kept {
                let mut claimed = false;
                while let Some((c, owner)) = claims.peek().filter(|(c, _)| *c <= n.as_str()) {
                    route(c, owner)?;
                    claimed |= c == n;
                    claims.advance();
                }
                if !claimed {
                    route(n, t)?;
                }
            }
        }
        while let Some((c, owner)) = claims.peek() {
            route(c, owner)?;
            claims.advance();
        }
        Ok(())
    }
}

/// The claims of a [`PhoneIndex`] in number order: the packed numbers
/// (written back, one at a time, into `buf`) merged with the others.
struct Claims<'a> {
    packed: Vec<(u64, usize)>,
    p: usize,
    other: Vec<(&'a str, usize)>,
    o: usize,
    names: &'a [Box<str>],
    /// `packed[p]`'s number.
    buf: String,
}

impl<'a> Claims<'a> {
    fn new(index: &'a PhoneIndex<'_>) -> Self {
        let mut packed: Vec<(u64, usize)> = index.packed.iter().map(|(n, i)| (*n, *i)).collect();
        packed.sort_unstable_by_key(|(n, _)| string_order(*n));
        let mut other: Vec<(&str, usize)> = index.other.iter().map(|(n, i)| (&**n, *i)).collect();
        other.sort_unstable();
        let mut claims = Self {
            packed,
            p: 0,
            other,
            o: 0,
            names: &index.names,
            buf: String::new(),
        };
        claims.load();
        claims
    }

    fn load(&mut self) {
        if let Some((n, _)) = self.packed.get(self.p) {
            unpack(*n, &mut self.buf);
        }
    }

    /// Whether the next claim is the next packed one.
    fn packed_next(&self) -> Option<bool> {
        match (self.packed.get(self.p), self.other.get(self.o)) {
            (Some(_), Some((o, _))) => Some(self.buf.as_str() <= *o),
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (None, None) => None,
        }
    }

    /// The next claim's number and claimant.
    fn peek(&self) -> Option<(&str, &str)> {
        let (n, i) = if self.packed_next()? {
            (self.buf.as_str(), self.packed[self.p].1)
        } else {
            self.other[self.o]
        };
        Some((n, &self.names[i]))
    }

    /// Moves past the claim [`Self::peek`] shows.
    fn advance(&mut self) {
        match self.packed_next() {
            Some(true) => {
                self.p += 1;
                self.load();
            }
            Some(false) => self.o += 1,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(index: &PhoneIndex) -> Vec<(String, String)> {
        let mut out = Vec::new();
        index
            .routes(|n, t| {
                out.push((n.to_owned(), t.to_owned()));
                Ok::<(), ()>(())
            })
            .expect("routes");
        out
    }

    fn owned((n, t): (&str, &str)) -> (String, String) {
        (n.to_owned(), t.to_owned())
    }

    #[test]
    fn numbers_in_e164_form_pack_and_order_as_their_strings() {
        for n in ["+1", "+9", "+10", "+15551234567", "+999999999999999"] {
            let mut back = String::new();
            unpack(pack(n).expect(n), &mut back);
            assert_eq!(back, n);
        }
        for n in ["+", "+0", "+01", "1555", "+1555 1234", "+1234567890123456"] {
            assert_eq!(pack(n), None, "{n}");
        }
        let mut numbers = ["+9", "+10", "+1", "+100", "+19", "+2"];
        let mut packed: Vec<u64> = numbers.iter().map(|n| pack(n).expect("e164")).collect();
        packed.sort_by_key(|n| string_order(*n));
        numbers.sort();
        let mut buf = String::new();
        let back: Vec<String> = packed
            .into_iter()
            .map(|n| {
                unpack(n, &mut buf);
                buf.clone()
            })
            .collect();
        assert_eq!(back, numbers);
    }

    #[test]
    fn numbers_not_in_e164_form_are_claimed_and_merged_in_order_too() {
        let mut index = PhoneIndex::default();
        assert_eq!(index.claim("+2", "b"), None);
        assert_eq!(index.claim("+1 (555)", "a"), None);
        assert_eq!(index.claim("+10", "a"), None);
        assert_eq!(index.claim("+1 (555)", "b").as_deref(), Some("a"));
        assert_eq!(
            routes(&index),
            [("+1 (555)", "a"), ("+10", "a"), ("+2", "b")].map(owned)
        );
        index.release("a", &["+1 (555)".to_owned()]);
        assert_eq!(routes(&index), [("+10", "a"), ("+2", "b")].map(owned));
    }

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
            routes(&index),
            [
                ("+1000", "new"),
                ("+1001", "kept"),
                ("+1002", "changed"),
                ("+1003", "kept"),
                ("+1005", "new"),
            ]
            .map(owned)
        );
        index.release("new", &["+1005".to_owned(), "+1003".to_owned()]);
        assert_eq!(routes(&index).len(), 4);
    }

    #[test]
    fn without_a_base_the_first_claim_holds() {
        let mut index = PhoneIndex::default();
        assert_eq!(index.claim("+2", "b"), None);
        assert_eq!(index.claim("+1", "a"), None);
        assert_eq!(index.claim("+2", "a").as_deref(), Some("b"));
        assert_eq!(routes(&index), [("+1", "a"), ("+2", "b")].map(owned));
    }
}
