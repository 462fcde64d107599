//! The TLS gate in front of the embedded broker. rumqttd has no per-client ACLs and no
//! revocation, so it listens on loopback only and every device connects here instead: mutual
//! TLS with a certificate from the hub's CA (its common name is the device id), then each
//! packet the device sends is read with rumqttc's MQTT parser and checked before it is
//! passed on. A device may connect only under its own client id, publish only to its own
//! upward topics, and subscribe only to its own downward topics and to the broadcast topics
//! of blobs its desired state entitles it to. A violation, or a revocation, closes the
//! connection. What the broker sends down passes through untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use edgeship_proto::topics;
use rumqttc::mqttbytes::{self, PacketType};
use rumqttc::{Connect, Publish, Subscribe};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::front::Front;
use super::{DEVICE_READS, DEVICE_WRITES};
use crate::blob_server::Entitlements;
use crate::trust::enrollment::Enrollments;
use crate::trust::pki::{self, Identity};

/// What the gate needs to decide.
pub struct Gate {
    acceptor: tokio_rustls::TlsAcceptor,
    /// The way to the broker itself, on loopback.
    front: Front,
    enrollments: Arc<Enrollments>,
    entitlements: Arc<Entitlements>,
    max_packet_bytes: usize,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("front", &self.front).finish()
    }
}

impl Gate {
    pub fn new(
        server: &Identity,
        ca_pem: &str,
        broker: SocketAddr,
        enrollments: Arc<Enrollments>,
        entitlements: Arc<Entitlements>,
        max_packet_bytes: usize,
    ) -> anyhow::Result<Self> {
        let provider = edgeship_proto::tls::provider();
        let roots = edgeship_proto::tls::roots(ca_pem).map_err(anyhow::Error::msg)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()?;
        let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        Ok(Gate {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            front: Front::new(broker, max_packet_bytes),
            enrollments,
            entitlements,
            max_packet_bytes,
        })
    }

    /// Accepts devices on `listener` for as long as the process runs.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "the broker gate could not accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let gate = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(reason) = gate.connection(stream).await {
                    tracing::warn!(%peer, %reason, "broker connection closed by the gate");
                }
            });
        }
    }

    async fn connection(&self, stream: TcpStream) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let tls = self
            .acceptor
            .accept(stream)
            .await
            .map_err(|err| format!("TLS handshake failed: {err}"))?;
        let (device, serial) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| pki::name_and_serial(cert))
            .ok_or("the client certificate names no device")?;
        if self.enrollments.is_revoked(&device) {
            return Err(format!("device {device} is revoked"));
        }
        if !self.enrollments.admits(&device, &serial) {
            return Err(format!(
                "certificate {serial} of {device} is not its current one (enrolled again since)"
            ));
        }
        let peer = Peer {
            device: &device,
            serial: &serial,
        };
        self.front.relay(tls, Some((self, peer))).await
    }

    /// Checks a device's first packet, its CONNECT.
    pub(super) fn check_first(
        &self,
        peer: Peer<'_>,
        header: mqttbytes::FixedHeader,
        frame: Bytes,
    ) -> Result<(), String> {
        self.still_admitted(peer)?;
        check(
            peer.device,
            PacketType::Connect,
            header,
            frame,
            &self.entitlements,
        )
    }

    /// Whether the peer's certificate still stands: not revoked, not superseded.
    fn still_admitted(&self, peer: Peer<'_>) -> Result<(), String> {
        if self.enrollments.admits(peer.device, peer.serial) {
            Ok(())
        } else {
            Err(format!(
                "device {} is revoked, or enrolled again with another certificate",
                peer.device
            ))
        }
    }

    /// Device → broker after the CONNECT: whole packets, each checked; `buffer` holds what
    /// was read after the CONNECT.
    pub(super) async fn upward(
        &self,
        peer: Peer<'_>,
        mut buffer: BytesMut,
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
    ) -> Result<(), String> {
        let device = peer.device;
        loop {
            let checked = next_packet(
                device,
                &buffer,
                true,
                self.max_packet_bytes,
                &self.entitlements,
            )?;
            let Some(length) = checked else {
                if from
                    .read_buf(&mut buffer)
                    .await
                    .map_err(|e| e.to_string())?
                    == 0
                {
                    return Ok(());
                }
                continue;
            };
            self.still_admitted(peer)?;
            let frame = buffer.split_to(length);
            to.write_all(&frame).await.map_err(|e| e.to_string())?;
        }
    }

    /// Broker → device: passed through, while the device stays trusted.
    pub(super) async fn downward(
        &self,
        peer: Peer<'_>,
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
    ) -> Result<(), String> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = from.read(&mut buffer).await.map_err(|e| e.to_string())?;
            if read == 0 {
                return Ok(());
            }
            self.still_admitted(peer)?;
            to.write_all(&buffer[..read])
                .await
                .map_err(|e| e.to_string())?;
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer<'a> {
    device: &'a str,
    /// Its certificate's serial, in hex.
    serial: &'a str,
}

/// The ACL: what device `device` may send, one whole packet (`frame`) at a time.
fn check(
    device: &str,
    kind: PacketType,
    header: mqttbytes::FixedHeader,
    frame: Bytes,
    entitlements: &Entitlements,
) -> Result<(), String> {
    let malformed = |err: mqttbytes::Error| format!("{device} sent a malformed {kind:?}: {err}");
    match kind {
        PacketType::Connect => {
            let connect = Connect::read(header, frame).map_err(malformed)?;
            let expected = format!("edgeship-agent-{device}");
            if connect.client_id != expected {
                return Err(format!(
                    "{device} connected as client {:?}; it may only be {expected:?}",
                    connect.client_id
                ));
            }
            if let Some(will) = &connect.last_will
                && !may_publish(device, &will.topic)
            {
                return Err(format!("{device} set a last will on {:?}", will.topic));
            }
        }
        PacketType::Publish => {
            let publish = Publish::read(header, frame).map_err(malformed)?;
            if !may_publish(device, &publish.topic) {
                return Err(format!("{device} published to {:?}", publish.topic));
            }
        }
        PacketType::Subscribe => {
            let subscribe = Subscribe::read(header, frame).map_err(malformed)?;
            for filter in &subscribe.filters {
                if !may_subscribe(device, &filter.path, entitlements) {
                    return Err(format!("{device} subscribed to {:?}", filter.path));
                }
            }
        }
        // Acknowledgements, unsubscribes, pings and disconnects concern only the device's own
        // session.
        _ => {}
    }
    Ok(())
}

/// The first whole packet in `buffer`, checked: `Ok(None)` until it has arrived whole,
/// `Ok(Some(length))` when its `length` bytes may pass.
fn next_packet(
    device: &str,
    buffer: &BytesMut,
    connected: bool,
    max_packet_bytes: usize,
    entitlements: &Entitlements,
) -> Result<Option<usize>, String> {
    let header = match mqttbytes::check(buffer.iter(), max_packet_bytes) {
        Ok(header) => header,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(err) => return Err(format!("{device} sent a malformed packet: {err}")),
    };
    let kind = header
        .packet_type()
        .map_err(|err| format!("{device} sent a malformed packet: {err}"))?;
    if !connected && kind != PacketType::Connect {
        return Err(format!("{device} sent {kind:?} before CONNECT"));
    }
    let length = header.frame_length();
    let frame = Bytes::copy_from_slice(&buffer[..length]);
    check(device, kind, header, frame, entitlements)?;
    Ok(Some(length))
}

fn may_subscribe(device: &str, filter: &str, entitlements: &Entitlements) -> bool {
    if let Some(digest) = topics::parse_blob_broadcast(filter) {
        return entitlements.allows(device, digest);
    }
    matches!(topics::parse(filter), Some((id, kind)) if id == device && DEVICE_READS.contains(&kind))
}

/// A device publishes only on its own upward topics.
fn may_publish(device: &str, topic: &str) -> bool {
    matches!(topics::parse(topic), Some((id, kind)) if id == device && DEVICE_WRITES.contains(&kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeship_proto::topics::DeviceTopic;

    #[test]
    fn a_device_publishes_only_upward_on_its_own_topics() {
        let own = |kind| topics::device("edge-a", kind);
        assert!(may_publish("edge-a", &own(DeviceTopic::Reported)));
        assert!(may_publish("edge-a", &own(DeviceTopic::BlobRequest)));
        assert!(!may_publish("edge-a", &own(DeviceTopic::Desired)));
        assert!(!may_publish("edge-a", &own(DeviceTopic::BlobResponse)));
        assert!(!may_publish(
            "edge-a",
            &topics::device("edge-b", DeviceTopic::Reported)
        ));
        assert!(!may_publish("edge-a", "edgeship/v1/devices/+/reported"));
        assert!(!may_publish("edge-a", "anything/else"));
    }

    fn packets(device: &str, bytes: &[u8], entitlements: &Entitlements) -> Result<usize, String> {
        let mut buffer = BytesMut::from(bytes);
        let mut passed = 0;
        let mut connected = false;
        while let Some(length) = next_packet(device, &buffer, connected, 1 << 20, entitlements)? {
            let _ = buffer.split_to(length);
            connected = true;
            passed += 1;
        }
        Ok(passed)
    }

    fn encoded(packets: &[rumqttc::Packet]) -> Vec<u8> {
        let mut buffer = BytesMut::new();
        for packet in packets {
            let written = match packet.clone() {
                rumqttc::Packet::Connect(p) => p.write(&mut buffer),
                // QoS 1 needs a packet id.
                rumqttc::Packet::Publish(mut p) => {
                    p.pkid = 1;
                    p.write(&mut buffer)
                }
                rumqttc::Packet::Subscribe(mut p) => {
                    p.pkid = 1;
                    p.write(&mut buffer)
                }
                _ => unreachable!("only these are built here"),
            };
            written.expect("encodes");
        }
        buffer.to_vec()
    }

    #[test]
    fn the_gate_passes_a_device_s_own_traffic_and_stops_at_the_first_foreign_packet() {
        let entitlements = Entitlements::default();
        let digest = "ab".repeat(32);
        entitlements.set("edge-a", std::collections::HashSet::from([digest.clone()]));
        let connect = |id: &str| rumqttc::Packet::Connect(Connect::new(id));
        let publish = |topic: String| {
            rumqttc::Packet::Publish(Publish::new(topic, rumqttc::QoS::AtLeastOnce, vec![1]))
        };
        let subscribe = |filter: String| {
            rumqttc::Packet::Subscribe(Subscribe::new(filter, rumqttc::QoS::AtLeastOnce))
        };
        let own = |kind| topics::device("edge-a", kind);
        let good = encoded(&[
            connect("edgeship-agent-edge-a"),
            subscribe(own(DeviceTopic::Desired)),
            subscribe(topics::blob_broadcast(&digest)),
            publish(own(DeviceTopic::Reported)),
        ]);
        assert_eq!(packets("edge-a", &good, &entitlements), Ok(4));
        let refused = |packet| {
            let bytes = encoded(&[connect("edgeship-agent-edge-a"), packet]);
            packets("edge-a", &bytes, &entitlements).expect_err("refused")
        };
        assert!(
            refused(publish(topics::device("edge-b", DeviceTopic::Reported)))
                .contains("published to")
        );
        assert!(refused(publish(own(DeviceTopic::Desired))).contains("published to"));
        assert!(
            refused(subscribe(topics::device("edge-b", DeviceTopic::Desired)))
                .contains("subscribed to")
        );
        assert!(refused(subscribe("edgeship/#".into())).contains("subscribed to"));
        assert!(
            refused(subscribe(topics::blob_broadcast(&"cd".repeat(32)))).contains("subscribed to")
        );
        let impostor = encoded(&[connect("edgeship-agent-edge-b")]);
        assert!(packets("edge-a", &impostor, &entitlements).is_err());
        let first = encoded(&[publish(own(DeviceTopic::Reported))]);
        assert!(
            packets("edge-a", &first, &entitlements)
                .expect_err("no connect")
                .contains("before CONNECT")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, ..Default::default() })]

        /// Whatever a device sends, the gate passes whole packets or stops, never panics.
        #[test]
        fn any_bytes_from_a_device_pass_whole_or_stop(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = packets("edge-a", &bytes, &Entitlements::default());
        }

        /// Valid traffic damaged anywhere is passed packet by packet or stopped, cleanly.
        #[test]
        fn damaged_device_traffic_passes_or_stops_cleanly(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..5),
        ) {
            let mut bytes = encoded(&[
                rumqttc::Packet::Connect(Connect::new("edgeship-agent-edge-a")),
                rumqttc::Packet::Subscribe(Subscribe::new(topics::device("edge-a", DeviceTopic::Desired), rumqttc::QoS::AtLeastOnce)),
                rumqttc::Packet::Publish(Publish::new(topics::device("edge-a", DeviceTopic::Reported), rumqttc::QoS::AtLeastOnce, vec![7; 40])),
            ]);
            for (position, value) in edits {
                let at = position % bytes.len();
                bytes[at] = value;
            }
            let _ = packets("edge-a", &bytes, &Entitlements::default());
        }
    }
}
