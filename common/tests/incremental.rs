//! An incremental compile (format 3) against a full build of the same
//! source: the same snapshot, the same refusals, whatever the edit.

mod support;

use std::sync::Arc;

use strata_common::compile::{Compiled, LastPublished};
use support::{Served, compile, source, tenant_files};

#[test]
fn an_incremental_compile_makes_exactly_the_snapshot_a_full_build_makes() {
    let dir = source(3000);
    let served = Served::of(dir.path());
    // One tenant edited, one removed, one added (a copy of another under a
    // new id, its numbers changed so that they stay unique).
    let files = tenant_files(dir.path());
    let edited = std::fs::read_to_string(&files[10]).expect("read");
    // Its first number changes: the old one is released, a new one taken.
    std::fs::write(
        &files[10],
        edited
            .replacen("version = \"", "version = \"9", 1)
            .replacen("\"+1", "\"+5", 1),
    )
    .expect("edit");
    std::fs::remove_file(&files[2000]).expect("remove");
    let original = std::fs::read_to_string(&files[500]).expect("read");
    let id = files[500]
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("stem");
    let copy = original
        .replace("\"+1", "\"+4")
        .replace(id, "zz-new-tenant");
    std::fs::write(files[500].with_file_name("zz-new-tenant.toml"), copy).expect("add");

    let full = compile(dir.path(), 3, served.dictionary.clone());
    let inc = served.compile(dir.path()).expect("incremental compile");
    assert_eq!(
        inc.payload.compressed, full.payload.compressed,
        "the same root"
    );
    assert_eq!(inc.tenant_count, 3000);
    for key in inc.objects.keys() {
        assert!(full.objects.contains_key(key));
    }
    // It compressed the chunks that changed (and the small objects above
    // them), not the unchanged chunks.
    let chunks = served.chunks;
    assert!(
        inc.objects.len() * 5 < full.objects.len(),
        "{} objects made of {} ({chunks} chunks)",
        inc.objects.len(),
        full.objects.len()
    );
}

#[test]
fn an_incremental_compile_refuses_a_kept_tenant_s_number_whichever_sorts_first() {
    let dir = source(3000);
    let served = Served::of(dir.path());
    let files = tenant_files(dir.path());
    // Tenant `taker` (edited, so compiled) lists a number the channel routes
    // to tenant `owner` (unchanged, so kept in its chunk).
    for (taker, owner) in [(5, 2500), (2500, 5)] {
        let (taker_id, owner_id) = (stem(&files[taker]), stem(&files[owner]));
        let number = served.a_number_of(&owner_id);
        let text = take_number(&files[taker], &number);
        let e = served
            .compile(dir.path())
            .expect_err("a kept tenant's number is refused");
        let strata_common::source::SourceError::Invalid { problems, .. } = e else {
            panic!("{e}");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].tenant.as_deref(), Some(taker_id.as_str()));
        assert!(
            problems[0].reason.contains(&number) && problems[0].reason.contains(&owner_id),
            "{}",
            problems[0].reason
        );
        std::fs::write(&files[taker], text).expect("restore");
    }
}

/// The id of the tenant in `file`.
fn stem(file: &std::path::Path) -> String {
    file.file_stem()
        .and_then(|s| s.to_str())
        .expect("stem")
        .to_owned()
}

#[test]
fn a_copy_of_a_kept_tenant_s_file_held_back_takes_nothing_from_it() {
    // A tenant file copied under another name, its tenant_id still the
    // original's: refused for that, held back by quarantine, it must
    // neither release the original's numbers nor be written in its place.
    let dir = source(3000);
    let served = Served::of(dir.path());
    let files = tenant_files(dir.path());
    let kept = files[5].clone();
    std::fs::copy(&kept, kept.with_file_name("zz-copy.toml")).expect("copy");
    let none = || Some(LastPublished(Arc::new(|_: &str| None)));
    let (inc, full) = both(&served, dir.path(), none);
    assert_eq!(inc.tenant_count, 3000, "the copy is held out");
    assert!(
        inc.held_back
            .iter()
            .all(|p| p.tenant.as_deref() == Some("zz-copy") || p.file.ends_with("zz-copy.toml")),
        "{:?}",
        inc.held_back
    );
    // Held with its last published record (it has none: out), the same.
    let with_records = served
        .compile_with(dir.path(), false, Some(served.last_published()))
        .expect("full, records kept");
    assert_eq!(with_records.payload.compressed, full.payload.compressed);
    let (m, r) = support::root_of(&full);
    let routes = support::contents(&full.objects, &m, &r)
        .expect("contents")
        .routes;
    let of_kept = |routes: &std::collections::BTreeMap<String, String>| {
        routes.values().filter(|t| **t == stem(&kept)).count()
    };
    assert_eq!(
        of_kept(&routes),
        of_kept(&served.owners),
        "the original keeps its numbers"
    );
}

#[test]
fn a_kept_tenant_s_number_taken_is_held_back_with_the_full_build_s_problem() {
    let dir = source(3000);
    let served = Served::of(dir.path());
    let files = tenant_files(dir.path());
    let owner = stem(&files[2500]);
    // A tenant sorting before the owner takes one of its numbers.
    let taker = &files[5];
    take_number(taker, &served.a_number_of(&owner));
    let quarantine = || Some(served.last_published());
    let (inc, full) = both(&served, dir.path(), quarantine);
    assert_eq!(
        format!("{:?}", inc.held_back),
        format!("{:?}", full.held_back),
        "the same problems held back"
    );
    assert_eq!(inc.held_back.len(), 1, "{:?}", inc.held_back);
    assert_eq!(
        inc.held_back[0].tenant.as_deref(),
        Some(stem(taker).as_str())
    );
}

/// The source in `dir` compiled over `served` incrementally and in full,
/// quarantining with what `quarantine` gives; both must make one root.
fn both(
    served: &Served,
    dir: &std::path::Path,
    quarantine: impl Fn() -> Option<LastPublished>,
) -> (Compiled, Compiled) {
    let inc = served
        .compile_with(dir, true, quarantine())
        .expect("incremental");
    let full = served.compile_with(dir, false, quarantine()).expect("full");
    assert_eq!(
        inc.payload.compressed, full.payload.compressed,
        "the same root"
    );
    (inc, full)
}

/// Adds `number` to the tenant file `file`'s numbers (and raises its
/// version); returns the text it had.
fn take_number(file: &std::path::Path, number: &str) -> String {
    let text = std::fs::read_to_string(file).expect("read");
    let taken = text.replacen("version = \"", "version = \"9", 1).replacen(
        "phone_numbers = [",
        &format!("phone_numbers = [\"{number}\", "),
        1,
    );
    assert_ne!(taken, text);
    std::fs::write(file, &taken).expect("edit");
    text
}
