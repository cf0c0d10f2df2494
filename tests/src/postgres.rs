//! A real PostgreSQL for the database-source tests: `initdb` into a temp
//! directory, the server on a free 127.0.0.1 port, stopped on drop. The
//! binaries are Debian's `postgresql` package (`/usr/lib/postgresql/*/bin`,
//! which `.ci/run` installs), or `STRATA_PG_BIN`. Run as root (CI), the
//! server runs as the unprivileged `postgres` user the package makes:
//! `initdb` refuses root.
//!
//! Without PostgreSQL a test is skipped with a note, unless `CI` is set:
//! then it fails.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tempfile::TempDir;

/// A running PostgreSQL server, stopped on drop.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    user: Option<(u32, u32)>,
    child: Option<std::process::Child>,
    /// Extra server settings (`-c name=value`).
    settings: Vec<String>,
}

/// The directory holding `initdb` and `postgres`, if installed.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STRATA_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// The `postgres` user's uid and gid, when the tests run as root.
fn unprivileged() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid_line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let euid: u32 = uid_line.split_whitespace().nth(2)?.parse().ok()?;
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut f = line.split(':').skip(2);
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    Some((uid, gid))
}

impl Postgres {
    /// Starts one, or `None` (with a note) where PostgreSQL is not
    /// installed and `CI` is not set.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// Starts one serving TLS as well, with `ca`'s server certificate.
    pub fn start_tls(ca: &crate::mirror::TestCa) -> Option<Self> {
        Self::start_with(Some(ca))
    }

    fn start_with(tls: Option<&crate::mirror::TestCa>) -> Option<Self> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): CI must run the database tests; .ci/run installs Debian's postgresql"
            );
            eprintln!(
                "note: PostgreSQL is not installed; skipping (apt-get install postgresql, or set STRATA_PG_BIN)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("strata-pg")
            .tempdir()
            .expect("temp dir");
        let user = unprivileged();
        if let Some((uid, gid)) = user {
            assert!(
                unprivileged_owns(dir.path(), uid, gid),
                "cannot give {} to the postgres user",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let out = Command::new(bin.join("initdb"))
            .args(["-D", &data.display().to_string()])
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .as_user(user)
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut settings = Vec::new();
        if let Some(ca) = tls {
            // The server reads its key only if no one else may.
            for (name, pem) in [("server.crt", &ca.cert_pem), ("server.key", &ca.key_pem)] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write");
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("mode");
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
                }
            }
            settings.push("ssl=on".to_owned());
            // TCP clients must use TLS: a plain connection is refused.
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .expect("pg_hba.conf");
        }
        let mut pg = Self {
            port: 0,
            bin,
            dir,
            user,
            child: None,
            settings,
        };
        pg.run_server(None);
        pg.psql("postgres", "CREATE DATABASE strata");
        Some(pg)
    }

    /// Starts the server on `port` (a free one if `None`) and waits until
    /// it answers.
    fn run_server(&mut self, port: Option<u16>) {
        let port = port.unwrap_or_else(|| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("port").port()
        });
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log");
        let child = Command::new(self.bin.join("postgres"))
            .args(["-D", &self.dir.path().join("data").display().to_string()])
            .args([
                "-p",
                &port.to_string(),
                "-k",
                &self.dir.path().display().to_string(),
            ])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdout(Stdio::null())
            .stderr(log)
            .as_user(self.user)
            .spawn()
            .expect("starting postgres");
        self.child = Some(child);
        self.port = port;
        let deadline = Instant::now() + crate::DEADLINE;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/strata`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/strata", self.port)
    }

    /// Runs `sql` in database `db` with psql, stopping at the first error;
    /// its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t"])
            .args(["-c", sql])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs `sql` in the `strata` database.
    pub fn sql(&self, sql: &str) -> String {
        self.psql("strata", sql)
    }

    /// The seed's update: a new row for `tenant` (by slug) at `version`,
    /// its prompt with `extra` appended and its config merged with
    /// `config` (JSON), and `is_active` moved to it, in one transaction.
    pub fn new_version(&self, tenant: &str, version: &str, extra: &str, config: &str) {
        self.sql(&format!(
            "BEGIN; \
             INSERT INTO tenant_configurations (tenant_id, version, version_hash, layer2_system_prompt, config, is_active, parent_version_id) \
               SELECT tenant_id, '{version}', md5(random()::text), layer2_system_prompt || '{extra}', config || '{config}'::jsonb, false, id \
               FROM tenant_configurations WHERE is_active AND tenant_id = (SELECT id FROM tenants WHERE slug = '{tenant}'); \
             UPDATE tenant_configurations SET is_active = (version = '{version}') \
               WHERE tenant_id = (SELECT id FROM tenants WHERE slug = '{tenant}'); \
             COMMIT;"
        ));
    }

    /// Loads `schema/postgres.sql` into the `strata` database.
    pub fn load_schema(&self) {
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/postgres.sql");
        let text = std::fs::read_to_string(&schema).expect("schema/postgres.sql");
        self.sql(&text);
    }

    /// Ends every connection of `strata-publisher` (a failover's view).
    pub fn drop_publisher_connections(&self) -> String {
        self.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'strata-publisher'",
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fast shutdown (SIGINT): the server ends its backends itself.
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + std::time::Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Gives `dir` to `uid:gid` (the server's data lives under it).
fn unprivileged_owns(dir: &Path, uid: u32, gid: u32) -> bool {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).is_ok()
}

/// Runs a command as the unprivileged user, when there is one.
trait AsUser {
    fn as_user(&mut self, user: Option<(u32, u32)>) -> &mut Self;
}

impl AsUser for Command {
    fn as_user(&mut self, user: Option<(u32, u32)>) -> &mut Self {
        if let Some((uid, gid)) = user {
            self.uid(uid).gid(gid);
        }
        self
    }
}
