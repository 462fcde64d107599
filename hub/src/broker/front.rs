//! The front of the embedded broker: every connection from outside the hub passes here on its
//! way to rumqttd, with TLS (then the [`Gate`] checks each packet) or without.
//!
//! Why it exists: rumqttd 0.20 keeps one last-will channel per client id and unwraps a send
//! on it when the id connects again. A connection that ends while rumqttd sets it up (its
//! client gone before the CONNACK, two connections of one id racing through the router, an id
//! the router refuses) leaves a dead channel behind, and the next connection under that id
//! panics while holding the lock every connection takes: from then on the broker refuses
//! everyone. Fault trials hit it with agents killed and restarted under load. So the front
//! reads each CONNECT itself, refuses ids the router would refuse, lets one connection per
//! client id at a time through setup, and holds the broker side open until the CONNACK has
//! come back, whatever the client does meanwhile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::Connect;
use rumqttc::mqttbytes::{self, PacketType};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::gate::{Gate, Peer};

/// How long a client has to send its CONNECT, and the broker to answer it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters rumqttd's router refuses in a client id.
const REFUSED_IN_CLIENT_IDS: &[char] = &['+', '#', '/', '$'];

/// Connections on their way to the broker at `broker`.
#[derive(Debug)]
pub struct Front {
    broker: SocketAddr,
    max_packet_bytes: usize,
    setups: Setups,
}

impl Front {
    pub fn new(broker: SocketAddr, max_packet_bytes: usize) -> Front {
        Front {
            broker,
            max_packet_bytes,
            setups: Setups::default(),
        }
    }

    /// Accepts plain MQTT clients on `listener` for as long as the process runs.
    pub async fn serve_plain(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "the broker front could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let front = Arc::clone(&self);
            tokio::spawn(async move {
                if let Err(reason) = front.relay(stream, None).await {
                    tracing::warn!(%peer, %reason, "broker connection closed by the front");
                }
            });
        }
    }

    /// Carries one client connection to the broker and back; with `acl`, every packet the
    /// client sends is checked by the gate.
    pub(super) async fn relay<S: AsyncRead + AsyncWrite>(
        &self,
        stream: S,
        acl: Option<(&Gate, Peer<'_>)>,
    ) -> Result<(), String> {
        let (mut client_read, mut client_write) = tokio::io::split(stream);
        let mut upward = BytesMut::with_capacity(64 * 1024);
        let read = read_packet(&mut client_read, &mut upward, self.max_packet_bytes);
        let (header, length) = tokio::time::timeout(SETUP_TIMEOUT, read)
            .await
            .map_err(|_| "no CONNECT within 10 s".to_owned())??;
        let connect = upward.split_to(length).freeze();
        let client_id = self.check_connect(header, connect.clone(), acl)?;

        let _setup = self.setups.enter(&client_id).await;
        let broker = TcpStream::connect(self.broker)
            .await
            .map_err(|err| format!("the broker is unreachable: {err}"))?;
        let _ = broker.set_nodelay(true);
        let (mut broker_read, mut broker_write) = broker.into_split();
        broker_write
            .write_all(&connect)
            .await
            .map_err(|err| err.to_string())?;
        // The broker's answer is awaited even if the client has gone meanwhile: rumqttd must
        // never see a connection vanish before it has finished setting it up.
        let mut downward = BytesMut::with_capacity(64 * 1024);
        let answer = read_packet(&mut broker_read, &mut downward, usize::MAX);
        tokio::time::timeout(SETUP_TIMEOUT, answer)
            .await
            .map_err(|_| format!("the broker did not answer {client_id:?} within 10 s"))??;
        drop(_setup);
        client_write
            .write_all(&downward)
            .await
            .map_err(|err| err.to_string())?;
        match acl {
            Some((gate, peer)) => {
                let up = gate.upward(peer, upward, client_read, broker_write);
                let down = gate.downward(peer, broker_read, client_write);
                // Whichever side ends (or breaks a rule) ends the connection.
                tokio::select! {
                    result = up => result,
                    result = down => result,
                }
            }
            None => {
                broker_write
                    .write_all(&upward)
                    .await
                    .map_err(|err| err.to_string())?;
                let up = tokio::io::copy(&mut client_read, &mut broker_write);
                let down = tokio::io::copy(&mut broker_read, &mut client_write);
                tokio::select! {
                    result = up => result.map(drop).map_err(|e| e.to_string()),
                    result = down => result.map(drop).map_err(|e| e.to_string()),
                }
            }
        }
    }

    /// The client id of a first packet that must be a CONNECT the broker can take (and, with
    /// an ACL, one the device may send).
    fn check_connect(
        &self,
        header: mqttbytes::FixedHeader,
        frame: Bytes,
        acl: Option<(&Gate, Peer<'_>)>,
    ) -> Result<String, String> {
        let kind = header
            .packet_type()
            .map_err(|err| format!("a malformed first packet: {err}"))?;
        if kind != PacketType::Connect {
            return Err(format!("{kind:?} before CONNECT"));
        }
        if let Some((gate, peer)) = acl {
            gate.check_first(peer, header, frame.clone())?;
        }
        let connect =
            Connect::read(header, frame).map_err(|err| format!("a malformed CONNECT: {err}"))?;
        if connect.client_id.contains(REFUSED_IN_CLIENT_IDS) {
            return Err(format!(
                "client id {:?} holds a character MQTT brokers refuse ({})",
                connect.client_id,
                REFUSED_IN_CLIENT_IDS.iter().collect::<String>()
            ));
        }
        Ok(connect.client_id)
    }
}

/// Reads until `buffer` holds a whole packet; returns its header and length (what follows
/// stays in the buffer).
async fn read_packet(
    from: &mut (impl AsyncRead + Unpin),
    buffer: &mut BytesMut,
    max_packet_bytes: usize,
) -> Result<(mqttbytes::FixedHeader, usize), String> {
    loop {
        match mqttbytes::check(buffer.iter(), max_packet_bytes) {
            Ok(header) => return Ok((header, header.frame_length())),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(err) => return Err(format!("a malformed packet: {err}")),
        }
        let read = from.read_buf(buffer).await.map_err(|e| e.to_string())?;
        if read == 0 {
            return Err("closed during setup".into());
        }
    }
}

/// One connection setup per client id at a time.
#[derive(Debug, Default)]
struct Setups(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// A setup in progress; the next one for the same id waits until this is dropped.
struct Setup<'a> {
    setups: &'a Setups,
    id: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Setups {
    async fn enter(&self, id: &str) -> Setup<'_> {
        // An empty id gets a fresh one from the broker: nothing to race with.
        let held = if id.is_empty() {
            None
        } else {
            let lock = {
                let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
                Arc::clone(locks.entry(id.to_owned()).or_default())
            };
            Some(lock.lock_owned().await)
        };
        Setup {
            setups: self,
            id: id.to_owned(),
            held,
        }
    }
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        if self.held.take().is_some() {
            let mut locks = self.setups.0.lock().unwrap_or_else(|e| e.into_inner());
            // Nobody else waits on this id: forget it, so the map does not grow with ids.
            if locks
                .get(&self.id)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                locks.remove(&self.id);
            }
        }
    }
}
