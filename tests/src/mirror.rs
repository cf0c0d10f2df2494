//! An HTTPS mirror of a store directory for the tests: what a CDN in front
//! of the bucket serves (plain GETs of the store layout, `ETag`,
//! `If-None-Match`), over TLS with a certificate from a CA made in the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed.
pub struct TestCa {
    /// The CA certificate, PEM: what `ca_file` points at.
    pub ca_pem: String,
    /// The server certificate and its key, PEM (for a server that reads
    /// files: nats-server).
    pub cert_pem: String,
    /// The server key, PEM.
    pub key_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// Makes a new CA and server certificate.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("cert");
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// The running mirror.
pub struct Mirror {
    /// Where it listens.
    pub addr: SocketAddr,
    /// GETs answered 200.
    pub full: Arc<AtomicU64>,
    /// GETs answered 304.
    pub not_modified: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Mirror {
    /// Serves the files under `root` over TLS with `ca`'s server certificate.
    pub async fn start(root: PathBuf, ca: &TestCa) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(ca.cert_der.clone())],
                rustls::pki_types::PrivateKeyDer::Pkcs8(ca.key_der.clone().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let full = Arc::new(AtomicU64::new(0));
        let not_modified = Arc::new(AtomicU64::new(0));
        let (f, n) = (full.clone(), not_modified.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (root, f, n) = (root.clone(), f.clone(), n.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let handler = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (root, f, n) = (root.clone(), f.clone(), n.clone());
                        async move {
                            let path = req.uri().path().trim_start_matches('/').to_owned();
                            let file = (!path.split('/').any(|p| p == ".."))
                                .then(|| std::fs::read(root.join(&path)).ok())
                                .flatten();
                            let Some(bytes) = file else {
                                return Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::new()));
                            };
                            let etag =
                                format!("\"{}\"", strata_common::canonical::sha256_hex(&bytes));
                            let matches = req
                                .headers()
                                .get(hyper::header::IF_NONE_MATCH)
                                .is_some_and(|v| v.as_bytes() == etag.as_bytes());
                            if matches {
                                n.fetch_add(1, Ordering::Relaxed);
                                return Response::builder()
                                    .status(StatusCode::NOT_MODIFIED)
                                    .header("etag", etag)
                                    .body(Full::new(Bytes::new()));
                            }
                            f.fetch_add(1, Ordering::Relaxed);
                            Response::builder()
                                .header("etag", etag)
                                .body(Full::new(Bytes::from(bytes)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), handler)
                        .await;
                });
            }
        });
        Self {
            addr,
            full,
            not_modified,
            task,
        }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}
