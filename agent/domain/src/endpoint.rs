//! A workload's endpoint: where and how a device serves it (port, protocols, auth, CORS,
//! TLS).

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    None,
    Key,
    Token,
}

impl AuthMode {
    pub const ALL: [AuthMode; 3] = [AuthMode::None, AuthMode::Key, AuthMode::Token];

    pub fn name(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Key => "key",
            AuthMode::Token => "token",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| format!("unknown endpoint auth {name:?}: use none, key or token"))
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Azure ML: `GET /`, `POST /score`, `GET /swagger.json`.
    Azureml,
    /// Open Inference Protocol v2.
    V2,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Azureml, Protocol::V2];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Azureml => "azureml",
            Protocol::V2 => "v2",
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| format!("unknown protocol {name:?}: use azureml or v2"))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub port: u16,
    pub auth: AuthMode,
    /// Never empty: Azure ML alone when nothing else is asked for.
    pub protocols: Vec<Protocol>,
    pub cors_origins: Vec<String>,
    /// The second port, for the Open Inference Protocol over gRPC (with `v2`).
    #[serde(default)]
    pub grpc_port: Option<u16>,
    /// With auth `key`: hex sha256 of each accepted key (never the keys themselves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_digests: Vec<String>,
    /// With auth `token`: base64url Ed25519 public keys that sign accepted tokens (never the
    /// signing key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_keys: Vec<String>,
    /// Names the endpoint's TLS certificate carries (the manifest's `endpoint.tls.hostnames`);
    /// empty: plain HTTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls_hostnames: Vec<String>,
    /// The deployment's certificate and key that devices serve HTTPS (and gRPC over TLS)
    /// with; the hub fills it in for devices only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServingCertificate>,
}

/// A certificate chain and its private key, PEM. `Debug` shows neither.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ServingCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServingCertificate(<certificate and key>)")
    }
}

impl Endpoint {
    /// An Azure ML endpoint without auth on `port`: what deployments get by default.
    pub fn azureml(port: u16) -> Self {
        Self {
            port,
            auth: AuthMode::None,
            protocols: vec![Protocol::Azureml],
            cors_origins: Vec::new(),
            grpc_port: None,
            key_digests: Vec::new(),
            token_keys: Vec::new(),
            tls_hostnames: Vec::new(),
            tls: None,
        }
    }

    /// The same listeners and protocols (auth aside: it changes in place).
    pub fn same_listeners(&self, other: &Endpoint) -> bool {
        self.port == other.port
            && self.grpc_port == other.grpc_port
            && self.protocols == other.protocols
            && self.cors_origins == other.cors_origins
            && self.tls == other.tls
    }

    /// Every TCP port the endpoint listens on.
    pub fn ports(&self) -> impl Iterator<Item = u16> {
        std::iter::once(self.port).chain(self.grpc_port)
    }
}
