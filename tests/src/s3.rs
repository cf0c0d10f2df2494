//! A real S3 protocol server in the test process, on 127.0.0.1:0: `s3s` with
//! the `s3s-fs` backend, SigV4 authentication on. What the tests need of it
//! that it lacks is added here, in the test wrapper, never in product code:
//!
//! - `If-None-Match` on GET (it ignores it): answered 304 when the ETag matches;
//! - conditional PUTs made atomic (it checks, then writes): one at a time,
//!   and no read in between (it stores bytes and checksums apart);
//! - `TCP_NODELAY` on accepted sockets (35 ms a request otherwise).
//!
//! It also counts every request (operation, key, status, bytes on the
//! wire), and injects faults on demand: 503 SlowDown, a body cut short, an
//! outage (stopped, then started again on the same port).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, CompleteMultipartUploadInput,
    CompleteMultipartUploadOutput, CreateMultipartUploadInput, CreateMultipartUploadOutput,
    DeleteObjectInput, DeleteObjectOutput, GetObjectInput, GetObjectOutput, HeadBucketInput,
    HeadBucketOutput, HeadObjectInput, HeadObjectOutput, ListObjectsV2Input, ListObjectsV2Output,
    PutObjectInput, PutObjectOutput, StreamingBlob, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The bucket every test uses.
pub const BUCKET: &str = "strata-test";
/// The credentials the server accepts.
pub const ACCESS_KEY: &str = "AKIDSTRATATEST";
/// The secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "strata-test-secret-key";

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path, `/bucket/key`.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// When the answer was ready (wall clock, to compare with logs).
    pub at: std::time::SystemTime,
}

/// What the tests turn on and read.
#[derive(Default)]
pub struct Control {
    /// Requests answered, in order.
    pub seen: Mutex<Vec<Seen>>,
    /// Bytes received and sent on every connection, as on the wire.
    pub bytes_in: AtomicU64,
    /// See [`Self::bytes_in`].
    pub bytes_out: AtomicU64,
    /// Answer this many of the next requests 503 SlowDown.
    pub slow_down: AtomicU32,
    /// Cut the next GET of a bundle short, after half its bytes.
    pub truncate_next_bundle: AtomicBool,
    /// Answer GETs of channel pointers with a 403 whose body is this many
    /// bytes of junk, streamed (0: off): an error body without end.
    pub huge_error_body: AtomicU64,
    /// Ignore `If-None-Match` and `If-Match` on PUT, as some S3-compatible
    /// servers and gateways (and proxies that strip them) do.
    pub ignore_conditions: AtomicBool,
    /// Answer each GET of an object (`/objects/`) this many milliseconds
    /// late: a remote store's time to first byte (0: off).
    pub object_latency_ms: AtomicU64,
}

impl Control {
    /// Requests seen so far whose path contains `part`.
    pub fn requests_to(&self, part: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|r| r.path.contains(part))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets the requests and bytes seen so far.
    pub fn reset(&self) {
        if let Ok(mut s) = self.seen.lock() {
            s.clear();
        }
        self.bytes_in.store(0, Ordering::Relaxed);
        self.bytes_out.store(0, Ordering::Relaxed);
    }
}

/// The in-process server.
pub struct S3Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Counters and faults.
    pub control: Arc<Control>,
    service: s3s::service::S3Service,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    _dir: TempDir,
}

impl S3Server {
    /// Starts a server with [`BUCKET`] and [`ACCESS_KEY`]; call from within
    /// a tokio runtime.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join(BUCKET)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs");
        let control = Arc::new(Control::default());
        let wrapped = Conditional {
            inner: fs,
            writes: tokio::sync::RwLock::new(()),
            control: control.clone(),
        };
        let mut builder = s3s::service::S3ServiceBuilder::new(wrapped);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut server = Self {
            addr,
            control,
            service,
            accept: None,
            connections: Arc::default(),
            _dir: dir,
        };
        server.serve(listener);
        server
    }

    /// Where s3s-fs keeps the object `key` of the bucket on disk.
    pub fn object_path(&self, key: &str) -> std::path::PathBuf {
        self._dir.path().join(BUCKET).join(key)
    }

    /// Writes an object behind the server's back, as a hostile party with
    /// write access to the bucket could: the file, and no cached ETag (s3s-fs
    /// then hashes the new bytes), so conditional reads see the change.
    pub fn put_raw(&self, key: &str, bytes: &[u8]) {
        let path = self.object_path(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("object dir");
        }
        let tmp = path.with_extension("hostile-tmp");
        std::fs::write(&tmp, bytes).expect("write object");
        std::fs::rename(&tmp, &path).expect("rename object");
        self.forget_etags();
    }

    /// Deletes an object behind the server's back.
    pub fn delete_raw(&self, key: &str) {
        let _ = std::fs::remove_file(self.object_path(key));
        self.forget_etags();
    }

    /// Drops s3s-fs's sidecar files (cached ETags and metadata), so every
    /// ETag is computed from the bytes on disk again.
    fn forget_etags(&self) {
        if let Ok(entries) = std::fs::read_dir(self._dir.path()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(".bucket-") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment a publisher or agent process needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("AWS_CONFIG_FILE", "/nonexistent".to_owned()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".to_owned()),
        ]
    }

    fn serve(&mut self, listener: TcpListener) {
        let service = self.service.clone();
        let control = self.control.clone();
        let connections = self.connections.clone();
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let stream = Counted {
                    inner: stream,
                    control: control.clone(),
                };
                let service = service.clone();
                let control = control.clone();
                let conn = tokio::spawn(async move {
                    let handler = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let service = service.clone();
                        let control = control.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let late = control.object_latency_ms.load(Ordering::Relaxed);
                            if late > 0 && method == "GET" && path.contains("/objects/") {
                                tokio::time::sleep(std::time::Duration::from_millis(late)).await;
                            }
                            let huge = control.huge_error_body.load(Ordering::Relaxed);
                            let response = if huge > 0
                                && method == "GET"
                                && path.contains("/channels/")
                            {
                                Ok(huge_error(huge))
                            } else if control
                                .slow_down
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                hyper::Response::builder()
                                    .status(503)
                                    .header("content-type", "application/xml")
                                    .body(s3s::Body::from(
                                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>".to_owned(),
                                    ))
                                    .map_err(|e| s3s::HttpError::new(Box::new(e)))
                            } else {
                                service.call(req.map(s3s::Body::from)).await
                            };
                            if let Ok(r) = &response
                                && let Ok(mut seen) = control.seen.lock()
                            {
                                seen.push(Seen {
                                    method,
                                    path,
                                    status: r.status().as_u16(),
                                    at: std::time::SystemTime::now(),
                                });
                            }
                            response
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
                if let Ok(mut c) = connections.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(conn);
                }
            }
        }));
    }

    /// Stops accepting and drops every open connection: an outage.
    pub fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        if let Ok(mut c) = self.connections.lock() {
            for conn in c.drain(..) {
                conn.abort();
            }
        }
    }

    /// Listens again on the same address, with the same objects.
    pub async fn restart(&mut self) {
        self.stop();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A socket that counts the bytes it carries into [`Control`].
struct Counted {
    inner: tokio::net::TcpStream,
    control: Arc<Control>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.control.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.control
                .bytes_out
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A 403 whose body is `bytes` of junk, streamed 64 KiB at a time.
fn huge_error(bytes: u64) -> hyper::Response<s3s::Body> {
    static CHUNK: [u8; 65536] = [b'x'; 65536];
    let chunks = bytes.div_ceil(CHUNK.len() as u64);
    let stream = futures_util::stream::iter((0..chunks).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(
            &CHUNK,
        )))
    }));
    let mut response = hyper::Response::new(s3s::Body::http_body(http_body_util::StreamBody::new(
        stream,
    )));
    *response.status_mut() = hyper::StatusCode::FORBIDDEN;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    response
}

/// `s3s-fs` with what real S3 does and it does not (see the module doc).
struct Conditional {
    inner: s3s_fs::FileSystem,
    /// Held for writing across a write's check and write, for reading
    /// across a read.
    writes: tokio::sync::RwLock<()>,
    control: Arc<Control>,
}

#[async_trait::async_trait]
impl S3 for Conditional {
    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        use futures_util::StreamExt;
        let condition = req.input.if_none_match.clone();
        let bundle = req.input.key.ends_with(".bundle");
        // Read whole under the lock the writes take: s3s-fs stores an
        // object's bytes and its checksums apart, so a read racing a write
        // could pair one with the other (real S3 reads are atomic).
        let (mut resp, mut bytes) = {
            let _no_write_meanwhile = self.writes.read().await;
            let mut resp = self.inner.get_object(req).await?;
            let mut bytes = Vec::new();
            if let Some(mut body) = resp.output.body.take() {
                while let Some(chunk) = body.next().await {
                    bytes.extend_from_slice(&chunk.map_err(|_| s3_error!(InternalError))?);
                }
            }
            (resp, bytes)
        };
        if let (Some(condition), Some(etag)) = (condition, resp.output.e_tag.as_ref())
            && condition.as_etag().is_some_and(|c| c.strong_cmp(etag))
        {
            return Err(s3_error!(NotModified));
        }
        if bundle
            && self
                .control
                .truncate_next_bundle
                .swap(false, Ordering::SeqCst)
        {
            bytes.truncate(bytes.len() / 2);
        }
        resp.output.body = Some(StreamingBlob::from(s3s::Body::from(bytes)));
        Ok(resp)
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let _one_at_a_time = self.writes.write().await;
        if self.control.ignore_conditions.load(Ordering::Relaxed) {
            req.input.if_none_match = None;
            req.input.if_match = None;
        }
        self.inner.put_object(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let _one_at_a_time = self.writes.write().await;
        self.inner.complete_multipart_upload(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.inner.list_objects_v2(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.inner.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.inner.upload_part(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.inner.abort_multipart_upload(req).await
    }
}

/// `publish --init` of `src` signed by the fixture's key to `url`: the
/// arguments, for [`run_publisher`].
pub fn publish_args(fx: &crate::Fixture, src: &std::path::Path, url: &str) -> Vec<String> {
    vec![
        "publish".into(),
        "--init".into(),
        "--source".into(),
        src.display().to_string(),
        "--key".into(),
        fx.key_path.display().to_string(),
        "--store".into(),
        url.to_owned(),
    ]
}

/// Runs the publisher with `env` (a server's, or a changed copy) and
/// `args`, off the async threads.
pub async fn run_publisher(
    env: Vec<(&'static str, String)>,
    args: Vec<String>,
) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(crate::bin("strata-publisher"))
            .envs(env)
            .args(args)
            .output()
            .expect("run publisher")
    })
    .await
    .expect("publisher thread")
}

/// An agent process following `url` with `env`: its config `<name>.toml`
/// in the fixture's directory holds `lines`, then the source, data
/// directory, socket and the fixture's trusted key. Returns the process
/// and its socket.
pub fn agent_process(
    fx: &crate::Fixture,
    name: &str,
    url: &str,
    env: Vec<(&'static str, String)>,
    lines: &str,
) -> (crate::Proc, std::path::PathBuf) {
    let socket = fx.dir.path().join(format!("{name}.sock"));
    let config = fx.dir.path().join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "source = \"{url}\"\ndata_dir = \"{data}\"\nsocket = \"{sock}\"\n{lines}\n[[trusted_keys]]\nrole = \"publisher\"\npath = \"{key}\"\n",
            data = fx.dir.path().join(format!("{name}-data")).display(),
            sock = socket.display(),
            key = strata_common::sign::public_path(&fx.key_path).display(),
        ),
    )
    .expect("config");
    let child = std::process::Command::new(crate::bin("strata-agent"))
        .envs(env)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn agent");
    (crate::Proc(child), socket)
}
