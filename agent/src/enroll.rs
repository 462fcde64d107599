//! `edgeship-agent enroll`: the device makes its own key pair (the private key never leaves
//! `<data>/identity/device.key`, mode 0600), sends a signing request with its one-time
//! bootstrap token to the hub over TLS pinned to the CA fingerprint inside that token, and
//! keeps what comes back: its certificate, the hub's CA, the director key and the broker.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use edgeship_proto::tls::HubTrust;
use edgeship_proto::v1 as pb;

use crate::config::{Enrollment, identity_dir};

/// Enrolls this device with the hub at `hub` (`https://…`) using a bootstrap token.
pub async fn enroll(hub: &str, token: &str, data_dir: &Path) -> anyhow::Result<Enrollment> {
    if !hub.starts_with("https://") {
        bail!("enrollment needs the hub's TLS API: give its https:// URL");
    }
    let fingerprint = token_fingerprint(token).context(
        "the bootstrap token is malformed: it reads esb1.<secret>.<fingerprint> (edgeship device enroll prints it)",
    )?;
    let dir = identity_dir(data_dir);
    if dir.join("device.crt").exists() {
        bail!(
            "this device is enrolled already ({}); remove that folder to enroll again",
            dir.display()
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let key = rcgen::KeyPair::generate().context("generating the device key")?;
    write_file(
        &dir.join("device.key"),
        key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("making the certificate signing request")?;

    let trust = HubTrust::Fingerprint(fingerprint.to_owned());
    let channel = edgeship_proto::tls::connect(
        hub,
        |endpoint| endpoint.connect_timeout(Duration::from_secs(10)),
        &trust,
    )
    .await
    .map_err(|err| anyhow::anyhow!("cannot reach the hub at {hub}: {err}"))?;
    let answer = pb::enrollment_client::EnrollmentClient::new(channel)
        .enroll(pb::EnrollRequest {
            token: token.trim().to_owned(),
            csr_pem: csr,
        })
        .await
        .map_err(|status| anyhow::anyhow!("the hub refused the enrollment: {}", status.message()))?
        .into_inner();
    edgeship_domain::names::device_id(&answer.device_id)
        .map_err(|err| anyhow::anyhow!("the hub named an invalid device id: {err}"))?;
    let director: edgeship_domain::trust::PublicKey = answer
        .director_key
        .parse()
        .map_err(|err| anyhow::anyhow!("the hub sent an invalid director key: {err}"))?;
    write_file(&dir.join("ca.crt"), answer.ca_pem.as_bytes(), 0o644)?;
    write_file(
        &dir.join("director.pub"),
        format!("{director}\n").as_bytes(),
        0o644,
    )?;
    let enrollment = Enrollment {
        device_id: answer.device_id,
        broker: answer.mqtt_url,
    };
    let text = toml::to_string(&enrollment).context("writing the enrollment")?;
    write_file(&dir.join(Enrollment::FILE), text.as_bytes(), 0o644)?;
    // Last: its presence means the enrollment is complete.
    write_file(
        &dir.join("device.crt"),
        answer.certificate_pem.as_bytes(),
        0o644,
    )?;
    Ok(enrollment)
}

/// The CA fingerprint inside a bootstrap token (`esb1.<secret>.<fingerprint>`).
fn token_fingerprint(token: &str) -> Option<&str> {
    let mut parts = token.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("esb1"), Some(secret), Some(fingerprint), None)
            if !secret.is_empty() && fingerprint.len() == 64 =>
        {
            Some(fingerprint)
        }
        _ => None,
    }
}

/// Writes `bytes` to `path` created with `mode` (never wider, not even for a moment), synced.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let temporary: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_carries_the_fingerprint_to_pin() {
        let fingerprint = "ab".repeat(32);
        assert_eq!(
            token_fingerprint(&format!("esb1.secret.{fingerprint}")),
            Some(fingerprint.as_str())
        );
        for bad in [
            "",
            "esb1",
            "esb1.secret",
            "esb1..ff",
            "esb2.s.ff",
            "esb1.s.short",
        ] {
            assert_eq!(token_fingerprint(bad), None, "{bad}");
        }
    }
}
