//! How a container is doing: the HTTP health probe, and the watch that keeps a serving
//! container's verdict fresh for the agent's health checks (engine state, restarts, the
//! out-of-memory killer, the probe).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use edgeship_domain::{ContainerWorkload, RestartPolicy};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use super::engine::{Engine, Inspected};
use crate::serve::proxy::Upstream;

/// How often a serving container is looked at.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// One probe's longest wait for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a container that the engine restarted counts as unhealthy after it runs again:
/// the default health window, so a rollout's gate sees the restart.
const AFTER_RESTART: Duration = Duration::from_secs(30);
/// Log lines a failure report carries.
pub const REPORTED_LOG_LINES: usize = 10;

/// A serving container's state, as health checks read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Verdict {
    #[default]
    Fine,
    /// Not serving now, but the engine may bring it back (restarting, probe failing).
    Unhealthy(String),
    /// Stopped for good: the engine will not restart it.
    Failed(String),
}

/// Calls a container's health path.
#[derive(Debug, Clone)]
pub struct Probe {
    client: Client<HttpConnector, Body>,
}

impl Default for Probe {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(PROBE_TIMEOUT));
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build(connector),
        }
    }
}

impl Probe {
    /// `Ok` when `GET http://addr/path` answers 2xx or 3xx (Kubernetes' rule for HTTP probes),
    /// else why not.
    pub async fn check(&self, addr: SocketAddr, path: &str) -> Result<(), String> {
        let uri = format!("http://{addr}{path}");
        let request = axum::http::Request::get(&uri)
            .body(Body::empty())
            .map_err(|err| format!("cannot probe {uri}: {err}"))?;
        match tokio::time::timeout(PROBE_TIMEOUT, self.client.request(request)).await {
            Ok(Ok(response)) if response.status().as_u16() < 400 => Ok(()),
            Ok(Ok(response)) => Err(format!("GET {path} answered {}", response.status())),
            Ok(Err(err)) => Err(format!("GET {path} failed: {err}")),
            Err(_) => Err(format!(
                "GET {path} gave no answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )),
        }
    }
}

/// Why a container that is not running stopped, for people: the exit, the out-of-memory kill
/// with the limit, and the restarts so far.
pub fn describe_stop(state: &Inspected, spec: &ContainerWorkload) -> String {
    let mut why = if state.oom_killed {
        format!(
            "the container exceeded its memory limit ({}) and was killed",
            memory(spec.memory_bytes)
        )
    } else if !state.error.is_empty() {
        format!("the container could not run: {}", state.error)
    } else {
        format!("the container exited with code {}", state.exit_code)
    };
    if state.restart_count > 0 {
        why.push_str(&format!("; restarted {} times", state.restart_count));
    }
    why
}

fn memory(bytes: u64) -> String {
    match bytes {
        0 => "none set".into(),
        b if b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}

/// Whether the engine will start a container that has stopped again, by its policy.
fn will_restart(state: &Inspected, restart: RestartPolicy) -> bool {
    match restart {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure { max_restarts } => {
            state.exit_code != 0 && state.restart_count < i64::from(max_restarts)
        }
    }
}

/// Judges one look at a container (`state`, from the engine): the probe when it runs, and
/// whether the engine will start it again when it does not.
pub async fn judge(
    engine: &Engine,
    probe: &Probe,
    id: &str,
    state: Result<Option<Inspected>, String>,
    port: u16,
    spec: &ContainerWorkload,
) -> Verdict {
    let state = match state {
        Ok(Some(state)) => state,
        Ok(None) => {
            return Verdict::Failed("the container was removed outside edgeship".into());
        }
        // The engine itself is away: nothing is known of the container; say so.
        Err(err) => return Verdict::Unhealthy(format!("the container engine: {err}")),
    };
    if state.running {
        let Some(ip) = state.ip else {
            return Verdict::Unhealthy("the container has no network address".into());
        };
        return match probe
            .check(SocketAddr::new(ip, port), &spec.health_path)
            .await
        {
            Ok(()) => Verdict::Fine,
            Err(why) => Verdict::Unhealthy(format!("health probe: {why}")),
        };
    }
    let why = describe_stop(&state, spec);
    if state.status == "restarting" || will_restart(&state, spec.restart) {
        return Verdict::Unhealthy(format!("{why}; the engine restarts it"));
    }
    let lines = engine
        .logs(id, REPORTED_LOG_LINES)
        .await
        .unwrap_or_default();
    Verdict::Failed(with_log_lines(
        format!(
            "{why}; not restarted again (restart: {})",
            spec.restart.name()
        ),
        &lines,
    ))
}

/// `why`, then the container's last lines.
pub fn with_log_lines(why: String, lines: &[String]) -> String {
    if lines.is_empty() {
        return format!("{why} (it wrote no log lines)");
    }
    format!("{why}; its last log lines:\n{}", lines.join("\n"))
}

/// A serving container's watch: judges it every couple of seconds in the background.
#[derive(Debug)]
pub struct Watch {
    verdict: Arc<Mutex<Verdict>>,
    task: JoinHandle<()>,
}

impl Watch {
    /// Watches container `id`; moves `upstream` when the engine restarts the container on
    /// another address.
    pub fn start(
        engine: Engine,
        id: String,
        deployment: String,
        spec: ContainerWorkload,
        upstream: Arc<Upstream>,
    ) -> Self {
        let verdict = Arc::new(Mutex::new(Verdict::Fine));
        let shared = Arc::clone(&verdict);
        let task = tokio::spawn(async move {
            let probe = Probe::default();
            let mut ticker = tokio::time::interval(WATCH_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // Restarts before the watch began (an adopted container's) are not news.
            let mut restarts: Option<i64> = None;
            let mut restarted: Option<(tokio::time::Instant, String)> = None;
            loop {
                ticker.tick().await;
                let state = engine.inspect(&id).await;
                if let Ok(Some(seen)) = &state {
                    if restarts.is_some_and(|before| seen.restart_count > before) {
                        restarted = Some((tokio::time::Instant::now(), describe_stop(seen, &spec)));
                    }
                    restarts = Some(seen.restart_count);
                    let moved = seen
                        .ip
                        .map(|ip| SocketAddr::new(ip, spec.container_port))
                        .filter(|addr| *addr != upstream.addr());
                    if let Some(addr) = moved {
                        tracing::info!(%deployment, container = %id, %addr, "container moved; the endpoint follows");
                        upstream.move_to(addr);
                    }
                }
                let mut now = judge(&engine, &probe, &id, state, spec.probe_port(), &spec).await;
                if now == Verdict::Fine
                    && let Some((at, why)) = &restarted
                    && at.elapsed() < AFTER_RESTART
                {
                    now = Verdict::Unhealthy(format!("{why}; running again"));
                }
                let mut current = shared.lock().unwrap_or_else(PoisonError::into_inner);
                if *current != now {
                    match &now {
                        Verdict::Fine => {
                            tracing::info!(%deployment, container = %id, "container healthy again")
                        }
                        Verdict::Unhealthy(why) => {
                            tracing::warn!(%deployment, container = %id, %why, "container unhealthy")
                        }
                        Verdict::Failed(why) => {
                            tracing::warn!(%deployment, container = %id, %why, "container failed")
                        }
                    }
                }
                *current = now;
            }
        });
        Self { verdict, task }
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
