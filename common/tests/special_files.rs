//! Source files that are not plain files inside the source: a FIFO (which
//! blocked the publisher for ever), a link to a device that never ends, a
//! link out of the source (to /etc/passwd, to CI's environment, to another
//! directory of overlays). Each is refused at once, naming the file, and
//! nothing outside the source is read.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use strata_common::compile::{self, CompileOptions};
use strata_common::generate;
use strata_common::source::{Source, SourceError};
use strata_common::validate::Problem;

/// A generated source of three tenants in `dir`.
fn source_in(dir: &Path) {
    generate::generate(dir, 3).expect("generate");
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
}

/// Every problem `validate` reports for the source at `dir`, within 5 s.
fn problems(dir: &Path) -> Vec<Problem> {
    let started = Instant::now();
    let found = match Source::open(dir) {
        Err(SourceError::Invalid { problems, .. }) => problems,
        Err(e) => panic!("unexpected error: {e}"),
        Ok(source) => match compile::validate(&source, CompileOptions::default()) {
            Ok(_) => Vec::new(),
            Err(SourceError::Invalid { problems, .. }) => problems,
            Err(e) => panic!("unexpected error: {e}"),
        },
    };
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "validation took {:?}",
        started.elapsed()
    );
    found
}

fn tenant_file(dir: &Path) -> std::path::PathBuf {
    dir.join("tenants")
        .join(format!("{}.toml", generate::tenant_id(0)))
}

#[test]
fn a_fifo_tenant_file_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    source_in(dir.path());
    let file = tenant_file(dir.path());
    fs::remove_file(&file).expect("rm");
    mkfifo(&file);
    let found = problems(dir.path());
    assert!(
        found
            .iter()
            .any(|p| p.file == file && p.reason.contains("not a regular file")),
        "{found:#?}"
    );
}

#[test]
fn a_fifo_layer1_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    source_in(dir.path());
    let layer1 = dir.path().join("layer1.toml");
    fs::remove_file(&layer1).expect("rm");
    mkfifo(&layer1);
    let started = Instant::now();
    let Err(e) = Source::open(dir.path()) else {
        panic!("a FIFO layer1.toml was accepted")
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("not a regular file"), "{e}");
}

#[test]
fn a_link_to_a_device_is_never_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    source_in(dir.path());
    let file = tenant_file(dir.path());
    fs::remove_file(&file).expect("rm");
    symlink("/dev/zero", &file).expect("link");
    let found = problems(dir.path());
    // /dev is outside the source: refused before anything is opened.
    assert!(found.iter().any(|p| p.file == file), "{found:#?}");
}

#[test]
fn a_link_out_of_the_source_is_refused_without_reading_its_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    source_in(dir.path());
    let outside = tempfile::tempdir().expect("outside");
    let secret = outside.path().join("secret.toml");
    fs::write(&secret, "tenant_id = \"SECRET-VALUE-42\"\n").expect("secret");
    let file = tenant_file(dir.path());
    fs::remove_file(&file).expect("rm");
    symlink(&secret, &file).expect("link");
    let found = problems(dir.path());
    assert!(
        found
            .iter()
            .any(|p| p.file == file && p.reason.contains("leaves the source")),
        "{found:#?}"
    );
    assert!(
        !found
            .iter()
            .any(|p| p.to_string().contains("SECRET-VALUE-42")),
        "the target's content was read: {found:#?}"
    );
}

#[test]
fn a_tenants_directory_linked_elsewhere_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    source_in(dir.path());
    let other = tempfile::tempdir().expect("other");
    source_in(other.path());
    fs::remove_dir_all(dir.path().join("tenants")).expect("rm");
    symlink(other.path().join("tenants"), dir.path().join("tenants")).expect("link");
    let found = problems(dir.path());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].reason.contains("leaves the source"), "{found:#?}");
    // Not even listed: a tenants/ linked to /etc names nothing of /etc.
    fs::remove_file(dir.path().join("tenants")).expect("rm link");
    symlink("/etc", dir.path().join("tenants")).expect("link");
    let found = problems(dir.path());
    assert_eq!(found.len(), 1, "{found:#?}");
}

#[test]
fn a_link_inside_the_source_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    source_in(dir.path());
    let file = tenant_file(dir.path());
    let kept = dir.path().join("kept.toml.txt");
    fs::rename(&file, &kept).expect("move");
    symlink(&kept, &file).expect("link");
    assert_eq!(problems(dir.path()), Vec::<Problem>::new());
}
