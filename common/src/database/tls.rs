//! TLS to the database: rustls with aws-lc-rs, verifying the server with a
//! given CA file or the system's roots. Whether TLS is used at all is the
//! URL's `sslmode` (`disable`, `prefer`: the default, `require`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DatabaseError;

/// The connector for `tokio_postgres::Config::connect`.
pub(super) fn connector(ca: Option<&Path>) -> Result<MakeRustlsConnect, DatabaseError> {
    let ca_error = |path: &str, reason: String| DatabaseError::Ca {
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ca_error(&shown, e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ca_error(
                    &shown,
                    "holds no usable CA certificate (PEM)".into(),
                ));
            }
        }
        None => {
            // Unreadable system roots leave none: a TLS connection then
            // fails naming the certificate, and a plain one still works.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_error("TLS", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
