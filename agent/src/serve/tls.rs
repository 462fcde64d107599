//! HTTPS for scoring endpoints: the deployment's certificate (issued by the hub's CA for the
//! names the manifest gives) served by rustls. Each connection's handshake runs on its serving
//! lane (`lanes`), bounded in time, so a client that stalls one never holds up the others.

use std::sync::Arc;
use std::time::Duration;

use edgeship_domain::ServingCertificate;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A rustls server configuration from a certificate chain and key, speaking `alpn`.
pub fn server_config(
    certificate: &ServingCertificate,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, String> {
    let chain = CertificateDer::pem_slice_iter(certificate.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("the endpoint's certificate: {err}"))?;
    let key = PrivateKeyDer::from_pem_slice(certificate.key_pem.as_bytes())
        .map_err(|err| format!("the endpoint's key: {err}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| err.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|err| format!("the endpoint's certificate and key: {err}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
