//! `metrics_listen`: `/metrics`, `/healthz` and `/readyz` over TCP, for a
//! Prometheus server (which cannot scrape a unix socket; tenant configs
//! never leave the socket). Shared fairly: one client address holds at most
//! [`PER_PEER`] of the [`SCRAPE_CONNECTIONS`] slots, and a client that
//! sends no request head within [`SCRAPE_HEADER_TIMEOUT`] is closed. When
//! an address holds its share, or every slot is taken, a new connection is
//! let in by closing the connection (of that address, or of any) that
//! asked least recently (or, never having asked, was accepted least
//! recently), among those accepted at least [`GRACE`] ago, else the
//! oldest that never asked; if there is none, the new one is closed. So a
//! local process holding connections, silent or idle, from the scraper's
//! own address or from many, cannot keep it out: its connections are the
//! older ones, and a scraper asks as soon as it connects.

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
/// How long a new connection that asked is safe from being closed to make
/// room (one that never asked is not, once all are this young).
const GRACE: std::time::Duration = std::time::Duration::from_millis(250);

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
    /// The tick of the last request head, or of the accept before the
    /// first.
    asked: Arc<AtomicU64>,
    /// The tick of its accept: `asked` still equal means it never asked.
    accepted_tick: u64,
    accepted: std::time::Instant,
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

    /// A place for a connection from `ip`. When the address holds
    /// [`PER_PEER`] already, or all places are taken, the connection (of
    /// that address, or of any) that asked (or was accepted) least
    /// recently, and not within the grace, is told to close; none if
    /// there is no such connection.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
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
        let asked = Arc::new(AtomicU64::new(now));
        let evict = Arc::new(Notify::new());
        *open.per_peer.entry(ip).or_insert(0) += 1;
        open.conns.insert(
            id,
            Conn {
                ip,
                asked: asked.clone(),
                accepted_tick: now,
                accepted: std::time::Instant::now(),
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
    /// one: past the grace, the one that asked (or was accepted) least
    /// recently; else the oldest that never asked.
    fn least_recent(&self, which: impl Fn(&Conn) -> bool) -> Option<u64> {
        let asked = |c: &Conn| c.asked.load(Ordering::Relaxed);
        self.conns
            .iter()
            .filter(|(_, c)| which(c) && c.accepted.elapsed() >= self.grace)
            .min_by_key(|(_, c)| asked(c))
            .or_else(|| {
                self.conns
                    .iter()
                    .filter(|(_, c)| which(c) && asked(c) == c.accepted_tick)
                    .min_by_key(|(_, c)| c.accepted_tick)
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

/// Serves `metrics_listen` until `stop` (see the module doc for who gets
/// a slot).
pub(crate) async fn serve_scrapes(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    idle_timeout: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Slots::new(GRACE);
    let graceful = GracefulShutdown::new();
    let mut accept_errors = AcceptErrors::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    accept_errors.recovered();
                    let Some(slot) = slots.admit(peer.ip()) else {
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
                        Timeouts { header: SCRAPE_HEADER_TIMEOUT, idle: idle_timeout },
                        evicted,
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
        // Within the grace, every one asked: a fifth from one address is
        // closed.
        let slots = Slots::new(std::time::Duration::from_secs(3600));
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let held: Vec<_> = (0..PER_PEER).filter_map(|_| slots.admit(a)).collect();
        assert_eq!(held.len(), PER_PEER);
        for slot in &held {
            slot.asked();
        }
        assert!(slots.admit(a).is_none());
        assert!(slots.admit(b).is_some());
        drop(held);
        assert!(slots.admit(a).is_some());
    }

    #[test]
    fn a_new_connection_closes_its_address_s_oldest_silent_one_at_once() {
        let slots = Slots::new(std::time::Duration::from_secs(3600));
        let a: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..PER_PEER).filter_map(|_| slots.admit(a)).collect();
        held[0].asked();
        let newcomer = slots.admit(a).expect("room made");
        assert!(slots.lock().conns.contains_key(&held[0].id), "it asked");
        assert!(!slots.lock().conns.contains_key(&held[1].id));
        assert!(slots.lock().conns.contains_key(&newcomer.id));
    }

    #[test]
    fn past_the_grace_a_new_connection_closes_its_address_s_oldest() {
        let slots = Slots::new(std::time::Duration::ZERO);
        let a: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..PER_PEER).filter_map(|_| slots.admit(a)).collect();
        for slot in &held[1..] {
            slot.asked();
        }
        let newcomer = slots.admit(a).expect("room made");
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
            held.push(slots.admit(ip).expect("room"));
        }
        // Every connection but the first asked since; the first is silent.
        for slot in &held[1..] {
            slot.asked();
        }
        let newcomer = slots.admit([127, 0, 0, 2].into()).expect("room made");
        assert_eq!(slots.lock().conns.len(), SCRAPE_CONNECTIONS);
        assert!(!slots.lock().conns.contains_key(&held[0].id));
        // The next one out is the one that asked least recently.
        let _second = slots.admit([127, 0, 0, 3].into()).expect("room made");
        assert!(!slots.lock().conns.contains_key(&held[1].id));
        assert!(slots.lock().conns.contains_key(&newcomer.id));
    }
}
