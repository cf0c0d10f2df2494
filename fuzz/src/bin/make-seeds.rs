//! Writes the starting corpus of `fuzz/seeds/`: real bundles, pointers and
//! pins signed with the fuzz seed keys, generated and hostile tenant files,
//! and HTTP requests for every endpoint. Run again after a format change:
//! `cargo run -p strata-fuzz --bin make-seeds`.

use std::path::Path;

use strata_common::channel::{self, PublishOptions};
use strata_common::compile::{self, CompileOptions};
use strata_common::source::Source;
use strata_common::store::FileStore;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = root.join("seeds");
    for target in ["bundle", "pointer", "tenant", "http"] {
        std::fs::create_dir_all(seeds.join(target))?;
    }
    let work = tempfile::tempdir()?;
    let store_dir = work.path().join("store");
    std::fs::create_dir_all(&store_dir)?;
    let store = FileStore::new(store_dir.clone())?;
    for (i, tenants) in [1usize, 3, 40].into_iter().enumerate() {
        let source_dir = work.path().join(format!("source-{tenants}"));
        strata_common::generate::generate(&source_dir, tenants)?;
        let compiled = compile::compile(&Source::open(&source_dir)?, CompileOptions::default())?;
        let published = channel::publish(
            &store,
            &compiled,
            &[strata_fuzz::seed_key()],
            &PublishOptions::for_channel("stable"),
        )?;
        let bundle = std::fs::read(store_dir.join(&published.pointer.bundle))?;
        std::fs::write(
            seeds.join(format!("bundle/published-{tenants}.bundle")),
            bundle,
        )?;
        let pointer = std::fs::read(store_dir.join("channels/stable.json"))?;
        std::fs::write(seeds.join(format!("pointer/stable-{i}.json")), pointer)?;
        if i == 0 {
            for entry in std::fs::read_dir(source_dir.join("tenants"))? {
                let path = entry?.path();
                std::fs::copy(
                    &path,
                    seeds
                        .join("tenant")
                        .join(path.file_name().unwrap_or_default()),
                )?;
            }
        }
    }
    strata_common::operator::pin(
        &store,
        "eu-west-1",
        1,
        &[strata_fuzz::seed_operator_key()],
        None,
        std::time::Duration::from_secs(3600),
    )?;
    std::fs::write(
        seeds.join("pointer/pin-eu-west-1.json"),
        std::fs::read(store_dir.join("pins/eu-west-1.json"))?,
    )?;
    let example = root.join("../tests/data/worked-example");
    std::fs::copy(
        example.join("snapshot.bundle"),
        seeds.join("bundle/worked-example.bundle"),
    )?;
    std::fs::copy(
        example.join("stable.json"),
        seeds.join("pointer/worked-example.json"),
    )?;
    for entry in std::fs::read_dir(root.join("../tests/data/hostile-tenants"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = format!(
                "hostile-{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            std::fs::copy(&path, seeds.join("tenant").join(name))?;
        }
    }
    let tenant = strata_common::generate::tenant_id(1);
    let number = "+14155550100";
    let requests = [
        ("tenant", format!("GET /v1/tenants/{tenant} HTTP/1.1\r\nhost: x\r\n\r\n")),
        ("prompt", format!("GET /v1/tenants/{tenant}/prompt HTTP/1.1\r\nhost: x\r\n\r\n")),
        ("etag", format!("GET /v1/tenants/{tenant} HTTP/1.1\r\nhost: x\r\nif-none-match: \"abc\"\r\n\r\n")),
        ("old-snapshot", format!("GET /v1/tenants/{tenant}?snapshot=1 HTTP/1.1\r\nhost: x\r\n\r\n")),
        ("route", format!("GET /v1/routes/{number} HTTP/1.1\r\nhost: x\r\n\r\n")),
        ("layer1", "GET /v1/layer1 HTTP/1.1\r\nhost: x\r\n\r\n".to_owned()),
        ("snapshot", "GET /v1/snapshot HTTP/1.1\r\nhost: x\r\n\r\n".to_owned()),
        ("snapshots", "GET /v1/snapshots HTTP/1.1\r\nhost: x\r\n\r\n".to_owned()),
        ("metrics", "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n".to_owned()),
        ("pipelined", "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /readyz HTTP/1.1\r\nhost: x\r\n\r\n".to_owned()),
        ("post", "POST /v1/snapshot HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc".to_owned()),
        ("chunked", "POST /v1/layer1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_owned()),
    ];
    for (name, request) in requests {
        std::fs::write(seeds.join(format!("http/{name}.txt")), request)?;
    }
    Ok(())
}
