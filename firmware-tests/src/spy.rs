//! An MQTT client that counts the blob chunks the hub sends one device, on its own chunk
//! topic and on the broadcast topics (which carry blobs for every device): how many times
//! each (blob, offset) went out, so resumed downloads can be charged with what they
//! re-fetched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgeship_proto::topics::{self, DeviceTopic};
use edgeship_proto::v1 as pb;
use prost::Message as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Times each chunk was sent, by (blob sha256, offset).
pub type ChunkCounts = Arc<Mutex<HashMap<(String, u64), u32>>>;

/// Subscribes to `device`'s chunk topic on the broker at `mqtt_url` (`mqtt://host:port`) and
/// counts what passes, subscribing again after each reconnection (a restarted broker forgets
/// subscriptions). Returns once subscribed.
pub async fn chunk_spy(mqtt_url: &str, device: &str) -> ChunkCounts {
    let address = mqtt_url.strip_prefix("mqtt://").unwrap_or(mqtt_url);
    let (host, port) = address.rsplit_once(':').expect("mqtt://host:port");
    let port: u16 = port.parse().expect("broker port");
    let id = format!("chunk-spy-{device}-{}", std::process::id());
    let mut options = MqttOptions::new(id, host, port);
    options.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let filters = [
        topics::device(device, DeviceTopic::BlobResponse),
        format!("{}/+", topics::BROADCAST_PREFIX),
    ];
    let counts = ChunkCounts::default();
    let sink = Arc::clone(&counts);
    let (subscribed, mut first) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for filter in &filters {
                        let _ = client.try_subscribe(filter, QoS::AtMostOnce);
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed.send(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(chunk) = pb::BlobChunk::decode(p.payload.as_ref()) {
                        let mut counts = sink.lock().unwrap_or_else(|e| e.into_inner());
                        *counts.entry((chunk.sha256, chunk.offset)).or_insert(0) += 1;
                    }
                }
                Ok(_) => {}
                // The broker is away (restarting): poll again, which reconnects.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            // The caller dropped its counts: nobody is listening any more.
            if Arc::strong_count(&sink) == 1 {
                break;
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(10), first.wait_for(|s| *s)).await;
    counts
}

/// Chunks sent more than once (each extra sending counted), and distinct chunks sent.
pub fn resent(counts: &ChunkCounts) -> (u32, usize) {
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner());
    (counts.values().map(|n| n - 1).sum(), counts.len())
}
