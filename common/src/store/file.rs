//! The embedded default store: a local directory with the store layout.
//!
//! Create-only puts write a temporary file and hard-link it into place, which
//! fails if the target exists. Conditional puts hold an advisory lock
//! (`flock`) on `<key>.lock`, compare the current content's hash with the
//! expected ETag, and rename a temporary file over the key. The kernel drops
//! the lock if the process dies, so a crash never leaves the store locked.

use crate::localfile::open_regular;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Fetched, ListPage, Object, ReadStore, StoreError, StoreUrl, WriteStore};
use crate::canonical::sha256_hex;
use crate::copy::copy_chunked;

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    url: StoreUrl,
    /// The directories this handle has swept of stale temporary files:
    /// once each is enough (a temporary file is stale after an hour), and
    /// sweeping before every write listed a directory of objects once an
    /// object (at 1M tenants, 88,000 writes into 256 directories).
    swept: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

/// The largest object a compare-and-swap compares (pointers are small).
const MAX_CURRENT_BYTES: u64 = 1 << 20;

/// Keys a page of [`WriteStore::list_page`] holds at most, as on S3.
const PAGE: usize = 1000;

impl FileStore {
    /// A store rooted at the absolute path `root` (created if missing).
    pub fn new(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref();
        let url = StoreUrl::File(root.to_owned());
        if !root.is_absolute() {
            return Err(StoreError::Unsupported {
                url,
                reason: "a file store's path must be absolute: file:///absolute/path",
            });
        }
        Ok(Self {
            url,
            root: root.to_owned(),
            swept: std::sync::Arc::default(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The error for `key` when the store directory itself is gone (an
    /// unmounted volume, a wrong path): not an empty store, which nobody
    /// should wait on or take for one.
    fn missing(&self, key: &str) -> StoreError {
        StoreError::io(
            key,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the store directory {} does not exist (an unmounted volume, or a wrong source?)",
                    self.root.display()
                ),
            ),
        )
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !ok {
            return Err(StoreError::InvalidKey {
                key: key.to_owned(),
            });
        }
        Ok(self.root.join(key))
    }

    /// Opens `key` for reading, refusing a file over `max_bytes` before
    /// reading any of it (callers still bound the read: the file may grow).
    fn open_bounded(&self, key: &str, max_bytes: u64) -> Result<File, StoreError> {
        // A writer's rename between the check and the open (a publish or a
        // refresh replacing the pointer) is the common case of a file
        // changing under the reader: read again, a few times.
        for _ in 0..4 {
            if let Some(f) = self.open_once(key, max_bytes)? {
                return Ok(f);
            }
        }
        Err(StoreError::io(
            key,
            io::Error::other(
                "kept changing while it was opened (replaced again and again, or a link swapped in)",
            ),
        ))
    }

    /// [`Self::open_bounded`] once: `None` if the file opened is not the
    /// one checked (replaced in between).
    fn open_once(&self, key: &str, max_bytes: u64) -> Result<Option<File>, StoreError> {
        let path = self.path(key)?;
        let transient = |source| StoreError::io(key, source);
        let target = self.check_regular(key, &path)?;
        // Non-blocking, and the type checked again on the open handle: a
        // FIFO swapped in after the check cannot block the reader.
        let f = open_regular(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound {
                key: key.to_owned(),
            },
            io::ErrorKind::InvalidInput => StoreError::Fatal {
                key: key.to_owned(),
                source: "is not a regular file; a file store holds regular files only".into(),
            },
            _ => transient(e),
        })?;
        let meta = f.metadata().map_err(transient)?;
        // The file opened is the one checked: a directory on the way
        // swapped for a link out of the store in between is refused.
        let checked = fs::metadata(&target).map_err(transient)?;
        {
            use std::os::unix::fs::MetadataExt;
            if (meta.dev(), meta.ino()) != (checked.dev(), checked.ino()) {
                return Ok(None);
            }
        }
        let size = meta.len();
        if size > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                size,
                limit: max_bytes,
            });
        }
        Ok(Some(f))
    }

    /// Refuses anything at `path` but a regular file inside the store: a
    /// FIFO would block the reader for ever, a device or a symlink out of
    /// the store (`/dev/zero`) would feed it bytes from elsewhere. Returns
    /// the file's resolved path.
    fn check_regular(&self, key: &str, path: &Path) -> Result<PathBuf, StoreError> {
        let refuse = |what: &str| StoreError::Fatal {
            key: key.to_owned(),
            source: format!("{what}; a file store holds regular files only").into(),
        };
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            // The store itself gone (an unmounted volume, a wrong path) is
            // not an empty store: nobody should wait for a publish.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.root.exists() => {
                return Err(self.missing(key));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    key: key.to_owned(),
                });
            }
            Err(e) => return Err(StoreError::io(key, e)),
        };
        // Resolved whole: the file itself or a directory on its way
        // (`snapshots/` a link elsewhere) may be a symbolic link.
        let target = fs::canonicalize(path).map_err(|e| StoreError::io(key, e))?;
        let root = fs::canonicalize(&self.root).map_err(|e| StoreError::io(key, e))?;
        if !target.starts_with(&root) {
            return Err(refuse(
                "is (or lies under) a symbolic link out of the store",
            ));
        }
        let meta = if meta.file_type().is_symlink() {
            fs::metadata(&target).map_err(|e| StoreError::io(key, e))?
        } else {
            meta
        };
        if !meta.file_type().is_file() {
            return Err(refuse(
                "is not a regular file (a FIFO, a device, a directory?)",
            ));
        }
        Ok(target)
    }

    /// Refuses a store whose `snapshots/`, `channels/` or `pins/` is a
    /// symbolic link out of it, or to nothing: what agents refuse to read
    /// is never written by a publisher command either (one rule on both
    /// sides), and a dangling link is not an empty directory.
    pub fn check_layout(&self) -> Result<(), StoreError> {
        // The layout's directories (the layout module, which builds on this
        // module, names them too).
        for dir in ["snapshots/", "channels/", "pins/", "objects/"] {
            let name = dir.trim_end_matches('/');
            let path = self.root.join(name);
            let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
            if !is_link {
                continue;
            }
            let fatal = |why: String| StoreError::Fatal {
                key: dir.to_owned(),
                source: format!("{}: {why}", path.display()).into(),
            };
            match self.inside(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                    return Err(fatal(OUTSIDE.to_owned()));
                }
                Err(e) => {
                    return Err(fatal(format!(
                        "is a symbolic link that leads nowhere ({e}); restore what it points to, or make it a directory"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Refuses a directory that resolves outside the store (`snapshots/` a
    /// link elsewhere): what agents refuse to read is never written
    /// through either.
    fn inside(&self, dir: &Path) -> io::Result<()> {
        let real = fs::canonicalize(dir)?;
        let root = fs::canonicalize(&self.root)?;
        if real.starts_with(&root) {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::InvalidInput, OUTSIDE))
        }
    }

    fn write_temp(&self, target: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
        let dir = target.parent().unwrap_or(&self.root);
        make_dir(dir)?;
        self.inside(dir)?;
        let first = self
            .swept
            .lock()
            .map(|mut swept| swept.insert(dir.to_owned()))
            .unwrap_or(true);
        if first {
            remove_stale_temps(dir);
        }
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), unique()));
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        // Store objects are public to the fleet (no secret is ever in one):
        // 0644 whatever the umask, or agents running as another user could
        // not read a pointer a refresh wrote.
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(tmp)
    }
}

/// Makes `dir` (and its parents) if missing, each made one 0755 whatever
/// the umask (the refresh unit's is 0077): agents running as another user
/// must be able to read the store.
pub fn make_dir(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_owned());
        at = d.parent();
    }
    fs::create_dir_all(dir)?;
    for d in missing {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// What a write through a link out of the store is refused with.
const OUTSIDE: &str = "lies under a symbolic link out of the store; a file store is read and written only inside its own directory (agents refuse to read through such a link too)";

/// A write refused because its directory leaves the store: fatal, not a
/// transient I/O error a retry mends.
fn outside(key: &str, e: io::Error) -> StoreError {
    if e.kind() == io::ErrorKind::InvalidInput {
        StoreError::Fatal {
            key: key.to_owned(),
            source: OUTSIDE.into(),
        }
    } else {
        StoreError::io(key, e)
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = File::open(dir)
    {
        let _ = d.sync_all();
    }
}

impl ReadStore for FileStore {
    fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The file store's ETag is the SHA-256 of the content, so a
    /// conditional read still reads the (small) file.
    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        let mut bytes = Vec::new();
        self.get_to(key, max_bytes, &mut bytes)?;
        let current = sha256_hex(&bytes);
        Ok(if Some(current.as_str()) == etag {
            Fetched::NotModified
        } else {
            Fetched::Object(Object {
                etag: current,
                bytes,
            })
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let mut f = self.open_bounded(key, u64::MAX)?;
        let transient = |source| StoreError::io(key, source);
        let len = range.end.saturating_sub(range.start);
        let size = f.metadata().map_err(transient)?.len();
        if range.end > size || range.start > range.end {
            return Err(StoreError::io(
                key,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("range {range:?} is outside the {size}-byte object"),
                ),
            ));
        }
        f.seek(SeekFrom::Start(range.start)).map_err(transient)?;
        let mut out = Vec::with_capacity(len as usize);
        f.take(len).read_to_end(&mut out).map_err(transient)?;
        if out.len() as u64 != len {
            return Err(StoreError::io(
                key,
                io::Error::new(io::ErrorKind::UnexpectedEof, "object shrank while read"),
            ));
        }
        Ok(out)
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        let f = self.open_bounded(key, max_bytes)?;
        let copied = copy_chunked(&mut f.take(max_bytes.saturating_add(1)), out)
            .map_err(|source| StoreError::io(key, source))?;
        if copied > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                size: copied,
                limit: max_bytes,
            });
        }
        Ok(copied)
    }
}

impl WriteStore for FileStore {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let transient = |source| StoreError::io(key, source);
        let tmp = self.write_temp(&path, bytes).map_err(|e| outside(key, e))?;
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&path);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            }),
            Err(e) => Err(transient(e)),
        }
    }

    fn put_if(
        &self,
        key: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let path = self.path(key)?;
        let transient = |source| StoreError::io(key, source);
        if let Some(dir) = path.parent() {
            make_dir(dir).map_err(transient)?;
            self.inside(dir).map_err(|e| outside(key, e))?;
        }
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".lock");
        // Never blocking on a FIFO and never following a link put in its
        // place: the lock must be a regular file of the store's own.
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
                .open(PathBuf::from(&lock_name))
                .map_err(|e| {
                    match e.raw_os_error() {
                        Some(libc::ELOOP) => StoreError::Fatal {
                            key: key.to_owned(),
                            source: "its lock file is a symbolic link; a file store holds regular files only".into(),
                        },
                        // A FIFO without a reader.
                        Some(libc::ENXIO) => StoreError::Fatal {
                            key: key.to_owned(),
                            source: "its lock file is not a regular file (a FIFO?); a file store holds regular files only".into(),
                        },
                        _ => transient(e),
                    }
                })?
        };
        if !lock.metadata().map_err(transient)?.file_type().is_file() {
            return Err(StoreError::Fatal {
                key: key.to_owned(),
                source: "its lock file is not a regular file (a FIFO?); a file store holds regular files only".into(),
            });
        }
        lock.lock().map_err(transient)?;
        // Read as every other read is: regular files only, never blocking
        // on a FIFO put in its place.
        let current = match self.get_if_changed(key, None, MAX_CURRENT_BYTES) {
            Ok(Fetched::Object(obj)) => Some(obj.etag),
            Ok(Fetched::NotModified) => None,
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if current.as_deref() != expected {
            return Err(StoreError::PreconditionFailed {
                key: key.to_owned(),
            });
        }
        let tmp = self.write_temp(&path, bytes).map_err(|e| outside(key, e))?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            transient(e)
        })?;
        sync_dir(&path);
        drop(lock);
        Ok(sha256_hex(bytes))
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError> {
        let mut keys = Vec::new();
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let dir = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        // A `snapshots/` linked out of the store (or to nothing) is
        // refused here as its objects are when read: one rule for listing,
        // reading and writing.
        self.check_layout()?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.root.exists() => {
                return Err(self.missing(prefix));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ListPage::default()),
            Err(source) => return Err(StoreError::io(prefix, source)),
        };
        let mut sizes = std::collections::HashMap::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Directories are not objects; anything else is listed, so that
            // a FIFO or a link at a key is met (and refused) by whoever
            // reads it, never skipped in silence (gc would not see a pin).
            if name.starts_with('.')
                || name.ends_with(".lock")
                || entry.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            let key = if dir_part.is_empty() {
                name
            } else {
                format!("{dir_part}/{name}")
            };
            if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                if let Ok(meta) = entry.metadata() {
                    sizes.insert(key.clone(), meta.len());
                }
                keys.push(key);
            }
        }
        keys.sort();
        let next = (keys.len() > PAGE).then(|| keys[PAGE - 1].clone());
        keys.truncate(PAGE);
        sizes.retain(|k, _| keys.binary_search(k).is_ok());
        Ok(ListPage { keys, next, sizes })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        if let Some(dir) = path.parent().filter(|d| d.exists()) {
            self.inside(dir).map_err(|e| outside(key, e))?;
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::io(key, source)),
        }
    }

    fn enforces_conditions_locally(&self) -> bool {
        true
    }
}

/// How long a temporary file may go unwritten before it counts as left by
/// a killed writer: far above the time to write one bundle, since another
/// publisher may be writing its own right now.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the temporary files (`.<name>.<pid>.<n>.tmp`) in `dir` that no
/// one has written for [`STALE_TEMP`]: what a publisher killed mid-write
/// leaves. Done before a handle's first write into `dir`; a failure only
/// leaves them for the next handle.
fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TEMP));
        if stale && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(
                file = %entry.path().display(),
                "removed a temporary file unwritten for over an hour (left by a killed publisher)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_writer_s_temporary_files_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path()).expect("store");
        let snapshots = dir.path().join("snapshots");
        fs::create_dir_all(&snapshots).expect("dir");
        let old = snapshots.join(".00000000000000000007.bundle.4242.1.tmp");
        let fresh = snapshots.join(".00000000000000000008.bundle.4343.1.tmp");
        fs::write(&old, b"half a bundle").expect("old temp");
        fs::write(&fresh, b"a bundle being written").expect("fresh temp");
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(two_hours_ago))
            .expect("age the old temp");
        store
            .put_new("snapshots/00000000000000000009.bundle", b"bundle")
            .expect("put");
        assert!(!old.exists(), "a killed publisher's temp file is removed");
        assert!(fresh.exists(), "one being written now is left alone");
    }

    #[test]
    fn copy_hashed_streams_with_the_size_limit_of_get() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path()).expect("store");
        store
            .put_new("snapshots/b.bundle", b"bundle bytes")
            .expect("put");
        let mut out = Vec::new();
        let copied =
            super::super::copy_hashed(&store, "snapshots/b.bundle", 12, &mut out).expect("copy");
        assert_eq!(out, b"bundle bytes");
        assert_eq!(copied.size, 12);
        assert_eq!(copied.sha256, sha256_hex(b"bundle bytes"));
        assert!(matches!(
            store.get_to("snapshots/b.bundle", 11, &mut Vec::new()),
            Err(StoreError::TooLarge { size: 12, .. })
        ));
        assert!(matches!(
            store.get_to("snapshots/none", 11, &mut Vec::new()),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn only_regular_files_inside_the_store_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path()).expect("store");
        store.put_new("snapshots/a.bundle", b"inside").expect("put");
        std::fs::create_dir_all(dir.path().join("channels")).expect("dir");
        let outside = tempfile::NamedTempFile::new().expect("outside file");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("channels/out.json"))
            .expect("symlink out");
        std::os::unix::fs::symlink(
            dir.path().join("snapshots/a.bundle"),
            dir.path().join("channels/in.json"),
        )
        .expect("symlink in");
        assert!(matches!(
            store.get("channels/out.json", 100),
            Err(StoreError::Fatal { .. })
        ));
        assert_eq!(
            store.get("channels/in.json", 100).expect("in").bytes,
            b"inside"
        );
        assert!(matches!(
            store.get("snapshots", 100),
            Err(StoreError::Fatal { .. })
        ));
        // A directory of the store that is a link out of it.
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        std::fs::write(elsewhere.path().join("eu-west-1.json"), b"{}").expect("file");
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("pins")).expect("symlink dir");
        assert!(matches!(
            store.get("pins/eu-west-1.json", 100),
            Err(StoreError::Fatal { .. })
        ));
        // A compare-and-swap over a FIFO is refused, not blocked on.
        let fifo = dir.path().join("channels/stable.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        assert!(matches!(
            store.put_if("channels/stable.json", b"x", None),
            Err(StoreError::Fatal { .. })
        ));
    }

    #[test]
    fn lists_page_by_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path()).expect("store");
        for i in 0..(PAGE + 5) {
            store
                .put_new(&format!("snapshots/{i:05}.bundle"), b"x")
                .expect("put");
        }
        let first = store.list_page("snapshots/", None).expect("page");
        assert_eq!(first.keys.len(), PAGE);
        let second = store
            .list_page("snapshots/", first.next.as_deref())
            .expect("page");
        assert_eq!(second.keys.len(), 5);
        assert!(second.next.is_none());
        let all = super::super::list(&store, "snapshots/").expect("list");
        assert_eq!(all.len(), PAGE + 5);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_lock_file_that_is_a_fifo_or_a_link_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path()).expect("store");
        std::fs::create_dir_all(dir.path().join("channels")).expect("mkdir");
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join("channels/stable.json.lock"))
            .status()
            .expect("mkfifo");
        assert!(made.success());
        assert!(matches!(
            store.put_if("channels/stable.json", b"p", None),
            Err(StoreError::Fatal { .. })
        ));
        let outside = tempfile::NamedTempFile::new().expect("outside");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("channels/canary.json.lock"))
            .expect("link");
        assert!(matches!(
            store.put_if("channels/canary.json", b"p", None),
            Err(StoreError::Fatal { .. })
        ));
    }

    #[test]
    fn nothing_is_written_through_a_link_out_of_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("snapshots")).expect("link");
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("channels")).expect("link");
        let store = FileStore::new(dir.path()).expect("store");
        assert!(matches!(
            store.put_new("snapshots/a.bundle", b"one"),
            Err(StoreError::Fatal { .. })
        ));
        assert!(matches!(
            store.put_if("channels/stable.json", b"p", None),
            Err(StoreError::Fatal { .. })
        ));
        assert!(matches!(
            store.delete("channels/stable.json"),
            Err(StoreError::Fatal { .. })
        ));
        assert!(matches!(
            store.list_page("snapshots/", None),
            Err(StoreError::Fatal { .. })
        ));
        assert!(matches!(
            store.check_layout(),
            Err(StoreError::Fatal { .. })
        ));
        // A link to nothing is not an empty directory.
        let dangling = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/nonexistent-strata", dangling.path().join("snapshots"))
            .expect("link");
        let store2 = FileStore::new(dangling.path()).expect("store");
        assert!(matches!(
            store2.list_page("snapshots/", None),
            Err(StoreError::Fatal { .. })
        ));
        let written: Vec<_> = std::fs::read_dir(elsewhere.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(written.is_empty(), "{written:?}");
    }

    #[test]
    fn put_new_never_overwrites_and_put_if_compares() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileStore::new(dir.path()).expect("store");
        store
            .put_new("snapshots/a.bundle", b"one")
            .expect("first put");
        assert!(matches!(
            store.put_new("snapshots/a.bundle", b"two"),
            Err(StoreError::AlreadyExists { .. })
        ));
        assert_eq!(
            store.get("snapshots/a.bundle", 10).expect("get").bytes,
            b"one"
        );

        let e1 = store
            .put_if("channels/stable.json", b"v1", None)
            .expect("create");
        assert!(matches!(
            store.put_if("channels/stable.json", b"v1b", None),
            Err(StoreError::PreconditionFailed { .. })
        ));
        store
            .put_if("channels/stable.json", b"v2", Some(&e1))
            .expect("swap");
        assert!(matches!(
            store.put_if("channels/stable.json", b"v3", Some(&e1)),
            Err(StoreError::PreconditionFailed { .. })
        ));
        assert_eq!(
            super::super::list(&store, "snapshots/").expect("list"),
            vec!["snapshots/a.bundle"]
        );
        assert_eq!(
            store.get_range("snapshots/a.bundle", 1..3).expect("range"),
            b"ne"
        );
        assert!(store.get_range("snapshots/a.bundle", 2..4).is_err());
        let etag = store.get("snapshots/a.bundle", 10).expect("get").etag;
        assert!(matches!(
            store.get_if_changed("snapshots/a.bundle", Some(&etag), 10),
            Ok(Fetched::NotModified)
        ));
        assert!(matches!(
            store.get_if_changed("snapshots/a.bundle", Some("other"), 10),
            Ok(Fetched::Object(o)) if o.bytes == b"one"
        ));
        assert!(matches!(
            store.get("snapshots/a.bundle", 2),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(matches!(
            store.get("nope", 2),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.get("../etc/passwd", 2),
            Err(StoreError::InvalidKey { .. })
        ));
    }
}
