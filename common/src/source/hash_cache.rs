//! What each tenant file's bytes hashed to, by the file's status (device,
//! inode, size, modification and change times): an incremental publish
//! over a million tenant files reads only the files whose status changed,
//! not 5.7 GB, to learn which chunks it can keep. Git's index does the
//! same for `git status`.
//!
//! The cache is the publisher's own (a file under its cache directory per
//! source directory), never part of a snapshot. It only lets a file go
//! unread: a file whose status differs from its entry is read and hashed
//! again, and a damaged or foreign cache file is ignored whole.
//!
//! A write changes a file's change time to the clock's now, which no tool
//! can set back. An entry is kept only for a file whose times were already
//! [`SETTLED`] old when it was hashed, so a write after the hash (within
//! the file system's timestamp granularity) cannot leave the same status.

use std::borrow::Cow;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// How much older than the hash a file's times must be for its entry to be
/// kept: more than a file system's timestamp granularity and clock lag.
pub const SETTLED: Duration = Duration::from_secs(2);

/// The first line of a cache file; a different one is ignored.
const MAGIC: &[u8] = b"strata source hash cache 1\n";
/// An entry after its name: the status (7 words) and the SHA-256.
const FIXED: usize = 7 * 8 + 32;
/// The longest name kept (a tenant id is at most 63 bytes, a canary's key
/// a few more): what bounds a cache file's size by its entry count.
const MAX_NAME: usize = 255;

/// A file's status, as far as it tells whether the bytes changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
    ctime: i64,
    ctime_ns: i64,
}

impl Stamp {
    /// The stamp of `meta` (of the path, or of the opened file).
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        }
    }

    /// Whether both times lie [`SETTLED`] before `hashed_at`.
    fn settled(&self, hashed_at: SystemTime) -> bool {
        let Ok(now) = hashed_at.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let limit = now.saturating_sub(SETTLED);
        let at = |s: i64, ns: i64| match (u64::try_from(s), u32::try_from(ns)) {
            (Ok(s), Ok(ns)) => Duration::new(s, ns.min(999_999_999)),
            _ => Duration::MAX,
        };
        at(self.mtime, self.mtime_ns) < limit && at(self.ctime, self.ctime_ns) < limit
    }

    fn words(&self) -> [u64; 7] {
        [
            self.dev,
            self.ino,
            self.size,
            self.mtime as u64,
            self.mtime_ns as u64,
            self.ctime as u64,
            self.ctime_ns as u64,
        ]
    }
}

/// One file's entry: its tenant's id, status and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The tenant id (the file's stem), borrowed from the source's listing
    /// where it can be: a million owned names were ~48 MB at save.
    pub name: Cow<'a, [u8]>,
    /// Its status when it was hashed.
    pub stamp: Stamp,
    /// The SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// A loaded cache: the file's bytes and where each entry starts, by name.
#[derive(Debug, Default)]
pub struct HashCache {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

/// The cache file of the source rooted at `root` (canonical) under `dir`.
pub fn file_for(dir: &Path, root: &Path) -> PathBuf {
    let h = Sha256::digest(root.as_os_str().as_encoded_bytes());
    dir.join(format!("{}.hashes", hex::encode(&h[..8])))
}

impl HashCache {
    /// The cache of `root` under `dir`, for a source of `tenants` files:
    /// empty if there is none, or if it is damaged, of another version or
    /// another root. Read as every local input is (a regular file, without
    /// blocking, at most what `tenants` entries take).
    pub fn load(dir: &Path, root: &Path, tenants: usize) -> Self {
        let path = file_for(dir, root);
        let limit = (tenants as u64)
            .saturating_mul((2 + MAX_NAME + FIXED) as u64)
            .saturating_add((MAGIC.len() + 2 + root.as_os_str().len() + 32) as u64);
        let Ok(bytes) = crate::localfile::read(&path, limit) else {
            return Self::default();
        };
        Self::parse(bytes, root).unwrap_or_else(|| {
            tracing::debug!(file = %path.display(), "source hash cache ignored: damaged or not this source's");
            Self::default()
        })
    }

    fn parse(bytes: Vec<u8>, root: &Path) -> Option<Self> {
        let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if Sha256::digest(body).as_slice() != sum {
            return None;
        }
        let rest = body.strip_prefix(MAGIC)?;
        let (root_len, rest) = take_u16(rest)?;
        let (named, rest) = rest.split_at_checked(root_len)?;
        if named != root.as_os_str().as_encoded_bytes() {
            return None;
        }
        let mut at = body.len() - rest.len();
        let mut starts = Vec::new();
        while at < body.len() {
            starts.push(at);
            let (len, _) = take_u16(&body[at..])?;
            at = at.checked_add(2 + len + FIXED)?;
        }
        (at == body.len()).then_some(Self { bytes, starts })
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn entry(&self, start: usize) -> (&[u8], &[u8]) {
        let len = usize::from(u16::from_le_bytes([
            self.bytes[start],
            self.bytes[start + 1],
        ]));
        self.bytes[start + 2..start + 2 + len + FIXED].split_at(len)
    }

    /// The SHA-256 of tenant `name`'s file if its entry has status `stamp`.
    pub fn get(&self, name: &[u8], stamp: &Stamp) -> Option<[u8; 32]> {
        let i = self
            .starts
            .binary_search_by(|&s| self.entry(s).0.cmp(name))
            .ok()?;
        let (_, fixed) = self.entry(self.starts[i]);
        let words = stamp.words();
        let same = fixed[..56]
            .chunks_exact(8)
            .zip(words)
            .all(|(b, w)| b == w.to_le_bytes());
        same.then(|| fixed[56..].try_into().ok()).flatten()
    }
}

/// Writes the cache of `root` under `dir`: `entries` whose status was
/// settled at `hashed_at`, sorted by name. Written whole to a new file
/// renamed over the old, so a reader sees one or the other.
pub fn save(
    dir: &Path,
    root: &Path,
    mut entries: Vec<Entry<'_>>,
    hashed_at: SystemTime,
) -> io::Result<()> {
    entries.retain(|e| e.stamp.settled(hashed_at) && e.name.len() <= MAX_NAME);
    let path = file_for(dir, root);
    prune(dir, &path);
    if entries.is_empty() {
        // Nothing settled yet (a fresh checkout): no file to leave behind.
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.dedup_by(|a, b| a.name == b.name);
    let root_bytes = root.as_os_str().as_encoded_bytes();
    let root_len = u16::try_from(root_bytes.len())
        .map_err(|_| io::Error::other("the source's path is too long to cache"))?;
    // Whoever can write the cache can make an edit go unread: the
    // directory is its owner's alone.
    std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // Streamed, hashed as it goes: at 1M tenants the file is 115 MB.
    {
        let mut out = Summed {
            file: io::BufWriter::new(tmp.as_file_mut()),
            sum: Sha256::new(),
        };
        out.put(MAGIC)?;
        out.put(&root_len.to_le_bytes())?;
        out.put(root_bytes)?;
        for e in &entries {
            // Checked by the retain above.
            out.put(&(e.name.len() as u16).to_le_bytes())?;
            out.put(&e.name)?;
            for w in e.stamp.words() {
                out.put(&w.to_le_bytes())?;
            }
            out.put(&e.sha256)?;
        }
        let sum = std::mem::take(&mut out.sum).finalize();
        io::Write::write_all(&mut out.file, &sum)?;
        io::Write::flush(&mut out.file)?;
    }
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// A writer that hashes what it writes (the cache file's trailing SHA-256).
struct Summed<W> {
    file: W,
    sum: Sha256,
}

impl<W: io::Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sum.update(bytes);
        self.file.write_all(bytes)
    }
}

/// Removes the cache files under `dir` (other than `keep`) of source
/// directories that no longer exist: a removed checkout's cache would
/// otherwise stay forever.
fn prune(dir: &Path, keep: &Path) {
    let Ok(list) = fs::read_dir(dir) else {
        return;
    };
    for entry in list.flatten() {
        let path = entry.path();
        // A save killed half way leaves its temporary file (`.tmp…`).
        let stale = entry.file_name().as_encoded_bytes().starts_with(b".tmp")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3600)));
        if stale {
            let _ = fs::remove_file(&path);
            continue;
        }
        if path == keep || path.extension().is_none_or(|e| e != "hashes") {
            continue;
        }
        let mut head = vec![0u8; MAGIC.len() + 2 + usize::from(u16::MAX)];
        let Ok(n) = crate::localfile::open_regular(&path)
            .and_then(|mut f| io::Read::read(&mut f, &mut head))
        else {
            continue;
        };
        let gone = head[..n]
            .strip_prefix(MAGIC)
            .and_then(take_u16)
            .and_then(|(len, rest)| rest.get(..len))
            .map(|root| {
                let root = Path::new(std::ffi::OsStr::from_bytes(root));
                root.is_absolute() && !root.exists()
            });
        if gone == Some(true) {
            let _ = fs::remove_file(&path);
        }
    }
}

fn take_u16(b: &[u8]) -> Option<(usize, &[u8])> {
    let (n, rest) = b.split_at_checked(2)?;
    Some((usize::from(u16::from_le_bytes([n[0], n[1]])), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A time well after the files of a test were written: as if they
    /// were hashed by a publish some seconds later.
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(10)
    }

    fn entry(dir: &Path, id: &str, text: &str) -> Entry<'static> {
        let path = dir.join(format!("{id}.toml"));
        fs::write(&path, text).expect("write");
        Entry {
            name: id.as_bytes().to_vec().into(),
            stamp: Stamp::of(&fs::metadata(&path).expect("stat")),
            sha256: Sha256::digest(text).into(),
        }
    }

    fn stamp(dir: &Path, id: &str) -> Stamp {
        Stamp::of(&fs::metadata(dir.join(format!("{id}.toml"))).expect("stat"))
    }

    #[test]
    fn a_file_is_known_until_its_status_changes() {
        let src = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let root = src.path();
        let entries = vec![entry(root, "b", "two"), entry(root, "a", "one")];
        save(cache.path(), root, entries.clone(), later()).expect("test");
        let loaded = HashCache::load(cache.path(), root, 10);
        assert_eq!(loaded.len(), 2);
        for e in &entries {
            assert_eq!(
                loaded.get(
                    &e.name,
                    &stamp(root, std::str::from_utf8(&e.name).expect("test"))
                ),
                Some(e.sha256)
            );
        }
        // Rewritten with another size; replaced by a file of the same size
        // (a new inode, as an editor's save or a checkout makes).
        fs::write(root.join("a.toml"), "one more").expect("test");
        let tmp = root.join("b.tmp");
        fs::write(&tmp, "owt").expect("test");
        fs::rename(&tmp, root.join("b.toml")).expect("test");
        assert_eq!(loaded.get(b"a", &stamp(root, "a")), None);
        assert_eq!(loaded.get(b"b", &stamp(root, "b")), None);
        assert_eq!(loaded.get(b"c", &stamp(root, "b")), None, "no entry");
    }

    #[test]
    fn a_file_written_just_before_the_hash_is_not_kept() {
        let src = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let root = src.path();
        let old = entry(root, "old", "x");
        let fresh = entry(root, "fresh", "y");
        // Hashed now: both were written within SETTLED of it, so a write
        // after the hash could leave the same status. Nothing is kept, and
        // no file is left behind.
        save(
            cache.path(),
            root,
            vec![old.clone(), fresh.clone()],
            SystemTime::now(),
        )
        .expect("test");
        assert!(!file_for(cache.path(), root).exists());
        // One settled, one not: only the settled one is kept.
        let settled_at = SystemTime::now() + SETTLED + Duration::from_secs(1);
        let mut fresh_now = fresh.clone();
        fresh_now.stamp.ctime = i64::try_from(
            settled_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("test")
                .as_secs(),
        )
        .expect("test");
        save(cache.path(), root, vec![old.clone(), fresh_now], settled_at).expect("test");
        let loaded = HashCache::load(cache.path(), root, 10);
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.get(b"old", &old.stamp), Some(old.sha256));
    }

    #[test]
    fn a_damaged_or_foreign_cache_is_ignored_whole() {
        let src = tempfile::tempdir().expect("tempdir");
        let other = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let root = src.path();
        let e = entry(root, "a", "one");
        save(cache.path(), root, vec![e.clone()], later()).expect("test");
        let path = file_for(cache.path(), root);
        let good = fs::read(&path).expect("test");
        // Another source's cache under this one's name.
        fs::copy(&path, file_for(cache.path(), other.path())).expect("test");
        assert!(HashCache::load(cache.path(), other.path(), 10).is_empty());
        // One bit flipped anywhere, or cut short: ignored.
        for at in [0, MAGIC.len() + 3, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            fs::write(&path, &bad).expect("test");
            assert!(
                HashCache::load(cache.path(), root, 10).is_empty(),
                "flip at {at}"
            );
        }
        fs::write(&path, &good[..good.len() - 40]).expect("test");
        assert!(HashCache::load(cache.path(), root, 10).is_empty());
        fs::write(&path, b"").expect("test");
        assert!(HashCache::load(cache.path(), root, 10).is_empty());
        fs::write(&path, &good).expect("test");
        assert_eq!(
            HashCache::load(cache.path(), root, 10).get(b"a", &e.stamp),
            Some(e.sha256)
        );
    }

    #[test]
    fn a_fifo_or_an_oversized_file_in_its_place_is_not_read() {
        let src = tempfile::tempdir().expect("tempdir");
        let cache = tempfile::tempdir().expect("tempdir");
        let root = src.path();
        let path = file_for(cache.path(), root);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        // Nothing opens the FIFO for writing: a blocking open would hang.
        assert!(HashCache::load(cache.path(), root, 10).is_empty());
        let e = entry(root, "a", "one");
        save(cache.path(), root, vec![e.clone()], later()).expect("save over it");
        assert_eq!(HashCache::load(cache.path(), root, 1).len(), 1);
        // A cache larger than the source's tenants can fill is not read.
        let big: Vec<Entry> = (0..100)
            .map(|i| Entry {
                name: format!("t{i:03}").into_bytes().into(),
                ..e.clone()
            })
            .collect();
        save(cache.path(), root, big, later()).expect("save");
        assert_eq!(HashCache::load(cache.path(), root, 100).len(), 100);
        assert!(HashCache::load(cache.path(), root, 0).is_empty());
    }

    #[test]
    fn the_cache_of_a_removed_source_is_removed_by_the_next_save() {
        let cache = tempfile::tempdir().expect("tempdir");
        let gone = tempfile::tempdir().expect("tempdir");
        let kept = tempfile::tempdir().expect("tempdir");
        let e = entry(gone.path(), "a", "one");
        save(cache.path(), gone.path(), vec![e.clone()], later()).expect("test");
        let gone_file = file_for(cache.path(), gone.path());
        let gone_root = gone.path().to_owned();
        drop(gone);
        assert!(gone_file.exists() && !gone_root.exists());
        let e = entry(kept.path(), "a", "one");
        save(cache.path(), kept.path(), vec![e], later()).expect("test");
        assert!(!gone_file.exists());
        assert!(file_for(cache.path(), kept.path()).exists());
    }
}
