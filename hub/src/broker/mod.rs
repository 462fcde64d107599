//! The embedded MQTT broker (rumqttd): what makes one hub process a complete system. It
//! listens on loopback only, behind the [`front`] (and with TLS, the [`gate`]). [`wire`]
//! decides where the hub's own link connects and which URL devices are given.
//!
//! Design: rumqttd runs on its own OS threads and has no stop API, so an embedded broker lives
//! as long as the process. Production fleets point the hub at an external broker instead
//! (`--mqtt-url`; Mosquitto is the reference).

pub mod front;
pub mod gate;
pub mod mosquitto;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, bail};
use edgeship_proto::topics::{self, DeviceTopic};
use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, SegmentConfig, ServerSettings};

use crate::Mqtt;
use crate::blob_server::Entitlements;
use crate::trust::enrollment::Enrollments;
use crate::trust::pki::{Authority, HUB_CLIENT_NAME, Identity};

/// The topics of its own that a device subscribes to (hub → device); the gate and the
/// Mosquitto ACL allow these and nothing else downward.
pub const DEVICE_READS: [DeviceTopic; 5] = [
    DeviceTopic::Desired,
    DeviceTopic::BlobResponse,
    DeviceTopic::UploadResponse,
    DeviceTopic::LogRequest,
    DeviceTopic::ProfileRequest,
];
/// The topics of its own that a device publishes to (device → hub).
pub const DEVICE_WRITES: [DeviceTopic; 6] = [
    DeviceTopic::Birth,
    DeviceTopic::Reported,
    DeviceTopic::BlobRequest,
    DeviceTopic::UploadRequest,
    DeviceTopic::LogResponse,
    DeviceTopic::ProfileResponse,
];

/// Where the hub's link meets the broker, and what devices are told.
#[derive(Debug)]
pub struct Wiring {
    pub link_host: String,
    pub link_port: u16,
    /// TLS for the link (an external `mqtts://` broker): the hub's client certificate.
    pub link_tls: Option<Arc<rustls::ClientConfig>>,
    /// The broker URL devices use (`mqtts://` behind the gate or at an external broker).
    pub device_url: String,
}

/// What TLS on the MQTT side needs from the hub.
#[derive(Debug)]
pub struct TlsSetup<'a> {
    pub authority: &'a Authority,
    pub server: &'a Identity,
    pub enrollments: Arc<Enrollments>,
    pub entitlements: Arc<Entitlements>,
    /// The name devices reach the hub by (its first `--hostname`), for the broker URL they
    /// are given when the broker listens on every address.
    pub hostname: Option<&'a str>,
}

/// Starts the embedded broker (behind the gate with TLS) or prepares the connection to an
/// external one.
pub async fn wire(
    mqtt: &Mqtt,
    max_packet_bytes: usize,
    tls: Option<TlsSetup<'_>>,
) -> anyhow::Result<Wiring> {
    let embedded = |listen: SocketAddr| async move {
        tokio::task::spawn_blocking(move || start_embedded(listen, max_packet_bytes)).await?
    };
    match (mqtt, tls) {
        (Mqtt::Embedded { listen }, None) => {
            // The front takes the public address; the broker hides on loopback.
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("the MQTT address {listen} is not free"))?;
            let public = listener.local_addr()?;
            let internal = embedded(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let front = front::Front::new(internal, max_packet_bytes);
            tokio::spawn(Arc::new(front).serve_plain(listener));
            Ok(Wiring {
                link_host: internal.ip().to_string(),
                link_port: internal.port(),
                link_tls: None,
                device_url: format!("mqtt://{public}"),
            })
        }
        (Mqtt::Embedded { listen }, Some(tls)) => {
            // The gate takes the public address; the broker hides on loopback.
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("the MQTT address {listen} is not free"))?;
            let public = listener.local_addr()?;
            let internal = embedded(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
            let gate = gate::Gate::new(
                tls.server,
                tls.authority.ca_pem(),
                internal,
                tls.enrollments,
                tls.entitlements,
                max_packet_bytes,
            )?;
            tokio::spawn(Arc::new(gate).serve(listener));
            tracing::info!(%public, "MQTT over TLS for devices");
            let host = match (public.ip().is_unspecified(), tls.hostname) {
                (false, _) => public.ip().to_string(),
                (true, Some(name)) => name.to_owned(),
                (true, None) => "localhost".to_owned(),
            };
            let device_url = edgeship_proto::BrokerUrl {
                host,
                port: public.port(),
                tls: true,
            };
            Ok(Wiring {
                link_host: internal.ip().to_string(),
                link_port: internal.port(),
                link_tls: None,
                device_url: device_url.to_string(),
            })
        }
        (
            Mqtt::External {
                host,
                port,
                tls: false,
            },
            _,
        ) => Ok(Wiring {
            link_host: host.clone(),
            link_port: *port,
            link_tls: None,
            device_url: format!("mqtt://{host}:{port}"),
        }),
        (
            Mqtt::External {
                host,
                port,
                tls: true,
            },
            tls,
        ) => {
            let tls = tls.context("an mqtts:// broker needs the hub's TLS (drop --insecure)")?;
            let identity = tls.authority.client_identity(HUB_CLIENT_NAME)?;
            let config = client_tls(tls.authority.ca_pem(), &identity)?;
            Ok(Wiring {
                link_host: host.clone(),
                link_port: *port,
                link_tls: Some(Arc::new(config)),
                device_url: format!("mqtts://{host}:{port}"),
            })
        }
    }
}

/// A TLS client configuration that trusts `ca_pem` and presents `identity`.
pub fn client_tls(ca_pem: &str, identity: &Identity) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let roots = edgeship_proto::tls::roots(ca_pem).map_err(anyhow::Error::msg)?;
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
    Ok(
        rustls::ClientConfig::builder_with_provider(edgeship_proto::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?,
    )
}

/// The log rumqttd keeps of each device's own control topics (desired states, log and
/// profile requests, upload acknowledgements). A device takes only the newest desired state
/// (and the hub sends it again when the device connects), and requests are small; at the
/// default 4 × 16 MiB these logs grew the hub by about 6 KiB a deploy/delete cycle for as
/// long as the soak ran (docs/reliability.md), and by up to 64 MiB per device over a long
/// life. Two segments of 1 MiB keep at least 1 MiB, hundreds of desired states.
const CONTROL_SEGMENTS: SegmentConfig = SegmentConfig {
    max_segment_size: 1024 * 1024,
    max_segment_count: 2,
};

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
            // rumqttd keeps a log per topic filter of up to size × count bytes. Blob chunks
            // are transient, so keep that bound small: 64 MiB per filter at most.
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 4,
            // Each device has its own chunk topic, and its log is never freed: at 64 MiB each a
            // fleet-wide rollout would hold the model once per device. The log drops whole
            // segments, so it keeps at least three of four: 12 MiB, more than an agent's whole
            // fetch window (32 chunks of 256 KiB), which a restarted agent takes up again.
            custom_segment: Some(
                [
                    DeviceTopic::Desired,
                    DeviceTopic::LogRequest,
                    DeviceTopic::ProfileRequest,
                    DeviceTopic::UploadResponse,
                ]
                .map(|kind| (topics::all_devices(kind), CONTROL_SEGMENTS))
                .into_iter()
                .chain([(
                    topics::all_devices(DeviceTopic::BlobResponse),
                    SegmentConfig {
                        max_segment_size: 4 * 1024 * 1024,
                        max_segment_count: 4,
                    },
                )])
                .collect(),
            ),
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
    // rumqttd logs bind failures instead of returning them: wait until the port is in
    // LISTEN state. (Probing with a client connection would make rumqttd log errors.)
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_listening(addr) {
        if Instant::now() > deadline {
            bail!("the embedded MQTT broker did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::info!(%addr, "embedded MQTT broker listening");
    Ok(addr)
}

/// Whether some socket listens on `addr`'s port, read from the kernel's socket tables
/// (no connection is made). Falls back to a TCP connect where /proc is not available.
fn is_listening(addr: SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    let port = format!(":{:04X}", addr.port());
    let mut tables_read = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        tables_read = true;
        let listening = text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&port) && fields[3] == LISTEN
        });
        if listening {
            return true;
        }
    }
    !tables_read && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}
