//! Every seed of `fuzz/seeds/<target>/` (the starting corpus, and each
//! input a fuzzer crash was found with) through its target, on every test
//! run.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("seed dir") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("seed");
        println!("{}", path.display());
        run(&data);
        n += 1;
    }
    assert!(n > 0, "{} holds no seed", dir.display());
}

#[test]
fn bundle_seeds() {
    replay("bundle", strata_fuzz::bundle);
}

#[test]
fn pointer_seeds() {
    replay("pointer", strata_fuzz::pointer);
}

#[test]
fn tenant_seeds() {
    replay("tenant", strata_fuzz::tenant);
}

#[test]
fn http_seeds() {
    replay("http", strata_fuzz::http);
}
