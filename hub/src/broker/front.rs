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

        let Some(_setup) = self.setups.enter(&client_id).await else {
            return Err(format!(
                "a newer connection of {client_id:?} took over while this one waited"
            ));
        };
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
struct Setups(Mutex<HashMap<String, SetupLine>>);

/// The connections of one client id waiting to be set up.
#[derive(Debug, Default)]
struct SetupLine {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// The number of the newest connection that joined the line.
    newest: u64,
}

/// A setup in progress; the next one for the same id waits until this is dropped.
struct Setup<'a> {
    setups: &'a Setups,
    id: String,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Setups {
    /// Waits for the id's turn. `None` when a newer connection under the same id joined the
    /// line meanwhile, or the turn did not come within the setup timeout: a client that
    /// reconnects while an overloaded broker answers slowly has given up on this connection,
    /// and setting each of them up in turn would only make the line grow.
    async fn enter(&self, id: &str) -> Option<Setup<'_>> {
        // An empty id gets a fresh one from the broker: nothing to race with.
        if id.is_empty() {
            return Some(Setup {
                setups: self,
                id: String::new(),
                held: None,
            });
        }
        let (lock, ticket) = {
            let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let line = lines.entry(id.to_owned()).or_default();
            line.newest += 1;
            (Arc::clone(&line.lock), line.newest)
        };
        let held = tokio::time::timeout(SETUP_TIMEOUT, lock.lock_owned()).await;
        let setup = Setup {
            setups: self,
            id: id.to_owned(),
            held: held.ok(),
        };
        let newest = {
            let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
            lines.get(id).map(|line| line.newest)
        };
        (setup.held.is_some() && newest == Some(ticket)).then_some(setup)
    }
}

impl Drop for Setup<'_> {
    fn drop(&mut self) {
        self.held.take();
        if self.id.is_empty() {
            return;
        }
        let mut lines = self.setups.0.lock().unwrap_or_else(|e| e.into_inner());
        // Nobody else waits on this id: forget it, so the map does not grow with ids.
        if lines
            .get(&self.id)
            .is_some_and(|line| Arc::strong_count(&line.lock) == 1)
        {
            lines.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn of_connections_waiting_under_one_id_only_the_newest_is_set_up() {
        let setups = Setups::default();
        let first = setups.enter("edge-a").await.expect("an empty line");
        // Two more connections of the same client join the line behind it (polled once).
        let second = setups.enter("edge-a");
        let third = setups.enter("edge-a");
        tokio::pin!(second, third);
        let still_waiting = Duration::ZERO;
        assert!(
            tokio::time::timeout(still_waiting, &mut second)
                .await
                .is_err()
        );
        assert!(
            tokio::time::timeout(still_waiting, &mut third)
                .await
                .is_err()
        );
        drop(first);
        assert!(second.await.is_none(), "a superseded connection was set up");
        let third = third.await;
        assert!(third.is_some(), "the newest connection was refused");
        drop(third);
        assert!(
            setups.0.lock().expect("lock").is_empty(),
            "the id is remembered"
        );
        // Other ids never wait on each other.
        let a = setups.enter("edge-a").await;
        let b = setups.enter("edge-b").await;
        assert!(a.is_some() && b.is_some());
    }
}
