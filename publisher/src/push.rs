//! `--notify`: after a command moved a channel pointer or a region's pin,
//! the document itself (as the store now holds it) is sent over NATS to
//! the agents listening under the store id; and the fleet's answers to a
//! status request, for `status` and `publish --wait`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use strata_common::notify::{self, NodeStatus, NotifyConfig};
use strata_common::pointer::PointerKind;
use strata_common::store::ReadStore;

/// How long a send may take before the command gives up on it (polling
/// still brings the change to every node).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where to push: given on the command line or in the environment
/// (`STRATA_NOTIFY`, `STRATA_STORE_ID`), so that a CI job sets them once.
#[derive(clap::Args, Debug, Clone)]
pub struct NotifyArgs {
    /// NATS server URL(s) (`nats://host:4222`, `tls://…`) to tell the
    /// agents at once. Without it agents learn of the change at their
    /// next poll.
    #[arg(long, env = "STRATA_NOTIFY", value_name = "URL")]
    notify: Option<String>,
    /// The store id the agents listen under (their agent.toml `store_id`).
    #[arg(long, env = "STRATA_STORE_ID", value_name = "ID")]
    store_id: Option<String>,
    /// A NATS credentials file (`.creds`).
    #[arg(long, env = "STRATA_NOTIFY_CREDENTIALS", value_name = "FILE")]
    notify_credentials: Option<PathBuf>,
    /// PEM CA certificates that sign the NATS server's certificate.
    #[arg(long, env = "STRATA_NOTIFY_CA", value_name = "FILE")]
    notify_ca: Option<PathBuf>,
}

impl NotifyArgs {
    /// The NATS configuration, if `--notify` is given (then `--store-id`
    /// must be too).
    pub fn config(&self) -> Result<Option<NotifyConfig>> {
        let Some(url) = &self.notify else {
            return Ok(None);
        };
        if !(url.starts_with("nats://") || url.starts_with("tls://")) {
            anyhow::bail!(
                "--notify {} is not a nats:// or tls:// URL",
                notify::redacted(url)
            );
        }
        let store_id = self.store_id.clone().context(
            "--notify needs --store-id (or STRATA_STORE_ID): the id the agents listen under, their agent.toml store_id",
        )?;
        notify::check_store_id(&store_id)?;
        Ok(Some(NotifyConfig {
            url: url.clone(),
            store_id,
            credentials: self.notify_credentials.clone(),
            ca: self.notify_ca.clone(),
        }))
    }

    /// The NATS configuration `--wait` needs: checked before anything is
    /// written, so that a command that cannot wait refuses up front
    /// instead of failing after its change is made.
    pub fn wait_config(&self) -> Result<NotifyConfig> {
        self.config()?
            .context("--wait asks the agents over NATS: give --notify and --store-id (or STRATA_NOTIFY and STRATA_STORE_ID)")
    }

    /// Sends the document `kind`/`name` as `store` holds it now. A failure
    /// is a warning: the change is made, and agents poll.
    pub fn send(&self, store: &dyn ReadStore, kind: PointerKind, name: &str) {
        if let Err(e) = self.try_send(store, kind, name) {
            note!(
                "warning: agents were not told at once ({e:#}); they see the change at their next poll"
            );
        }
    }

    /// Sends the document as [`NotifyArgs::send`] does, then, with
    /// `wait` (`--wait`'s share), waits for the nodes `target` counts.
    pub fn announce(
        &self,
        store: &dyn ReadStore,
        kind: PointerKind,
        name: &str,
        wait: Option<(f64, Duration)>,
        target: Target,
    ) -> Result<()> {
        self.send(store, kind, name);
        match wait {
            Some((share, timeout)) => self::wait(self, &target, share, timeout),
            None => Ok(()),
        }
    }

    fn try_send(&self, store: &dyn ReadStore, kind: PointerKind, name: &str) -> Result<()> {
        let Some(cfg) = self.config()? else {
            return Ok(());
        };
        let subject = match kind {
            PointerKind::Channel => notify::channel_subject(&cfg.store_id, name)?,
            PointerKind::Pin | PointerKind::Unpin => notify::pin_subject(&cfg.store_id, name)?,
        };
        let key = kind.store_key(name);
        let doc = strata_common::layout::read(store, &key)?
            .with_context(|| format!("{key} is not in the store"))?;
        notify::send_blocking(&cfg, &subject, doc.bytes, SEND_TIMEOUT)?;
        note!(
            "note: told the agents under store id {} on {subject}",
            cfg.store_id
        );
        Ok(())
    }
}

/// The replies to one status request, gathered for `wait`.
pub fn gather(cfg: &NotifyConfig, wait: Duration) -> Result<Vec<NodeStatus>> {
    Ok(notify::gather_blocking(cfg, wait)?)
}

/// `--wait 99%`: a share of nodes, from 0 (exclusive) to 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage such as 99% or 100%"))?;
    if n > 0.0 && n <= 100.0 {
        Ok(n / 100.0)
    } else {
        Err(format!("{s} is outside 0% to 100%"))
    }
}

/// Which nodes `--wait` counts, and the version they must serve.
#[derive(Debug, Clone)]
pub struct Target {
    /// Only nodes following this channel (a publish); `None`: any.
    pub channel: Option<String>,
    /// Only nodes of this region; `None`: every region.
    pub region: Option<String>,
    /// The version they must serve.
    pub version: u64,
    /// Exactly that version (a pin), not it or a newer one (a publish).
    pub exact: bool,
}

impl Target {
    fn counts(&self, node: &NodeStatus) -> bool {
        self.channel.as_ref().is_none_or(|c| *c == node.channel)
            && self.region.as_ref().is_none_or(|r| *r == node.region)
    }
}

/// One line about a node that does not serve `version`: its version,
/// state and why.
pub fn laggard(node: &NodeStatus) -> String {
    let mut line = format!(
        "{} ({}): {}, {}",
        node.node_id,
        node.region,
        node.version
            .map_or("serves nothing".to_owned(), |v| format!("serves {v}")),
        node.state
    );
    if let Some(pin) = node.pin {
        line.push_str(&format!(", pinned to {pin}"));
    }
    if let Some(reason) = &node.last_error_reason {
        line.push_str(&format!(", last error {reason}"));
    }
    line
}

/// Asks the fleet every second until `share` of the nodes `target` counts
/// serve its version (or newer), or `timeout` passes: then an error names
/// the nodes that do not (at most 20) and why.
pub fn wait(args: &NotifyArgs, target: &Target, share: f64, timeout: Duration) -> Result<()> {
    let cfg = args.wait_config()?;
    let started = std::time::Instant::now();
    loop {
        let nodes: Vec<NodeStatus> = gather(&cfg, Duration::from_secs(1))?
            .into_iter()
            .filter(|n| target.counts(n))
            .collect();
        let (done, behind): (Vec<_>, Vec<_>) = nodes.iter().partition(|n| {
            n.version
                .is_some_and(|v| v == target.version || (!target.exact && v > target.version))
        });
        let reached = !nodes.is_empty() && done.len() as f64 >= share * nodes.len() as f64;
        if reached {
            out!(
                "{} of {} answering node(s) serve version {}{}",
                done.len(),
                nodes.len(),
                target.version,
                if target.exact { "" } else { " or newer" }
            )?;
            return Ok(());
        }
        if started.elapsed() >= timeout {
            for node in behind.iter().take(20) {
                out!("not on version {}: {}", target.version, laggard(node))?;
            }
            if behind.len() > 20 {
                out!("… and {} more", behind.len() - 20)?;
            }
            anyhow::bail!(
                "after {timeout:?}, {} of {} answering node(s) serve version {} (wanted {:.1} %); the change is published, the fleet has not taken it",
                done.len(),
                nodes.len(),
                target.version,
                share * 100.0
            );
        }
    }
}

/// A duration for `--timeout` and `--wait-timeout`, from 1 ms to an hour
/// (`500ms`, `5s`, `5m`): replies take milliseconds, a fleet minutes.
pub fn parse_short_duration(s: &str) -> Result<Duration, String> {
    strata_common::time::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration such as 1s, 500ms or 5m"))
        .and_then(|d| {
            if d.is_zero() || d > Duration::from_secs(3600) {
                Err(format!("{s} is outside 1ms to 1h"))
            } else {
                Ok(d)
            }
        })
}
