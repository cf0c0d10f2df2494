//! `metrics_listen`: `/metrics`, `/healthz` and `/readyz` over TCP, for a
//! Prometheus server (which cannot scrape a unix socket; tenant configs
//! never leave the socket). Shared fairly: one client address holds at most
//! [`PER_PEER`] of the [`SCRAPE_CONNECTIONS`] slots, and a client that
//! sends no request head within [`SCRAPE_HEADER_TIMEOUT`] is closed, so a
//! local process opening half-open connections cannot starve the scraper.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use crate::state::Shared;
use crate::{ACCEPT_BACKOFF, AcceptErrors, http, serve};

/// Scrapers served at once on `metrics_listen`.
const SCRAPE_CONNECTIONS: usize = 64;
/// Connections one client address may hold at once.
const PER_PEER: usize = 4;
/// How long a scraper may take to send its request head.
const SCRAPE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Open connections by client address.
#[derive(Default, Clone)]
struct Peers(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One connection counted against its client address until dropped.
struct PeerSlot {
    peers: Peers,
    ip: IpAddr,
}

impl Peers {
    /// Counts a connection from `ip`, unless it already holds [`PER_PEER`].
    fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `metrics_listen` until `stop`: at most [`SCRAPE_CONNECTIONS`]
/// at once, [`PER_PEER`] per client address (one more is closed at once).
pub(crate) async fn serve_scrapes(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    idle_timeout: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(SCRAPE_CONNECTIONS));
    let peers = Peers::default();
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_errors.recovered();
                    let Some(peer_slot) = peers.admit(peer.ip()) else {
                        tracing::debug!(%peer, "closing a scrape connection: its address holds {PER_PEER} already");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    serve(
                        stream,
                        shared.clone(),
                        http::handle_scrape,
                        (slot, peer_slot),
                        idle_timeout,
                        SCRAPE_HEADER_TIMEOUT,
                        &graceful,
                    );
                }
                Err(e) => {
                    accept_errors.failed(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_and_gets_it_back() {
        let peers = Peers::default();
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let held: Vec<_> = (0..PER_PEER).filter_map(|_| peers.admit(a)).collect();
        assert_eq!(held.len(), PER_PEER);
        assert!(peers.admit(a).is_none());
        assert!(peers.admit(b).is_some());
        drop(held);
        assert!(peers.admit(a).is_some());
    }
}
