//! The `endpoint` section of a manifest: ports, auth, protocols and CORS origins, checked
//! into the endpoint devices serve.

use edgeship_domain::{AuthMode, Endpoint, Protocol};

use super::manifest::EndpointManifest;
use super::{SpecError, err};

impl EndpointManifest {
    pub(super) fn validate(&self) -> Result<Endpoint, SpecError> {
        let port = u16::try_from(self.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                err(
                    "endpoint.port",
                    format!("{} is not a TCP port (1-65535)", self.port),
                )
            })?;
        let auth = match &self.auth {
            Some(name) => AuthMode::parse(name).map_err(|e| err("endpoint.auth", e))?,
            None => AuthMode::None,
        };
        let mut protocols = Vec::new();
        for (i, name) in self.protocols.iter().enumerate() {
            let protocol =
                Protocol::parse(name).map_err(|e| err(format!("endpoint.protocols[{i}]"), e))?;
            if !protocols.contains(&protocol) {
                protocols.push(protocol);
            }
        }
        if protocols.is_empty() {
            protocols.push(Protocol::Azureml);
        }
        for (i, origin) in self.cors_origins.iter().enumerate() {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(err(
                    format!("endpoint.cors_origins[{i}]"),
                    format!("{origin:?} is not an origin (`*` or `https://host[:port]`)"),
                ));
            }
        }
        let grpc_port = match self.grpc_port {
            None => None,
            Some(grpc) => {
                let grpc = u16::try_from(grpc)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        err(
                            "endpoint.grpc_port",
                            format!("{grpc} is not a TCP port (1-65535)"),
                        )
                    })?;
                if grpc == port {
                    return Err(err(
                        "endpoint.grpc_port",
                        format!("{grpc} is already the REST port; use another"),
                    ));
                }
                if !protocols.contains(&Protocol::V2) {
                    return Err(err(
                        "endpoint.grpc_port",
                        "gRPC serves the v2 protocol: add v2 to endpoint.protocols",
                    ));
                }
                Some(grpc)
            }
        };
        let tls_hostnames = match &self.tls {
            None => Vec::new(),
            Some(tls) if tls.hostnames.is_empty() => {
                return Err(err(
                    "endpoint.tls.hostnames",
                    "name at least one host clients reach the endpoint by",
                ));
            }
            Some(tls) => {
                for (i, name) in tls.hostnames.iter().enumerate() {
                    let valid = !name.is_empty()
                        && name.len() <= 253
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
                    if !valid {
                        return Err(err(
                            format!("endpoint.tls.hostnames[{i}]"),
                            format!("{name:?} is not a host name or IP address"),
                        ));
                    }
                }
                tls.hostnames.clone()
            }
        };
        Ok(Endpoint {
            port,
            auth,
            protocols,
            cors_origins: self.cors_origins.clone(),
            grpc_port,
            // Filled per device from the deployment's keys (see `desired::workload`).
            key_digests: Vec::new(),
            token_keys: Vec::new(),
            tls_hostnames,
            tls: None,
        })
    }
}
