//! The hub's certificate authority: its own key and self-signed certificate (`ca.key`, mode
//! 0600, and `ca.crt` in `<data>/keys/`), the server certificates the hub presents (gRPC API,
//! MQTT), and device certificates issued from signing requests at enrollment. Keys are
//! ECDSA P-256, which every TLS stack here (rustls, Mosquitto's OpenSSL) accepts.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use sha2::{Digest as _, Sha256};

use super::{keys_dir, write_private};

/// How long certificates the hub issues hold.
const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const DEVICE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
const SERVER_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);

/// The common name of the hub's own client certificate (its MQTT connection to an external
/// broker; a broker ACL gives this name every topic).
pub const HUB_CLIENT_NAME: &str = "edgeship-hub";

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(<certificate and private key>)")
    }
}

/// A device certificate as issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    /// Hex, for revocation lists.
    pub serial: String,
    pub not_after_ms: i64,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: Vec<u8>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Authority(sha256:{})", self.fingerprint())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("the certificate signing request is invalid: {0}")]
    BadRequest(String),
    #[error("issuing a certificate failed: {0}")]
    Internal(String),
}

impl Authority {
    /// The hub's CA, created on first start and kept.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = keys_dir(data_dir);
        let (key_file, cert_file) = (dir.join("ca.key"), dir.join("ca.crt"));
        if key_file.exists() != cert_file.exists() {
            // A new CA would strand every enrolled device: refuse rather than replace.
            anyhow::bail!(
                "{} and {} go together and only one is there: restore the other from a backup",
                key_file.display(),
                cert_file.display()
            );
        }
        if key_file.exists() {
            super::check_private(&key_file)?;
            let key_pem = std::fs::read_to_string(&key_file)
                .with_context(|| format!("reading {}", key_file.display()))?;
            let ca_pem = std::fs::read_to_string(&cert_file)
                .with_context(|| format!("reading {}", cert_file.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{} is not a private key", key_file.display()))?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
                .with_context(|| format!("{} is not a CA certificate", cert_file.display()))?;
            let ca_der = pem_der(&ca_pem)?;
            return Ok(Authority {
                issuer,
                ca_pem,
                ca_der,
            });
        }
        std::fs::create_dir_all(&dir)?;
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("edgeship hub CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY);
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        write_private(&key_file, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_file, cert.pem())
            .with_context(|| format!("writing {}", cert_file.display()))?;
        Ok(Authority {
            ca_pem: cert.pem(),
            ca_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The sha256 of the CA certificate, in hex: what clients pin.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.ca_der))
    }

    /// A server certificate for `names` (DNS names or IP addresses), with a fresh key.
    pub fn server_identity(&self, names: &[String]) -> anyhow::Result<Identity> {
        let mut params =
            CertificateParams::new(names.to_vec()).context("server certificate names")?;
        params.distinguished_name = name(names.first().map_or("edgeship hub", String::as_str));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut identity = self.leaf(params, SERVER_VALIDITY)?;
        // The chain carries the CA, so that a client that pinned its fingerprint finds it.
        identity.cert_pem.push_str(&self.ca_pem);
        Ok(identity)
    }

    /// A client certificate naming `common_name` (the hub's own, for brokers), fresh key.
    pub fn client_identity(&self, common_name: &str) -> anyhow::Result<Identity> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params, SERVER_VALIDITY)
    }

    fn leaf(&self, mut params: CertificateParams, validity: Duration) -> anyhow::Result<Identity> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(serial());
        set_validity(&mut params, validity);
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `device_id` over the key of a signing request (verified here);
    /// whatever else the request asks for (names, usages) is ignored.
    pub fn issue_device(&self, device_id: &str, csr_pem: &str) -> Result<Issued, PkiError> {
        let mut request = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|err| PkiError::BadRequest(err.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(device_id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = serial();
        let serial_hex = hex::encode(serial.to_bytes());
        params.serial_number = Some(serial);
        let not_after_ms = set_validity(&mut params, DEVICE_VALIDITY);
        request.params = params;
        let cert = request
            .signed_by(&self.issuer)
            .map_err(|err| PkiError::Internal(err.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            serial: serial_hex,
            not_after_ms,
        })
    }
}

impl Authority {
    /// A certificate revocation list of `serials` (hex), signed by the CA, valid for a week:
    /// what an external broker refuses revoked devices by.
    pub fn revocation_list(&self, serials: &[String]) -> anyhow::Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let revoked_certs = serials
            .iter()
            .map(|serial| {
                let bytes = hex::decode(serial)
                    .with_context(|| format!("a stored serial is not hex: {serial}"))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: serial(),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from an hour ago (clocks differ) for `validity`; returns the end in ms.
fn set_validity(params: &mut CertificateParams, validity: Duration) -> i64 {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
    (params.not_after.unix_timestamp_nanos() / 1_000_000) as i64
}

/// 16 random bytes, positive (RFC 5280 serials are positive integers).
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // Only a broken OS fails to give randomness; the serial then is still unique by time.
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes[..16].copy_from_slice(&crate::now_ms().to_be_bytes().repeat(2));
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The DER inside the first PEM certificate of `pem`.
pub fn pem_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|err| anyhow::anyhow!("not a PEM certificate: {err}"))?;
    Ok(der.to_vec())
}

/// The common name of a DER certificate's subject, and its serial in hex.
pub fn name_and_serial(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())?
        .to_owned();
    Some((name, hex::encode(cert.raw_serial())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_certificate_names_the_device_whatever_the_request_asks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::open(dir.path()).expect("ca");
        // Kept across starts.
        let again = Authority::open(dir.path()).expect("ca");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        let device_key = KeyPair::generate().expect("key");
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).expect("params");
        asked.distinguished_name = name("edgeship-hub");
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = asked
            .serialize_request(&device_key)
            .expect("csr")
            .pem()
            .expect("pem");
        let issued = ca.issue_device("edge-7", &csr).expect("issued");
        let der = pem_der(&issued.cert_pem).expect("der");
        let (name, serial) = name_and_serial(&der).expect("parsed");
        assert_eq!(name, "edge-7");
        assert_eq!(serial, issued.serial);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert!(!cert.is_ca());
        assert_eq!(hex::encode(cert.raw_serial()), issued.serial);
        assert!(ca.issue_device("edge-7", "not a csr").is_err());
        // Half a CA is refused, not replaced.
        std::fs::remove_file(keys_dir(dir.path()).join("ca.crt")).expect("remove");
        let err = Authority::open(dir.path()).expect_err("half a CA");
        assert!(format!("{err:#}").contains("restore the other"), "{err:#}");
        // A request whose signature does not match its key is refused.
        let tampered = csr.replace('A', "B");
        assert!(ca.issue_device("edge-7", &tampered).is_err());
    }
}
