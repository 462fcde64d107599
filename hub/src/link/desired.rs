//! Desired states on their way out: signed by the director with an expiry, signed again
//! before they expire, and cleared for revoked devices.

use std::sync::Arc;
use std::time::Duration;

use edgeship_domain::DesiredState;
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;

use crate::fleet::Fleet;
use crate::trust::Director;
use crate::trust::enrollment::Enrollments;

/// What the link signs desired states with, and whom it no longer hears or sends to.
#[derive(Debug)]
pub struct LinkTrust {
    pub director: Arc<Director>,
    pub enrollments: Arc<Enrollments>,
}

pub(super) async fn publish_desired(
    client: AsyncClient,
    director: Arc<Director>,
    enrollments: Arc<Enrollments>,
    mut outbox: mpsc::UnboundedReceiver<DesiredState>,
) {
    while let Some(desired) = outbox.recv().await {
        let topic = topics::device(&desired.device_id, DeviceTopic::Desired);
        // A revoked device gets nothing more; an empty retained message clears what the
        // broker kept for it.
        let payload = if enrollments.is_revoked(&desired.device_id) {
            Vec::new()
        } else {
            signed_state(&director, &desired, crate::now_ms())
        };
        if let Err(err) = client.publish(topic, QoS::AtLeastOnce, true, payload).await {
            tracing::warn!(error = %err, "mqtt publish failed");
        }
    }
}

/// A desired state as its device receives it: encoded, given an expiry, and signed.
pub fn signed_state(director: &Director, desired: &DesiredState, now_ms: i64) -> Vec<u8> {
    let mut state = pb::DesiredState::from(desired);
    state.expires_at_ms = director.expiry_from(now_ms);
    let state = state.encode_to_vec();
    let signed = director.sign(&state);
    pb::SignedDesiredState {
        state: state.into(),
        signature: signed.signature.into(),
        key_id: signed.key_id,
    }
    .encode_to_vec()
}

/// Signs every desired state again each quarter of the validity, so that a device always
/// holds a retained state well inside its expiry, however long its workloads stay unchanged.
pub(super) async fn refresh_signatures(fleet: Arc<Fleet>, validity: Duration) {
    let period = (validity / 4).max(Duration::from_millis(250));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        let fleet = Arc::clone(&fleet);
        match tokio::task::spawn_blocking(move || fleet.republish_all()).await {
            Ok(Ok(count)) => tracing::debug!(count, "desired states signed again"),
            Ok(Err(err)) => tracing::error!(error = %err, "signing desired states again failed"),
            Err(err) => tracing::error!(error = %err, "signing desired states again panicked"),
        }
    }
}
