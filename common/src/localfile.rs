//! Reading a local input file the one way every input is read: regular
//! files only, opened non-blocking (a FIFO or a device at the path never
//! blocks or streams a read), at most a limit of bytes, and once (a file
//! that changed size while it was read is refused, not half-used).
//!
//! The agent's config and key files, a publisher's source files and keys,
//! and a node's local pin all come through here.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest agent.toml read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The largest PEM key file read.
pub const MAX_KEY_BYTES: u64 = 64 << 10;
/// The largest `layer1.toml` read.
pub const MAX_LAYER1_BYTES: u64 = 4 << 20;

/// Opens `path` for reading if it is a regular file (following links),
/// non-blocking: a FIFO, a socket or a device is refused without waiting
/// for a writer.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_with_status(path).map(|(f, _)| f)
}

/// [`open_regular`], with the status it checked (one `fstat` a read).
fn open_regular_with_status(path: &Path) -> io::Result<(File, std::fs::Metadata)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if meta.file_type().is_file() {
        Ok((f, meta))
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory is never read)",
        ))
    }
}

/// Reads the regular file at `path`, at most `limit` bytes: larger is an
/// error naming the limit, as is a file whose size changed while it was
/// read (written to meanwhile: read it again once the writer is done).
pub fn read(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let (f, meta) = open_regular_with_status(path)?;
    read_open(f, meta, limit).map(|(bytes, _)| bytes)
}

/// [`read`], and the file opened must lie inside `root` (a canonical
/// path): checked on the open handle, so a link swapped in between a
/// check of the path and the read cannot lead outside.
pub fn read_inside(path: &Path, limit: u64, root: &Path) -> io::Result<Vec<u8>> {
    read_inside_with_status(path, limit, root).map(|(bytes, _)| bytes)
}

/// [`read_inside`], with the status of the file read (taken on the open
/// handle before reading): what the publisher's source hash cache keys
/// the bytes' hash by.
pub fn read_inside_with_status(
    path: &Path,
    limit: u64,
    root: &Path,
) -> io::Result<(Vec<u8>, std::fs::Metadata)> {
    use std::os::fd::AsRawFd;
    let (f, meta) = open_regular_with_status(path)?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    if !real.starts_with(root) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "is a link that leaves the source (to {}): only files inside the source directory are read",
                real.display()
            ),
        ));
    }
    read_open(f, meta, limit)
}

/// [`read`] of an opened regular file whose status (before the read) is
/// `meta`.
fn read_open(
    f: File,
    meta: std::fs::Metadata,
    limit: u64,
) -> io::Result<(Vec<u8>, std::fs::Metadata)> {
    let before = meta.len();
    if before > limit {
        return Err(too_large(before, limit));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(before).unwrap_or(0));
    f.take(limit + 1).read_to_end(&mut bytes)?;
    let read = bytes.len() as u64;
    if read > limit {
        return Err(too_large(read, limit));
    }
    if read != before {
        return Err(io::Error::other(format!(
            "changed size while it was read ({before} bytes, then {read}): it is being written; read it again once it is complete"
        )));
    }
    Ok((bytes, meta))
}

/// [`read`], as UTF-8 text.
pub fn read_text(path: &Path, limit: u64) -> io::Result<String> {
    utf8(read(path, limit)?)
}

/// [`read_inside`], as UTF-8 text.
pub fn read_text_inside(path: &Path, limit: u64, root: &Path) -> io::Result<String> {
    utf8(read_inside(path, limit, root)?)
}

/// [`read_inside_with_status`], as UTF-8 text.
pub fn read_text_inside_with_status(
    path: &Path,
    limit: u64,
    root: &Path,
) -> io::Result<(String, std::fs::Metadata)> {
    let (bytes, meta) = read_inside_with_status(path, limit, root)?;
    Ok((utf8(bytes)?, meta))
}

fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

fn too_large(size: u64, limit: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, TooLarge { size, limit })
}

/// A file over its limit: the inner error of what [`read`] returns, for a
/// caller that names its own setting.
#[derive(Debug, thiserror::Error)]
#[error("{size} bytes or more, over the limit of {limit} bytes for this file")]
pub struct TooLarge {
    /// The size found (at least).
    pub size: u64,
    /// The limit.
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_a_device_or_a_directory_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            let e = read(path, 100).expect_err("refused");
            assert!(
                e.to_string().contains("not a regular file"),
                "{path:?}: {e}"
            );
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).expect("link");
        assert!(read(&link, 100).is_err());
    }

    #[test]
    fn a_file_read_inside_a_root_is_checked_where_it_was_opened() {
        let root = tempfile::tempdir().expect("root");
        let elsewhere = tempfile::tempdir().expect("elsewhere");
        std::fs::write(elsewhere.path().join("x"), "outside").expect("write");
        std::fs::write(root.path().join("in"), "inside").expect("write");
        std::os::unix::fs::symlink(elsewhere.path().join("x"), root.path().join("out"))
            .expect("link");
        let canonical = std::fs::canonicalize(root.path()).expect("canonical");
        assert_eq!(
            read_inside(&root.path().join("in"), 100, &canonical).expect("inside"),
            b"inside"
        );
        let e = read_inside(&root.path().join("out"), 100, &canonical).expect_err("outside");
        assert!(e.to_string().contains("leaves the source"), "{e}");
    }

    #[test]
    fn a_file_over_its_limit_is_refused_naming_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'x'; 101]).expect("write");
        let e = read(&path, 100).expect_err("too large");
        assert!(e.to_string().contains("limit of 100 bytes"), "{e}");
        assert_eq!(read(&path, 101).expect("fits").len(), 101);
    }
}
