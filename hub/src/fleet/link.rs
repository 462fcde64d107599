//! The hub's MQTT client: subscribes to every device's birth, reported and blob-request
//! topics, feeds them to the [`Fleet`], and publishes what the fleet puts in its outbox.
//!
//! Design: one task polls the connection (rumqttc reconnects on the next poll after an
//! error), one task publishes, and one worker handles inbound messages in arrival order, so
//! a device's blob requests are answered in the order it sent them.

use std::sync::Arc;
use std::time::Duration;

use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Fleet, Publication};

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub max_packet_bytes: usize,
}

/// Handles of the link's tasks; aborted on drop.
#[derive(Debug)]
pub struct Link {
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Stops the link's tasks and waits until they are gone (they hold the fleet, and with
    /// it the sled database, which a restarted hub must be able to open again).
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub fn start(
    config: LinkConfig,
    fleet: Arc<Fleet>,
    mut outbox: mpsc::UnboundedReceiver<Publication>,
) -> Link {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_keep_alive(Duration::from_secs(15))
        // A persistent session: reports sent while the hub was away are queued by the broker.
        .set_clean_session(false)
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
    let (client, mut eventloop) = AsyncClient::new(options, 256);

    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(publication) = outbox.recv().await {
                if let Err(err) = client
                    .publish(
                        publication.topic,
                        QoS::AtLeastOnce,
                        publication.retain,
                        publication.payload,
                    )
                    .await
                {
                    tracing::warn!(error = %err, "mqtt publish failed");
                }
            }
        })
    };

    let (inbound_tx, mut inbound_rx) = mpsc::channel::<(String, bytes::Bytes)>(1024);
    let worker = {
        let fleet = Arc::clone(&fleet);
        let client = client.clone();
        tokio::spawn(async move {
            while let Some((topic, payload)) = inbound_rx.recv().await {
                handle(&fleet, &client, &topic, payload).await;
            }
        })
    };

    let poller = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(200);
                    tracing::info!(broker = %format!("{}:{}", config.host, config.port), session_present = ack.session_present, "hub connected to the broker");
                    for kind in [
                        DeviceTopic::Birth,
                        DeviceTopic::Reported,
                        DeviceTopic::BlobRequest,
                    ] {
                        if let Err(err) = client
                            .subscribe(topics::all_devices(kind), QoS::AtLeastOnce)
                            .await
                        {
                            tracing::warn!(error = %err, "subscribe failed");
                        }
                    }
                    let fleet = Arc::clone(&fleet);
                    tokio::task::spawn_blocking(move || match fleet.republish_all() {
                        Ok(count) => tracing::debug!(count, "desired states republished"),
                        Err(err) => {
                            tracing::error!(error = %err, "republishing desired states failed")
                        }
                    });
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if inbound_tx
                        .send((publish.topic, publish.payload))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, retry_in = ?backoff, "broker connection lost");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });

    Link {
        tasks: vec![poller, worker, publisher],
    }
}

/// Decodes and dispatches one inbound message. Malformed input is logged and dropped: a
/// device can never crash the hub or corrupt its records with a bad payload.
async fn handle(fleet: &Arc<Fleet>, client: &AsyncClient, topic: &str, payload: bytes::Bytes) {
    let Some((device_id, kind)) = topics::parse(topic) else {
        tracing::debug!(%topic, "message on an unknown topic ignored");
        return;
    };
    let device_id = device_id.to_owned();
    match kind {
        DeviceTopic::Birth => {
            let Some(birth) = decode::<pb::Birth>(&device_id, kind, &payload) else {
                return;
            };
            if birth.device_id != device_id {
                tracing::warn!(device = %device_id, claimed = %birth.device_id, "birth names another device; ignored");
                return;
            }
            let fleet = Arc::clone(fleet);
            let result =
                tokio::task::spawn_blocking(move || fleet.on_birth(&device_id, birth)).await;
            log_result("birth", result);
        }
        DeviceTopic::Reported => {
            let Some(report) = decode::<pb::ReportedState>(&device_id, kind, &payload) else {
                return;
            };
            if report.device_id != device_id {
                tracing::warn!(device = %device_id, claimed = %report.device_id, "report names another device; ignored");
                return;
            }
            let fleet = Arc::clone(fleet);
            let result =
                tokio::task::spawn_blocking(move || fleet.on_reported(&device_id, report)).await;
            log_result("report", result);
        }
        DeviceTopic::BlobRequest => {
            let Some(request) = decode::<pb::BlobRequest>(&device_id, kind, &payload) else {
                return;
            };
            let chunk = fleet.blob_chunk(&device_id, &request).await;
            if !chunk.error.is_empty() {
                tracing::warn!(device = %device_id, sha256 = %request.sha256, error = %chunk.error, "blob request refused");
            }
            let topic = topics::device(&device_id, DeviceTopic::BlobResponse);
            if let Err(err) = client
                .publish(topic, QoS::AtLeastOnce, false, chunk.encode_to_vec())
                .await
            {
                tracing::warn!(error = %err, "publishing a blob chunk failed");
            }
        }
        DeviceTopic::Desired | DeviceTopic::BlobResponse => {}
    }
}

fn decode<T: Message + Default>(device_id: &str, kind: DeviceTopic, payload: &[u8]) -> Option<T> {
    match T::decode(payload) {
        Ok(message) => Some(message),
        Err(err) => {
            tracing::warn!(device = %device_id, topic = kind.suffix(), error = %err, bytes = payload.len(), "malformed payload ignored");
            None
        }
    }
}

fn log_result(what: &str, result: Result<Result<(), super::FleetError>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "device {what} rejected"),
        Err(err) => tracing::error!(error = %err, "device {what} handler failed"),
    }
}
