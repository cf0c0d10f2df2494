//! Real filesystems for the fault tests: a small tmpfs that fills up, a
//! directory made read-only by a bind mount. Mounting needs root (or
//! `CAP_SYS_ADMIN`), which CI has; elsewhere the tests that need it say so
//! and pass without running.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount over a directory, unmounted on drop.
pub struct Mount {
    dir: PathBuf,
}

impl Mount {
    /// A tmpfs of `size` (`mount -o size=…`, e.g. `"4m"`) over `dir`
    /// (created), or `None` where this process may not mount.
    pub fn tmpfs(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).expect("mount point");
        let ok = mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ],
            dir,
        );
        ok.then(|| Self {
            dir: dir.to_path_buf(),
        })
    }

    /// `dir` bound onto itself read-only, or `None` where this process may
    /// not mount.
    pub fn read_only(dir: &Path) -> Option<Self> {
        let dir_s = dir.to_str().expect("utf-8 path");
        if !mount(&["--bind", dir_s], dir) {
            return None;
        }
        let this = Self {
            dir: dir.to_path_buf(),
        };
        this.remount("bind,ro");
        Some(this)
    }

    /// Changes the mount's options (`"size=64m"`, `"bind,rw"`).
    pub fn remount(&self, options: &str) {
        assert!(
            mount(&["-o", &format!("remount,{options}")], &self.dir),
            "remount {} with {options}",
            self.dir.display()
        );
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy: an agent of a failed test may still hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}

/// Runs `mount ARGS… DIR`, saying why it failed. With
/// `STRATA_REQUIRE_MOUNT=1` (CI, which runs as root) a failure fails the
/// test instead of skipping it.
fn mount(args: &[&str], dir: &Path) -> bool {
    let why = match Command::new("mount").args(args).arg(dir).output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => format!(
            "mount {args:?} {} failed ({}): this test needs root",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run mount: {e}"),
    };
    assert!(
        std::env::var_os("STRATA_REQUIRE_MOUNT").is_none(),
        "{why} (STRATA_REQUIRE_MOUNT is set)"
    );
    eprintln!("{why}; skipped");
    false
}
