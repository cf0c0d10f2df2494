//! Which document decides the version served, in the order they win: the
//! node's local pin, its region's pin, the channel pointer; and the marks
//! following one moves (the pin replay floor, the high-water mark).

use strata_common::canonical::sha256_hex;
use strata_common::pointer::PointerKind;
use strata_common::verify::{self, Named, VersionDoc};
use tracing::{info, warn};

use super::{CheckError, Syncer};
use crate::db::Marks;
use crate::state::{Followed, FollowedBy};

/// The most of `pin_file` read: a version number and a line break.
const MAX_PIN_BYTES: u64 = 64;

/// The document a check follows, as read.
pub(super) enum Doc {
    /// The node's local pin: a version.
    Local(u64),
    /// The region's pin file.
    Pin(Vec<u8>),
    /// The channel pointer file.
    Channel(Vec<u8>),
}

impl Doc {
    /// The document, as the verification pipeline takes it.
    pub(super) fn version_doc(&self) -> VersionDoc<'_> {
        match self {
            Doc::Local(v) => VersionDoc::Local(*v),
            Doc::Pin(b) => VersionDoc::Pin(b),
            Doc::Channel(b) => VersionDoc::Channel(b),
        }
    }

    /// What the refusal cache keys on: every document the decision used
    /// (a pin decides alone; without one, the channel pointer does).
    pub(super) fn cache_key(&self) -> String {
        match self {
            Doc::Local(v) => format!("local:{v}"),
            Doc::Pin(b) => format!("pin:{}", sha256_hex(b)),
            Doc::Channel(b) => format!("channel:{}", sha256_hex(b)),
        }
    }
}

impl Syncer {
    /// The marks as the snapshot file holds them (a file that cannot be
    /// read refuses the check: the marks guard against rollbacks).
    pub(super) fn marks(&self) -> Result<Marks, CheckError> {
        self.db.marks().map_err(|e| CheckError::LocalStore {
            path: self.db.path().display().to_string(),
            reason: format!("reading the rollback-protection marks: {e}"),
        })
    }

    /// The version `pin_file` names, if the file exists.
    fn local_pin(&self) -> Result<Option<u64>, CheckError> {
        let Some(path) = &self.pin_file else {
            return Ok(None);
        };
        let refused = |reason: String| CheckError::LocalPin {
            path: path.display().to_string(),
            reason,
        };
        // As every local input is read: regular files only, non-blocking
        // (a FIFO must not hang the check), a few bytes at most.
        let text = match strata_common::localfile::read_text(path, MAX_PIN_BYTES) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refused(e.to_string())),
        };
        match text.trim().parse::<u64>() {
            Ok(v) if v >= 1 => Ok(Some(v)),
            _ => Err(refused(format!(
                "holds {:?}, not a snapshot version",
                text.trim()
            ))),
        }
    }

    /// Reads the deciding document: the local pin, else the region's pin,
    /// else the channel pointer. A region's signed unpin ends its pin: the
    /// replay floor moves past it, so that pin cannot come back. A pin
    /// file that merely disappeared (a keyless writer, a mirror's passing
    /// 404) does not: the last verified pin is kept until it expires.
    pub(super) fn read_doc(&mut self) -> Result<Doc, CheckError> {
        if let Some(v) = self.local_pin()? {
            return Ok(Doc::Local(v));
        }
        // Now and then read both documents whole: a mirror or proxy that
        // answers 304 to every conditional GET would otherwise keep this
        // node on an old version while it reports fresh.
        let whole = self
            .last_whole_read
            .is_none_or(|at| at.elapsed() >= self.whole_read_every);
        if whole {
            self.seen_pin = None;
            self.seen_pointer = None;
            self.pin_read = false;
        }
        // With push connected, the poll timer's check is the safety net for
        // a lost message: it reads one document, the pin and the pointer in
        // turn (each every two polls), so an idle node costs the origin one
        // request a poll. Push, store events, operators and the periodic
        // whole read still read both.
        let push_up = self.shared.status().notify == Some("connected");
        let light = self.timer_poll && push_up && self.pin_read && self.seen_pointer.is_some();
        let pin_turn = light.then(|| {
            self.light_turn = !self.light_turn;
            self.light_turn
        });
        let pin = if pin_turn == Some(false) {
            self.seen_pin.clone()
        } else {
            verify::read_document(
                self.store.as_ref(),
                PointerKind::Pin,
                &self.region,
                self.seen_pin.as_ref(),
            )?
        };
        self.seen_pin = pin.clone();
        self.pin_read = true;
        let marks = self.marks()?;
        match pin {
            Some(pin) if verify::is_unpin(&pin.bytes) => {
                let unpin = self.check_unpin(&pin.bytes, &marks)?;
                // The floor moves to the unpin (pins signed before it are
                // replays); the unpin itself stays acceptable.
                if marks.pin_seen.is_some() || marks.pin_floor < unpin {
                    self.set_pin_marks(&marks, unpin, None);
                    info!(region = %self.region, "region unpinned; following the channel again");
                }
            }
            Some(pin) => {
                if whole {
                    self.last_whole_read = Some(std::time::Instant::now());
                }
                return Ok(Doc::Pin(pin.bytes));
            }
            None => {
                if marks.pin_seen.is_some()
                    && let Some(kept) = self.kept_pin()
                {
                    return Ok(Doc::Pin(kept));
                }
                if let Some(seen) = marks.pin_seen {
                    // Expired, or never recorded: nothing holds it.
                    self.set_pin_marks(&marks, seen.saturating_add(1), None);
                    info!(region = %self.region, "region pin gone and expired; following the channel again");
                }
            }
        }
        let seen = match (pin_turn, &self.seen_pointer) {
            (Some(true), Some(kept)) => kept.clone(),
            _ => verify::read_pointer(
                self.store.as_ref(),
                &self.channel,
                self.seen_pointer.as_ref(),
            )?,
        };
        let bytes = seen.bytes.clone();
        self.seen_pointer = Some(seen);
        if whole {
            self.last_whole_read = Some(std::time::Instant::now());
        }
        Ok(Doc::Channel(bytes))
    }

    /// The region's unpin verified (operator keys, not a replay): when it
    /// was signed, in seconds since the epoch.
    fn check_unpin(&self, bytes: &[u8], marks: &Marks) -> Result<u64, CheckError> {
        let policy = verify::Policy {
            trust: &self.trust,
            channel: &self.channel,
            region: &self.region,
            limits: self.limits,
            now: strata_common::time::now(),
            served: None,
            retained: &[],
            high_water: marks.high_water,
            pin_floor: marks.pin_floor,
        };
        let key = PointerKind::Unpin.store_key(&self.region);
        let unpin = verify::check_unpin(bytes, &policy, &key)?;
        Ok(verify::signed_at(&unpin))
    }

    /// The pin this node followed, as verified, while it has not expired:
    /// what a pin file that disappeared from the store leaves in force
    /// (said once per disappearance).
    fn kept_pin(&mut self) -> Option<Vec<u8>> {
        let bytes = self.db.pin_doc().ok()??;
        let pin = strata_common::pointer::Pointer::parse_unverified(&bytes).ok()?;
        pin.check_expiry(strata_common::time::now()).ok()?;
        if !self.pin_gone_said {
            warn!(
                region = %self.region,
                version = pin.version,
                expires_at = %pin.expires_at,
                "the region's pin file is gone from the store; keeping the last verified pin until it expires (only a signed unpin, `strata-publisher unpin`, ends a pin)"
            );
            self.pin_gone_said = true;
        }
        Some(bytes)
    }

    /// Commits new pin marks, never lowering the floor (logging a failure:
    /// they are protection, not what is served).
    fn set_pin_marks(&mut self, marks: &Marks, floor: u64, seen: Option<(u64, &[u8])>) {
        if let Err(e) = self.db.set_pin_marks(floor.max(marks.pin_floor), seen) {
            warn!("cannot record the region pin in the snapshot file: {e}");
            self.db_write_failed();
        }
    }

    /// Records the document now followed: for `/v1/snapshot`, a region
    /// pin's signing time as the replay floor, and a channel pointer's
    /// version as the high-water mark (if an apply's commit did not
    /// already raise it).
    pub(super) fn follow(&mut self, named: &Named) {
        match self.marks() {
            Ok(marks) => {
                if let Named::Pin(pin) = named {
                    let at = verify::signed_at(pin);
                    // The file as verified, kept in case it disappears.
                    let bytes = self.seen_pin.as_ref().map(|d| d.bytes.clone());
                    if marks.pin_seen != Some(at)
                        && let Some(bytes) = bytes
                    {
                        self.set_pin_marks(&marks, at, Some((at, &bytes)));
                    }
                    if self.seen_pin.is_some() {
                        self.pin_gone_said = false;
                    }
                }
                if let Named::Channel(p) = named
                    && p.version > marks.high_water
                {
                    // Committed before it counts: a restart must not forget it.
                    if let Err(e) = self.db.raise_high_water(p.version) {
                        warn!("cannot record the high-water mark in the snapshot file: {e}");
                        self.db_write_failed();
                    }
                }
            }
            Err(e) => warn!("{e}"),
        }
        let followed = Followed {
            by: match named {
                Named::Channel(_) => FollowedBy::Channel,
                Named::Pin(_) => FollowedBy::Pin,
                Named::Local(_) => FollowedBy::LocalPin,
            },
            version: named.version(),
            created_at: named.pointer().map(|p| p.created_at.clone()),
            expires_at: named.pointer().map(|p| p.expires_at.clone()),
            in_store: !matches!(named, Named::Pin(_)) || self.seen_pin.is_some(),
        };
        self.shared.status().followed = Some(followed);
    }
}
