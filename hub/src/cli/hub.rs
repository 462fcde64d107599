//! `edgeship hub`: the hub on its own, from flags (TLS, API tokens and the embedded broker on
//! by default), until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{DEFAULT_LISTEN, DEFAULT_MQTT_LISTEN, MIN_PACKET_BYTES};
use crate::registry::Limits;
use crate::server::{HubConfig, Mqtt, RunningHub};

#[derive(Debug, Args)]
pub struct HubArgs {
    /// Folder for the registry database and model files (created if missing).
    #[arg(long, env = "EDGESHIP_DATA_DIR", default_value = "edgeship-data")]
    pub data_dir: PathBuf,
    /// Address for the gRPC API; use port 0 to pick a free port.
    #[arg(long, env = "EDGESHIP_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Largest model (all files together) the hub accepts, in bytes.
    #[arg(long, default_value_t = Limits::default().max_model_bytes)]
    pub max_model_bytes: u64,
    /// Most files one model version may have.
    #[arg(long, default_value_t = Limits::default().max_files)]
    pub max_files: usize,
    /// Use this external MQTT broker (mqtt://host:port) instead of the embedded one.
    #[arg(long, env = "EDGESHIP_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Where the embedded MQTT broker listens (ignored with --mqtt-url).
    #[arg(long, default_value = DEFAULT_MQTT_LISTEN)]
    pub mqtt_listen: SocketAddr,
    /// Largest MQTT packet, in bytes (the broker's limit; model chunks stay below it).
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_PACKET_BYTES)]
    pub max_packet_bytes: usize,
    /// How long a signed desired state holds, in seconds; the hub signs live states again
    /// every quarter of it, and a device refuses a state past its expiry.
    #[arg(long, default_value_t = crate::trust::DEFAULT_STATE_VALIDITY.as_secs(), value_parser = clap::value_parser!(u64).range(4..))]
    pub state_validity_secs: u64,
    /// Serve API calls without tokens: anyone who reaches the API may change everything
    /// (development only). By default every call but health checks needs a token; the first
    /// start writes an admin token to <data-dir>/keys/admin.token.
    #[arg(long)]
    pub no_auth: bool,
    /// Serve the API over plaintext HTTP/2 instead of TLS (development and closed networks
    /// only). By default the API speaks TLS with a certificate from the hub's own CA
    /// (<data-dir>/keys/ca.crt); clients trust it by EDGESHIP_HUB_CA or the fingerprint the
    /// hub prints.
    #[arg(long)]
    pub insecure: bool,
    /// A name devices and clients reach the hub by (repeatable): the hub's certificates
    /// carry it besides localhost and the listen address.
    #[arg(long = "hostname", value_name = "NAME")]
    pub hostnames: Vec<String>,
}

pub(super) async fn run_hub(args: HubArgs) -> anyhow::Result<()> {
    let mqtt = match &args.mqtt_url {
        Some(url) => {
            let broker = edgeship_proto::parse_broker(url).map_err(anyhow::Error::msg)?;
            Mqtt::External {
                host: broker.host,
                port: broker.port,
                tls: broker.tls,
            }
        }
        None => Mqtt::Embedded {
            listen: args.mqtt_listen,
        },
    };
    if args.max_packet_bytes < MIN_PACKET_BYTES {
        anyhow::bail!(
            "--max-packet-bytes is {}; at least {MIN_PACKET_BYTES} is needed for 256 KiB model chunks",
            args.max_packet_bytes
        );
    }
    let keys = std::path::absolute(crate::trust::keys_dir(&args.data_dir))
        .unwrap_or_else(|_| crate::trust::keys_dir(&args.data_dir));
    let (tls, api_auth) = (!args.insecure, !args.no_auth);
    let config = HubConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        limits: Limits {
            max_model_bytes: args.max_model_bytes,
            max_files: args.max_files,
        },
        mqtt,
        max_packet_bytes: args.max_packet_bytes,
        state_validity: std::time::Duration::from_secs(args.state_validity_secs),
        api_auth,
        tls,
        hostnames: args.hostnames,
    };
    let mut hub = RunningHub::start(config).await?;
    // Scripts and tests read these lines to learn the addresses (port 0 picks one).
    announce!("edgeship hub listening on {}", hub.url());
    announce!("edgeship mqtt broker at {}", hub.mqtt_url());
    announce!("edgeship hub CA sha256:{}", hub.ca_fingerprint());
    // How a client command reaches this hub, for the operator to copy.
    let mut client = format!("EDGESHIP_HUB={}", hub.url());
    if tls {
        client.push_str(&format!(
            " EDGESHIP_HUB_CA={}",
            keys.join("ca.crt").display()
        ));
    }
    if api_auth {
        client.push_str(&format!(
            " EDGESHIP_TOKEN=$(cat {})",
            keys.join("admin.token").display()
        ));
    }
    announce!("edgeship clients: {client}");
    tokio::select! {
        result = shutdown_signal() => result?,
        result = hub.wait() => return result,
    }
    tracing::info!("shutting down");
    hub.stop().await
}

/// Ctrl-C, or SIGTERM from systemd / `docker stop`.
pub(crate) async fn shutdown_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}
