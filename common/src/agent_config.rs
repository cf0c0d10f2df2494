//! The agent's configuration file (`/etc/strata/agent.toml`), parsed once and
//! checked up front; `strata-agent check-config` runs exactly this code. It
//! lives in the common crate because `strata-publisher inspect --config`
//! reads it too, to verify a store with exactly an agent's trust and limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sign::{self, Role, TrustedKeys};
use crate::store::StoreUrl;
use serde::{Deserialize, Serialize};

/// Everything the agent needs to know. Every key has a default except
/// `source` and `trusted_keys`; unknown keys are an error.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Store URL: `file:///abs/path` (watched and polled). The key in
    /// agent.toml is `source`.
    #[serde(rename = "source")]
    pub store: StoreUrl,
    /// Channel whose pointer is followed. Default `stable`.
    #[serde(default = "default_channel")]
    pub channel: String,
    /// This node's region, for pins. Default `default`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Poll period, jittered ±20%. Default `5s`, or `60s` with `notify`
    /// (push tells of a change; the poll is the safety net).
    #[serde(default = "default_poll", with = "duration")]
    pub poll_interval: Duration,
    /// NATS server URL(s) (`nats://host:4222`, `tls://…`) to hear of a
    /// publish at once and to answer the fleet's status requests on.
    /// Default: none (polling only).
    #[serde(default)]
    pub notify: Option<String>,
    /// The store id the publisher pushes under (`--store-id`): required
    /// with `notify`.
    #[serde(default)]
    pub store_id: Option<String>,
    /// A NATS credentials file (`.creds`). Default: none.
    #[serde(default, serialize_with = "as_compared::opt_path")]
    pub notify_credentials: Option<PathBuf>,
    /// PEM CA certificates that sign the NATS server's certificate (TLS
    /// required then). Default: the platform's, for a `tls://` URL.
    #[serde(default, serialize_with = "as_compared::opt_path")]
    pub notify_ca: Option<PathBuf>,
    /// After a push, the check starts at a random moment within this
    /// window, so that 100,000 nodes do not fetch the same objects in the
    /// same second. Default `5s` (see OPERATIONS.md, "Running 100,000
    /// nodes").
    #[serde(default = "default_notify_spread", with = "duration")]
    pub notify_spread: Duration,
    /// How this node names itself in status replies. Default: the host
    /// name.
    #[serde(default)]
    pub node_id: Option<String>,
    /// How long one check of the store (with its apply) may run before the
    /// agent reports itself `degraded`: a store or disk that hangs
    /// (a stalled mirror, a hung mount) shows in `/v1/snapshot` and the
    /// metrics instead of behind a `fresh` state. A read from an S3 or
    /// HTTPS store still running at twice this (plus a second per 256 KiB
    /// it may carry) is given up and tried again (a local disk's cannot be
    /// cut: that check is reported until it ends). Default `5m`, above a cold 100k-tenant apply on a slow disk.
    #[serde(default = "default_check_timeout", with = "duration")]
    pub check_timeout: Duration,
    /// Directory of the redb file. Default `/var/lib/strata`.
    #[serde(default = "default_data_dir", serialize_with = "as_compared::path")]
    pub data_dir: PathBuf,
    /// Unix socket path. Default `/run/strata/agent.sock`.
    #[serde(default = "default_socket", serialize_with = "as_compared::path")]
    pub socket: PathBuf,
    /// Socket permissions, octal. Default `0660`.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: String,
    /// Snapshots kept for `?snapshot=N`. Default 5.
    #[serde(default = "default_retain")]
    pub retain: usize,
    /// Every snapshot this node served within this window is kept too,
    /// whatever `retain` says, so that a call locked to its snapshot
    /// (`?snapshot=N`) keeps it for the call's length. Default `2h`; `0s`
    /// keeps only `retain`.
    #[serde(default = "default_retain_for", with = "duration")]
    pub retain_for: Duration,
    /// redb's page cache in bytes: lookups are served from it, and a larger
    /// one speeds up applying large snapshots. Default 64 MiB.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: usize,
    /// Connections served at once; more wait in the kernel's backlog until
    /// one closes. Default 4096: far above a node's call workers, and above
    /// the 1,000 idle and 300 slow connections lookups were measured
    /// against.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a connection may move no byte (no request arriving, or a
    /// response its client does not read) before it is closed, freeing its
    /// slot. Default `60s`; call workers' pools reconnect.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// Threads serving the socket. The agent is a sidecar: the call worker
    /// beside it needs the CPU more. Default 1 (BENCHMARKS.md, "Lookups against Redis").
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
    /// The largest decompressed body frame accepted: what an apply holds in
    /// memory at once, whatever a (buggy or stolen) publisher key signed.
    /// Default 64 MiB; publishers write ~512 KiB frames.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u64,
    /// Largest bundle download and decompressed payload. Default 1 GiB.
    #[serde(default = "default_max_bundle_bytes")]
    pub max_bundle_bytes: u64,
    /// Public keys the agent trusts, by role.
    pub trusted_keys: Vec<TrustedKeyConfig>,
    /// Signatures required per role. Default 1 each.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// How long in-flight requests may finish after SIGTERM. Default `10s`.
    #[serde(default = "default_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Log format: `text` or `json`. Default `text`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// For an `https://` source: a PEM file of the CA certificates to trust
    /// instead of the platform's. Default: the platform's.
    #[serde(default, serialize_with = "as_compared::opt_path")]
    pub ca_file: Option<PathBuf>,
    /// A TCP address (`127.0.0.1:9464`) serving `/metrics`, `/healthz`
    /// and `/readyz` for a Prometheus server, which cannot scrape a unix
    /// socket. Lookups stay on the socket. Default: none (no TCP listener).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A local pin for this node alone: a file holding one snapshot version
    /// (`42`) to serve whatever the channel and the region's pin say, during
    /// an incident. Watched; removing the file ends the pin. Default: none.
    #[serde(default, serialize_with = "as_compared::opt_path")]
    pub pin_file: Option<PathBuf>,
}

/// One trusted public key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyConfig {
    /// `publisher` (bundles, channel pointers) or `operator` (pins).
    pub role: Role,
    /// SPKI PEM public key file.
    pub path: PathBuf,
}

/// Signatures required per role.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Publisher keys that must sign a bundle or pointer.
    pub publisher: usize,
    /// Operator keys that must sign a pin.
    pub operator: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            publisher: 1,
            operator: 1,
        }
    }
}

fn default_channel() -> String {
    "stable".into()
}
fn default_region() -> String {
    "default".into()
}
fn default_poll() -> Duration {
    Duration::from_secs(5)
}
fn default_notify_spread() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_data_dir() -> PathBuf {
    "/var/lib/strata".into()
}
fn default_socket() -> PathBuf {
    "/run/strata/agent.sock".into()
}
fn default_socket_mode() -> String {
    "0660".into()
}
fn default_retain() -> usize {
    5
}
fn default_cache_bytes() -> usize {
    64 << 20
}
fn default_max_connections() -> usize {
    4096
}
fn default_retain_for() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_worker_threads() -> usize {
    1
}
fn default_max_frame_bytes() -> u64 {
    64 << 20
}
fn default_max_bundle_bytes() -> u64 {
    1 << 30
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_log_format() -> String {
    "text".into()
}

mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        crate::time::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?}: {e}; write a duration such as 5s or 1m"))
        })
    }
}

/// How paths serialise: as compared, so that `data/` and `data`, `a/./b`
/// and `a/b` are one value (a config edited that way changed nothing).
mod as_compared {
    use serde::Serializer;
    use std::path::{Path, PathBuf};

    fn normal(p: &Path) -> PathBuf {
        p.components().collect()
    }

    pub fn path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&normal(p).display())
    }

    pub fn opt_path<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.collect_str(&normal(p).display()),
            None => s.serialize_none(),
        }
    }
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a wrong type.
    #[error("{path}: {reason}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A value that parses but cannot work.
    #[error("{path}: {key}: {reason}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// What is wrong and what would work.
        reason: String,
    },
    /// A trusted key file is unusable.
    #[error("{path}: trusted_keys: {source}")]
    Key {
        /// The config file.
        path: PathBuf,
        /// The key problem.
        source: sign::KeyError,
    },
}

impl Config {
    /// How to reach NATS, when `notify` is set.
    pub fn notify_config(&self) -> Option<crate::notify::NotifyConfig> {
        Some(crate::notify::NotifyConfig {
            url: self.notify.clone()?,
            store_id: self.store_id.clone()?,
            credentials: self.notify_credentials.clone(),
            ca: self.notify_ca.clone(),
        })
    }

    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        // Regular files only, non-blocking, bounded: a FIFO or /dev/zero at
        // the path must not hang or flood the check that reads it again.
        let text = crate::localfile::read_text(path, crate::localfile::MAX_CONFIG_BYTES).map_err(
            |source| ConfigError::Read {
                path: path.to_owned(),
                source,
            },
        )?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        // With push, the poll is a safety net: a minute unless set.
        let poll_set =
            toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("poll_interval"));
        if config.notify.is_some() && !poll_set {
            config.poll_interval = Duration::from_secs(60);
        }
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        self.socket_mode_bits()
            .map_err(|r| invalid("socket_mode", r))?;
        if self.max_frame_bytes < 1 << 20 {
            return Err(invalid(
                "max_frame_bytes",
                "must be at least 1 MiB (publishers write frames of ~512 KiB plus one tenant)"
                    .into(),
            ));
        }
        if self.max_bundle_bytes < 4096 {
            return Err(invalid(
                "max_bundle_bytes",
                "must be at least 4096: no bundle is smaller (it bounds a download and a decompressed payload; default 1 GiB)".into(),
            ));
        }
        if self.worker_threads == 0 || self.worker_threads > 64 {
            return Err(invalid(
                "worker_threads",
                "must be 1 to 64 (1 or 2 serve a node's call workers; BENCHMARKS.md)".into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1".into()));
        }
        if self.retain == 0 {
            return Err(invalid(
                "retain",
                "must be at least 1 (the served snapshot)".into(),
            ));
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return Err(invalid("idle_timeout", "must be at least 1s".into()));
        }
        if self.check_timeout < Duration::from_secs(1) {
            return Err(invalid("check_timeout", "must be at least 1s".into()));
        }
        if self.poll_interval < Duration::from_millis(100) {
            return Err(invalid("poll_interval", "must be at least 100ms".into()));
        }
        if let Some(url) = &self.notify {
            let Some(id) = &self.store_id else {
                return Err(invalid(
                    "store_id",
                    "is required with notify: the store id the publisher pushes under (its --store-id)".into(),
                ));
            };
            crate::notify::check_store_id(id).map_err(|e| invalid("store_id", e.to_string()))?;
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                return Err(invalid(
                    "notify",
                    format!("{url:?} is not a nats:// or tls:// URL"),
                ));
            }
            if let Err(e) = crate::notify::channel_subject(id, &self.channel) {
                return Err(invalid("channel", e.to_string()));
            }
        } else if self.notify_credentials.is_some()
            || self.notify_ca.is_some()
            || self.store_id.is_some()
        {
            return Err(invalid(
                "notify",
                "store_id, notify_credentials and notify_ca need notify (a NATS URL)".into(),
            ));
        }
        if self.ca_file.is_some() && !matches!(self.store, StoreUrl::Https(_)) {
            return Err(invalid(
                "ca_file",
                "only an https:// source uses it; remove it or change source".into(),
            ));
        }
        // The names the publisher signs pointers and pins under: anything
        // else could never be pinned or published to.
        crate::layout::check_name("channel", &self.channel)
            .map_err(|e| invalid("channel", e.to_string()))?;
        crate::layout::check_name("region", &self.region)
            .map_err(|e| invalid("region", e.to_string()))?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid(
                "log_format",
                format!("{:?}: use text or json", self.log_format),
            ));
        }
        for (role, threshold) in [
            (Role::Publisher, self.thresholds.publisher),
            (Role::Operator, self.thresholds.operator),
        ] {
            let keys = self.trusted_keys.iter().filter(|k| k.role == role).count();
            if threshold == 0 {
                return Err(invalid(
                    "thresholds",
                    format!("{role} threshold must be at least 1"),
                ));
            }
            if role == Role::Publisher && keys < threshold {
                return Err(invalid(
                    "trusted_keys",
                    format!(
                        "{keys} {role} key(s) trusted but the {role} threshold is {threshold}; add keys or lower thresholds.{role}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `socket_mode` as permission bits.
    pub fn socket_mode_bits(&self) -> Result<u32, String> {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("{:?} is not an octal mode such as 0660", self.socket_mode))
    }

    /// Loads every trusted key into a trust set.
    pub fn trust(&self, path: &Path) -> Result<TrustedKeys, ConfigError> {
        self.trust_with(path, false).map(|(trust, _)| trust)
    }

    /// Loads the trust set again while running (a key rotation): a key
    /// file that no longer exists is left out, so that deleting a key's
    /// file revokes it as surely as removing its entry. Returns the files
    /// left out.
    pub fn trust_live(&self, path: &Path) -> Result<(TrustedKeys, Vec<PathBuf>), ConfigError> {
        self.trust_with(path, true)
    }

    fn trust_with(
        &self,
        path: &Path,
        skip_missing: bool,
    ) -> Result<(TrustedKeys, Vec<PathBuf>), ConfigError> {
        let mut trust = TrustedKeys::new(self.thresholds.publisher, self.thresholds.operator);
        let mut missing = Vec::new();
        for k in &self.trusted_keys {
            let key = match sign::load_verifying_key(&k.path) {
                Ok(key) => key,
                Err(sign::KeyError::Io { source, .. })
                    if skip_missing && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    missing.push(k.path.clone());
                    continue;
                }
                Err(source) => {
                    return Err(ConfigError::Key {
                        path: path.to_owned(),
                        source,
                    });
                }
            };
            trust.add(k.role, key);
        }
        // A stolen CI key must never pin a region, nor an operator key
        // author content: one key in both roles would be both.
        if let Some(id) = trust.in_both_roles() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: "trusted_keys",
                reason: format!(
                    "key {id} is trusted both as publisher and as operator; give each role its own keys"
                ),
            });
        }
        // A threshold no set of distinct trusted keys can meet would keep
        // the agent from ever being ready: say so now.
        for (role, key) in [
            (Role::Publisher, "thresholds.publisher"),
            (Role::Operator, "thresholds.operator"),
        ] {
            let (mut distinct, needed) = (trust.count(role), trust.threshold(role));
            // While running, a deleted key file is a revocation, not a
            // typo: only entries that cannot meet the threshold even with
            // every file present are refused (the old keys are then kept).
            if skip_missing {
                distinct += missing
                    .iter()
                    .filter(|p| {
                        self.trusted_keys
                            .iter()
                            .any(|k| k.role == role && &k.path == *p)
                    })
                    .count();
            }
            let has_any = self.trusted_keys.iter().any(|k| k.role == role);
            if (has_any || role == Role::Publisher) && distinct < needed {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key,
                    reason: format!(
                        "{needed} signatures required but trusted_keys holds {distinct} distinct {role} key(s) (a key listed twice counts once); add keys or lower the threshold"
                    ),
                });
            }
        }
        Ok((trust, missing))
    }

    /// The limits a bundle is read with: what this agent refuses, so that
    /// `inspect --config` refuses exactly the same.
    pub fn limits(&self) -> crate::bundle::Limits {
        crate::bundle::Limits {
            max_bundle_bytes: self.max_bundle_bytes,
            max_decompressed_bytes: self.max_bundle_bytes,
            max_frame_bytes: self.max_frame_bytes,
            ..crate::bundle::Limits::default()
        }
    }

    /// The redb file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("strata.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_no_distinct_keys_can_meet_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("ci.key");
        sign::generate_key(&key).expect("keygen");
        let public = sign::public_path(&key);
        let path = dir.path().join("agent.toml");
        let text = format!(
            "source = \"file:///s\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{k}\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{k}\"\n[thresholds]\npublisher = 2\n",
            k = public.display()
        );
        let config = Config::parse(&text, &path).expect("parse");
        let e = config
            .trust(&path)
            .expect_err("one distinct key for a threshold of 2");
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    key: "thresholds.publisher",
                    ..
                }
            ),
            "{e}"
        );
        let once = text.replace("[thresholds]\npublisher = 2\n", "");
        Config::parse(&once, &path)
            .expect("parse")
            .trust(&path)
            .expect("threshold 1 is met");
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let p = Path::new("agent.toml");
        let c = Config::parse(
            "source = \"file:///s\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"/k.pub\"\n",
            p,
        )
        .expect("minimal config");
        assert_eq!(c.channel, "stable");
        assert_eq!(c.poll_interval, Duration::from_secs(5));
        assert_eq!(c.socket_mode_bits(), Ok(0o660));
        assert_eq!(c.retain, 5);
        let e = Config::parse(
            "source = \"file:///s\"\ntrusted_keys = []\npoll_intervall = \"5s\"\n",
            p,
        )
        .expect_err("typo refused");
        assert!(e.to_string().contains("poll_intervall"), "{e}");
        let e = Config::parse("source = \"file:///s\"\ntrusted_keys = []\n", p)
            .expect_err("no keys refused");
        assert!(e.to_string().contains("trusted_keys"), "{e}");
    }

    #[test]
    fn a_region_or_channel_no_publisher_could_pin_or_publish_is_refused() {
        let p = Path::new("agent.toml");
        let keys = "[[trusted_keys]]\nrole = \"publisher\"\npath = \"/k.pub\"\n";
        for (key, value) in [
            ("region", "EU West"),
            ("region", "../channels/stable"),
            ("region", ""),
            ("channel", "Stable"),
            ("channel", "a/b"),
        ] {
            let e = Config::parse(
                &format!("source = \"file:///s\"\n{key} = {value:?}\n{keys}"),
                p,
            )
            .expect_err("refused");
            assert!(
                matches!(&e, ConfigError::Invalid { key: k, .. } if *k == key),
                "{key} = {value:?}: {e}"
            );
        }
        Config::parse(
            &format!("source = \"file:///s\"\nregion = \"eu-west-1\"\n{keys}"),
            p,
        )
        .expect("a region name");
    }

    #[test]
    fn push_settings_are_checked_together() {
        let p = Path::new("agent.toml");
        let base =
            "source = \"file:///s\"\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"/k.pub\"\n";
        let parse = |extra: &str| Config::parse(&format!("{extra}\n{base}"), p);
        let c = parse("notify = \"nats://n:4222\"\nstore_id = \"prod\"").expect("push");
        assert_eq!(c.poll_interval, Duration::from_secs(60), "the safety poll");
        let c = parse("notify = \"nats://n:4222\"\nstore_id = \"prod\"\npoll_interval = \"7s\"")
            .expect("push");
        assert_eq!(c.poll_interval, Duration::from_secs(7));
        for (extra, key) in [
            ("notify = \"nats://n:4222\"", "store_id"),
            ("notify = \"http://n\"\nstore_id = \"prod\"", "notify"),
            ("notify = \"nats://n\"\nstore_id = \"Prod!\"", "store_id"),
            ("store_id = \"prod\"", "notify"),
            ("notify_ca = \"/ca.pem\"", "notify"),
            (
                "notify = \"nats://n\"\nstore_id = \"prod\"\nchannel = \"status\"",
                "channel",
            ),
        ] {
            match parse(extra) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }
}
