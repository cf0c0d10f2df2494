//! The embedded default store: a local directory with the store layout.
//!
//! Create-only puts write a temporary file and hard-link it into place, which
//! fails if the target exists. Conditional puts hold an advisory lock
//! (`flock`) on `<key>.lock`, compare the current content's hash with the
//! expected ETag, and rename a temporary file over the key. The kernel drops
//! the lock if the process dies, so a crash never leaves the store locked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{Object, ObjectStore, StoreError};
use crate::canonical::sha256_hex;
use crate::copy::copy_chunked;

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    url: String,
}

impl FileStore {
    /// A store rooted at the absolute path `root` (created if missing).
    pub fn new(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref();
        if !root.is_absolute() {
            return Err(StoreError::Fatal(format!(
                "file store path {} is not absolute; write file:///absolute/path",
                root.display()
            )));
        }
        Ok(Self {
            url: format!("file://{}", root.display()),
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let ok = !key.is_empty()
            && !key.starts_with('/')
            && key
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if !ok {
            return Err(StoreError::Fatal(format!("invalid store key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// Opens `key` for reading, refusing a file over `max_bytes` before
    /// reading any of it (callers still bound the read: the file may grow).
    fn open_bounded(&self, key: &str, max_bytes: u64) -> Result<File, StoreError> {
        let path = self.path(key)?;
        let transient = |source| StoreError::Transient {
            key: key.to_owned(),
            source,
        };
        let f = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound {
                key: key.to_owned(),
            },
            _ => transient(e),
        })?;
        let size = f.metadata().map_err(transient)?.len();
        if size > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                size,
                limit: max_bytes,
            });
        }
        Ok(f)
    }

    fn write_temp(&self, target: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir)?;
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), unique()));
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(tmp)
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

impl ObjectStore for FileStore {
    fn url(&self) -> &str {
        &self.url
    }

    fn get(&self, key: &str, max_bytes: u64) -> Result<Object, StoreError> {
        let mut bytes = Vec::new();
        self.get_to(key, max_bytes, &mut bytes)?;
        Ok(Object {
            etag: sha256_hex(&bytes),
            bytes,
        })
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        let f = self.open_bounded(key, max_bytes)?;
        let copied =
            copy_chunked(&mut f.take(max_bytes.saturating_add(1)), out).map_err(|source| {
                StoreError::Transient {
                    key: key.to_owned(),
                    source,
                }
            })?;
        if copied > max_bytes {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                size: copied,
                limit: max_bytes,
            });
        }
        Ok(copied)
    }

    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let transient = |source| StoreError::Transient {
            key: key.to_owned(),
            source,
        };
        let tmp = self.write_temp(&path, bytes).map_err(transient)?;
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
        let transient = |source| StoreError::Transient {
            key: key.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(transient)?;
        }
        let mut lock_name = path.as_os_str().to_owned();
        lock_name.push(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(PathBuf::from(lock_name))
            .map_err(transient)?;
        lock.lock().map_err(transient)?;
        let current = match fs::read(&path) {
            Ok(b) => Some(sha256_hex(&b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(transient(e)),
        };
        if current.as_deref() != expected {
            return Err(StoreError::PreconditionFailed {
                key: key.to_owned(),
            });
        }
        let tmp = self.write_temp(&path, bytes).map_err(transient)?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            transient(e)
        })?;
        sync_dir(&path);
        drop(lock);
        Ok(sha256_hex(bytes))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let dir = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path(dir_part)?
        };
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(source) => {
                return Err(StoreError::Transient {
                    key: prefix.to_owned(),
                    source,
                });
            }
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') || name.ends_with(".lock") || !entry.path().is_file() {
                continue;
            }
            let key = if dir_part.is_empty() {
                name
            } else {
                format!("{dir_part}/{name}")
            };
            if key.starts_with(prefix) {
                out.push(key);
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Transient {
                key: key.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            store.list("snapshots/").expect("list"),
            vec!["snapshots/a.bundle"]
        );
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
            Err(StoreError::Fatal(_))
        ));
    }
}
