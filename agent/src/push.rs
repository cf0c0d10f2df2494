//! Push over NATS (agent.toml `notify`): the publisher sends the signed
//! channel pointer (or the region's pin) on a subject this agent listens
//! to; the document is verified with the keys the agent trusts now, and
//! one that is genuine and says something new wakes a check within
//! `notify_spread`. The check then reads the store as a poll does: NATS
//! decides nothing, it only makes a node look sooner. A forged, replayed
//! or stale message is counted and dropped without a store request.
//!
//! The same connection answers the fleet's status requests
//! (`strata-publisher status`) with what this node serves.
//!
//! A lost connection is reconnected by the client with backoff; polling
//! (every `poll_interval`) carries on meanwhile, and `/v1/snapshot` and
//! `strata_notify_connected` say so.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use strata_common::notify::{self, NodeStatus, NotifyConfig};
use strata_common::pointer::{Pointer, PointerKind};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::state::{FollowedBy, Shared};

/// What this agent listens as.
pub struct Listener {
    /// How to reach NATS.
    pub config: NotifyConfig,
    /// The channel followed.
    pub channel: String,
    /// The node's region.
    pub region: String,
    /// How the node names itself in status replies.
    pub node_id: String,
    /// The window a woken check starts in, at random.
    pub spread: Duration,
}

/// The longest wait between two attempts to connect.
const MAX_RECONNECT: Duration = Duration::from_secs(30);

/// Runs until shutdown: connects (retrying with backoff), listens, answers.
pub async fn run(listener: Listener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let set_state = |s: &'static str| shared.status().notify = Some(s);
    set_state("disconnected");
    let mut wait = Duration::from_millis(500);
    let client = loop {
        let attempt = tokio::select! {
            r = notify::connect(&listener.config, &listener.node_id) => r,
            _ = shutdown.changed() => return,
        };
        match attempt {
            Ok(c) => break c,
            Err(e) => {
                warn!("push: {e}; polling carries on, trying again in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
                wait = (wait * 2).min(MAX_RECONNECT);
            }
        }
    };
    let subjects = (
        notify::channel_subject(&listener.config.store_id, &listener.channel),
        notify::pin_subject(&listener.config.store_id, &listener.region),
        notify::status_subject(&listener.config.store_id),
    );
    let (Ok(channel_subject), Ok(pin_subject), Ok(status_subject)) = subjects else {
        warn!("push: the channel or store id cannot make a NATS subject; push is off");
        return;
    };
    let subscribed = async {
        Ok::<_, async_nats::SubscribeError>((
            client.subscribe(channel_subject).await?,
            client.subscribe(pin_subject).await?,
            client.subscribe(status_subject).await?,
        ))
    }
    .await;
    let (mut channel_docs, mut pin_docs, mut requests) = match subscribed {
        Ok(s) => s,
        Err(e) => {
            warn!("push: subscribing: {e}; push is off, polling carries on");
            return;
        }
    };
    info!(url = %notify::redacted(&listener.config.url), "push: listening");
    let mut heard = Heard::default();
    let mut state_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(msg) = channel_docs.next() => {
                let kind = PointerKind::Channel;
                handle(&shared, &listener, &mut heard, kind, &listener.channel, &msg.payload);
            }
            Some(msg) = pin_docs.next() => {
                let kind = match Pointer::peek_kind(&msg.payload) {
                    Some(PointerKind::Unpin) => PointerKind::Unpin,
                    _ => PointerKind::Pin,
                };
                handle(&shared, &listener, &mut heard, kind, &listener.region, &msg.payload);
            }
            Some(msg) = requests.next() => {
                // Only to a reply inbox: a request naming another subject
                // (a channel's, say) would have every node publish there.
                if let Some(reply) = msg.reply.filter(|r| r.starts_with("_INBOX.")) {
                    let body = serde_json::to_vec(&status(&shared, &listener)).unwrap_or_default();
                    // Queued for the connection; a server gone for long
                    // must not hold the loop (or shutdown) on a full queue.
                    match tokio::time::timeout(Duration::from_secs(1), client.publish(reply, body.into())).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!("push: answering a status request: {e}"),
                        Err(_) => warn!("push: answering a status request: the connection's queue is full"),
                    }
                }
            }
            _ = state_tick.tick() => {
                let connected = client.connection_state() == async_nats::connection::State::Connected;
                set_state(if connected { "connected" } else { "disconnected" });
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// The largest pushed document looked at: a pointer or pin is a few
/// hundred bytes; anything larger is dropped before it is hashed or
/// parsed.
const MAX_DOC_BYTES: usize = 16 << 10;

/// What pushes this agent has heard, so that only news wakes a check: the
/// highest channel version and the latest pin (or unpin) signing time
/// verified so far, and whether a wake is already pending. Replaying any
/// older genuine document, however many, wakes nothing.
#[derive(Default)]
struct Heard {
    channel_version: u64,
    pin_created_at: String,
    waking: Arc<std::sync::atomic::AtomicBool>,
}

/// Verifies one pushed document; a genuine one that is new wakes a check
/// at a random moment within the spread (one pending wake at most).
fn handle(
    shared: &Arc<Shared>,
    listener: &Listener,
    heard: &mut Heard,
    kind: PointerKind,
    name: &str,
    bytes: &[u8],
) {
    let verdict = judge(shared, heard, kind, name, bytes);
    if let Err(why) = verdict {
        shared.metrics.count_push("ignored");
        debug!(?kind, "push: ignored a document ({why})");
        return;
    }
    shared.metrics.count_push("accepted");
    if heard.waking.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let delay = listener.spread.mul_f64(rand::random::<f64>());
    let (shared, waking) = (shared.clone(), heard.waking.clone());
    let pushed = (kind == PointerKind::Channel).then_some(heard.channel_version);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        waking.store(false, std::sync::atomic::Ordering::Release);
        shared.check_now.notify_one();
        // A CDN or a mirror may still answer the old pointer for a few
        // seconds: until the pushed version is served, look again at 1,
        // 2, 4, 8 and 16 s (then the safety poll carries on).
        let Some(version) = pushed else { return };
        for wait in [1, 2, 4, 8, 16] {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let served = served_version(&shared);
            let pinned = shared
                .status()
                .followed
                .as_ref()
                .is_some_and(|f| f.by != FollowedBy::Channel);
            if served >= version || pinned {
                return;
            }
            shared.check_now.notify_one();
        }
    });
}

/// Whether a pushed document is genuine and news; raises the marks if so.
fn judge(
    shared: &Shared,
    heard: &mut Heard,
    kind: PointerKind,
    name: &str,
    bytes: &[u8],
) -> Result<(), String> {
    if bytes.len() > MAX_DOC_BYTES {
        return Err(format!("{} bytes, over {MAX_DOC_BYTES}", bytes.len()));
    }
    let trust = shared
        .trust
        .load_full()
        .ok_or("no trusted keys loaded yet")?;
    let (p, _) = Pointer::verify(bytes, kind, name, &trust).map_err(|e| e.to_string())?;
    // An unpin does not expire (its expires_at is its created_at).
    if kind != PointerKind::Unpin
        && strata_common::time::parse_exact(&p.expires_at)
            .is_ok_and(|t| t < strata_common::time::now())
    {
        return Err(format!("expired at {}", p.expires_at));
    }
    if kind == PointerKind::Channel {
        let served = served_version(shared);
        if p.version <= heard.channel_version.max(served) {
            return Err(format!("version {} is not newer", p.version));
        }
        heard.channel_version = p.version;
    } else {
        // Exact RFC 3339 UTC timestamps (verified) order as strings.
        if p.created_at <= heard.pin_created_at {
            return Err(format!(
                "signed at {}, not after the last pin heard",
                p.created_at
            ));
        }
        heard.pin_created_at = p.created_at;
    }
    Ok(())
}

/// The version served now (0 before the first).
fn served_version(shared: &Shared) -> u64 {
    shared
        .served
        .load()
        .as_ref()
        .and_then(|r| r.current_meta())
        .map_or(0, |m| m.version)
}

/// This node, as a status reply says it.
fn status(shared: &Shared, listener: &Listener) -> NodeStatus {
    let status = shared.status().clone();
    let served = shared.served.load();
    let reader = served.as_ref();
    let untrusted = shared.untrusted.load();
    NodeStatus {
        node_id: listener.node_id.clone(),
        region: listener.region.clone(),
        channel: listener.channel.clone(),
        version: reader.and_then(|r| r.current_meta()).map(|m| m.version),
        pin: status
            .followed
            .as_ref()
            .filter(|f| f.by != FollowedBy::Channel)
            .map(|f| f.version),
        state: status.state.label().to_owned(),
        last_error_reason: status.last_error_reason.map(str::to_owned),
        retained: reader
            .map(|r| {
                r.metas
                    .keys()
                    .rev()
                    .filter(|v| !untrusted.contains(v))
                    .copied()
                    .collect()
            })
            .unwrap_or_default(),
    }
}
