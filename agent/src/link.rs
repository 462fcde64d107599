//! The agent's MQTT connection: a persistent session with a Last Will, reconnecting with
//! backoff. It announces the device (birth) on every connect, routes desired states and blob
//! chunks to the agent, and publishes what the agent sends.
//!
//! Malformed payloads are logged and dropped here, so nothing downstream sees them.

use std::time::Duration;

use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::AgentConfig;

/// What the connection delivers to the agent.
#[derive(Debug)]
pub struct LinkEvents {
    /// The newest desired state received (not yet filtered by generation).
    pub desired: watch::Receiver<Option<pb::DesiredState>>,
    pub chunks: mpsc::Receiver<pb::BlobChunk>,
    /// Bumped on every (re)connect, so the agent can re-report.
    pub connected: watch::Receiver<u64>,
}

/// Sends to the hub through the broker; cheap to clone.
#[derive(Debug, Clone)]
pub struct LinkSender {
    client: AsyncClient,
    device_id: String,
}

impl LinkSender {
    pub async fn request_blob(&self, request: pb::BlobRequest) {
        self.publish(DeviceTopic::BlobRequest, request.encode_to_vec(), false)
            .await;
    }

    pub async fn report(&self, report: &pb::ReportedState) {
        self.publish(DeviceTopic::Reported, report.encode_to_vec(), false)
            .await;
    }

    async fn publish(&self, kind: DeviceTopic, payload: Vec<u8>, retain: bool) {
        let topic = topics::device(&self.device_id, kind);
        // While disconnected, rumqttc queues the request; if its queue is full the publish
        // waits, which is the back-pressure we want. Errors mean the client is shutting down.
        if let Err(err) = self
            .client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
        {
            tracing::debug!(error = %err, "publish dropped");
        }
    }

    /// Marks the device offline (retained) and disconnects cleanly.
    pub async fn goodbye(&self, birth: &pb::Birth) {
        let offline = pb::Birth {
            online: false,
            ..birth.clone()
        };
        self.publish(DeviceTopic::Birth, offline.encode_to_vec(), true)
            .await;
        let _ = self.client.disconnect().await;
    }
}

#[derive(Debug)]
pub struct Link {
    pub sender: LinkSender,
    pub events: LinkEvents,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn start(config: &AgentConfig, birth: pb::Birth) -> Link {
    let device_id = config.device_id.clone();
    let mut options = MqttOptions::new(
        format!("edgeship-agent-{device_id}"),
        config.broker.host.clone(),
        config.broker.port,
    );
    let will = pb::Birth {
        online: false,
        ..birth.clone()
    };
    options
        .set_keep_alive(config.keep_alive)
        // Persistent session: chunks and desired states published while the link was down
        // are delivered when it comes back.
        .set_clean_session(false)
        .set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes)
        .set_last_will(LastWill::new(
            topics::device(&device_id, DeviceTopic::Birth),
            will.encode_to_vec(),
            QoS::AtLeastOnce,
            true,
        ));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (desired_tx, desired_rx) = watch::channel(None);
    let (chunk_tx, chunk_rx) = mpsc::channel(256);
    let (connected_tx, connected_rx) = watch::channel(0u64);
    let sender = LinkSender {
        client: client.clone(),
        device_id: device_id.clone(),
    };
    let broker = config.broker.to_string();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(%broker, session_present = ack.session_present, "connected to the broker");
                    let client = client.clone();
                    let birth = birth.clone();
                    let device_id = device_id.clone();
                    // Subscribing from inside the poll loop would deadlock on a full request
                    // queue; do it from a task while polling continues.
                    tokio::spawn(async move {
                        for kind in [DeviceTopic::Desired, DeviceTopic::BlobResponse] {
                            let _ = client
                                .subscribe(topics::device(&device_id, kind), QoS::AtLeastOnce)
                                .await;
                        }
                        let _ = client
                            .publish(
                                topics::device(&device_id, DeviceTopic::Birth),
                                QoS::AtLeastOnce,
                                true,
                                birth.encode_to_vec(),
                            )
                            .await;
                    });
                    connected_tx.send_modify(|n| *n += 1);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    match topics::parse(&publish.topic) {
                        Some((id, DeviceTopic::Desired)) if id == device_id => {
                            match pb::DesiredState::decode(publish.payload.as_ref()) {
                                Ok(desired) if desired.device_id == device_id => {
                                    desired_tx.send_replace(Some(desired));
                                }
                                Ok(desired) => {
                                    tracing::warn!(claimed = %desired.device_id, "desired state for another device ignored")
                                }
                                Err(err) => {
                                    tracing::warn!(error = %err, bytes = publish.payload.len(), "malformed desired state ignored")
                                }
                            }
                        }
                        Some((id, DeviceTopic::BlobResponse)) if id == device_id => {
                            match pb::BlobChunk::decode(publish.payload.as_ref()) {
                                Ok(chunk) => {
                                    // A full queue means a stalled fetch; dropping is safe
                                    // (the fetch re-requests what it misses).
                                    let _ = chunk_tx.try_send(chunk);
                                }
                                Err(err) => {
                                    tracing::warn!(error = %err, "malformed blob chunk ignored")
                                }
                            }
                        }
                        _ => {
                            tracing::debug!(topic = %publish.topic, "message on an unexpected topic ignored")
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%broker, error = %err, retry_in = ?backoff, "broker unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    Link {
        sender,
        events: LinkEvents {
            desired: desired_rx,
            chunks: chunk_rx,
            connected: connected_rx,
        },
        task,
    }
}
