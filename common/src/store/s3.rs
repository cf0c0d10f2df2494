//! `s3://bucket/prefix` stores, through aws-sdk-s3 (the `s3` feature).
//!
//! Region, endpoint and credentials come from the standard AWS chain
//! (environment, profile, web identity, instance profile), so
//! `AWS_ENDPOINT_URL` and friends point it at any S3-compatible server; with
//! an endpoint configured, requests use path-style addressing. Every request
//! has a connect and a read timeout; the SDK retries throttling (503
//! SlowDown) and transient failures with backoff, and the callers back off
//! further between checks.
//!
//! Writes never lose a version: `put_new` is a create-only put
//! (`If-None-Match: *`, through a multipart upload for large bundles), and
//! `put_if` a compare-and-swap on the ETag (`If-Match`).

use std::io::Write;
use std::ops::Range;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::BehaviorVersion;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;

use super::runtime::Runtime;
use super::{BackendError, Fetched, ListPage, Object, ReadStore, StoreError, StoreUrl, WriteStore};

/// Objects above this size are uploaded in parts.
const MULTIPART_THRESHOLD: usize = 64 << 20;
/// The size of each part of a multipart upload.
const PART_SIZE: usize = 16 << 20;
/// Keys a page of [`WriteStore::list_page`] holds at most.
const PAGE: i32 = 1000;
/// The most of an error response's body read: S3's XML errors are a few
/// hundred bytes, and the SDK reads an error body whole before any caller's
/// limit applies (a hostile endpoint sent 800 MB with a 403).
const MAX_ERROR_BODY: usize = 64 << 10;

/// Bounds the body of every response that is not a success before the SDK
/// reads it: past [`MAX_ERROR_BODY`] the read fails, and the request with it.
#[derive(Debug)]
struct BoundedErrorBodies;

impl Intercept for BoundedErrorBodies {
    fn name(&self) -> &'static str {
        "BoundedErrorBodies"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if !response.status().is_success() {
            let body = response.take_body();
            *response.body_mut() =
                SdkBody::from_body_1_x(http_body_util::Limited::new(body, MAX_ERROR_BODY));
        }
        Ok(())
    }
}

/// A bucket and prefix, with the client and the runtime it blocks on.
pub struct S3Store {
    url: StoreUrl,
    bucket: String,
    prefix: String,
    client: Client,
    /// The SDK is async; the store traits are not (see the module doc of
    /// `store`). Each call blocks on this runtime.
    rt: Runtime,
    /// How long one read may take in all (see [`S3Store::with_deadline`]).
    deadline: Option<Duration>,
}

/// What an S3 request failed with, with the SDK's whole error chain in its
/// message (the SDK's own `Display` says only "service error").
#[derive(Debug, thiserror::Error)]
#[error("S3 {operation}: {detail}")]
struct S3Failure {
    operation: &'static str,
    detail: String,
    #[source]
    source: BackendError,
}

impl S3Store {
    /// Connects to the bucket of `url` (an `s3://` URL) with the standard
    /// AWS configuration chain.
    pub fn new(url: &StoreUrl) -> Result<Self, StoreError> {
        let StoreUrl::S3 { bucket, prefix } = url else {
            return Err(StoreError::Unsupported {
                url: url.clone(),
                reason: "not an s3:// URL",
            });
        };
        let rt = Runtime::new().map_err(|e| StoreError::io(bucket, e))?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build();
        let shared = rt.block_on_anywhere(
            aws_config::defaults(BehaviorVersion::latest())
                .timeout_config(timeouts)
                .load(),
        );
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(shared.endpoint_url().is_some())
            .interceptor(BoundedErrorBodies)
            .build();
        Ok(Self {
            url: url.clone(),
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            client: Client::from_conf(config),
            rt,
            deadline: None,
        })
    }

    /// Gives up any one read after `deadline` in all, however the bucket
    /// trickles its answer (the agent: twice its `check_timeout`).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The object key of a store key.
    fn object(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// A GetObject request for the store key `key`.
    fn get_object(
        &self,
        key: &str,
    ) -> aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object(key))
    }

    /// The store key of an object key under the prefix.
    fn store_key<'a>(&self, object: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            Some(object)
        } else {
            object
                .strip_prefix(self.prefix.as_str())
                .and_then(|k| k.strip_prefix('/'))
        }
    }

    /// Sends `request` (a GetObject of `key`) and reads the body into
    /// `out`, stopping past `max_bytes`.
    async fn read_to<W: Write + ?Sized>(
        key: &str,
        request: aws_sdk_s3::operation::get_object::builders::GetObjectFluentBuilder,
        max_bytes: u64,
        out: &mut W,
    ) -> Result<u64, StoreError> {
        let resp = request
            .send()
            .await
            .map_err(|e| classify(key, "GetObject", e))?;
        let declared = resp.content_length();
        Self::read_body(key, resp.body, declared, max_bytes, out).await
    }

    /// Reads `key`'s body into `out`, stopping past `max_bytes`.
    async fn read_body<W: Write + ?Sized>(
        key: &str,
        mut body: ByteStream,
        declared: Option<i64>,
        max_bytes: u64,
        out: &mut W,
    ) -> Result<u64, StoreError> {
        if let Some(size) = declared.and_then(|s| u64::try_from(s).ok())
            && size > max_bytes
        {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                size,
                limit: max_bytes,
            });
        }
        let mut copied = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Transient {
                key: key.to_owned(),
                source: Box::new(e),
            })?;
            copied += chunk.len() as u64;
            if copied > max_bytes {
                return Err(StoreError::TooLarge {
                    key: key.to_owned(),
                    size: copied,
                    limit: max_bytes,
                });
            }
            out.write_all(&chunk).map_err(|e| StoreError::io(key, e))?;
        }
        if let Some(size) = declared.and_then(|s| u64::try_from(s).ok())
            && copied != size
        {
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

    async fn upload_in_parts(&self, object: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| classify(object, "CreateMultipartUpload", e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(StoreError::Fatal {
                key: object.to_owned(),
                source: "CreateMultipartUpload answered without an upload id".into(),
            });
        };
        let result = async {
            let mut parts = Vec::new();
            for (i, chunk) in bytes.chunks(PART_SIZE).enumerate() {
                let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(object)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .map_err(|e| classify(object, "UploadPart", e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                );
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .if_none_match("*")
                .send()
                .await
                .map_err(|e| classify(object, "CompleteMultipartUpload", e))
        }
        .await;
        if result.is_err() {
            // Leave no parts behind to be billed; the error that matters is
            // the one above.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .send()
                .await;
        }
        result.map(|_| ())
    }
}

/// Sorts an SDK error into the store's kinds by its HTTP status.
fn classify<E>(key: &str, operation: &'static str, e: SdkError<E>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    // A missing bucket is configuration, not an empty store.
    let no_bucket = e
        .as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "NoSuchBucket");
    let status = e
        .raw_response()
        .map(|r| r.status().as_u16())
        .filter(|s| !(no_bucket && *s == 404));
    let construction = matches!(e, SdkError::ConstructionFailure(_));
    let summary = explain(&e, status);
    // The SDK's whole chain, for whoever debugs the store itself.
    tracing::debug!(operation, key, error = %DisplayErrorContext(&e), "S3 request failed");
    let failure = |e: SdkError<E>| S3Failure {
        operation,
        detail: summary,
        source: Box::new(e),
    };
    let key = key.to_owned();
    match status {
        Some(404) => StoreError::NotFound { key },
        Some(409 | 412) => StoreError::PreconditionFailed { key },
        Some(s) if s == 429 || s >= 500 => StoreError::Transient {
            key,
            source: Box::new(failure(e)),
        },
        Some(400..=499) => StoreError::Fatal {
            key,
            source: Box::new(failure(e)),
        },
        _ if construction || no_bucket => StoreError::Fatal {
            key,
            source: Box::new(failure(e)),
        },
        _ => StoreError::Transient {
            key,
            source: Box::new(failure(e)),
        },
    }
}

/// What an operator acts on, from an SDK error and its HTTP status: bad
/// credentials, missing permissions, a missing bucket, throttling, the
/// store failing, or the network; anything else in the SDK's own words.
fn explain<E>(e: &SdkError<E>, status: Option<u16>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
    let with = |what: &str| {
        if code.is_empty() {
            match status {
                Some(s) => format!("{what} (HTTP {s})"),
                None => what.to_owned(),
            }
        } else {
            format!("{what} ({code})")
        }
    };
    match (code, status) {
        (
            "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" | "InvalidToken"
            | "TokenRefreshRequired",
            _,
        ) => with(
            "the credentials were refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the profile or the role, and that the clock is right",
        ),
        ("NoSuchBucket", _) => with(
            "the bucket does not exist: check the bucket in the store URL, AWS_REGION and AWS_ENDPOINT_URL",
        ),
        ("AccessDenied" | "AllAccessDisabled", _) | (_, Some(401 | 403)) => with(
            "access denied: these credentials may not use this bucket or prefix (OPERATIONS.md lists the permissions needed)",
        ),
        ("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded", _)
        | (_, Some(429 | 503)) => with("throttled by the store; retried with backoff"),
        (_, Some(s)) if s >= 500 => with("the store failed; retried with backoff"),
        _ => match e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                "cannot reach the store: a network, DNS, TLS or endpoint problem (check AWS_ENDPOINT_URL and the network)".to_owned()
            }
            SdkError::ResponseError(_) => with(
                "the store's answer could not be read: cut short, or an error body over 64 KiB",
            ),
            _ => DisplayErrorContext(e).to_string(),
        },
    }
}

impl ReadStore for S3Store {
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
            let sent = self
                .get_object(key)
                .set_if_none_match(etag.map(str::to_owned))
                .send()
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 304) => {
                    return Ok(Fetched::NotModified);
                }
                Err(e) => return Err(classify(key, "GetObject", e)),
            };
            let etag = resp.e_tag().unwrap_or_default().to_owned();
            let declared = resp.content_length();
            let mut bytes = Vec::new();
            Self::read_body(key, resp.body, declared, max_bytes, &mut bytes).await?;
            Ok(Fetched::Object(Object { bytes, etag }))
        })
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let len = range.end.saturating_sub(range.start);
        if len == 0 {
            return Ok(Vec::new());
        }
        self.rt.read(key, self.deadline, len, async {
            let resp = self
                .get_object(key)
                .range(format!("bytes={}-{}", range.start, range.end - 1))
                .send()
                .await
                .map_err(|e| classify(key, "GetObject", e))?;
            let mut bytes = Vec::with_capacity(len as usize);
            Self::read_body(key, resp.body, Some(len as i64), len, &mut bytes).await?;
            Ok(bytes)
        })
    }

    fn get_to(&self, key: &str, max_bytes: u64, out: &mut dyn Write) -> Result<u64, StoreError> {
        let read = Self::read_to(key, self.get_object(key), max_bytes, out);
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
            let request = self.get_object(&key);
            async move {
                let mut bytes = Vec::new();
                Self::read_to(&key, request, max_bytes, &mut bytes).await?;
                Ok(bytes)
            }
        };
        (self.rt).each_object(keys, self.deadline, parallel, ahead, read, done);
    }

    fn reads_concurrently(&self) -> bool {
        true
    }
}

impl WriteStore for S3Store {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let object = self.object(key);
        let written = self.rt.block_on(async {
            if bytes.len() > MULTIPART_THRESHOLD {
                return self.upload_in_parts(&object, bytes).await;
            }
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .if_none_match("*")
                .body(ByteStream::from(bytes.to_vec()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(key, "PutObject", e))
        });
        match written {
            Err(StoreError::PreconditionFailed { key }) => Err(StoreError::AlreadyExists { key }),
            other => other,
        }
    }

    fn put_if(
        &self,
        key: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        let object = self.object(key);
        self.rt.block_on(async {
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .body(ByteStream::from(bytes.to_vec()));
            let put = match expected {
                Some(etag) => put.if_match(etag),
                None => put.if_none_match("*"),
            };
            let resp = put
                .send()
                .await
                .map_err(|e| classify(key, "PutObject", e))?;
            Ok(resp.e_tag().unwrap_or_default().to_owned())
        })
    }

    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError> {
        let object_prefix = self.object(prefix);
        self.rt.block_on(async {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&object_prefix)
                .max_keys(PAGE)
                .set_start_after(after.map(|a| self.object(a)))
                .send()
                .await
                .map_err(|e| classify(prefix, "ListObjectsV2", e))?;
            let mut sizes = std::collections::HashMap::new();
            let mut keys: Vec<String> = resp
                .contents()
                .iter()
                .filter_map(|o| {
                    let key = self.store_key(o.key()?)?.to_owned();
                    if let Some(size) = o.size().and_then(|s| u64::try_from(s).ok()) {
                        sizes.insert(key.clone(), size);
                    }
                    Some(key)
                })
                .collect();
            keys.sort();
            let next = if resp.is_truncated().unwrap_or(false) {
                keys.last().cloned()
            } else {
                None
            };
            Ok(ListPage { keys, next, sizes })
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let object = self.object(key);
        let deleted = self.rt.block_on(async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&object)
                .send()
                .await
                .map_err(|e| classify(key, "DeleteObject", e))
        });
        match deleted {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
