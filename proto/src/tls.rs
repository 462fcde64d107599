//! TLS to the hub's gRPC API, for the CLI and for agents that enroll: the hub's certificate
//! must chain to a CA given as a file, or to the CA whose sha256 the caller pinned (a
//! bootstrap token carries it, so a new device trusts exactly the hub that invited it).

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest as _, Sha256};

/// What a client trusts the hub's certificate by.
#[derive(Debug, Clone)]
pub enum HubTrust {
    /// PEM certificates of the CA(s) (the hub's `<data>/keys/ca.crt`).
    CaPem(String),
    /// The sha256 of the hub's CA certificate, in hex; the hub sends that certificate along
    /// with its own.
    Fingerprint(String),
}

/// The rustls crypto provider everywhere in edgeship: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration that trusts `trust`, speaking HTTP/2.
pub fn client_config(trust: &HubTrust) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let mut config = match trust {
        HubTrust::CaPem(pem) => builder
            .with_root_certificates(roots(pem)?)
            .with_no_client_auth(),
        HubTrust::Fingerprint(hex) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCa::new(hex)?))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The certificates in `pem`, as trust anchors.
pub fn roots(pem: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|err| format!("not a PEM certificate: {err}"))?;
        store
            .add(cert)
            .map_err(|err| format!("not a CA certificate: {err}"))?;
    }
    if store.is_empty() {
        return Err("no certificate in the CA file".into());
    }
    Ok(store)
}

/// Connects a gRPC channel to `url` (`https://host:port`) over TLS with `trust`;
/// `configure` sets the endpoint's options (timeouts, windows).
pub async fn connect(
    url: &str,
    configure: impl FnOnce(tonic::transport::Endpoint) -> tonic::transport::Endpoint,
    trust: &HubTrust,
) -> Result<tonic::transport::Channel, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|err| format!("invalid URL {url:?}: {err}"))?;
    let host = uri.host().ok_or("the hub URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(443);
    // IPv6 literals come bracketed in URIs; names and addresses go to rustls bare.
    let bare = host.trim_matches(['[', ']']).to_owned();
    let name = ServerName::try_from(bare.clone())
        .map_err(|err| format!("invalid host {host:?}: {err}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(trust)?));
    let connect = tower::service_fn(move |_: http::Uri| {
        let (connector, name, bare) = (connector.clone(), name.clone(), bare.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((bare.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    // The connector does TLS itself; tonic sees a plain URI for the same authority.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|err| err.to_string())?;
    configure(endpoint)
        .connect_with_connector(connect)
        .await
        .map_err(|err| {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                message = format!("{message}: {cause}");
                source = cause.source();
            }
            message
        })
}

/// Trusts a server whose chain includes the CA certificate with the pinned sha256, and
/// checks the rest of the chain against that CA with rustls' own verifier.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    schemes: Vec<SignatureScheme>,
}

impl PinnedCa {
    fn new(hex_digest: &str) -> Result<Self, String> {
        let bytes = hex::decode(hex_digest.trim().trim_start_matches("sha256:"))
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or("a CA fingerprint is the sha256 of its certificate: 64 hex digits")?;
        Ok(PinnedCa {
            fingerprint: bytes,
            schemes: provider()
                .signature_verification_algorithms
                .supported_schemes(),
        })
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| <[u8; 32]>::from(Sha256::digest(cert.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the hub's certificate chain does not hold the pinned CA".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|err| rustls::Error::General(format!("the pinned CA: {err}")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|err| rustls::Error::General(err.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}
