//! systemd's service protocol (`Type=notify`): `READY=1` once a verified
//! snapshot is served (from the local file too, with the store down),
//! `STATUS=` whenever the served version or the state changes, and, when
//! the unit sets `WatchdogSec=`, `WATCHDOG=1` only after a request to the
//! agent's own socket was answered: a wedged agent (a stuck accept loop, a
//! held lock) stops pinging and systemd restarts it. Outside systemd
//! (`NOTIFY_SOCKET` unset) every message is a no-op.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::state::Shared;

/// How often readiness and status are looked at.
const TICK: Duration = Duration::from_millis(200);

/// Sends readiness and status until `stop` changes, then `STOPPING=1`.
pub async fn run(shared: Arc<Shared>, socket: PathBuf, mut stop: watch::Receiver<bool>) {
    let watchdog = sd_notify::watchdog_enabled().map(|t| (t / 2).max(Duration::from_millis(50)));
    let mut ready = false;
    let mut last_status = String::new();
    let mut next_ping = tokio::time::Instant::now();
    loop {
        let status = status_line(&shared);
        if !ready && shared.is_ready() {
            ready = true;
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            last_status = status;
        } else if status != last_status {
            send(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        if let Some(every) = watchdog
            && tokio::time::Instant::now() >= next_ping
        {
            next_ping = tokio::time::Instant::now() + every;
            match tokio::time::timeout(every, crate::client::get(&socket, "/v1/snapshot")).await {
                Ok(Ok(a)) if a.status == 200 => send(&[NotifyState::Watchdog]),
                Ok(Ok(a)) => {
                    warn!(status = %a.status, "watchdog self-check answered badly; not pinging")
                }
                Ok(Err(e)) => warn!("watchdog self-check failed: {e}; not pinging"),
                Err(_) => warn!("watchdog self-check timed out; not pinging"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => break,
        }
    }
    send(&[NotifyState::Stopping]);
}

/// `serving version N (fresh)`, or `starting: no verified snapshot yet`.
fn status_line(shared: &Shared) -> String {
    let state = shared.status().state;
    let state = serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match shared.served.load().as_ref() {
        Some(r) => format!("serving version {} ({state})", r.current),
        None => format!("{state}: no verified snapshot yet"),
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify: {e}");
    }
}
