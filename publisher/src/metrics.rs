//! `follow`'s own metrics, through `prometheus-client`, served at
//! `/metrics` on the TCP address `--metrics-addr` names (no listener
//! without it). No per-tenant label: how many tenants are held back is a
//! number; which ones, and why, is in `strata_publish_problems`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How a batch ended.
#[derive(Clone, Copy, Debug)]
pub enum Outcome {
    /// A new version was published.
    Published,
    /// The channel serves this content already: nothing published.
    Unchanged,
    /// Refused (a guard, the store, the database's rows): nothing published.
    Refused,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// What `follow` reports about itself.
#[derive(Debug, Default)]
pub struct FollowMetrics {
    batches: Family<OutcomeLabel, Counter>,
    /// Whether the database connection is up.
    pub connected: Gauge,
    /// Whether this follower holds the lock (the others stand by).
    pub leader: Gauge,
    /// Active rows (tenants) in the last batch.
    pub rows: Gauge,
    /// Tenants held back on their last published config in the last batch.
    pub held_back: Gauge,
    /// The channel version this follower last published.
    pub version: Gauge,
    /// When it last published (Unix seconds).
    pub last_publish: Gauge,
    /// How long the last batch took (milliseconds).
    last_batch_ms: Gauge,
}

impl FollowMetrics {
    /// Counts a batch that started at `started`.
    pub fn batch(&self, outcome: Outcome, started: Instant) {
        let outcome = match outcome {
            Outcome::Published => "published",
            Outcome::Unchanged => "unchanged",
            Outcome::Refused => "refused",
        };
        self.batches.get_or_create(&OutcomeLabel { outcome }).inc();
        self.last_batch_ms
            .set(started.elapsed().as_millis().try_into().unwrap_or(i64::MAX));
    }

    fn encode(&self) -> String {
        let mut r = Registry::default();
        r.register(
            "strata_follow_batches",
            "Batches by outcome: published, unchanged, refused",
            self.batches.clone(),
        );
        let gauges: [(&str, &str, &Gauge); 7] = [
            (
                "strata_follow_connected",
                "Whether the database connection is up",
                &self.connected,
            ),
            (
                "strata_follow_leader",
                "Whether this follower holds the lock and publishes",
                &self.leader,
            ),
            (
                "strata_follow_rows",
                "Active rows (tenants) in the last batch",
                &self.rows,
            ),
            (
                "strata_follow_held_back_tenants",
                "Tenants held back on their last published config",
                &self.held_back,
            ),
            (
                "strata_follow_published_version",
                "The channel version last published",
                &self.version,
            ),
            (
                "strata_follow_last_publish_timestamp_seconds",
                "When the last version was published",
                &self.last_publish,
            ),
            (
                "strata_follow_last_batch_milliseconds",
                "How long the last batch took",
                &self.last_batch_ms,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}

/// Serves `/metrics` on `addr` from a thread of its own; the bound address
/// (a port 0 made real).
pub fn serve(addr: SocketAddr, metrics: Arc<FollowMetrics>) -> Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the metrics server")?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        // Out of descriptors: wait, rather than spin.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    };
                    let metrics = metrics.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                            let metrics = metrics.clone();
                            async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        // A client that never finishes its request is
                        // dropped; a scrape is one short request.
                        let serve = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(std::time::Duration::from_secs(5))
                            .serve_connection(io, service);
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_secs(30), serve).await;
                    });
                }
            });
        })
        .context("starting the metrics thread")?;
    Ok(bound)
}

fn answer(req: &Request<hyper::body::Incoming>, metrics: &FollowMetrics) -> Response<Full<Bytes>> {
    let (status, body) = if req.uri().path() == "/metrics" {
        (200, metrics.encode())
    } else {
        (404, "not found: metrics are at /metrics\n".to_owned())
    };
    Response::builder()
        .status(status)
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
