//! The embedded MQTT broker (rumqttd): what makes one hub process a complete system.
//!
//! Design: rumqttd runs on its own OS threads and has no stop API, so an embedded broker lives
//! as long as the process. Production fleets point the hub at an external broker instead
//! (`--mqtt-url`; Mosquitto is the reference).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Starts a broker on `listen` (port 0 picks a free port) and waits until it accepts
/// connections. Returns the address it listens on.
pub fn start_embedded(listen: SocketAddr, max_packet_bytes: usize) -> anyhow::Result<SocketAddr> {
    let addr = if listen.port() == 0 {
        // rumqttd cannot report the port it bound; pick a free one first.
        let probe = TcpListener::bind(listen).context("finding a free port for the broker")?;
        probe.local_addr()?
    } else {
        if TcpListener::bind(listen).is_err() {
            bail!("the MQTT address {listen} is already in use");
        }
        listen
    };
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_packet_bytes,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        // Without dynamic filters rumqttd drops publishes to topics nobody subscribed yet,
        // which would lose retained desired states published before a device connects.
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "mqtt".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = Config {
        router: RouterConfig {
            max_connections: 100_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("mqtt".to_owned(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(err) = broker.start() {
                tracing::error!(error = %err, "embedded MQTT broker stopped");
            }
        })
        .context("starting the broker thread")?;
    // rumqttd logs bind failures instead of returning them: wait until it completes an MQTT
    // handshake (a bare TCP probe would make it log an aborted client).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mqtt_handshake(addr) {
        if Instant::now() > deadline {
            bail!("the embedded MQTT broker did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(addr)
}

/// Connects, expects a successful CONNACK, disconnects (MQTT 3.1.1, clean session).
fn mqtt_handshake(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let client_id = b"edgeship-hub-probe";
    let mut connect = vec![0x10, (12 + client_id.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    connect.extend_from_slice(&[0, client_id.len() as u8]);
    connect.extend_from_slice(client_id);
    let mut connack = [0u8; 4];
    let ok = stream.write_all(&connect).is_ok()
        && stream.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20
        && connack[3] == 0;
    let _ = stream.write_all(&[0xE0, 0]);
    ok
}
