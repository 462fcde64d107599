//! Starts the hub: the registry, fleet and jobs over sled, the MQTT side (embedded broker or an
//! external one, plus the hub's MQTT link), and the gRPC server with health and reflection.
//! Used by `edgeship hub`, by `edgeship dev`, and in-process by tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edgeship_domain::trust::PublicKey;
use edgeship_proto::v1::model_registry_server::ModelRegistryServer;
use edgeship_proto::v1::module_registry_server::ModuleRegistryServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::access::Tokens;
use crate::access::guard::AccessLayer;
use crate::api::{AccessService, EnrollmentService};
use crate::api::{
    FleetService, JobsService, ModelRegistryService, ModuleRegistryService, ProfilesService,
};
use crate::blob_server::{BlobServer, Entitlements};
use crate::device_logs::DeviceLogs;
use crate::fleet::Fleet;
use crate::jobs::Jobs;
use crate::link;
use crate::profiles::{DeviceProfiles, Profiler};
use crate::registry::{Limits, Registry};
use crate::trust::enrollment::Enrollments;
use edgeship_proto::v1::access_server::AccessServer;
use edgeship_proto::v1::deployments_server::DeploymentsServer;
use edgeship_proto::v1::enrollment_server::EnrollmentServer;
use edgeship_proto::v1::fleet_server::FleetServer;
use edgeship_proto::v1::jobs_server::JobsServer;
use edgeship_proto::v1::profiles_server::ProfilesServer;

/// Where the hub's MQTT traffic goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mqtt {
    /// Run a broker in this process, listening here (port 0 picks one).
    Embedded { listen: SocketAddr },
    /// Use an external broker (Mosquitto, EMQX, ...); `tls`: `mqtts://`, where the hub
    /// presents its own client certificate.
    External { host: String, port: u16, tls: bool },
}

/// Validated hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub mqtt: Mqtt,
    /// Largest MQTT packet; blob chunks stay well below it.
    pub max_packet_bytes: usize,
    /// How long a signed desired state holds (see [`crate::trust::Director`]).
    pub state_validity: Duration,
    /// Every API call but health checks needs a token with the right role
    /// ([`crate::access`]); off for tests and `edgeship dev` on loopback.
    pub api_auth: bool,
    /// The API speaks TLS with a certificate from the hub's CA; off for tests and `dev`.
    pub tls: bool,
    /// Names (DNS or IP) the hub's certificates carry besides loopback's and the listen
    /// address: how devices and clients on the network reach it.
    pub hostnames: Vec<String>,
}

pub const DEFAULT_MAX_PACKET_BYTES: usize = 1024 * 1024;

/// HTTP/2 flow-control window for file transfers, on the server and in clients.
pub const WINDOW_BYTES: u32 = 8 * 1024 * 1024;

impl HubConfig {
    /// A hub with an embedded broker, both on ephemeral loopback ports (tests, `dev`).
    pub fn local(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            limits: Limits::default(),
            mqtt: Mqtt::Embedded {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            state_validity: crate::trust::DEFAULT_STATE_VALIDITY,
            api_auth: false,
            tls: false,
            hostnames: Vec::new(),
        }
    }
}

/// Parses `mqtt://host:port` (or `tcp://host:port`, or `host:port`).
pub fn parse_mqtt_url(url: &str) -> anyhow::Result<(String, u16)> {
    edgeship_proto::parse_broker_url(url).map_err(anyhow::Error::msg)
}

/// A hub serving in the background; dropping it without [`RunningHub::stop`] aborts it.
#[derive(Debug)]
pub struct RunningHub {
    addr: SocketAddr,
    /// The broker URL devices use.
    mqtt_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    link: Option<link::Link>,
    /// Steps running rollouts; ends with the hub.
    rollouts: JoinHandle<()>,
    /// Runs profiles; told to end them when the hub stops.
    profiler: Arc<Profiler>,
    director_key: PublicKey,
    scheme: &'static str,
    ca_fingerprint: String,
}

impl RunningHub {
    /// Opens the data dir, binds the listen address and starts serving.
    pub async fn start(config: HubConfig) -> anyhow::Result<Self> {
        let data_dir = config.data_dir.clone();
        // The folder holds keys, endpoint secrets and the registry: its owner's alone.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to its owner", data_dir.display()))?;
        }
        let limits = config.limits;
        let (registry, modules) = tokio::task::spawn_blocking(move || {
            let registry = Registry::open(&data_dir, limits)?;
            let modules = registry.modules()?;
            Ok::<_, crate::registry::Error>((registry, modules))
        })
        .await?
        .with_context(|| format!("opening the registry in {}", config.data_dir.display()))?;
        let (registry, modules) = (Arc::new(registry), Arc::new(modules));
        let director = {
            let (data_dir, validity) = (config.data_dir.clone(), config.state_validity);
            let director = tokio::task::spawn_blocking(move || {
                crate::trust::Director::open(&data_dir, validity)
            })
            .await?
            .context("opening the director key")?;
            Arc::new(director)
        };
        let authority = {
            let data_dir = config.data_dir.clone();
            let authority =
                tokio::task::spawn_blocking(move || crate::trust::pki::Authority::open(&data_dir))
                    .await?
                    .context("opening the hub's certificate authority")?;
            Arc::new(authority)
        };
        let enrollments = Arc::new(
            Enrollments::open(&registry.db(), Arc::clone(&authority))
                .context("opening the device identities")?,
        );
        let server_identity = if config.tls {
            let mut names = certificate_names(config.listen, &config.hostnames);
            if let Mqtt::Embedded { listen } = &config.mqtt
                && !listen.ip().is_unspecified()
            {
                names.push(listen.ip().to_string());
            }
            Some(authority.server_identity(&names)?)
        } else {
            None
        };
        let tls = server_identity.as_ref().map(|identity| {
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
                &identity.cert_pem,
                &identity.key_pem,
            ))
        });
        // Before the API listens: a client that sees the port open finds the admin token.
        let tokens = Arc::new(Tokens::open(&registry.db()).context("opening the API tokens")?);
        if config.api_auth {
            let tokens = Arc::clone(&tokens);
            let data_dir = config.data_dir.clone();
            let created = tokio::task::spawn_blocking(move || tokens.bootstrap(&data_dir))
                .await?
                .context("creating the first admin token")?;
            if let Some(file) = created {
                tracing::info!(file = %file.display(), "no API token existed: an admin token was written");
            }
        } else {
            tracing::warn!(
                "API authentication is off: anyone who reaches the API may change everything"
            );
        }
        let access = AccessLayer::new(config.api_auth.then(|| Arc::clone(&tokens)));
        let (outbox, outbox_rx) = tokio::sync::mpsc::unbounded_channel();
        let entitlements = Arc::new(Entitlements::default());
        let fleet = Arc::new(
            Fleet::open(
                registry.db(),
                Arc::clone(&registry),
                Arc::clone(&modules),
                outbox,
                Arc::clone(&entitlements),
                Arc::clone(&authority),
            )
            .context("opening the fleet store")?,
        );
        let jobs = {
            let (fleet, data_dir) = (Arc::clone(&fleet), config.data_dir.clone());
            let max_input = limits.max_model_bytes;
            let jobs = tokio::task::spawn_blocking(move || Jobs::open(fleet, &data_dir, max_input))
                .await?
                .context("opening the job store")?;
            Arc::new(jobs)
        };
        let blobs = Arc::new(BlobServer::new(
            Arc::clone(&entitlements),
            Arc::clone(&registry),
        ));
        {
            // Profiles a previous run left (it stopped mid-profile) end before new ones begin.
            let fleet = Arc::clone(&fleet);
            tokio::task::spawn_blocking(move || fleet.end_leftover_profiles())
                .await?
                .context("ending interrupted profiles")?;
        }
        let (logs, log_asks) = DeviceLogs::new();
        let logs = Arc::new(logs);
        let (profiles, profile_asks) = DeviceProfiles::new();
        let profiles = Arc::new(profiles);
        let profiler = Arc::new(Profiler::new(
            Arc::clone(&registry),
            Arc::clone(&modules),
            Arc::clone(&fleet),
            Arc::clone(&profiles),
        ));
        // Bind the API before starting anything that cannot be stopped (the broker).
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let wiring = crate::broker::wire(
            &config.mqtt,
            config.max_packet_bytes,
            server_identity
                .as_ref()
                .map(|server| crate::broker::TlsSetup {
                    authority: &authority,
                    server,
                    enrollments: Arc::clone(&enrollments),
                    entitlements: Arc::clone(&entitlements),
                    hostname: config.hostnames.first().map(String::as_str),
                }),
        )
        .await?;
        let link = link::start(
            link::LinkConfig {
                host: wiring.link_host.clone(),
                port: wiring.link_port,
                client_id: "edgeship-hub".into(),
                max_packet_bytes: config.max_packet_bytes,
                tls: wiring.link_tls.clone(),
            },
            Arc::clone(&fleet),
            blobs,
            Arc::clone(&jobs),
            outbox_rx,
            link::LinkTrust {
                director: Arc::clone(&director),
                enrollments: Arc::clone(&enrollments),
            },
            link::Requests {
                logs: Arc::clone(&logs),
                log_asks,
                profiles,
                profile_asks,
            },
        );
        {
            let fleet = Arc::clone(&fleet);
            tokio::task::spawn_blocking(move || fleet.reconcile_all())
                .await?
                .context("computing desired states")?;
        }
        let director_key = director.public_key();
        let rollouts = crate::fleet::rollouts::drive(Arc::clone(&fleet));
        let (shutdown, shutdown_signal) = oneshot::channel();
        let registries = (registry, modules);
        let services = (fleet, logs, Arc::clone(&profiler), jobs);
        let security = Security {
            access,
            access_service: AccessService::new(
                tokens,
                Arc::clone(&enrollments),
                Arc::clone(&services.0),
            ),
            enrollment: EnrollmentService::new(
                enrollments,
                director_key.to_string(),
                wiring.device_url.clone(),
            ),
            tls,
        };
        let ca_fingerprint = authority.fingerprint();
        let scheme = if config.tls { "https" } else { "http" };
        let task = tokio::spawn(serve(
            registries,
            services,
            security,
            listener,
            async move {
                // A dropped sender also means stop.
                let _ = shutdown_signal.await;
            },
        ));
        tracing::info!(%addr, mqtt = %wiring.device_url, data_dir = %config.data_dir.display(), "hub listening");
        Ok(Self {
            addr,
            mqtt_url: wiring.device_url,
            shutdown: Some(shutdown),
            task,
            link: Some(link),
            rollouts,
            profiler,
            director_key,
            scheme,
            ca_fingerprint,
        })
    }

    /// The sha256 of the hub's CA certificate, which TLS clients pin.
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    /// The public key that devices check desired states with.
    pub fn director_key(&self) -> PublicKey {
        self.director_key
    }

    /// The broker devices connect to, as `mqtt://host:port` (`mqtts://` with TLS).
    pub fn mqtt_url(&self) -> String {
        self.mqtt_url.clone()
    }

    /// The URL clients (and `--hub`) use to reach this hub.
    pub fn url(&self) -> String {
        // Listening on every address: loopback reaches it, and the certificate names it.
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("{}://{addr}", self.scheme)
    }

    /// Stops accepting calls, lets calls in flight finish, and closes the registry.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // Profiles in flight would hold the shutdown for minutes: they end now, each deleting
        // its deployment, and their calls finish with UNAVAILABLE.
        self.profiler.close();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let served = (&mut self.task).await?;
        // An aborted task is dropped at its next turn, not here: waiting for it means the
        // stores it holds (and the registry's file lock) are released when `stop` returns,
        // so a hub can start again on the same data dir at once.
        self.rollouts.abort();
        let _ = (&mut self.rollouts).await;
        if let Some(link) = self.link.take() {
            link.stop().await;
        }
        served
    }

    /// Waits until the server ends (it only ends on error or after `stop`).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.task).await?
    }
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        self.task.abort();
        self.rollouts.abort();
        self.profiler.abort_all();
    }
}

async fn serve(
    (registry, modules): (Arc<Registry>, Arc<Registry>),
    (fleet, logs, profiler, jobs): (Arc<Fleet>, Arc<DeviceLogs>, Arc<Profiler>, Arc<Jobs>),
    security: Security,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ModelRegistryServer<ModelRegistryService>>()
        .await;
    health
        .set_serving::<ModuleRegistryServer<ModuleRegistryService>>()
        .await;
    health
        .set_serving::<DeploymentsServer<FleetService>>()
        .await;
    health.set_serving::<FleetServer<FleetService>>().await;
    health
        .set_serving::<ProfilesServer<ProfilesService>>()
        .await;
    health.set_serving::<JobsServer<JobsService>>().await;
    health.set_serving::<AccessServer<AccessService>>().await;
    health
        .set_serving::<EnrollmentServer<EnrollmentService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(edgeship_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both reflection versions: some widespread tools still speak only v1alpha.
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service")?;
    // Sockets from our own listener do not get tonic's socket options: without TCP_NODELAY,
    // small responses wait out delayed ACKs (~40 ms per call).
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.tls {
        builder = builder
            .tls_config(tls)
            .context("the API's TLS configuration")?;
    }
    builder
        // Model files stream in 1 MiB messages: HTTP/2's default 64 KiB window would stall
        // each one on round trips for window updates.
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES))
        .layer(security.access)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ModelRegistryServer::new(ModelRegistryService::new(
            registry,
            Arc::clone(&fleet),
        )))
        .add_service(ModuleRegistryServer::new(ModuleRegistryService::new(
            modules,
            Arc::clone(&fleet),
        )))
        .add_service(DeploymentsServer::new(FleetService::new(
            Arc::clone(&fleet),
            Arc::clone(&logs),
        )))
        .add_service(FleetServer::new(FleetService::new(fleet, logs)))
        .add_service(ProfilesServer::new(ProfilesService::new(profiler)))
        .add_service(JobsServer::new(JobsService::new(jobs)))
        .add_service(AccessServer::new(security.access_service))
        .add_service(EnrollmentServer::new(security.enrollment))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving gRPC")
}

/// What guards the API: the token check, the services that manage tokens and identities,
/// and TLS.
struct Security {
    access: AccessLayer,
    access_service: AccessService,
    enrollment: EnrollmentService,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

/// The names the hub's server certificate carries: loopback's, the listen address when it is
/// a specific one, and the operator's `--hostname`s.
pub fn certificate_names(listen: SocketAddr, hostnames: &[String]) -> Vec<String> {
    let mut names: Vec<String> = hostnames.to_vec();
    for name in ["localhost", "127.0.0.1", "::1"] {
        names.push(name.to_owned());
    }
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|name| seen.insert(name.clone()));
    names
}
