//! Push over NATS: "version N is out" to every node, and what each node
//! serves back to whoever asks. NATS is a transport, never a source of
//! trust: what travels is the signed document itself (a channel pointer
//! or a region pin, byte for byte as stored), which an agent verifies as
//! if it had polled it; a status reply is a node's word about itself.
//!
//! Subjects, under a store id both sides are configured with (the store's
//! URL differs between a publisher writing S3 and nodes reading a mirror):
//!
//! - `strata.<store id>.<channel>`: the channel pointer, after every
//!   publish, rollback and refresh;
//! - `strata.<store id>.pins.<region>`: the region's pin or unpin;
//! - `strata.<store id>.status`: a request every agent answers with its
//!   [`NodeStatus`].
//!
//! A `.` in a channel or region name (allowed in store names) is written
//! `~` in a subject, where `.` separates tokens; the channel names `pins`
//! and `status` cannot be pushed (their subjects are taken).

use std::path::PathBuf;
#[cfg(feature = "notify")]
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why talking to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The store id or a name cannot make a subject.
    #[error("{0}")]
    BadName(String),
    /// The server could not be reached or refused us.
    #[error("NATS at {url}: {reason}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A publish or request failed after connecting.
    #[error("NATS at {url}: {reason}")]
    Send {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// How to reach the NATS servers: a URL (`nats://host:4222`, `tls://…`
/// for TLS; several comma-separated), and optionally a credentials file
/// (`.creds`, JWT and NKey seed) and a CA bundle for the server's
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyConfig {
    /// Server URL(s).
    pub url: String,
    /// The store id subjects are made under.
    pub store_id: String,
    /// A NATS credentials file.
    pub credentials: Option<PathBuf>,
    /// PEM CA certificates that sign the server's (with `tls://`).
    pub ca: Option<PathBuf>,
}

/// `url` without a user name or password (`nats://user:pass@host`), as
/// errors and logs may show it.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|one| match (one.find("://"), one.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://…@{}", &one[..scheme], &one[at + 1..])
            }
            _ => one.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks a store id: 1 to 64 of `a-z 0-9 - _`, so it is one subject
/// token on every server.
pub fn check_store_id(id: &str) -> Result<(), NotifyError> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(NotifyError::BadName(format!(
            "store id {id:?} must be 1 to 64 of a-z, 0-9, - and _ (the same on the publisher, --store-id, and in every agent.toml, store_id)"
        )))
    }
}

/// A store name as one subject token.
fn token(name: &str) -> String {
    name.replace('.', "~")
}

/// The subject a channel's pointer is pushed on.
pub fn channel_subject(store_id: &str, channel: &str) -> Result<String, NotifyError> {
    check_store_id(store_id)?;
    if matches!(channel, "pins" | "status") {
        return Err(NotifyError::BadName(format!(
            "channel {channel:?} cannot be pushed: its subject is taken; name the channel otherwise"
        )));
    }
    Ok(format!("strata.{store_id}.{}", token(channel)))
}

/// The subject a region's pin (or unpin) is pushed on.
pub fn pin_subject(store_id: &str, region: &str) -> Result<String, NotifyError> {
    check_store_id(store_id)?;
    Ok(format!("strata.{store_id}.pins.{}", token(region)))
}

/// The subject every agent answers status requests on.
pub fn status_subject(store_id: &str) -> Result<String, NotifyError> {
    check_store_id(store_id)?;
    Ok(format!("strata.{store_id}.status"))
}

/// The most status replies one request gathers.
#[cfg(feature = "notify")]
const MAX_NODES: usize = 1_000_000;

/// What one agent says about itself when asked (the fleet view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `node_id` in agent.toml (default: the host name).
    pub node_id: String,
    /// The node's region.
    pub region: String,
    /// The channel it follows.
    pub channel: String,
    /// The version it serves, if any.
    pub version: Option<u64>,
    /// The version its region's pin (or its local pin) holds it to.
    pub pin: Option<u64>,
    /// `starting`, `fresh`, `stale` or `degraded`.
    pub state: String,
    /// Why its last check did not confirm what it serves.
    pub last_error_reason: Option<String>,
    /// The versions it holds, newest first (`?snapshot=N` answers these).
    pub retained: Vec<u64>,
}

#[cfg(feature = "notify")]
/// Connects to `cfg`'s servers (once; the client reconnects by itself).
pub async fn connect(cfg: &NotifyConfig, name: &str) -> Result<async_nats::Client, NotifyError> {
    let err = |reason: String| NotifyError::Connect {
        url: redacted(&cfg.url),
        reason,
    };
    // A few hundred messages of backlog per subscription, not 65,536: a
    // flood is dropped by the client, not held in memory.
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .subscription_capacity(256)
        .connection_timeout(Duration::from_secs(5));
    if let Some(creds) = &cfg.credentials {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| err(format!("credentials file {}: {e}", creds.display())))?;
    }
    if let Some(ca) = &cfg.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    opts.connect(cfg.url.as_str())
        .await
        .map_err(|e| err(e.to_string()))
}

#[cfg(feature = "notify")]
/// Sends `bytes` on `subject` and waits until the server has them: what a
/// publisher command does once it moved a document. Bounded by `timeout`.
pub fn send_blocking(
    cfg: &NotifyConfig,
    subject: &str,
    bytes: Vec<u8>,
    timeout: Duration,
) -> Result<(), NotifyError> {
    let send = |reason: String| NotifyError::Send {
        url: redacted(&cfg.url),
        reason,
    };
    runtime(cfg)?.block_on(async {
        tokio::time::timeout(timeout, async {
            let client = connect(cfg, "strata-publisher").await?;
            client
                .publish(subject.to_owned(), bytes.into())
                .await
                .map_err(|e| send(e.to_string()))?;
            client.flush().await.map_err(|e| send(e.to_string()))
        })
        .await
        .map_err(|_| send(format!("no answer within {timeout:?}")))?
    })
}

#[cfg(feature = "notify")]
/// Asks every agent of the store for its status and gathers the replies
/// that arrive within `wait`.
pub fn gather_blocking(cfg: &NotifyConfig, wait: Duration) -> Result<Vec<NodeStatus>, NotifyError> {
    let subject = status_subject(&cfg.store_id)?;
    let url = redacted(&cfg.url);
    // Connecting and asking get a few seconds beyond the gathering: a
    // server that is down must not hold `status` or `--wait` for ever.
    let bound = wait + Duration::from_secs(10);
    runtime(cfg)?.block_on(async {
        tokio::time::timeout(bound, async {
            let client = connect(cfg, "strata-publisher").await?;
            gather(&client, &url, &subject, wait).await
        })
        .await
        .map_err(|_| NotifyError::Send {
            url: url.clone(),
            reason: format!("no answer within {bound:?}"),
        })?
    })
}

#[cfg(feature = "notify")]
/// [`gather_blocking`] on a connected client.
pub async fn gather(
    client: &async_nats::Client,
    url: &str,
    subject: &str,
    wait: Duration,
) -> Result<Vec<NodeStatus>, NotifyError> {
    use futures_util::StreamExt as _;
    let send = |reason: String| NotifyError::Send {
        url: url.to_owned(),
        reason,
    };
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| send(e.to_string()))?;
    client
        .publish_with_reply(subject.to_owned(), inbox, Vec::new().into())
        .await
        .map_err(|e| send(e.to_string()))?;
    client.flush().await.map_err(|e| send(e.to_string()))?;
    let mut nodes = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = std::collections::HashSet::new();
    while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await {
        // A reply that is not a status is someone else's: skipped; a node
        // answering twice counts once.
        if let Ok(node) = serde_json::from_slice::<NodeStatus>(&msg.payload)
            && seen.insert(node.node_id.clone())
        {
            nodes.push(node);
        }
        if nodes.len() >= MAX_NODES {
            break;
        }
    }
    nodes.sort_by(|a, b| (&a.region, &a.node_id).cmp(&(&b.region, &b.node_id)));
    Ok(nodes)
}

#[cfg(feature = "notify")]
fn runtime(cfg: &NotifyConfig) -> Result<tokio::runtime::Runtime, NotifyError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NotifyError::Connect {
            url: redacted(&cfg.url),
            reason: format!("cannot start a runtime: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_token_per_name_and_never_collide() {
        assert_eq!(
            channel_subject("prod", "stable").expect("ok"),
            "strata.prod.stable"
        );
        assert_eq!(
            channel_subject("prod", "eu.v2").expect("ok"),
            "strata.prod.eu~v2"
        );
        assert_eq!(
            pin_subject("prod", "us-east-1").expect("ok"),
            "strata.prod.pins.us-east-1"
        );
        assert_eq!(status_subject("prod").expect("ok"), "strata.prod.status");
        assert!(channel_subject("prod", "status").is_err());
        assert!(channel_subject("prod", "pins").is_err());
        assert!(check_store_id("a.b").is_err());
        assert!(check_store_id("").is_err());
        assert!(check_store_id("Prod").is_err());
        assert_eq!(
            redacted("nats://user:secret@a:4222,tls://b:4222"),
            "nats://…@a:4222,tls://b:4222"
        );
    }
}
