//! The processes of one trial: a hub (embedded broker, or Mosquitto beside it), an agent
//! (directly on the broker or behind a fault proxy, its data folder optionally on a small
//! tmpfs), and what it takes to kill and restart each of them in place.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgeship_proto::v1 as pb;

use crate::faultnet::FaultProxy;
use crate::{HubProcess, Mosquitto, Process, TempDir};

/// The broker a trial runs on.
#[derive(Debug)]
pub enum Broker {
    /// Inside the hub process, on this port.
    Embedded(u16),
    /// A Mosquitto process (it can be killed and restarted on its port).
    Mosquitto {
        program: PathBuf,
        process: Option<Mosquitto>,
        port: u16,
    },
}

#[derive(Debug)]
pub struct World {
    pub dir: TempDir,
    pub hub: Option<HubProcess>,
    pub broker: Broker,
    pub proxy: Option<FaultProxy>,
    pub agent: Option<Process>,
    pub device: String,
    pub port: u16,
    pub tmpfs: Option<Tmpfs>,
}

impl World {
    /// Starts the hub and its broker; the agent is started by [`World::start_agent`].
    pub async fn start(
        label: &str,
        mosquitto: Option<PathBuf>,
        proxied: bool,
        tmpfs_bytes: Option<u64>,
    ) -> anyhow::Result<World> {
        let dir = TempDir::new(label);
        let broker = match mosquitto {
            Some(program) => {
                let port = crate::free_port();
                let process = Mosquitto::start_with(&program, port);
                Broker::Mosquitto {
                    program,
                    process: Some(process),
                    port,
                }
            }
            None => Broker::Embedded(crate::free_port()),
        };
        let tmpfs = match tmpfs_bytes {
            Some(bytes) => Some(Tmpfs::mount(&dir.path().join("agent"), bytes)?),
            None => None,
        };
        let mut world = World {
            dir,
            hub: None,
            broker,
            proxy: None,
            agent: None,
            device: "trial-device".into(),
            port: crate::free_port(),
            tmpfs,
        };
        world.start_hub();
        if proxied {
            let upstream: SocketAddr = world.broker_addr();
            let proxy = FaultProxy::start(upstream).await;
            crate::trust_hub(&proxy.url(), &world.hub_dir());
            world.proxy = Some(proxy);
        }
        Ok(world)
    }

    pub fn hub_dir(&self) -> PathBuf {
        self.dir.path().join("hub")
    }

    pub fn agent_dir(&self) -> PathBuf {
        self.dir.path().join("agent")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn hub_url(&self) -> String {
        self.hub.as_ref().map(|h| h.url.clone()).unwrap_or_default()
    }

    /// The broker as the hub sees it.
    pub fn broker_url(&self) -> String {
        format!("mqtt://{}", self.broker_addr())
    }

    fn broker_addr(&self) -> SocketAddr {
        let port = match &self.broker {
            Broker::Embedded(port) | Broker::Mosquitto { port, .. } => *port,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The broker as the agent sees it (through the proxy when there is one).
    fn agent_broker_url(&self) -> String {
        match &self.proxy {
            Some(proxy) => proxy.url(),
            None => self.broker_url(),
        }
    }

    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts (or restarts, on the same data folder and ports) the hub.
    pub fn start_hub(&mut self) {
        let mqtt = match &self.broker {
            Broker::Embedded(port) => Err(*port),
            Broker::Mosquitto { .. } => Ok(self.broker_url()),
        };
        let hub = HubProcess::start(
            &self.hub_dir(),
            mqtt.as_deref().map_err(|port| *port),
            &self.dir.path().join("hub.log"),
        );
        self.hub = Some(hub);
    }

    pub fn kill_hub(&mut self) {
        if let Some(mut hub) = self.hub.take() {
            hub.process.kill_hard();
        }
    }

    pub fn start_agent(&mut self) {
        let agent = crate::start_agent(
            &self.device,
            &self.agent_broker_url(),
            &self.agent_dir(),
            &self.agent_log(),
        );
        self.agent = Some(agent);
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill_hard();
        }
    }

    /// kill -9 of Mosquitto (a no-op on the embedded broker, which dies with the hub).
    pub fn kill_broker(&mut self) {
        if let Broker::Mosquitto { process, .. } = &mut self.broker
            && let Some(mosquitto) = process.take()
        {
            mosquitto.kill_hard();
        }
    }

    pub fn start_broker(&mut self) {
        if let Broker::Mosquitto {
            program,
            process,
            port,
        } = &mut self.broker
        {
            *process = Some(Mosquitto::start_with(program, *port));
        }
    }

    /// Resident memory of the hub and the agent, KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let hub = self
            .hub
            .as_ref()
            .map_or(0, |h| crate::rss_kib(h.process.pid()));
        let agent = self.agent.as_ref().map_or(0, |a| crate::rss_kib(a.pid()));
        (hub, agent)
    }

    /// The deployment as the hub reports it, if the hub answers.
    pub async fn deployment(&self, name: &str) -> Option<pb::Deployment> {
        let mut client = pb::deployments_client::DeploymentsClient::connect(self.hub_url())
            .await
            .ok()?;
        let request = pb::GetDeploymentRequest {
            name: format!("deployments/{name}"),
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), client.get_deployment(request));
        Some(answer.await.ok()?.ok()?.into_inner())
    }
}

/// A small tmpfs: the agent's data folder with a disk that can fill up.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, bytes: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        run_mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0700"),
                "tmpfs",
            ],
            path,
        )?;
        Ok(Tmpfs(path.to_owned()))
    }

    /// Gives the file system `bytes` (the disk is freed: the fault is gone).
    pub fn resize(&self, bytes: u64) -> anyhow::Result<()> {
        run_mount(&["-o", &format!("remount,size={bytes}")], &self.0)
    }
}

fn run_mount(args: &[&str], path: &Path) -> anyhow::Result<()> {
    let output = Command::new("mount").args(args).arg(path).output()?;
    anyhow::ensure!(
        output.status.success(),
        "mount {args:?} {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Whether this machine lets the trials mount a tmpfs (root, or the capability to mount).
pub fn can_mount_tmpfs() -> bool {
    let probe = TempDir::new("tmpfs-probe");
    let target = probe.path().join("mnt");
    Tmpfs::mount(&target, 1 << 20).is_ok()
}

impl Drop for World {
    fn drop(&mut self) {
        // The agent first: its data folder may be a mount that goes next.
        self.kill_agent();
        self.kill_hub();
        self.kill_broker();
        self.proxy = None;
        self.tmpfs = None;
    }
}
