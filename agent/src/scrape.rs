//! `metrics_listen`: `/metrics`, `/healthz` and `/readyz` over TCP, for a
//! Prometheus server (which cannot scrape a unix socket; tenant configs
//! never leave the socket). Shared fairly: one client address holds at most
//! [`PER_PEER`] of the [`SCRAPE_CONNECTIONS`] slots, and a client that
//! sends no request head within [`SCRAPE_HEADER_TIMEOUT`] is closed. When
//! an address holds its share, or every slot is taken, a new connection
//! must send bytes within [`FRESH`] (else it is closed), and is then let in
//! by closing another of that address's (or of anyone's): first the
//! oldest that never sent a request head (unless it brought bytes when
//! accepted and is younger than [`FRESH`]: a scraper whose request is being
//! read), then, among those older than [`GRACE`], the one that asked least
//! recently; if there is none, the new one is closed. So connections that
//! never ask, from the scraper's own address (127.0.0.1 for a local
//! Prometheus) or from many, cannot keep a scraper out: it sends its
//! request as it connects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{Notify, watch};

use crate::state::Shared;
use crate::{ACCEPT_BACKOFF, AcceptErrors, Timeouts, http, serve};

/// Scrapers served at once on `metrics_listen`.
const SCRAPE_CONNECTIONS: usize = 64;
/// Connections one client address may hold at once.
const PER_PEER: usize = 4;
/// How long a scraper may take to send its request head.
const SCRAPE_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a connection that asked is safe from being closed to make room.
const GRACE: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a connection that brought bytes when accepted is safe, before
/// its request head is read.
const FRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// The open connections: who holds them and when each last asked.
#[derive(Clone)]
struct Slots(Arc<Mutex<Open>>);

struct Open {
    /// How long a new connection is safe ([`GRACE`]; tests set zero).
    grace: std::time::Duration,
    /// Counts accepts and request heads: the order of "last asked".
    tick: u64,
    next_id: u64,
    conns: HashMap<u64, Conn>,
    per_peer: HashMap<IpAddr, usize>,
}

/// One open connection as [`Slots`] sees it.
struct Conn {
    ip: IpAddr,
    /// The tick of the last request head; 0: none yet.
    asked: Arc<AtomicU64>,
    /// The tick of its accept.
    accepted_tick: u64,
    accepted: std::time::Instant,
    /// Whether bytes were waiting when it was accepted.
    brought_bytes: bool,
    evict: Arc<Notify>,
}

/// One connection's place, given back when dropped.
struct Slot {
    slots: Slots,
    id: u64,
    /// Touched by the handler on every request head.
    asked: Arc<AtomicU64>,
    evict: Arc<Notify>,
}

impl Slots {
    fn new(grace: std::time::Duration) -> Self {
        Slots(Arc::new(Mutex::new(Open {
            grace,
            tick: 0,
            next_id: 0,
            conns: HashMap::new(),
            per_peer: HashMap::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a connection from `ip` finds a place without closing one.
    fn has_room(&self, ip: IpAddr) -> bool {
        let open = self.lock();
        open.per_peer.get(&ip).copied().unwrap_or(0) < PER_PEER
            && open.conns.len() < SCRAPE_CONNECTIONS
    }

    /// A place for a connection from `ip` (`brought_bytes`: its request
    /// was waiting already). When the address holds [`PER_PEER`], or all
    /// places are taken, another (of that address, or of any) is told to
    /// close, as the module doc says; none if none may be.
    fn admit(&self, ip: IpAddr, brought_bytes: bool) -> Option<Slot> {
        let mut open = self.lock();
        if open.per_peer.get(&ip).copied().unwrap_or(0) >= PER_PEER {
            let victim = open.least_recent(|c| c.ip == ip)?;
            open.remove(victim);
        }
        if open.conns.len() >= SCRAPE_CONNECTIONS {
            let victim = open.least_recent(|_| true)?;
            open.remove(victim);
        }
        let now = open.tick();
        let id = open.next_id;
        open.next_id += 1;
        let asked = Arc::new(AtomicU64::new(0));
        let evict = Arc::new(Notify::new());
        *open.per_peer.entry(ip).or_insert(0) += 1;
        open.conns.insert(
            id,
            Conn {
                ip,
                asked: asked.clone(),
                accepted_tick: now,
                accepted: std::time::Instant::now(),
                brought_bytes,
                evict: evict.clone(),
            },
        );
        Some(Slot {
            slots: self.clone(),
            id,
            asked,
            evict,
        })
    }
}

impl Open {
    /// The next tick.
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Of the connections `which` selects, the one to close for a new
    /// one: the oldest that never asked (and is not a fresh one whose
    /// request is being read), else, past the grace, the one that asked
    /// least recently.
    fn least_recent(&self, which: impl Fn(&Conn) -> bool) -> Option<u64> {
        let asked = |c: &Conn| c.asked.load(Ordering::Relaxed);
        let fresh = self.grace.min(FRESH);
        self.conns
            .iter()
            .filter(|(_, c)| {
                which(c) && asked(c) == 0 && !(c.brought_bytes && c.accepted.elapsed() < fresh)
            })
            .min_by_key(|(_, c)| c.accepted_tick)
            .or_else(|| {
                self.conns
                    .iter()
                    .filter(|(_, c)| {
                        which(c) && asked(c) != 0 && c.accepted.elapsed() >= self.grace
                    })
                    .min_by_key(|(_, c)| asked(c))
            })
            .map(|(id, _)| *id)
    }

    /// Forgets connection `id` and tells it to close (no-op if gone).
    fn remove(&mut self, id: u64) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        conn.evict.notify_one();
        if let Some(n) = self.per_peer.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&conn.ip);
            }
        }
    }
}

impl Slot {
    /// Records a request head on this connection.
    fn asked(&self) {
        let now = self.slots.lock().tick();
        self.asked.store(now, Ordering::Relaxed);
    }

    /// Completes when [`Slots::admit`] chose this connection to close.
    fn evicted(&self) -> impl Future<Output = ()> + Send + 'static {
        let evict = self.evict.clone();
        async move { evict.notified().await }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(self.id);
    }
}

/// Connections waiting to show they ask (below), at most: one more closes
/// the one waiting longest.
const WAITING: usize = 64;

/// Serves `metrics_listen` until `stop` (see the module doc for who gets
/// a slot). A connection that finds no free place is let in only once it
/// sends bytes (within [`FRESH`]; else it is closed): one that never asks
/// never takes another's place.
pub(crate) async fn serve_scrapes(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    idle_timeout: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Slots::new(GRACE);
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    let mut waiting: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(WAITING);
    loop {
        let (stream, peer, brought_bytes): (tokio::net::TcpStream, std::net::SocketAddr, bool) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_errors.recovered();
                    if slots.has_room(peer.ip()) {
                        (stream, peer, false)
                    } else {
                        // Full: it may take a place once it asks.
                        waiting.retain(|w| !w.is_finished());
                        if waiting.len() >= WAITING
                            && let Some(oldest) = waiting.pop_front()
                        {
                            oldest.abort();
                        }
                        let tx = ready_tx.clone();
                        let waiter = tokio::spawn(async move {
                            // `peek`, not `readable`: that one may wake
                            // with nothing to read.
                            let mut one = [0u8; 1];
                            let sent = tokio::time::timeout(FRESH, stream.peek(&mut one)).await;
                            if sent.is_ok_and(|r| r.is_ok_and(|n| n > 0)) {
                                let _ = tx.send((stream, peer)).await;
                            }
                        });
                        waiting.push_back(waiter.abort_handle());
                        continue;
                    }
                }
                Err(e) => {
                    accept_errors.failed(&e);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            Some((stream, peer)) = ready.recv() => (stream, peer, true),
            _ = stop.changed() => break,
        };
        let Some(slot) = slots.admit(peer.ip(), brought_bytes) else {
            tracing::debug!(%peer, "closing a scrape connection: no place is free, and every connection is new");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let evicted = slot.evicted();
        let slot = Arc::new(slot);
        let marks = slot.clone();
        serve(
            stream,
            shared.clone(),
            move |req, shared| {
                marks.asked();
                http::handle_scrape(req, shared)
            },
            slot,
            Timeouts {
                header: SCRAPE_HEADER_TIMEOUT,
                idle: idle_timeout,
            },
            evicted,
            &graceful,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_and_gets_it_back() {
        // Within the grace, every one asked: a fifth from one address is
        // closed.
        let slots = Slots::new(std::time::Duration::from_secs(3600));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let held: Vec<_> = (0..PER_PEER)
            .filter_map(|_| slots.admit(a, false))
            .collect();
        assert_eq!(held.len(), PER_PEER);
        for slot in &held {
            slot.asked();
        }
        assert!(slots.admit(a, false).is_none());
        assert!(slots.admit(b, false).is_some());
        drop(held);
        assert!(slots.admit(a, false).is_some());
    }

    #[test]
    fn a_new_connection_closes_its_address_s_oldest_silent_one_at_once() {
        let slots = Slots::new(std::time::Duration::from_secs(3600));
        let a: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..PER_PEER)
            .filter_map(|_| slots.admit(a, false))
            .collect();
        held[0].asked();
        let newcomer = slots.admit(a, false).expect("room made");
        assert!(slots.lock().conns.contains_key(&held[0].id), "it asked");
        assert!(!slots.lock().conns.contains_key(&held[1].id));
        assert!(slots.lock().conns.contains_key(&newcomer.id));
    }

    #[test]
    fn a_connection_that_brought_its_request_is_not_closed_before_it_is_read() {
        let slots = Slots::new(std::time::Duration::from_secs(3600));
        let a: IpAddr = [127, 0, 0, 1].into();
        let scraper = slots.admit(a, true).expect("room");
        let silent: Vec<_> = (1..PER_PEER)
            .filter_map(|_| slots.admit(a, false))
            .collect();
        let _newcomer = slots.admit(a, false).expect("room made");
        assert!(slots.lock().conns.contains_key(&scraper.id));
        assert!(!slots.lock().conns.contains_key(&silent[0].id));
    }

    #[test]
    fn past_the_grace_a_new_connection_closes_its_address_s_oldest() {
        let slots = Slots::new(std::time::Duration::ZERO);
        let a: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..PER_PEER)
            .filter_map(|_| slots.admit(a, false))
            .collect();
        for slot in &held[1..] {
            slot.asked();
        }
        let newcomer = slots.admit(a, false).expect("room made");
        assert!(!slots.lock().conns.contains_key(&held[0].id));
        assert_eq!(slots.lock().per_peer.get(&a), Some(&PER_PEER));
        assert!(slots.lock().conns.contains_key(&newcomer.id));
    }

    #[test]
    fn a_full_house_closes_the_connection_that_asked_least_recently() {
        let slots = Slots::new(std::time::Duration::ZERO);
        let mut held = Vec::new();
        for i in 0..SCRAPE_CONNECTIONS {
            let ip: IpAddr = [127, 0, 1, u8::try_from(i / PER_PEER).expect("small")].into();
            held.push(slots.admit(ip, false).expect("room"));
        }
        // Every connection but the first asked since; the first is silent.
        for slot in &held[1..] {
            slot.asked();
        }
        let newcomer = slots
            .admit([127, 0, 0, 2].into(), false)
            .expect("room made");
        assert_eq!(slots.lock().conns.len(), SCRAPE_CONNECTIONS);
        assert!(!slots.lock().conns.contains_key(&held[0].id));
        // The next one out is the one that asked least recently.
        newcomer.asked();
        let _second = slots
            .admit([127, 0, 0, 3].into(), false)
            .expect("room made");
        assert!(!slots.lock().conns.contains_key(&held[1].id));
        assert!(slots.lock().conns.contains_key(&newcomer.id));
    }
}
