//! Read-only `https://host/prefix` mirrors of the store layout (a CDN in
//! front of the bucket, or any static copy), through hyper and rustls (the
//! `https` feature).
//!
//! Plain GETs: `If-None-Match` for the pointer, `Range` for frames, bodies
//! streamed with the caller's byte limit. TLS trusts the platform's roots,
//! or only the CA certificates of a configured file. Nothing from a mirror
//! is trusted beyond what the signatures vouch for: the verifier treats it
//! as it treats S3.

use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ETAG, IF_NONE_MATCH, RANGE};
use hyper::{Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::runtime::Runtime;
use super::{BackendError, Fetched, Object, ReadStore, StoreError, StoreUrl};

/// How long a connection may take to establish.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the response headers, and then each piece of the body, may take.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTPS client of a mirror.
type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A mirror's base URL, with the client and the runtime it blocks on.
pub struct HttpsStore {
    url: StoreUrl,
    base: String,
    client: HttpClient,
    rt: Runtime,
    /// How long one read may take in all (see [`HttpsStore::with_deadline`]).
    deadline: Option<std::time::Duration>,
}

/// Why a mirror's answer was not what was asked.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status} from {uri}")]
struct HttpStatus {
    status: u16,
    uri: String,
}

impl HttpsStore {
    /// A client for the mirror at `url` (an `https://` URL), trusting the
    /// CA certificates of `ca_file` if given, the platform's roots otherwise.
    pub fn new(url: &StoreUrl, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let StoreUrl::Https(base) = url else {
            return Err(StoreError::Unsupported {
                url: url.clone(),
                reason: "not an https:// URL",
            });
        };
        let fatal = |what: &str, source: BackendError| StoreError::Fatal {
            key: what.to_owned(),
            source,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = match ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| fatal(&path.display().to_string(), Box::new(e)))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(fatal(
                        &path.display().to_string(),
                        "ca_file holds no usable CA certificate (PEM)".into(),
                    ));
                }
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| fatal("TLS", Box::new(e)))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(config)
            }
            None => HttpsConnectorBuilder::new()
                .with_provider_and_native_roots(provider)
                .map_err(|e| fatal("the platform's CA certificates", Box::new(e)))?,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = builder.https_only().enable_http1().wrap_connector(http);
        let rt = Runtime::new().map_err(|e| StoreError::io(base, e))?;
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            url: url.clone(),
            base: base.clone(),
            client,
            rt,
            deadline: None,
        })
    }

    /// Gives up any one read after `deadline` in all, however the mirror
    /// trickles its answer (the agent: twice its `check_timeout`).
    pub fn with_deadline(mut self, deadline: std::time::Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// GETs `key` of the mirror at `base` with `headers`; `Ok(None)` on 304.
    async fn send(
        client: &HttpClient,
        base: &str,
        key: &str,
        headers: &[(hyper::header::HeaderName, String)],
    ) -> Result<Option<hyper::Response<hyper::body::Incoming>>, StoreError> {
        let uri = format!("{base}/{key}");
        let mut request = Request::get(&uri);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Empty::new()).map_err(|e| StoreError::Fatal {
            key: key.to_owned(),
            source: Box::new(e),
        })?;
        let response = tokio::time::timeout(READ_TIMEOUT, client.request(request))
            .await
            .map_err(|e| StoreError::Transient {
                key: key.to_owned(),
                source: Box::new(e),
            })?
            .map_err(|e| StoreError::Transient {
                key: key.to_owned(),
                source: Box::new(e),
            })?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        if status.is_success() {
            return Ok(Some(response));
        }
        let failure = Box::new(HttpStatus {
            status: status.as_u16(),
            uri,
        });
        let key = key.to_owned();
        Err(match status.as_u16() {
            404 => StoreError::NotFound { key },
            429 | 500..=599 => StoreError::Transient {
                key,
                source: failure,
            },
            _ => StoreError::Fatal {
                key,
                source: failure,
            },
        })
    }

    /// GETs `key` of the mirror at `base` into `out`, stopping past
    /// `max_bytes`.
    async fn read_to<W: Write + ?Sized>(
        client: &HttpClient,
        base: &str,
        key: &str,
        max_bytes: u64,
        out: &mut W,
    ) -> Result<u64, StoreError> {
        let Some(response) = Self::send(client, base, key, &[]).await? else {
            return Err(StoreError::Fatal {
                key: key.to_owned(),
                source: "the mirror answered 304 to an unconditional GET".into(),
            });
        };
        Self::read_body(key, response, max_bytes, out).await
    }

    /// Streams a response body into `out`, stopping past `max_bytes`.
    async fn read_body<W: Write + ?Sized>(
        key: &str,
        response: hyper::Response<hyper::body::Incoming>,
        max_bytes: u64,
        out: &mut W,
    ) -> Result<u64, StoreError> {
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = declared.filter(|s| *s > max_bytes) {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                size,
                limit: max_bytes,
            });
        }
        let mut body = response.into_body();
        let mut copied = 0u64;
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
                .await
                .map_err(|e| StoreError::Transient {
                    key: key.to_owned(),
                    source: Box::new(e),
                })?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| StoreError::Transient {
                key: key.to_owned(),
                source: Box::new(e),
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            copied += data.len() as u64;
            if copied > max_bytes {
                return Err(StoreError::TooLarge {
                    key: key.to_owned(),
                    size: copied,
                    limit: max_bytes,
                });
            }
            out.write_all(&data).map_err(|e| StoreError::io(key, e))?;
        }
        if let Some(size) = declared.filter(|s| *s != copied) {
            return Err(StoreError::io(
                key,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the body ended after {copied} of its {size} bytes"),
                ),
            ));
        }
        Ok(copied)
    }
}

impl ReadStore for HttpsStore {
    fn url(&self) -> &StoreUrl {
        &self.url
    }

    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        self.rt.read(key, self.deadline, max_bytes, async {
            let headers: Vec<_> = etag
                .map(|e| (IF_NONE_MATCH, e.to_owned()))
                .into_iter()
                .collect();
            let Some(response) = Self::send(&self.client, &self.base, key, &headers).await? else {
                return Ok(Fetched::NotModified);
            };
            let etag = response
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut bytes = Vec::new();
            Self::read_body(key, response, max_bytes, &mut bytes).await?;
            Ok(Fetched::Object(Object { bytes, etag }))
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let len = range.end.saturating_sub(range.start);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.rt.read(key, self.deadline, len, async {
            let header = (RANGE, format!("bytes={}-{}", range.start, range.end - 1));
            let Some(response) = Self::send(&self.client, &self.base, key, &[header]).await? else {
                return Err(StoreError::Fatal {
                    key: key.to_owned(),
                    source: "the mirror answered 304 to a ranged GET".into(),
                });
            };
            if response.status() != StatusCode::PARTIAL_CONTENT {
                return Err(StoreError::Fatal {
                    key: key.to_owned(),
                    source: "the mirror does not serve byte ranges (no 206)".into(),
                });
            }
            let mut bytes = Vec::with_capacity(len as usize);
            Self::read_body(key, response, len, &mut bytes).await?;
            Ok(bytes)
        })
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        let read = Self::read_to(&self.client, &self.base, key, max_bytes, out);
        self.rt.read(key, self.deadline, max_bytes, read)
    }

    fn get_each(
        &self,
        keys: &mut dyn Iterator<Item = (String, u64)>,
        parallel: usize,
        ahead: usize,
        done: &mut dyn FnMut(Result<Vec<u8>, StoreError>) -> bool,
    ) {
        let read = |key: String, max_bytes| {
            let (client, base) = (self.client.clone(), self.base.clone());
            async move {
                let mut bytes = Vec::new();
                Self::read_to(&client, &base, &key, max_bytes, &mut bytes).await?;
                Ok(bytes)
            }
        };
        (self.rt).each_object(keys, self.deadline, parallel, ahead, read, done);
    }

    fn reads_concurrently(&self) -> bool {
        true
    }
}
