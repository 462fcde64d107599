//! Generated protobuf types and gRPC stubs for the edgeship hub API and device protocol.
//!
//! Architecture invariant: only adapters touch these types: the hub's gRPC `api` and CLI
//! client, and the MQTT links of hub and agent (through `edgeship_domain::wire`). Domain code
//! on both sides works with plain Rust types.

#![allow(
    missing_debug_implementations,
    unused_qualifications,
    clippy::large_enum_variant
)]

/// Version 1 of the hub API (`package edgeship.v1`).
#[cfg(feature = "grpc")]
pub mod tls;

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/edgeship.v1.rs"));
}

/// The Open Inference Protocol v2 (`package inference`): messages always, the
/// `GRPCInferenceService` stubs with the `inference` feature.
pub mod inference {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

/// Encoded `FileDescriptorSet` of every edgeship `.proto` file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/edgeship_descriptor.bin"));

/// A broker address: where, and whether over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Parses a broker address as hub and agents accept it: `mqtts://host:port` (TLS, port 8883
/// when omitted), `mqtt://host:port`, `tcp://host:port` or `host:port` (port 1883).
pub fn parse_broker(url: &str) -> Result<BrokerUrl, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (rest, true)
    } else if let Some(rest) = url.strip_prefix("ssl://") {
        (rest, true)
    } else {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .unwrap_or(url);
        (rest, false)
    };
    if rest.contains("://") {
        return Err(format!(
            "unsupported broker URL {url:?}: use mqtts://host:port (TLS) or mqtt://host:port"
        ));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("invalid port in broker URL {url:?}"))?;
            (host, port)
        }
        None => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("broker URL {url:?} has no host"));
    }
    Ok(BrokerUrl {
        host: host.to_owned(),
        port,
        tls,
    })
}

/// [`parse_broker`] for a plaintext broker: host and port.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), String> {
    let broker = parse_broker(url)?;
    if broker.tls {
        return Err(format!(
            "{url:?} is a TLS broker; this caller speaks plain MQTT"
        ));
    }
    Ok((broker.host, broker.port))
}

/// MQTT topic names of the device protocol (see `device.proto`). Every device topic lives
/// under `edgeship/v1/devices/<device_id>/`, so a broker ACL can confine a device to its own
/// subtree.
pub mod topics {
    pub const PREFIX: &str = "edgeship/v1/devices";

    /// What a device's topics end with, and which way they flow.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DeviceTopic {
        /// hub → device, retained `DesiredState`.
        Desired,
        /// device → hub `ReportedState`.
        Reported,
        /// device → hub, retained `Birth` (also the Last Will).
        Birth,
        /// device → hub `BlobRequest`.
        BlobRequest,
        /// hub → device `BlobChunk`.
        BlobResponse,
        /// hub → device `LogRequest` (`edgeship deploy logs`).
        LogRequest,
        /// device → hub `LogResponse`.
        LogResponse,
        /// hub → device `ProfileRequest` (`edgeship model profile`).
        ProfileRequest,
        /// device → hub `ProfileResponse`.
        ProfileResponse,
        /// device → hub `UploadChunk` (a job's output).
        UploadRequest,
        /// hub → device `UploadAck`.
        UploadResponse,
    }

    impl DeviceTopic {
        pub fn suffix(self) -> &'static str {
            match self {
                DeviceTopic::Desired => "desired",
                DeviceTopic::Reported => "reported",
                DeviceTopic::Birth => "birth",
                DeviceTopic::BlobRequest => "blobs/req",
                DeviceTopic::BlobResponse => "blobs/resp",
                DeviceTopic::LogRequest => "logs/req",
                DeviceTopic::LogResponse => "logs/resp",
                DeviceTopic::ProfileRequest => "profile/req",
                DeviceTopic::ProfileResponse => "profile/resp",
                DeviceTopic::UploadRequest => "uploads/req",
                DeviceTopic::UploadResponse => "uploads/resp",
            }
        }

        const ALL: [DeviceTopic; 11] = [
            DeviceTopic::Desired,
            DeviceTopic::Reported,
            DeviceTopic::Birth,
            DeviceTopic::BlobRequest,
            DeviceTopic::BlobResponse,
            DeviceTopic::LogRequest,
            DeviceTopic::LogResponse,
            DeviceTopic::ProfileRequest,
            DeviceTopic::ProfileResponse,
            DeviceTopic::UploadRequest,
            DeviceTopic::UploadResponse,
        ];
    }

    /// The topic of `kind` for one device.
    pub fn device(device_id: &str, kind: DeviceTopic) -> String {
        format!("{PREFIX}/{device_id}/{}", kind.suffix())
    }

    /// The subscription filter matching `kind` for every device.
    pub fn all_devices(kind: DeviceTopic) -> String {
        format!("{PREFIX}/+/{}", kind.suffix())
    }

    /// Where the hub broadcasts one blob's chunks to every device fetching it at once
    /// (`BlobChunk`, QoS 1): `edgeship/v1/blobs/<sha256>`.
    pub fn blob_broadcast(sha256: &str) -> String {
        format!("{BROADCAST_PREFIX}/{sha256}")
    }

    pub const BROADCAST_PREFIX: &str = "edgeship/v1/blobs";

    /// The digest of a broadcast topic; `None` for any other topic.
    pub fn parse_blob_broadcast(topic: &str) -> Option<&str> {
        let digest = topic.strip_prefix(BROADCAST_PREFIX)?.strip_prefix('/')?;
        (!digest.is_empty() && !digest.contains('/')).then_some(digest)
    }

    /// Splits a topic into device id and kind; `None` for anything else.
    pub fn parse(topic: &str) -> Option<(&str, DeviceTopic)> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let (device_id, suffix) = rest.split_once('/')?;
        let kind = DeviceTopic::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)?;
        (!device_id.is_empty()).then_some((device_id, kind))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn topics_round_trip() {
            for kind in DeviceTopic::ALL {
                let topic = device("dev-1", kind);
                assert_eq!(parse(&topic), Some(("dev-1", kind)));
            }
            assert_eq!(parse("edgeship/v1/devices//desired"), None);
            assert_eq!(parse("edgeship/v1/devices/d/unknown"), None);
            assert_eq!(parse("other/d/desired"), None);
            assert_eq!(
                all_devices(DeviceTopic::Birth),
                "edgeship/v1/devices/+/birth"
            );
        }
    }
}
