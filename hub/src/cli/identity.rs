//! `edgeship device enroll|revoke` and `edgeship broker mosquitto-config`: device identities
//! and what an external broker needs to check them, through the hub's `Access` service.

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::access_client::AccessClient;

use crate::client::{HubChannel, rpc_error};

pub async fn enroll(
    channel: HubChannel,
    hub: &str,
    device: &str,
    ttl_secs: u64,
) -> anyhow::Result<()> {
    let created = AccessClient::new(channel)
        .create_enrollment(pb::CreateEnrollmentRequest {
            device_id: device.to_owned(),
            ttl_seconds: ttl_secs,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    // The token alone on stdout, for scripts; how to use it on stderr.
    println!("{}", created.token);
    eprintln!(
        "bootstrap token for {device}, valid once until {}; on the device run:\n  \
         edgeship-agent enroll --hub {hub} --token <TOKEN> --data-dir <DATA DIR>",
        crate::rfc3339(created.expires_at_ms)
    );
    Ok(())
}

pub async fn revoke(channel: HubChannel, device: &str) -> anyhow::Result<()> {
    let revoked = AccessClient::new(channel)
        .revoke_device(pb::RevokeDeviceRequest {
            device_id: device.to_owned(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if revoked.was_enrolled {
        println!("revoked device {device}");
    } else {
        println!("revoked device {device} (it had not enrolled; it cannot now)");
    }
    Ok(())
}

pub async fn mosquitto_config(
    hub: &str,
    output: &std::path::Path,
    hostnames: Vec<String>,
    port: u16,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;

    std::fs::create_dir_all(output)?;
    let directory = std::path::absolute(output)?;
    let config = AccessClient::new(crate::client::channel(hub).await?)
        .get_broker_config(pb::GetBrokerConfigRequest {
            hostnames,
            port: u32::from(port),
            directory: directory.display().to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    for file in &config.files {
        if file.name.contains('/') || file.name.starts_with('.') {
            anyhow::bail!("the hub sent a file named {:?}", file.name);
        }
        let path = directory.join(&file.name);
        let _ = std::fs::remove_file(&path);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if file.private { 0o600 } else { 0o644 })
            .open(&path)?;
        out.write_all(&file.content)?;
    }
    println!(
        "wrote {} files to {}; run: mosquitto -c {}/mosquitto.conf\nthen start the hub with --mqtt-url mqtts://HOST:{port}",
        config.files.len(),
        directory.display(),
        directory.display()
    );
    Ok(())
}
