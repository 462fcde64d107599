//! `edgeship device enroll|revoke`: device identities, through the hub's `Access` service.

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
