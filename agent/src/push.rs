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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use strata_common::notify::{self, NodeStatus, NotifyConfig};
use strata_common::pointer::{Pointer, PointerKind};
use tokio::sync::watch;
use tracing::{info, warn};

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

/// Documents remembered as handled (their hashes), so a replay of one
/// wakes nothing.
const SEEN: usize = 64;

/// Runs until shutdown: connects (retrying with backoff), listens, answers.
pub async fn run(listener: Listener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let set_state = |s: &'static str| shared.status().notify = Some(s);
    set_state("disconnected");
    let mut wait = Duration::from_millis(500);
    let client = loop {
        match notify::connect(&listener.config, &listener.node_id).await {
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
    info!(url = %listener.config.url, "push: listening");
    let mut seen: VecDeque<String> = VecDeque::new();
    let mut state_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(msg) = channel_docs.next() => {
                let kind = PointerKind::Channel;
                handle(&shared, &listener, &mut seen, kind, &listener.channel, &msg.payload);
            }
            Some(msg) = pin_docs.next() => {
                let kind = match Pointer::peek_kind(&msg.payload) {
                    Some(PointerKind::Unpin) => PointerKind::Unpin,
                    _ => PointerKind::Pin,
                };
                handle(&shared, &listener, &mut seen, kind, &listener.region, &msg.payload);
            }
            Some(msg) = requests.next() => {
                if let Some(reply) = msg.reply {
                    let body = serde_json::to_vec(&status(&shared, &listener)).unwrap_or_default();
                    if let Err(e) = client.publish(reply, body.into()).await {
                        warn!("push: answering a status request: {e}");
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

/// Verifies one pushed document; a genuine one that is new wakes a check
/// at a random moment within the spread.
fn handle(
    shared: &Arc<Shared>,
    listener: &Listener,
    seen: &mut VecDeque<String>,
    kind: PointerKind,
    name: &str,
    bytes: &[u8],
) {
    let Some(trust) = shared.trust.load_full() else {
        return;
    };
    let served = shared
        .served
        .load()
        .as_ref()
        .and_then(|r| r.current_meta())
        .map(|m| m.version);
    let digest = strata_common::canonical::sha256_hex(bytes);
    let verdict = match Pointer::verify(bytes, kind, name, &trust) {
        Err(e) => Err(e.to_string()),
        Ok(_) if seen.contains(&digest) => Err("already handled".to_owned()),
        // A channel pointer no newer than what is served says nothing new
        // (and a pin decides over it anyway); pins and unpins always are.
        Ok((p, _)) if kind == PointerKind::Channel && served.is_some_and(|v| p.version <= v) => {
            Err(format!("version {} is not newer", p.version))
        }
        Ok(_) => Ok(()),
    };
    if let Err(why) = verdict {
        shared.metrics.count_push("ignored");
        info!(?kind, "push: ignored a document ({why})");
        return;
    }
    if seen.len() == SEEN {
        seen.pop_front();
    }
    seen.push_back(digest);
    shared.metrics.count_push("accepted");
    let delay = listener.spread.mul_f64(rand::random::<f64>());
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        shared.check_now.notify_one();
    });
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
