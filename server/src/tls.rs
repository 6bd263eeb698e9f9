//! Certificates and keys from PEM files, for servers and for the gateway's client side.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// A PEM file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {cause}", path.display())]
pub struct PemError {
    action: &'static str,
    path: PathBuf,
    cause: rustls_pki_types::pem::Error,
}

/// The certificate chain in `cert` and the private key in `key`.
pub fn load_pair(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PemError> {
    let certs = load_certs(cert)?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|cause| PemError { action: "reading", path: key.into(), cause })?;
    Ok((certs, key))
}

/// The certificates of a PEM file (a chain, or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let err = |action| move |cause| PemError { action, path: path.into(), cause };
    CertificateDer::pem_file_iter(path).map_err(err("reading"))?.collect::<Result<Vec<_>, _>>().map_err(err("parsing"))
}
