//! Prints what a stopped agent's `strata.redb` holds (for bench/retain.sh):
//! `allocated_bytes stored_bytes` (pages in use, and the bytes of keys and
//! values in them). The file only grows, so its size says little.
//!
//! Usage: `cargo run --release -p strata-agent --example redb_stats -- FILE`

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: redb_stats FILE"))?;
    let db = redb::Database::open(&path)?;
    let stats = db.begin_write()?.stats()?;
    println!(
        "{} {}",
        stats.allocated_pages() * stats.page_size() as u64,
        stats.stored_bytes()
    );
    Ok(())
}
