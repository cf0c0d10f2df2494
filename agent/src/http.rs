//! The HTTP/1.1 API on the unix socket.
//!
//! | request                          | answer                                        |
//! |----------------------------------|-----------------------------------------------|
//! | `GET /v1/tenants/{id}`           | effective config JSON; `ETag`, `X-Strata-Snapshot` |
//! | `GET /v1/tenants/{id}/prompt`    | combined system prompt, text/plain            |
//! | `GET /v1/routes/{e164}`          | `{"tenant_id": …}`; unknown number → 404      |
//! | `GET /v1/layer1`                 | Layer 1 JSON                                  |
//! | `GET /v1/snapshot`               | what is served and the agent's state          |
//! | `GET /v1/snapshots`              | retained versions                             |
//! | `?snapshot=N` on the first four  | answer from retained version N; 410 if gone   |
//! | `If-None-Match`                  | 304 when the ETag matches                     |
//! | `GET /healthz`, `/readyz`        | liveness; readiness (503 until a snapshot)    |
//! | `GET /metrics`                   | Prometheus text                               |
//! | `POST /v1/check`                 | 202: the store is checked now, backoff or not |
//!
//! Lookup bodies are redb pages handed to hyper as `Bytes`: nothing is
//! copied or serialised per request.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use strata_common::model::{PhoneNumber, TenantId};

use crate::arm::Arm;

use crate::db::{Entry, Reader};
use crate::endpoint::Endpoint;
use crate::state::{FollowedBy, Shared};

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one request.
pub async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Resp, Infallible> {
    let started = std::time::Instant::now();
    let endpoint = Endpoint::parse(req.uri().path());
    let resp = route(&req, endpoint, &shared);
    shared
        .metrics
        .observe_lookup(endpoint.index(), resp.status().as_u16(), started.elapsed());
    Ok(resp)
}

/// What `metrics_listen` answers: `/metrics`, `/healthz`, `/readyz` and
/// `/v1/snapshot` (read-only, no secret: a fleet tool reads `last_error`
/// remotely) as the socket does; anything else is 404, so that no tenant's
/// config is served over TCP.
pub async fn handle_scrape(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Resp, Infallible> {
    match Endpoint::parse(req.uri().path()) {
        Endpoint::Metrics | Endpoint::Healthz | Endpoint::Readyz | Endpoint::Snapshot => {
            handle(req, shared).await
        }
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "only /metrics, /healthz, /readyz and /v1/snapshot are served on metrics_listen; lookups are on the unix socket",
        )),
    }
}

fn route(req: &Request<Incoming>, endpoint: Endpoint<'_>, shared: &Shared) -> Resp {
    if endpoint == Endpoint::Check {
        if req.method() != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "POST /v1/check asks for a check of the store now",
            );
        }
        shared.check_now.notify_one();
        return json_response(
            StatusCode::ACCEPTED,
            &json!({ "checking": true, "see": "/v1/snapshot" }),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is supported",
        );
    }
    match endpoint {
        Endpoint::Healthz => return plain(StatusCode::OK, TEXT, Bytes::from_static(b"ok\n")),
        Endpoint::Readyz => {
            return if shared.is_ready() {
                plain(StatusCode::OK, TEXT, Bytes::from_static(b"ready\n"))
            } else {
                not_ready()
            };
        }
        Endpoint::Metrics => {
            let body = shared.render_metrics();
            return plain(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                Bytes::from(body),
            );
        }
        Endpoint::Snapshot => return snapshot(shared),
        _ => {}
    }
    // A guard, not a new Arc: no shared counter touched per lookup.
    let served = shared.served.load();
    let Some(reader) = served.as_deref() else {
        return not_ready();
    };
    if endpoint == Endpoint::Snapshots {
        return snapshots(reader, &shared.untrusted.load());
    }
    let version = match requested_version(req, reader, shared) {
        Ok(v) => v,
        Err(e) => return e.response(),
    };
    let session = crate::arm::session_of(req.uri().query());
    match lookup(
        reader,
        version,
        endpoint,
        req.uri().path(),
        session.as_deref(),
    ) {
        Ok((entry, content_type, arm)) => {
            let mut resp = entry_response(req, entry, content_type, version);
            if let Some(arm) = arm {
                resp.headers_mut()
                    .insert(ARM_HEADER, HeaderValue::from_static(arm.label()));
                shared.metrics.count_arm(arm.label());
            }
            resp
        }
        Err(e) => {
            if e.code == "storage" {
                // The sync thread reopens the file if redb latched an I/O error.
                shared
                    .read_failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            e.response()
        }
    }
}

/// Finds the stored value a lookup endpoint names, with its content type
/// and, for a tenant, the arm that answers `session` ([`crate::arm`]).
fn lookup(
    reader: &Reader,
    version: u64,
    endpoint: Endpoint<'_>,
    path: &str,
    session: Option<&[u8]>,
) -> Result<(Entry, &'static str, Option<Arm>), ApiError> {
    let tenant_missing = ("unknown_tenant", "no such tenant");
    let mut arm = None;
    let (found, content_type, missing) = match endpoint {
        Endpoint::Layer1 => (
            reader.layer1(version),
            JSON,
            ("not_found", "Layer 1 is missing"),
        ),
        Endpoint::Prompt(id) => {
            let id = tenant(id)?;
            let (canary, a) = arm_key(reader, version, id, session)?;
            arm = Some(a);
            let key = canary.as_ref().map_or(id, |(k, _)| k.as_str());
            (reader.prompt(version, key), TEXT, tenant_missing)
        }
        Endpoint::Tenant(id) => {
            let id = tenant(id)?;
            let (canary, a) = arm_key(reader, version, id, session)?;
            arm = Some(a);
            match canary {
                Some((_, entry)) => (Ok(Some(entry)), JSON, tenant_missing),
                None => (reader.config(version, id), JSON, tenant_missing),
            }
        }
        Endpoint::Route(number) => {
            let number = percent_decode(number);
            let number = PhoneNumber::check(&number).map_err(|message| ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "bad_number",
                message,
            })?;
            let missing = (
                "unknown_number",
                "no tenant owns this number (there is no default tenant)",
            );
            (reader.route(version, number), JSON, missing)
        }
        _ => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                code: "no_route",
                message: format!("no endpoint {path}"),
            });
        }
    };
    match found {
        Ok(Some(entry)) => Ok((entry, content_type, arm)),
        Ok(None) => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: missing.0,
            message: format!("{} in snapshot {version}", missing.1),
        }),
        Err(e) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "storage",
            message: e.to_string(),
        }),
    }
}

/// The record answering tenant `id` for `session`: its canary's key and
/// config when it has one and the session draws it; `None` (the tenant's
/// own) else.
fn arm_key(
    reader: &Reader,
    version: u64,
    id: &str,
    session: Option<&[u8]>,
) -> Result<(Option<(String, Entry)>, Arm), ApiError> {
    let Some(session) = session else {
        return Ok((None, Arm::Stable));
    };
    let storage = |e: crate::db::DbError| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "storage",
        message: e.to_string(),
    };
    let key = crate::arm::canary_key(id);
    match reader.config(version, &key).map_err(storage)? {
        // A canary answers only beside its tenant: never for one the
        // snapshot does not hold.
        Some(canary)
            if crate::arm::draws_canary(id, &canary.body(), session)
                && reader.config(version, id).map_err(storage)?.is_some() =>
        {
            Ok((Some((key, canary)), Arm::Canary))
        }
        _ => Ok((None, Arm::Stable)),
    }
}

/// A refused request, turned into a JSON error at the edge.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn response(&self) -> Resp {
        error(self.status, self.code, &self.message)
    }
}

fn tenant(id: &str) -> Result<&str, ApiError> {
    TenantId::check(id).map_err(|message| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "bad_tenant_id",
        message,
    })
}

/// `?snapshot=N` if given and retained, else the current version.
fn requested_version(
    req: &Request<Incoming>,
    reader: &Reader,
    shared: &Shared,
) -> Result<u64, ApiError> {
    let Some(query) = req.uri().query() else {
        return Ok(reader.current);
    };
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("snapshot=") {
            let v: u64 = v.parse().map_err(|_| ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "bad_snapshot",
                message: "snapshot must be a version number".into(),
            })?;
            let untrusted = shared.untrusted.load();
            if v != reader.current && untrusted.contains(&v) {
                return Err(ApiError {
                    status: StatusCode::GONE,
                    code: "snapshot_untrusted",
                    message: format!(
                        "snapshot {v} is stored on this node, but no trusted publisher key vouches for it any more (its signer was removed from the config); it is not served"
                    ),
                });
            }
            if !reader.metas.contains_key(&v) {
                let retained: Vec<u64> = reader
                    .metas
                    .keys()
                    .filter(|v| !untrusted.contains(v))
                    .copied()
                    .collect();
                return Err(ApiError {
                    status: StatusCode::GONE,
                    code: "snapshot_gone",
                    message: format!(
                        "snapshot {v} is not retained on this node (retained: {retained:?})"
                    ),
                });
            }
            return Ok(v);
        }
    }
    Ok(reader.current)
}

fn entry_response(
    req: &Request<Incoming>,
    entry: Entry,
    content_type: &'static str,
    version: u64,
) -> Resp {
    let etag = entry.etag();
    let etag_header = (!etag.is_empty())
        .then(|| {
            let mut quoted = Vec::with_capacity(etag.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(etag);
            quoted.push(b'"');
            HeaderValue::from_bytes(&quoted).ok()
        })
        .flatten();
    let not_modified = !etag.is_empty()
        && req
            .headers()
            .get(IF_NONE_MATCH)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| etag_matches(h, etag));
    let mut resp = if not_modified {
        plain(StatusCode::NOT_MODIFIED, content_type, Bytes::new())
    } else {
        plain(StatusCode::OK, content_type, entry.body())
    };
    let headers = resp.headers_mut();
    if let Some(h) = etag_header {
        headers.insert(ETAG, h);
    }
    headers.insert(SNAPSHOT_HEADER, version_header(version));
    resp
}

const SNAPSHOT_HEADER: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-strata-snapshot");
const ARM_HEADER: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-strata-arm");

/// The `X-Strata-Snapshot` value of `version`, made once per thread and
/// version: a clone is a reference count, not a formatted allocation.
fn version_header(version: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((v, h)) if *v == version => h.clone(),
            _ => {
                let h = HeaderValue::from(version);
                *last = Some((version, h.clone()));
                h
            }
        }
    })
}

fn etag_matches(header: &str, etag: &[u8]) -> bool {
    header.split(',').any(|candidate| {
        let c = candidate.trim();
        c == "*" || c.trim_start_matches("W/").trim_matches('"').as_bytes() == etag
    })
}

fn snapshot(shared: &Shared) -> Resp {
    // Status first: the sync loop swaps the snapshot while holding it.
    let status = shared.status().clone();
    let served = shared.served.load();
    let meta = served.as_ref().and_then(|r| r.current_meta());
    let pin = status
        .followed
        .as_ref()
        .filter(|f| f.by != FollowedBy::Channel)
        .map(|f| {
            json!({
                "version": f.version,
                "expires_at": f.expires_at,
                "created_at": f.created_at,
                "local": f.by == FollowedBy::LocalPin,
                "in_store": f.in_store,
            })
        });
    let body = json!({
        "version": meta.map(|m| m.version),
        "bundle_sha256": meta.map(|m| m.bundle_sha256.clone()),
        "created_at": meta.map(|m| m.created_at.clone()),
        // The document followed now (a refreshed pointer's new expiry), or
        // the one the snapshot was fetched under until the first check.
        "expires_at": status
            .followed
            .as_ref()
            .filter(|f| meta.is_some_and(|m| m.version == f.version))
            .and_then(|f| f.expires_at.clone())
            .or_else(|| meta.map(|m| m.expires_at.clone())),
        "fetched_at": meta.map(|m| m.fetched_at.clone()),
        "layer1_version": meta.map(|m| m.layer1_version.clone()),
        "tenant_count": meta.map(|m| m.tenant_count),
        "source": shared.source,
        "region": shared.region,
        "pinned": status.pinned(meta),
        "pin": pin,
        "last_check": status.last_check,
        "last_error": status.last_error,
        "last_error_reason": status.last_error_reason,
        "config_problem": status.config_problem,
        "metrics_address": status.metrics_address,
        "signed_by": status.signed_by,
        "trusted_keys": status.trusted_keys,
        "state": status.state,
        "applying": status.applying,
        "notify": status.notify,
    });
    json_response(StatusCode::OK, &body)
}

fn snapshots(reader: &Reader, untrusted: &std::collections::BTreeSet<u64>) -> Resp {
    let list: Vec<_> = reader
        .metas
        .values()
        .filter(|m| !untrusted.contains(&m.version))
        .map(|m| {
            json!({
                "version": m.version,
                "created_at": m.created_at,
                "bundle_sha256": m.bundle_sha256,
                "tenant_count": m.tenant_count,
                "current": m.version == reader.current,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "current": reader.current, "snapshots": list }),
    )
}

fn not_ready() -> Resp {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "no verified snapshot yet; see /v1/snapshot for why",
    )
}

/// A JSON error `{"error": {"code": …, "message": …}}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    plain(status, JSON, Bytes::from(bytes))
}

fn plain(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Decodes `%2B` and friends in a path segment (a `+` may arrive encoded).
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
