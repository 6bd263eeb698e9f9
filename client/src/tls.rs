//! The rustls client configuration for a [`TlsOptions`], and how its failures are told.

use crate::config::{SslVerify, TlsOptions};
use crate::Error;
use std::sync::Arc;

/// Accepts any certificate: `DCOS_SSL_VERIFY=false`. Signatures are still checked, so the handshake itself is
/// sound; only the identity of the peer is not.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What `opts` trusts, for messages.
pub(crate) fn trust(opts: &TlsOptions) -> String {
    match &opts.verify {
        SslVerify::System => "the system's trusted roots".into(),
        SslVerify::CaFile(p) => format!("the CA file {}", p.display()),
        SslVerify::Off => "any certificate".into(),
    }
}

/// A TLS error that names the trust in use and where it was set.
pub(crate) fn error(opts: &TlsOptions, message: String) -> Error {
    Error::Tls { message, trust: trust(opts), origin: opts.origin.to_string() }
}

/// The rustls client configuration for a trust choice (ring provider, safe protocol versions): for programs that
/// talk to other HTTPS services the way the client talks to agents (an identity provider, say).
pub fn client_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(opts, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cfg = match &opts.verify {
        SslVerify::Off => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
        }
        SslVerify::CaFile(p) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| error(opts, format!("cannot read CA bundle {}: {e}", p.display())))?;
            if certs.is_empty() {
                return Err(error(opts, format!("CA bundle {} holds no certificate", p.display())));
            }
            roots.add_parsable_certificates(certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        SslVerify::System => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(cfg)
}
