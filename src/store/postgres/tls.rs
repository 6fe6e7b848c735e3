//! TLS to PostgreSQL: rustls on aws-lc-rs, verifying the server's
//! certificate and host name against the system's roots and, optionally, a
//! file of PEM certificates (a private CA, or a provider's bundle).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{StoreError, StoreResult};

fn refused(message: String) -> StoreError {
    StoreError::Backend(message)
}

/// A connector that trusts the system's roots and the certificates in
/// `ca_file`.
pub fn connector(ca_file: Option<&Path>) -> StoreResult<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: a CA file may be all
    // that is needed, and an empty store is refused below.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca_file {
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| {
                refused(format!(
                    "cannot read --database-ca-file {}: {e}",
                    path.display()
                ))
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| refused(format!("--database-ca-file {}: {e}", path.display())))?;
        if certificates.is_empty() {
            return Err(refused(format!(
                "--database-ca-file {} holds no PEM certificate",
                path.display()
            )));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| {
                refused(format!(
                    "--database-ca-file {}: a certificate cannot be a trust anchor: {e}",
                    path.display()
                ))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(refused(
            "TLS to PostgreSQL: no trusted certificate (no system roots found; give --database-ca-file)"
                .into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(
        rustls::crypto::aws_lc_rs::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .map_err(|e| refused(format!("TLS to PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
