//! Helpers shared by edgeship's system tests: external components (Mosquitto), real
//! processes, free ports and a minimal HTTP client for scoring endpoints.
//!
//! External components follow one rule: when one is missing the test prints a clear
//! `SKIP:` line and passes, except under `EDGESHIP_CI=1`, where a missing component fails the
//! test, so nothing real goes untested in CI.

pub mod faultnet;
mod figures;
pub mod http;
pub mod images;
pub mod jobs;
pub mod modules;
mod ports;
pub mod sim;
pub mod spy;
pub mod trials;
pub mod trust;

pub use figures::{bench_main, bench_rounds, median_worst, transfer_times};
pub use http::{HttpResponse, KeepAlive, http, score};
pub use images::{MUSL, package_archive, register_diabetes_cli, static_agent};
pub use ports::free_port;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether CI demands every external component (set by `.ci/run`).
pub fn ci() -> bool {
    std::env::var("EDGESHIP_CI").is_ok_and(|v| v == "1")
}

/// Finds an executable on PATH (and in /usr/sbin, where Debian puts mosquitto).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Returns the program, or `None` after printing a skip line; panics under `EDGESHIP_CI=1`.
pub fn require_program(name: &str, test: &str) -> Option<PathBuf> {
    match find_program(name) {
        Some(path) => Some(path),
        None if ci() => panic!(
            "{name} is required under EDGESHIP_CI=1 but was not found (apt-get install -y {name})"
        ),
        None => {
            eprintln!(
                "SKIP: {test}: {name} not found (apt-get install -y {name}); set EDGESHIP_CI=1 to make this a failure"
            );
            None
        }
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Process {
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Process {
            child,
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up (a crash or power loss).
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill_hard();
        None
    }

    /// Reads stdout lines until one starts with `prefix`; returns the rest of that line.
    pub fn read_line_starting(&mut self, prefix: &str, timeout: Duration) -> String {
        self.read_lines_starting(&[prefix], timeout).remove(0)
    }

    /// Reads stdout until a line starting with each prefix has been seen; returns the rest
    /// of those lines, in the order of `prefixes`. Stdout keeps being drained afterwards, so
    /// the process never writes into a full or closed pipe.
    pub fn read_lines_starting(&mut self, prefixes: &[&str], timeout: Duration) -> Vec<String> {
        let stdout = self.child.stdout.take().expect("stdout piped");
        let wanted: Vec<String> = prefixes.iter().map(|p| (*p).to_owned()).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut found: Vec<Option<String>> = vec![None; wanted.len()];
            let mut sent = false;
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                for (slot, prefix) in found.iter_mut().zip(&wanted) {
                    if slot.is_none()
                        && let Some(rest) = line.trim().strip_prefix(prefix.as_str())
                    {
                        *slot = Some(rest.to_owned());
                    }
                }
                if !sent && found.iter().all(Option::is_some) {
                    let _ = tx.send(found.iter().flatten().cloned().collect::<Vec<_>>());
                    sent = true;
                }
                line.clear();
            }
        });
        rx.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!(
                "{} never printed lines starting with {prefixes:?}",
                self.name
            )
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// A Mosquitto broker on a free loopback port, the reference external broker.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    process: Process,
    _dir: TempDir,
}

/// A temporary folder removed on drop (kept small: std only).
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        let unique = format!(
            "edgeship-{label}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_seed()
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

fn rand_seed() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The hub is one MQTT client that hears every device: with Mosquitto's default queue of
/// 1,000 messages per client, births and reports beyond it are dropped when a fleet connects
/// at once (measured: 3,950 of 10,000 devices ever seen); docs/protocol.md, *Transport*.
const FLEET_QUEUE: &str = "max_queued_messages 1000000\n";

impl Mosquitto {
    /// Starts Mosquitto, or returns `None` (after a skip line) when it is not installed.
    pub fn start(test: &str) -> Option<Mosquitto> {
        let program = require_program("mosquitto", test)?;
        Some(Self::start_with(&program, free_port()))
    }

    /// Starts Mosquitto on a given port (to restart it on the same port).
    pub fn start_with(program: &Path, port: u16) -> Mosquitto {
        let dir = TempDir::new("mosquitto");
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_packet_size 4194304\n{FLEET_QUEUE}user root\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )
        .expect("write mosquitto config");
        let process = Process::spawn(
            "mosquitto",
            Command::new(program)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wait_for_port(addr, Duration::from_secs(10)),
            "mosquitto did not listen on {addr}"
        );
        Mosquitto {
            port,
            process,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn stop(mut self) {
        self.process.terminate(Duration::from_secs(3));
    }

    /// SIGKILL: a broker crash (persistence is off, so its sessions and retained messages go).
    pub fn kill_hard(mut self) {
        self.process.kill_hard();
    }
}

/// The repository's committed ONNX fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts/fixtures")
        .join(name)
}

pub fn expected(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).expect("fixture");
    serde_json::from_str(&text).expect("json")
}

/// Asserts a /score response matches scikit-learn's stored predictions for the diabetes rows.
pub fn assert_diabetes_predictions(response: &HttpResponse) {
    if let Err(why) = diabetes_predictions_match(response) {
        panic!("{why}");
    }
}

/// Whether a /score response carries scikit-learn's stored predictions for the diabetes
/// rows; the difference when it does not.
pub fn diabetes_predictions_match(response: &HttpResponse) -> Result<(), String> {
    if response.status != 200 {
        return Err(format!("status {}: {}", response.status, response.body));
    }
    let got: serde_json::Value =
        serde_json::from_str(&response.body).map_err(|err| format!("not JSON: {err}"))?;
    let want = expected("diabetes")["predictions"].clone();
    let want = want.as_array().expect("array");
    let got = got.as_array().ok_or("not an array of rows")?;
    if got.len() != want.len() {
        return Err(format!("{} rows, expected {}", got.len(), want.len()));
    }
    for (row, (got, want)) in got.iter().zip(want).enumerate() {
        let got = got[0]
            .as_f64()
            .ok_or(format!("row {row} is not a number"))?;
        let want = want.as_f64().expect("number");
        if (got - want).abs() > 1e-3 * want.abs().max(1.0) {
            return Err(format!("row {row}: {got} vs {want}"));
        }
    }
    Ok(())
}

/// Runs the `edgeship` CLI against `hub`, asserts it succeeded, and returns its stdout.
pub fn edgeship(hub: &str, args: &[&str]) -> String {
    let output = edgeship_command(hub)
        .args(args)
        .output()
        .expect("run edgeship");
    assert!(
        output.status.success(),
        "edgeship {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// An `edgeship` client command for `hub`.
pub fn edgeship_command(hub: &str) -> Command {
    let mut command = Command::new(binary("edgeship"));
    command.env("EDGESHIP_HUB", hub);
    command
}

type Registry<T> = std::sync::Mutex<std::collections::HashMap<String, T>>;

/// Path of a workspace binary (`edgeship`, `edgeship-agent`), built by `cargo test
/// --workspace` before any test runs.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile folder");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built; run `cargo test --workspace` (or `cargo build --workspace`) first",
        path.display()
    );
    path
}

/// A hub process (`edgeship hub --no-auth --insecure`) on ephemeral ports.
#[derive(Debug)]
pub struct HubProcess {
    pub process: Process,
    pub url: String,
    pub mqtt_url: String,
}

impl HubProcess {
    /// Starts `edgeship hub`; `mqtt` is `Err(port)` for an embedded broker on that port, or
    /// `Ok(url)` for an external broker.
    pub fn start(data_dir: &Path, mqtt: Result<&str, u16>, log: &Path) -> HubProcess {
        let mut command = Command::new(binary("edgeship"));
        command
            // API tokens and TLS are tested on their own (tests/system/security.rs); these
            // tests call the API with plain clients.
            .args([
                "hub",
                "--no-auth",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log_file(log));
        match mqtt {
            Ok(url) => command.args(["--mqtt-url", url]),
            Err(port) => command.args(["--mqtt-listen", &format!("127.0.0.1:{port}")]),
        };
        let mut process = Process::spawn("edgeship hub", &mut command);
        let url = process.read_line_starting("edgeship hub listening on ", Duration::from_secs(30));
        let mqtt_url = match mqtt {
            Ok(url) => url.to_owned(),
            Err(port) => format!("mqtt://127.0.0.1:{port}"),
        };
        trust_hub(&mqtt_url, data_dir);
        HubProcess {
            process,
            url,
            mqtt_url,
        }
    }
}

/// Director key files of the hubs started by this test process, by broker URL.
fn hub_keys() -> &'static Registry<PathBuf> {
    static KEYS: std::sync::OnceLock<Registry<PathBuf>> = std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default)
}

/// Agents started on `mqtt_url` from now on check desired states with the director key of
/// the hub whose data folder is `data_dir` (its `keys/director.pub`).
pub fn trust_hub(mqtt_url: &str, data_dir: &Path) {
    hub_keys().lock().unwrap_or_else(|e| e.into_inner()).insert(
        mqtt_url.to_owned(),
        data_dir.join("keys").join("director.pub"),
    );
}

/// The `edgeship-agent run` flags for an agent on `broker`: plain MQTT (`--insecure`) and the
/// director key of the hub started on that broker, so that every desired state is checked.
pub fn agent_trust_args(broker: &str) -> Vec<String> {
    let keys = hub_keys().lock().unwrap_or_else(|e| e.into_inner());
    let mut args = vec!["--insecure".to_owned()];
    if let Some(file) = keys.get(broker) {
        args.extend(["--director-key".to_owned(), file.display().to_string()]);
    }
    args
}

/// An agent process (`edgeship-agent run`), logging to `log`.
pub fn start_agent(device_id: &str, broker: &str, data_dir: &Path, log: &Path) -> Process {
    start_agent_with(device_id, broker, data_dir, log, &[])
}

/// [`start_agent`] with more arguments for `run` (`--containers docker`, say).
pub fn start_agent_with(
    device_id: &str,
    broker: &str,
    data_dir: &Path,
    log: &Path,
    more: &[&str],
) -> Process {
    Process::spawn(
        "edgeship-agent",
        Command::new(binary("edgeship-agent"))
            .args([
                "run",
                "--device-id",
                device_id,
                "--broker",
                broker,
                "--serve-host",
                "127.0.0.1",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(agent_trust_args(broker))
            .args(more)
            .env("RUST_LOG", "info,edgeship_agent=debug")
            .stdout(Stdio::null())
            .stderr(log_file(log)),
    )
}

fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// A turn for a test that loads both cores for a minute or more (a thousand simulated devices;
/// OpenCL kernels compiled and tuned): such tests take turns. Side by side on 2 cores each
/// has run past its own time limits, which are set for the rest of the suite beside it.
pub async fn heavy_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `size` pseudo-random bytes (incompressible, reproducible from `seed`) to `path`.
pub fn write_noise(path: &Path, size: usize, seed: u64) {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    std::fs::write(path, bytes).expect("write noise");
}

/// A model folder `dir/name`: the diabetes ONNX model plus `extra_bytes` of noise in
/// `weights.bin`, so a transfer takes long enough to measure or interrupt.
pub fn big_model(dir: &Path, name: &str, extra_bytes: usize, seed: u64) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    std::fs::copy(fixture("diabetes/model.onnx"), folder.join("model.onnx")).expect("copy");
    write_noise(&folder.join("weights.bin"), extra_bytes, seed);
    folder
}

/// Milliseconds since the Unix epoch, as the hub stamps `last_seen_ms`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .expect("clock")
}

/// Waits until the hub at `hub` has heard from `device` (a birth or a report) after
/// `since_ms`: proof that the device processed whatever it was sent before the message it
/// answered.
pub async fn wait_heard_from(hub: &str, device: &str, since_ms: i64, limit: Duration) {
    use edgeship_proto::v1 as pb;
    let name = format!("devices/{device}");
    eventually(limit, &format!("the hub hearing from {device}"), || {
        let (hub, name) = (hub.to_owned(), name.clone());
        async move {
            let mut fleet = pb::fleet_client::FleetClient::connect(hub).await.ok()?;
            let device = fleet
                .get_device(pb::GetDeviceRequest { name })
                .await
                .ok()?
                .into_inner();
            (device.last_seen_ms > since_ms).then_some(())
        }
    })
    .await;
}

/// Resident memory (`VmRSS`) of a process, in KiB; 0 when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// How many devices matching `selector` (Kubernetes syntax; empty for all) the hub at `hub`
/// has online and announced (their birth with capabilities); 0 when the hub cannot be asked.
pub async fn online_devices(hub: &str, selector: &str) -> usize {
    use edgeship_proto::v1 as pb;
    let Ok(mut fleet) = pb::fleet_client::FleetClient::connect(hub.to_owned()).await else {
        return 0;
    };
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let Ok(page) = fleet
            .list_devices(pb::ListDevicesRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                selector: selector.to_owned(),
                ..Default::default()
            })
            .await
        else {
            return 0;
        };
        let page = page.into_inner();
        count += page
            .devices
            .iter()
            .filter(|d| d.online && d.capabilities.is_some())
            .count();
        if page.next_page_token.is_empty() {
            return count;
        }
        page_token = page.next_page_token;
    }
}
