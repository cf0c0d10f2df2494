//! The fuzz targets' bodies, one function per input the outside controls:
//! a bundle file, a pointer file, a tenant TOML file and the bytes of an
//! HTTP request to the agent's socket. Each must return (an error is
//! fine) and never panic, hang or allocate without bound.
//!
//! `fuzz/libfuzzer` wraps each in a libFuzzer target (coverage-guided, on
//! the stable toolchain: `fuzz/run`); `tests/seeds.rs` replays every file
//! of `fuzz/seeds/` through the same functions on every test run, so a
//! crash the fuzzer finds, once its input is saved there, stays fixed.

use std::io::{Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use strata_common::bundle::{self, Limits, SignatureCheck};
use strata_common::pointer::{Pointer, PointerKind};
use strata_common::sign::{Role, SigningKey, TrustedKeys};

/// Limits small enough that a fuzzer's worst input stays cheap (the agent's
/// defaults allow a 1 GiB bundle).
fn limits() -> Limits {
    Limits {
        max_bundle_bytes: 4 << 20,
        max_decompressed_bytes: 16 << 20,
        max_records: 100_000,
        max_value_bytes: 1 << 20,
        max_frame_bytes: 4 << 20,
        max_objects: 10_000,
        max_dictionary_bytes: 256 << 10,
    }
}

/// The fixed key the seed pointers are signed with, so that a mutated
/// pointer gets past the JSON to the signature and field checks.
pub fn seed_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The fixed operator key the seed pins are signed with.
pub fn seed_operator_key() -> SigningKey {
    SigningKey::from_bytes(&[8; 32])
}

/// A bundle file: header, manifest, index, every body frame and every
/// route, decoded as the agent decodes them (signatures skipped, as
/// `inspect` does, so the payload is reached), then as records.
pub fn bundle(data: &[u8]) {
    let open = || {
        bundle::verify(
            Cursor::new(data),
            SignatureCheck::SkipForInspection,
            &limits(),
        )
    };
    if let Ok(verified) = open()
        && let Ok(mut payload) = verified.payload()
    {
        while let Ok(Some(frame)) = payload.next_frame() {
            let Ok(bodies) = payload.read_frame(&frame) else {
                break;
            };
            for i in 0..frame.tenants.len() {
                let _ = bodies.config(i);
                let _ = bodies.prompt(i);
            }
        }
        while let Ok(Some(_)) = payload.next_route() {}
    }
    if let Ok(verified) = open()
        && let Ok(records) = verified.records()
    {
        let _ = bundle::Contents::collect(records);
    }
}

/// A channel pointer or a region pin file, parsed and verified against
/// [`seed_key`].
pub fn pointer(data: &[u8]) {
    static TRUST: OnceLock<TrustedKeys> = OnceLock::new();
    let trust = TRUST.get_or_init(|| {
        let mut t = TrustedKeys::new(1, 1);
        t.add(Role::Publisher, seed_key().verifying_key());
        t.add(Role::Operator, seed_operator_key().verifying_key());
        t
    });
    let _ = Pointer::parse_unverified(data);
    let _ = Pointer::signer_ids(data);
    if let Ok((p, _)) = Pointer::verify(data, PointerKind::Channel, "stable", trust) {
        let _ = p.check_expiry(std::time::SystemTime::now());
    }
    let _ = Pointer::verify(data, PointerKind::Pin, "eu-west-1", trust);
}

/// A tenant TOML file (`tenants/acme-hvac.toml`), validated against the
/// generated source's Layer 1 as `validate` does.
pub fn tenant(data: &[u8]) {
    static LAYER1: OnceLock<strata_common::model::Layer1> = OnceLock::new();
    let layer1 = LAYER1.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        strata_common::generate::generate(dir.path(), 1).expect("generate a source");
        strata_common::source::Source::open(dir.path())
            .expect("the generated source opens")
            .layer1
    });
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = strata_common::compile::tenant_problems(
            layer1,
            Path::new("tenants/acme-hvac.toml"),
            text,
        );
    }
}

/// An agent serving a small published snapshot on a unix socket, started
/// once per process on its own runtime thread.
struct Server {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn get() -> &'static Server {
        static SERVER: OnceLock<Server> = OnceLock::new();
        SERVER.get_or_init(Self::start)
    }

    fn start() -> Server {
        // A panic in a connection task is caught by tokio, which would hide
        // it from the seed replay: abort, as libFuzzer's own hook does.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            std::process::abort();
        }));
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let source = root.join("source");
        strata_common::generate::generate(&source, 3).expect("generate");
        let compiled = strata_common::compile::compile(
            &strata_common::source::Source::open(&source).expect("source"),
            Default::default(),
        )
        .expect("compile");
        let store_dir = root.join("store");
        std::fs::create_dir_all(&store_dir).expect("store dir");
        let key_path = root.join("ci.key");
        strata_common::sign::generate_key(&key_path).expect("key");
        let key = strata_common::sign::load_signing_key(&key_path).expect("load key");
        strata_common::channel::publish(
            &strata_common::store::FileStore::new(store_dir.clone()).expect("store"),
            &compiled,
            &[key],
            &strata_common::channel::PublishOptions::for_channel("stable"),
        )
        .expect("publish");
        let socket = root.join("agent.sock");
        let config_path = root.join("agent.toml");
        std::fs::write(
            &config_path,
            format!(
                "source = \"file://{}\"\ndata_dir = \"{}\"\nsocket = \"{}\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{}\"\n",
                store_dir.display(),
                root.join("data").display(),
                socket.display(),
                strata_common::sign::public_path(&key_path).display()
            ),
        )
        .expect("config");
        let config = strata_agent::config::Config::load(&config_path).expect("config loads");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let _ = runtime.block_on(strata_agent::run(
                config,
                &config_path,
                std::future::pending::<()>(),
            ));
        });
        let started = std::time::Instant::now();
        while !ready(&socket) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the agent for the HTTP target did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server { socket, _dir: dir }
    }
}

/// Whether the agent on `socket` answers `/readyz` with 200.
fn ready(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200")
}

/// The bytes of one or more HTTP requests, sent to a live agent's socket
/// (then the write half closed); the answer is read to its end. The agent
/// must keep answering: a panic in it aborts the process, and a request
/// that hangs it fails the next [`ready`] check.
pub fn http(data: &[u8]) {
    let server = Server::get();
    if let Ok(mut s) = UnixStream::connect(&server.socket) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(data);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
    }
    assert!(
        ready(&server.socket),
        "the agent stopped answering after {data:?}"
    );
}
