//! Format 3's parameters, measured: how big a snapshot is when its tenant
//! records are cut into content-defined chunks (`strata_common::chunk`) of
//! a target size and compressed one zstd frame each, with and without a
//! dictionary trained on the records, against format 2's payload; and how
//! many chunks (and bytes) one insert, delete or resize changes.
//! Run: `cargo bench -p strata-tests --bench chunking` (TENANTS=N, default
//! 100,000).

use std::collections::BTreeMap;
use std::time::Instant;

use sha2::{Digest, Sha256};
use strata_common::chunk::{self, ChunkParams};
use strata_tests::Fixture;

const LEVEL: i32 = 3;

fn main() {
    let tenants: usize = std::env::var("TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let fx = Fixture::new();
    let started = Instant::now();
    let (_, compiled) = fx.compile("chunking", tenants);
    let format2 = compiled.payload.compressed.len();
    let records = records(&compiled);
    let raw: usize = records.values().map(Vec::len).sum();
    let mean = raw / records.len().max(1);
    println!(
        "{tenants} generated tenants ({:.1} s to build): raw records {:.1} MiB (mean {mean} B), format 2 payload {:.2} MiB",
        started.elapsed().as_secs_f64(),
        mib(raw),
        mib(format2)
    );
    // A sample of the records to train dictionaries on: every k-th.
    let step = (records.len() / 4000).max(1);
    let samples: Vec<&[u8]> = records.values().step_by(step).map(Vec::as_slice).collect();
    let mut dicts = vec![(0usize, Vec::new(), 0.0)];
    for size in [16 << 10, 32 << 10, 64 << 10] {
        let t = Instant::now();
        let dict = zstd::dict::from_samples(&samples, size).expect("train");
        dicts.push((size, dict, t.elapsed().as_secs_f64()));
    }
    println!();
    println!(
        "| raw chunk target | chunks | dictionary | compressed + dictionary | vs format 2 | train |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for target in [64usize << 10, 128 << 10, 256 << 10] {
        let p = ChunkParams::for_target(target, mean);
        let chunks = cut(&records, p);
        for (size, dict, train) in &dicts {
            let total: usize = chunks
                .iter()
                .map(|c| compress(c, dict).len())
                .sum::<usize>()
                + dict.len();
            println!(
                "| {} KiB | {} | {} | {:.2} MiB | {:.2}× | {:.1} s |",
                target >> 10,
                chunks.len(),
                if *size == 0 {
                    "none".to_owned()
                } else {
                    format!("{} KiB", size >> 10)
                },
                mib(total),
                total as f64 / format2 as f64,
                train
            );
        }
    }
    // One change, at 128 KiB with a 32 KiB dictionary: chunks and bytes a
    // node would fetch.
    let p = ChunkParams::for_target(128 << 10, mean);
    let dict = &dicts[2].1;
    let before = cut(&records, p);
    let sizes: BTreeMap<[u8; 32], usize> = before
        .iter()
        .map(|c| (digest(c), compress(c, dict).len()))
        .collect();
    let total: usize = sizes.values().sum();
    let ids: Vec<String> = records.keys().cloned().collect();
    let mid = &ids[ids.len() / 2];
    let mut inserted = records.clone();
    let mut copy = records[mid].clone();
    copy.extend_from_slice(b" (a new tenant)");
    inserted.insert(format!("{mid}-new"), copy);
    let mut deleted = records.clone();
    deleted.remove(&ids[ids.len() / 3]);
    let mut resized = records.clone();
    if let Some(r) = resized.get_mut(&ids[ids.len() / 4]) {
        let again = r.clone();
        r.extend_from_slice(&again);
    }
    let mut edited = records.clone();
    if let Some(r) = edited.get_mut(&ids[ids.len() / 5]) {
        r.extend_from_slice(b"v2");
    }
    println!();
    println!(
        "One change at 128 KiB chunks, 32 KiB dictionary ({} chunks, {:.2} MiB):",
        before.len(),
        mib(total)
    );
    println!();
    println!("| change | chunks new | bytes to fetch | of the snapshot |");
    println!("| --- | --- | --- | --- |");
    for (what, after) in [
        ("insert one tenant", inserted),
        ("delete one tenant", deleted),
        ("double one tenant's size", resized),
        ("edit one tenant", edited),
    ] {
        let new: Vec<Vec<u8>> = cut(&after, p)
            .into_iter()
            .filter(|c| !sizes.contains_key(&digest(c)))
            .collect();
        let bytes: usize = new.iter().map(|c| compress(c, dict).len()).sum();
        println!(
            "| {what} | {} | {} B | {:.3} % |",
            new.len(),
            bytes,
            100.0 * bytes as f64 / total as f64
        );
    }
}

/// Each tenant's records (config, then prompt), by id, from the compiled
/// payload.
fn records(compiled: &strata_common::compile::Compiled) -> BTreeMap<String, Vec<u8>> {
    let contents = strata_tests::contents(compiled);
    contents
        .configs
        .into_iter()
        .map(|(id, mut config)| {
            if let Some(prompt) = contents.prompts.get(&id) {
                config.extend_from_slice(prompt.as_bytes());
            }
            (id, config)
        })
        .collect()
}

/// The records cut into chunks, each the concatenation of its records.
fn cut(records: &BTreeMap<String, Vec<u8>>, p: ChunkParams) -> Vec<Vec<u8>> {
    let ends = chunk::cut(records.iter().map(|(id, r)| (id.as_str(), r.len())), p);
    let values: Vec<&Vec<u8>> = records.values().collect();
    let mut out = Vec::with_capacity(ends.len());
    let mut start = 0;
    for end in ends {
        out.push(
            values[start..end]
                .iter()
                .flat_map(|r| r.iter().copied())
                .collect(),
        );
        start = end;
    }
    out
}

fn compress(chunk: &[u8], dict: &[u8]) -> Vec<u8> {
    let mut c = if dict.is_empty() {
        zstd::bulk::Compressor::new(LEVEL)
    } else {
        zstd::bulk::Compressor::with_dictionary(LEVEL, dict)
    }
    .expect("compressor");
    c.compress(chunk).expect("compress")
}

fn digest(chunk: &[u8]) -> [u8; 32] {
    Sha256::digest(chunk).into()
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
