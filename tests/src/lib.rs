//! Helpers for the end-to-end tests: a store with a publisher key, agents
//! started in-process or as real processes, and polling with deadlines
//! (never sleeping as synchronisation).

pub mod mirror;
pub mod mount;
pub mod nats;
pub mod postgres;
pub mod s3;

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use strata_agent::client::{self, Answer};
use strata_agent::config::Config;
use strata_common::bundle::{self, Provenance};
use strata_common::channel::{self, DEFAULT_BUNDLE_EXPIRY, PublishOptions, Published};
use strata_common::compile::{self, CompileOptions, Compiled};
use strata_common::generate;
use strata_common::sign::{self, SigningKey};
use strata_common::source::Source;
use strata_common::store::FileStore;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any awaited condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A temp directory with a file store and a trusted publisher key.
pub struct Fixture {
    /// Everything lives here; removed on drop.
    pub dir: TempDir,
    /// The trusted publisher key.
    pub key: SigningKey,
    /// Its private key file.
    pub key_path: PathBuf,
}

impl Fixture {
    /// A fresh fixture.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("ci.key");
        sign::generate_key(&key_path).expect("keygen");
        let key = sign::load_signing_key(&key_path).expect("load key");
        std::fs::create_dir_all(dir.path().join("store")).expect("store dir");
        Self { dir, key, key_path }
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The store.
    pub fn store(&self) -> FileStore {
        FileStore::new(self.store_dir()).expect("file store")
    }

    /// Generates `tenants` tenants into `source-<tag>` and compiles them.
    pub fn compile(&self, tag: &str, tenants: usize) -> (PathBuf, Compiled) {
        let dir = self.dir.path().join(format!("source-{tag}"));
        if !dir.exists() {
            generate::generate(&dir, tenants).expect("generate");
        }
        let source = Source::open(&dir).expect("source");
        (
            dir,
            compile::compile(&source, CompileOptions::default()).expect("compile"),
        )
    }

    /// Publishes `compiled` signed by `keys`.
    pub fn publish_with(&self, compiled: &Compiled, keys: &[SigningKey]) -> Published {
        channel::publish(
            &self.store(),
            compiled,
            keys,
            &PublishOptions::for_channel("stable"),
        )
        .expect("publish")
    }

    /// Generates and publishes `tenants` tenants with the trusted key.
    pub fn publish(&self, tag: &str, tenants: usize) -> Published {
        let (_, compiled) = self.compile(tag, tenants);
        self.publish_with(&compiled, std::slice::from_ref(&self.key))
    }

    /// Writes an agent config named `name` and returns it with its path.
    pub fn agent_config(&self, name: &str, extra: &str) -> (Config, PathBuf) {
        let path = self.dir.path().join(format!("{name}.toml"));
        let text = format!(
            "source = \"file://{store}\"\n{poll}data_dir = \"{data}\"\nsocket = \"{sock}\"\nshutdown_grace = \"2s\"\n{extra}\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{pubkey}\"\n",
            store = self.store_dir().display(),
            poll = if extra.contains("poll_interval") {
                ""
            } else {
                "poll_interval = \"200ms\"\n"
            },
            data = self.dir.path().join(format!("{name}-data")).display(),
            sock = self.dir.path().join(format!("{name}.sock")).display(),
            pubkey = sign::public_path(&self.key_path).display(),
        );
        std::fs::write(&path, text).expect("write config");
        (Config::load(&path).expect("config"), path)
    }
}

impl Fixture {
    /// Publishes the source directory `src` to this fixture's store with
    /// the `strata-publisher` binary (`publish --init`, then `extra`),
    /// asserting it succeeded; returns what it printed.
    pub fn publish_source(&self, src: &Path, extra: &[&str]) -> String {
        self.publish_source_with(src, extra, &[])
    }

    /// [`Self::publish_source`] with environment variables `env` set (its
    /// source hash cache is under the fixture's directory unless `env`
    /// says otherwise).
    pub fn publish_source_with(&self, src: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
        let out = std::process::Command::new(bin("strata-publisher"))
            .args(["publish", "--init"])
            .env("STRATA_CACHE_DIR", self.dir.path().join("cache"))
            .envs(env.iter().copied())
            .args(extra)
            .arg("--source")
            .arg(src)
            .arg("--key")
            .arg(&self.key_path)
            .arg("--store")
            .arg(format!("file://{}", self.store_dir().display()))
            .output()
            .expect("run publisher");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "publish: {text}");
        text
    }

    /// Writes the config named `name` and starts an agent with it in-process.
    pub fn start_agent(&self, name: &str, extra: &str) -> Agent {
        let (config, path) = self.agent_config(name, extra);
        Agent::start(config, path)
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// An agent running in this process.
pub struct Agent {
    /// Its socket.
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Agent {
    /// Starts `strata_agent::run` with `config`.
    pub fn start(config: Config, path: PathBuf) -> Self {
        let socket = config.socket.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            strata_agent::run(config, &path, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            socket,
            stop: Some(stop),
            task,
        }
    }

    /// GET over the socket.
    pub async fn get(&self, path: &str) -> Answer {
        client::get(&self.socket, path)
            .await
            .expect("request to agent")
    }

    /// Polls `GET path` until an answer satisfies `pred` (connection errors
    /// count as not yet), failing the test after [`DEADLINE`].
    pub async fn wait_until(&self, what: &str, path: &str, pred: impl Fn(&Answer) -> bool) {
        wait_for(what, || async {
            client::get(&self.socket, path)
                .await
                .is_ok_and(|a| pred(&a))
        })
        .await;
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) {
        self.wait_until("agent ready", "/readyz", |a| a.status == 200)
            .await;
    }

    /// Waits until the agent serves `version`.
    pub async fn serves(&self, version: u64) {
        self.wait_until(
            &format!("agent serves version {version}"),
            "/v1/snapshot",
            |a| a.json()["version"] == version,
        )
        .await;
    }

    /// Stops the agent and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(DEADLINE, &mut self.task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "agent stopped cleanly: {r:?}");
    }
}

/// `GET /v1/snapshot` of the agent at `socket` as JSON (`null` while it
/// does not answer): for tests of agent processes.
pub async fn snapshot_at(socket: &Path) -> serde_json::Value {
    match client::get(socket, "/v1/snapshot").await {
        Ok(a) => a.json(),
        Err(_) => serde_json::Value::Null,
    }
}

/// Waits until the agent at `socket` serves `version`.
pub async fn serving(socket: &Path, version: u64) {
    wait_for(&format!("agent serving version {version}"), || async {
        snapshot_at(socket).await["version"] == version
    })
    .await;
}

/// An agent (or any child) process, killed and reaped on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `strata-agent` binary with `config`, its output discarded.
pub fn spawn_agent(config: &Path) -> Proc {
    spawn_agent_with(config, &[], std::process::Stdio::null())
}

/// Starts the `strata-agent` binary with `config` under `wrapper` (a
/// command and its arguments that runs the rest, such as `prlimit
/// --nofile=64`), its log written to `stderr`.
pub fn spawn_agent_with(config: &Path, wrapper: &[&str], stderr: std::process::Stdio) -> Proc {
    let agent = bin("strata-agent");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&agent);
            c
        }
        None => Command::new(&agent),
    };
    Proc(
        command
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn agent"),
    )
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn wait_for<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Path of a binary built from this workspace (`strata-agent`, `strata-publisher`).
///
/// `cargo test` builds only the binaries of the package under test, so the
/// first call builds both (a no-op when they are up to date): the process
/// tests then always run the code of this checkout, on a clean clone too.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--bins",
            "-p",
            "strata-agent",
            "-p",
            "strata-publisher",
        ]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let out = build
            .output()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("building the binaries failed:\n{e}");
    }
    dir.join(name)
}

/// Path of example `name` of workspace package `package`, built first
/// (as [`bin`] builds the binaries: the code of this checkout).
pub fn example(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", package, "--example", name]);
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let out = build.output().expect("running cargo build");
    assert!(
        out.status.success(),
        "building example {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("examples").join(name)
}

/// Every record of `compiled`'s payload, decoded (through a bundle written
/// without signatures and read back as an inspection would).
pub fn contents(compiled: &Compiled) -> bundle::Contents {
    use std::io::Cursor;
    let manifest = channel::manifest(
        compiled,
        1,
        strata_common::time::now(),
        DEFAULT_BUNDLE_EXPIRY,
        &Provenance::default(),
    );
    let bytes = bundle::write_bundle(&manifest, &compiled.payload.compressed, &[]).expect("bundle");
    let verified = bundle::verify(
        Cursor::new(bytes),
        bundle::SignatureCheck::SkipForInspection,
        &bundle::Limits::default(),
    )
    .expect("verify");
    bundle::Contents::collect(verified.records().expect("records")).expect("contents")
}

/// `compiled` with its records changed by `edit` and written again, as a
/// buggy or compromised publisher could sign it: the rewritten payload
/// keeps the format's layout but none of the publisher's checks.
pub fn rewrite(compiled: &Compiled, edit: impl FnOnce(&mut bundle::Contents)) -> Compiled {
    let mut contents = contents(compiled);
    edit(&mut contents);
    let mut w = bundle::PayloadWriter::new(1).expect("writer");
    w.layer1(&contents.layer1).expect("layer1");
    for (tenant, config) in &contents.configs {
        #[derive(serde::Deserialize)]
        struct Hash {
            config_hash: String,
        }
        let hash: Hash = serde_json::from_slice(config).expect("config_hash");
        let prompt = contents
            .prompts
            .get(tenant)
            .map(String::as_bytes)
            .unwrap_or_default();
        w.tenant(tenant, &hash.config_hash, config, prompt)
            .expect("tenant");
    }
    for (number, tenant) in &contents.routes {
        w.route(number, tenant).expect("route");
    }
    Compiled {
        payload: w.finish().expect("payload"),
        objects: Default::default(),
        layer1_version: compiled.layer1_version.clone(),
        tenant_count: contents.configs.len() as u64,
        warnings: Vec::new(),
        held_back: Vec::new(),
        holds: Default::default(),
    }
}

/// A source of 20 generated tenants where tenant 4 has a 50 % canary at
/// version `9.0.0`, published to `fx`'s store (snapshot 1): what the client
/// tests read. Returns the source directory and the tenant's id.
pub fn publish_with_canary(fx: &Fixture) -> (PathBuf, String) {
    let (src, _) = fx.compile("v1", 20);
    let id = strata_common::generate::tenant_id(4);
    let own = std::fs::read_to_string(src.join("tenants").join(format!("{id}.toml")))
        .expect("tenant file");
    let canary: String = own
        .lines()
        .map(|l| match l.starts_with("version = ") {
            true => "version = \"9.0.0\"\n".to_owned(),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(
        src.join("tenants").join(format!("{id}.canary.toml")),
        format!("canary_percent = 50\n{canary}"),
    )
    .expect("canary");
    fx.publish_source(&src, &[]);
    (src, id)
}

/// Gives the `i`th tenant file of `source` a new `version`, as an
/// operator's edit of one tenant does (for the publish → served benchmarks).
pub fn change_one_tenant(source: &Path, i: usize) {
    let mut files: Vec<_> = std::fs::read_dir(source.join("tenants"))
        .expect("tenants dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let file = &files[i % files.len()];
    let text = std::fs::read_to_string(file).expect("read tenant");
    let changed: String = text
        .lines()
        .map(|l| {
            if l.starts_with("version = ") {
                format!("version = \"9.9.{i}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(file, changed).expect("write tenant");
}

/// Whether `python` starts and imports what the tests use.
fn runs(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import cryptography, zstandard, prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The tests' Python virtual environment's `python` (under `root`, the
/// test's `CARGO_TARGET_TMPDIR`), created (once, under a lock, for
/// tests running in parallel) if missing. Panics with what to install when
/// the machine lacks python3 or its venv module.
pub fn python(root: &Path) -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    let requirements =
        std::fs::read(tests.join("requirements.txt")).expect("tests/requirements.txt");
    let digest = strata_common::canonical::sha256_hex(&requirements);
    let venv = root.join(format!("python-venv-{}", &digest[..12]));
    let python = venv.join("bin/python");
    let ready = venv.join(".ready");
    // A venv outlives its interpreter (the system python upgraded, or made
    // through a link that is gone): ready only while its python runs.
    let usable = || ready.exists() && runs(&python);
    if usable() {
        return python;
    }
    let lock = File::create(root.join("python-venv.lock")).expect("venv lock file");
    lock.lock().expect("venv lock");
    if usable() {
        return python;
    }
    let found = Command::new("python3").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "python3 is missing: the verifier test needs it (Debian: apt-get install python3 python3-venv)"
    );
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .expect("python3 -m venv runs");
    assert!(
        made.status.success(),
        "python3 cannot create a virtual environment (Debian: apt-get install python3-venv):\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(tests.join("requirements.txt"))
        .output()
        .expect("pip runs");
    assert!(
        pip.status.success(),
        "installing tests/requirements.txt into {} failed (it needs PyPI):\n{}",
        venv.display(),
        String::from_utf8_lossy(&pip.stderr)
    );
    std::fs::write(&ready, b"").expect("mark the venv ready");
    python
}
