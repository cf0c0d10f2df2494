//! Keep-alive HTTP/1.1 connections to the agent's unix socket, through
//! hyper's client, pooled: a request takes an idle connection or opens
//! one, and gives it back when its answer is read. At most
//! `max_connections` requests are in flight at once (more wait, within
//! their deadline): the agent's own connection limit is shared by every
//! worker on the node.

use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::header::{ETAG, HOST, HeaderValue, IF_NONE_MATCH};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::Error;

/// One answer, read whole.
pub(crate) struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `ETag`, unquoted.
    pub etag: Option<String>,
    /// `X-Strata-Snapshot`: the snapshot that answered.
    pub snapshot: Option<u64>,
    /// The body.
    pub body: Bytes,
}

type Sender = SendRequest<Empty<Bytes>>;

/// The connections to one socket.
pub(crate) struct Pool {
    socket: PathBuf,
    timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Sender>>,
    slots: Semaphore,
}

impl Pool {
    pub(crate) fn new(
        socket: PathBuf,
        timeout: Duration,
        max_connections: usize,
        max_idle: usize,
    ) -> Self {
        Self {
            socket,
            timeout,
            max_idle: max_idle.min(max_connections),
            idle: Mutex::default(),
            slots: Semaphore::new(max_connections.max(1)),
        }
    }

    /// When a lookup starting now must have its answer.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The socket asked.
    pub(crate) fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// `GET path`, answered by `deadline` (a lookup's requests share one).
    pub(crate) async fn get(
        &self,
        path: &str,
        if_none_match: Option<&str>,
        deadline: Instant,
    ) -> Result<Reply, Error> {
        let asked = async {
            let _slot = self
                .slots
                .acquire()
                .await
                .map_err(|e| self.unavailable(io::Error::other(e)))?;
            self.exchange(path, if_none_match).await
        };
        match tokio::time::timeout_at(deadline, asked).await {
            Ok(reply) => reply,
            Err(_) => Err(self.unavailable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {:?}", self.timeout),
            ))),
        }
    }

    async fn exchange(&self, path: &str, if_none_match: Option<&str>) -> Result<Reply, Error> {
        let request = || {
            let mut r = hyper::Request::get(path).header(HOST, HeaderValue::from_static("strata"));
            if let Some(tags) = if_none_match {
                r = r.header(IF_NONE_MATCH, tags);
            }
            r.body(Empty::<Bytes>::new()).map_err(|e| Error::Invalid {
                path: path.to_owned(),
                reason: format!("not a request path: {e}"),
            })
        };
        let mut last = None;
        for attempt in 0..2 {
            // The retry takes a new connection: the other idle ones may
            // have been closed by the agent at the same moment.
            let idle = if attempt == 0 { self.take_idle() } else { None };
            let (sender, reused) = match idle {
                Some(s) => (s, true),
                None => (self.connect().await?, false),
            };
            match send(sender, request()?).await {
                Ok((reply, sender)) => {
                    self.give_back(sender);
                    return Ok(reply);
                }
                // A kept-alive connection the agent closed (its
                // idle_timeout, a restart): once more on a new one. A GET
                // is safe to repeat.
                Err(e) if reused => last = Some(e),
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        Err(self.unavailable(last.unwrap_or_else(|| io::Error::other("no answer"))))
    }

    async fn connect(&self) -> Result<Sender, Error> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.unavailable(e))?;
        let (sender, conn) = handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unavailable(io::Error::other(e)))?;
        tokio::spawn(async move {
            // Ends when the agent or the sender closes the connection.
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn take_idle(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn give_back(&self, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    pub(crate) fn unavailable(&self, source: io::Error) -> Error {
        Error::Unavailable {
            socket: self.socket.clone(),
            source,
        }
    }
}

/// Sends one request on `sender` and reads its answer whole.
async fn send(
    mut sender: Sender,
    request: hyper::Request<Empty<Bytes>>,
) -> Result<(Reply, Sender), io::Error> {
    sender.ready().await.map_err(io::Error::other)?;
    let resp = sender
        .send_request(request)
        .await
        .map_err(io::Error::other)?;
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    let etag =
        header(ETAG.as_str()).map(|e| e.trim_start_matches("W/").trim_matches('"').to_owned());
    let snapshot = header("x-strata-snapshot").and_then(|s| s.parse().ok());
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    Ok((
        Reply {
            status,
            etag,
            snapshot,
            body,
        },
        sender,
    ))
}
