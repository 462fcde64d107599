//! A device made of a raw MQTT client: it announces itself, reads its desired states, reports
//! job progress, fetches blobs and uploads outputs exactly as the protocol says, one message
//! at a time, so each test controls every byte the hub sees.

use std::time::Duration;

use bytes::Bytes;
use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

pub struct FakeDevice {
    pub id: String,
    client: AsyncClient,
    desired: mpsc::UnboundedReceiver<pb::DesiredState>,
    acks: mpsc::UnboundedReceiver<pb::UploadAck>,
    chunks: mpsc::UnboundedReceiver<pb::BlobChunk>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn capabilities() -> pb::Capabilities {
    pb::Capabilities {
        arch: "x86_64".into(),
        os: "linux".into(),
        cpu_count: 1,
        memory_bytes: 1 << 30,
        runtimes: vec!["tract".into()],
        features: vec![
            "kind/model".into(),
            "protocol/azureml".into(),
            "auth/none".into(),
        ],
        ..Default::default()
    }
}

impl FakeDevice {
    /// Connects, subscribes to its own topics, and announces itself; returns once the hub
    /// has recorded the birth.
    pub async fn connect(hub_url: &str, mqtt_url: &str, id: &str) -> Self {
        let (host, port) = edgeship_hub::server::parse_mqtt_url(mqtt_url).expect("url");
        let mut options = MqttOptions::new(format!("edgeship-agent-{id}"), host, port);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (desired_tx, desired) = mpsc::unbounded_channel();
        let (acks_tx, acks) = mpsc::unbounded_channel();
        let (chunks_tx, chunks) = mpsc::unbounded_channel();
        let device = id.to_owned();
        let poller = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => match topics::parse(&p.topic) {
                        Some((d, DeviceTopic::Desired)) if d == device => {
                            if let Some(m) = testkit::trust::open_desired(&p.payload) {
                                let _ = desired_tx.send(m);
                            }
                        }
                        Some((d, DeviceTopic::UploadResponse)) if d == device => {
                            if let Ok(m) = pb::UploadAck::decode(p.payload) {
                                let _ = acks_tx.send(m);
                            }
                        }
                        Some((d, DeviceTopic::BlobResponse)) if d == device => {
                            if let Ok(m) = pb::BlobChunk::decode(p.payload) {
                                let _ = chunks_tx.send(m);
                            }
                        }
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for kind in [
            DeviceTopic::Desired,
            DeviceTopic::UploadResponse,
            DeviceTopic::BlobResponse,
        ] {
            client
                .subscribe(topics::device(id, kind), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
        }
        let since = crate::support::now_ms();
        let birth = pb::Birth {
            device_id: id.to_owned(),
            online: true,
            agent_version: "fake".into(),
            capabilities: Some(capabilities()),
            ..Default::default()
        };
        client
            .publish(
                topics::device(id, DeviceTopic::Birth),
                QoS::AtLeastOnce,
                false,
                birth.encode_to_vec(),
            )
            .await
            .expect("birth");
        crate::support::wait_heard_from(hub_url, id, since - 1).await;
        Self {
            id: id.to_owned(),
            client,
            desired,
            acks,
            chunks,
            poller,
        }
    }

    pub async fn publish(&self, kind: DeviceTopic, payload: Vec<u8>) {
        self.client
            .publish(
                topics::device(&self.id, kind),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("publish");
    }

    /// The first desired state (newest retained, then updates) that `accept` takes.
    pub async fn desired_where(
        &mut self,
        what: &str,
        accept: impl Fn(&pb::DesiredState) -> bool,
    ) -> pb::DesiredState {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.desired.recv()).await;
            match next {
                Ok(Some(desired)) if accept(&desired) => return desired,
                Ok(Some(_)) => {}
                _ => panic!("no desired state {what} within {WAIT:?}"),
            }
        }
    }

    /// Reports these job statuses (and no workloads).
    pub async fn report(&self, jobs: Vec<pb::JobStatus>) {
        let report = pb::ReportedState {
            device_id: self.id.clone(),
            applied_generation: 0,
            workloads: vec![],
            reported_at_ms: crate::support::now_ms(),
            jobs,
        };
        self.publish(DeviceTopic::Reported, report.encode_to_vec())
            .await;
    }

    /// Sends one upload chunk and returns the hub's acknowledgement of it.
    pub async fn upload(&mut self, chunk: pb::UploadChunk) -> pb::UploadAck {
        self.publish(DeviceTopic::UploadRequest, chunk.encode_to_vec())
            .await;
        self.next_ack().await
    }

    pub async fn next_ack(&mut self) -> pb::UploadAck {
        tokio::time::timeout(WAIT, self.acks.recv())
            .await
            .expect("an upload acknowledgement in time")
            .expect("ack channel open")
    }

    /// Asks for one chunk of a blob, as an agent fetching its files does.
    pub async fn fetch(&mut self, sha256: &str, offset: u64, length: u64) -> pb::BlobChunk {
        let request = pb::BlobRequest {
            sha256: sha256.to_owned(),
            offset,
            length,
            ..Default::default()
        };
        self.publish(DeviceTopic::BlobRequest, request.encode_to_vec())
            .await;
        tokio::time::timeout(WAIT, self.chunks.recv())
            .await
            .expect("a blob chunk in time")
            .expect("chunk channel open")
    }

    /// Uploads `output` as the protocol says: a probe, then `chunk`-byte pieces from where
    /// the hub's copy ends, each acknowledged. Returns the last acknowledgement.
    pub async fn upload_all(&mut self, job: &str, output: &[u8], chunk: usize) -> pb::UploadAck {
        let sha256 = digest(output);
        let mut ack = self.upload(upload_chunk(job, output, &sha256, 0, 0)).await;
        while ack.error.is_empty() && ack.received_bytes < output.len() as u64 {
            let offset = ack.received_bytes as usize;
            let len = chunk.min(output.len() - offset);
            ack = self
                .upload(upload_chunk(job, output, &sha256, offset, len))
                .await;
        }
        ack
    }
}

/// A chunk of `output` (announced as `sha256`) at `offset`, `len` bytes.
pub fn upload_chunk(
    job: &str,
    output: &[u8],
    sha256: &str,
    offset: usize,
    len: usize,
) -> pb::UploadChunk {
    pb::UploadChunk {
        job_id: job.to_owned(),
        sha256: sha256.to_owned(),
        size_bytes: output.len() as u64,
        offset: offset as u64,
        data: Bytes::copy_from_slice(&output[offset..offset + len]),
    }
}

pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A job's status as a device reports it.
pub fn status(job: &str, state: pb::JobState, done: u64, total: u64) -> pb::JobStatus {
    pb::JobStatus {
        job_id: job.to_owned(),
        state: state.into(),
        records_done: done,
        records_total: total,
        ..Default::default()
    }
}
