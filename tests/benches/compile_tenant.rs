//! CPU per tenant of the publisher's compile step (parse, merge, validate,
//! render, seal) on generated tenants, one thread, the files in memory:
//! what a full build pays for each of a million tenants before compression
//! and upload. `cargo bench -p strata-tests --bench compile_tenant`
//! (`TENANTS=`, default 4,000; `ROUNDS=`, default 5).

use std::path::Path;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir()?;
    strata_common::generate::generate(dir.path(), n)?;
    let layer1 = strata_common::source::read_layer1(&dir.path().join("layer1.toml"), dir.path())?;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("tenants"))? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        files.push((path, text));
    }
    let mut best = f64::MAX;
    for round in 1..=rounds {
        let started = Instant::now();
        for (path, text) in &files {
            let problems = strata_common::compile::tenant_problems(&layer1, Path::new(path), text);
            assert!(problems.is_empty(), "{problems:?}");
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / files.len() as f64;
        best = best.min(us);
        println!("round {round}: {us:.1} µs a tenant");
    }
    println!(
        "compile, one thread, {} tenants: best {best:.1} µs a tenant",
        files.len()
    );
    Ok(())
}
