//! Lookups from the Strata agent on this node, for the call worker.
//!
//! The agent serves each tenant's effective config, system prompt and
//! phone routes over a unix socket (HTTP/1.1; docs/DESIGN.md, "Socket
//! API"). This crate asks it over keep-alive connections (tokio and hyper),
//! with what every call worker otherwise writes by hand:
//!
//! - **the session rule**: [`Client::session`] locks a call to the snapshot
//!   of its first lookup (`?snapshot=N`) and to its canary arm
//!   (`?session=<call id>`), so every lookup of one call answers from one
//!   snapshot and one arm;
//! - **revalidation**: answers are cached by their ETag (a content hash) and
//!   asked again with `If-None-Match`, so an unchanged config costs a 304
//!   and no parse;
//! - **typed errors** ([`Error`]) carrying the agent's code and message.
//!
//! ```text
//! let client = strata_client::Client::default();   // /run/strata/agent.sock
//! let mut call = client.session(call_id);
//! let tenant = call.route("+12025550123").await?;
//! let (config, prompt) = (call.tenant(&tenant).await?, call.prompt(&tenant).await?);
//! ```
//!
//! A [`Client`] is cheap to clone and safe to share between tasks and
//! threads (clones share connections and cache); a [`Session`] belongs to
//! one call. Values are shared with the cache: a config is an
//! `Arc<serde_json::Value>`, read it as is or deserialise your own type
//! from it (`MyConfig::deserialize(&*config)`).

mod cache;
mod conn;
mod error;
mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

pub use error::{Answered, Error};
pub use session::Session;

use cache::{Cache, Value};
use conn::Pool;

/// Where the packaged agent listens.
pub const DEFAULT_SOCKET: &str = "/run/strata/agent.sock";

/// Everything but RFC 3986's unreserved characters is percent-encoded in a
/// path segment or query value (a number's `+` among them).
const PART: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Which snapshot and canary draw a lookup asks for. The default is the
/// snapshot the agent serves now and no session (a tenant with a canary
/// answers its stable config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct At<'a> {
    /// `?snapshot=N`: a retained version (410 [`Error::SnapshotGone`] once
    /// it leaves the node's retention).
    pub snapshot: Option<u64>,
    /// `?session=`: the call whose canary draw answers (tenant and prompt
    /// lookups; the same call always draws the same arm).
    pub session: Option<&'a str>,
}

/// What a lookup names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tenant,
    Prompt,
    Route,
    Layer1,
}

impl Kind {
    /// The request path of a lookup of `key` at `at`.
    fn path(self, key: &str, at: At<'_>) -> String {
        let key = utf8_percent_encode(key, PART);
        let mut path = match self {
            Kind::Tenant => format!("/v1/tenants/{key}"),
            Kind::Prompt => format!("/v1/tenants/{key}/prompt"),
            Kind::Route => format!("/v1/routes/{key}"),
            Kind::Layer1 => "/v1/layer1".to_owned(),
        };
        let mut sep = '?';
        if let Some(n) = at.snapshot {
            path.push_str(&format!("{sep}snapshot={n}"));
            sep = '&';
        }
        if let Some(s) = at.session.filter(|s| !s.is_empty()) {
            path.push_str(&format!("{sep}session={}", utf8_percent_encode(s, PART)));
        }
        path
    }

    /// The cache's name for the answer to `key` (whatever the snapshot or
    /// session: see the `cache` module).
    fn name(self, key: &str) -> String {
        let kind = match self {
            Kind::Tenant => "t",
            Kind::Prompt => "p",
            Kind::Route => "r",
            Kind::Layer1 => "l",
        };
        format!("{kind}/{key}")
    }

    /// The value an answer's body stands for.
    fn decode(self, path: &str, body: &[u8]) -> Result<Value, Error> {
        let invalid = |reason: String| Error::Invalid {
            path: path.to_owned(),
            reason,
        };
        if self == Kind::Prompt {
            return std::str::from_utf8(body)
                .map(|s| Value::Text(s.into()))
                .map_err(|e| invalid(format!("the prompt is not UTF-8: {e}")));
        }
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        if self == Kind::Route {
            return json
                .get("tenant_id")
                .and_then(serde_json::Value::as_str)
                .map(|t| Value::Text(t.into()))
                .ok_or_else(|| invalid("no \"tenant_id\" string".into()));
        }
        Ok(Value::Json(Arc::new(json)))
    }
}

/// How a [`Client`] is made: socket, timeout, cache and pool sizes.
#[derive(Debug, Clone)]
pub struct Builder {
    socket: PathBuf,
    timeout: Duration,
    cache_size: usize,
    max_connections: usize,
    max_idle: usize,
}

impl Builder {
    /// The agent's socket (default [`DEFAULT_SOCKET`]).
    pub fn socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = socket.into();
        self
    }

    /// How long one lookup may take, waiting for a connection, connecting
    /// and a session's move to a newer snapshot included (default 1 s);
    /// past it, [`Error::Unavailable`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many answers are kept for revalidation, by name (a tenant's
    /// config and its prompt are two; Layer 1 one): default 1024, 0 turns
    /// the cache off.
    pub fn cache_size(mut self, size: usize) -> Self {
        self.cache_size = size;
        self
    }

    /// How many requests are in flight at once (default 32); more wait for
    /// one to finish, within their timeout. The agent's `max_connections`
    /// is shared by every worker on the node.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// How many idle connections are kept open for reuse (default 16, at
    /// most `max_connections`).
    pub fn max_idle(mut self, n: usize) -> Self {
        self.max_idle = n;
        self
    }

    /// The client.
    pub fn build(self) -> Client {
        Client {
            inner: Arc::new(Inner {
                pool: Pool::new(
                    self.socket,
                    self.timeout,
                    self.max_connections,
                    self.max_idle,
                ),
                cache: Cache::new(self.cache_size),
            }),
        }
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            socket: DEFAULT_SOCKET.into(),
            timeout: Duration::from_secs(1),
            cache_size: 1024,
            max_connections: 32,
            max_idle: 16,
        }
    }
}

/// Lookups from the agent on this node. Clones share connections and
/// cache; use one per process. Needs a tokio runtime with IO and time
/// enabled (connections are driven by tasks it spawns; lookups have a
/// deadline).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    cache: Cache,
}

impl Default for Client {
    /// A client of the agent at [`DEFAULT_SOCKET`].
    fn default() -> Self {
        Builder::default().build()
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.inner.pool.socket())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the agent listening on `socket`, with the defaults.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Builder::default().socket(socket).build()
    }

    /// A client with other settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The tenant's effective config.
    pub async fn tenant(&self, id: &str) -> Result<Arc<serde_json::Value>, Error> {
        self.tenant_at(id, At::default()).await
    }

    /// The tenant's effective config at `at` (its canary's, for a session
    /// that draws it).
    pub async fn tenant_at(&self, id: &str, at: At<'_>) -> Result<Arc<serde_json::Value>, Error> {
        Ok(json(
            self.lookup(Kind::Tenant, id, at, self.inner.pool.deadline())
                .await?
                .0,
        ))
    }

    /// The tenant's system prompt: Layer 1's base prompt, then the
    /// tenant's. Call-time placeholders (`{caller_name}`) are yours to fill.
    pub async fn prompt(&self, id: &str) -> Result<Arc<str>, Error> {
        self.prompt_at(id, At::default()).await
    }

    /// The tenant's system prompt at `at`.
    pub async fn prompt_at(&self, id: &str, at: At<'_>) -> Result<Arc<str>, Error> {
        Ok(text(
            self.lookup(Kind::Prompt, id, at, self.inner.pool.deadline())
                .await?
                .0,
        ))
    }

    /// The id of the tenant owning a dialled number (E.164, `+1…`);
    /// [`Error::NotFound`] if none does.
    pub async fn route(&self, e164: &str) -> Result<Arc<str>, Error> {
        self.route_at(e164, At::default()).await
    }

    /// The tenant owning a number at `at` (its session is not used).
    pub async fn route_at(&self, e164: &str, at: At<'_>) -> Result<Arc<str>, Error> {
        Ok(text(
            self.lookup(Kind::Route, e164, at, self.inner.pool.deadline())
                .await?
                .0,
        ))
    }

    /// Layer 1: the base prompt, the policy (plans among it) and the
    /// defaults.
    pub async fn layer1(&self) -> Result<Arc<serde_json::Value>, Error> {
        self.layer1_at(At::default()).await
    }

    /// Layer 1 at `at`.
    pub async fn layer1_at(&self, at: At<'_>) -> Result<Arc<serde_json::Value>, Error> {
        Ok(json(
            self.lookup(Kind::Layer1, "", at, self.inner.pool.deadline())
                .await?
                .0,
        ))
    }

    /// What the agent serves and its state (`/v1/snapshot`: `version`,
    /// `ready`, `last_error`, …).
    pub async fn snapshot(&self) -> Result<serde_json::Value, Error> {
        let path = "/v1/snapshot";
        let deadline = self.inner.pool.deadline();
        let reply = self.inner.pool.get(path, None, deadline).await?;
        if reply.status != 200 {
            return Err(Error::answered(reply.status, &reply.body));
        }
        serde_json::from_slice(&reply.body).map_err(|e| Error::Invalid {
            path: path.into(),
            reason: format!("not JSON: {e}"),
        })
    }

    /// A call's lookups, locked to the snapshot of its first lookup and to
    /// its canary arm (see [`Session`]).
    pub fn session(&self, call_id: impl Into<String>) -> Session {
        Session::new(self.clone(), call_id.into())
    }

    /// One lookup, answered by `deadline`: its value and the snapshot that
    /// answered. A kept answer is revalidated; a 304 that names none of the
    /// answers kept before the request (one without an `ETag` while two
    /// arms are kept) is asked again without `If-None-Match`.
    async fn lookup(
        &self,
        kind: Kind,
        key: &str,
        at: At<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<(Value, Option<u64>), Error> {
        let path = kind.path(key, at);
        let name = kind.name(key);
        let kept = self.inner.cache.get(&name);
        let tags = kept.as_ref().map(cache::if_none_match);
        let mut reply = self
            .inner
            .pool
            .get(&path, tags.as_deref(), deadline)
            .await?;
        if reply.status == 304 {
            match kept
                .as_ref()
                .and_then(|arms| cache::pick(arms, reply.etag.as_deref()))
            {
                Some(value) => return Ok((value, reply.snapshot)),
                None => reply = self.inner.pool.get(&path, None, deadline).await?,
            }
        }
        if reply.status != 200 {
            return Err(Error::answered(reply.status, &reply.body));
        }
        let value = kind.decode(&path, &reply.body)?;
        if let Some(etag) = &reply.etag {
            self.inner.cache.put(&name, etag, value.clone());
        }
        Ok((value, reply.snapshot))
    }
}

/// A JSON lookup's value (a text one never reaches here: [`Kind::decode`]
/// gives each kind one form).
fn json(value: Value) -> Arc<serde_json::Value> {
    match value {
        Value::Json(v) => v,
        Value::Text(t) => Arc::new(serde_json::Value::String(t.to_string())),
    }
}

/// A text lookup's value (prompt, route).
fn text(value: Value) -> Arc<str> {
    match value {
        Value::Text(t) => t,
        Value::Json(v) => v.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_encode_numbers_ids_and_sessions() {
        let at = At {
            snapshot: Some(7),
            session: Some("call 1/2"),
        };
        assert_eq!(
            Kind::Route.path("+12025550123", At::default()),
            "/v1/routes/%2B12025550123"
        );
        assert_eq!(
            Kind::Prompt.path("acme-hvac", at),
            "/v1/tenants/acme-hvac/prompt?snapshot=7&session=call%201%2F2"
        );
        assert_eq!(
            Kind::Layer1.path(
                "",
                At {
                    snapshot: None,
                    session: Some("")
                }
            ),
            "/v1/layer1"
        );
    }
}
