//! What one instance may touch: its store's data. WASI is narrowed to stdout and stderr (to
//! the workload's log), read-only model folders, a monotonic clock (the wall clock reads the
//! Unix epoch), randomness, and no network; memory is capped; the host's `infer` runs the
//! deployment's models.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use edgeship_runtime::Tensor;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::edgeship::entry::{host, types};
use crate::tensor::{from_wit, to_wit};

/// What [`Infer::infer`] returns.
pub type InferFuture<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Vec<Tensor>, String>> + Send + 'a>>;

/// Runs the deployment's models for one call into a module. `model` is a model's name, or
/// empty for the one the request was routed to.
pub trait Infer: Send + Sync {
    fn infer<'a>(&'a self, model: &'a str, inputs: Vec<Tensor>) -> InferFuture<'a>;
}

/// Receives what instances print, a line at a time: `("stdout" | "stderr", line)`.
pub type LogSink = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// A host folder the module sees, read-only, at `guest` (e.g. `/model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    pub guest: String,
}

/// The bounds of one instance, from the manifest's `sandbox:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Longest a request may run inside the module (models' time included); the request
    /// then fails and the instance is replaced.
    pub deadline: Duration,
    /// Largest linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// Instances kept ready: requests beyond wait for one.
    pub instances: usize,
}

impl SandboxLimits {
    pub const DEFAULT_DEADLINE_MS: u32 = 1000;
    pub const DEFAULT_MEMORY_MB: u32 = 64;
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(u64::from(Self::DEFAULT_DEADLINE_MS)),
            memory_bytes: Self::DEFAULT_MEMORY_MB as usize * 1024 * 1024,
            instances: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// One instance's store data.
pub struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    models: Arc<[types::ModelInfo]>,
    /// Set for the duration of each call.
    pub(crate) infer: Option<Arc<dyn Infer>>,
    /// When the call under way began, and how long it may run.
    pub(crate) call_started: std::time::Instant,
    pub(crate) call_deadline: Duration,
    /// The last lines the module wrote to stderr: a panic's message, for the trap's reason.
    pub(crate) last_stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Sandbox {
    pub(crate) fn new(
        limits: &SandboxLimits,
        mounts: &[Mount],
        models: Arc<[types::ModelInfo]>,
        log: &LogSink,
    ) -> Result<Self, String> {
        let last_stderr = Arc::new(Mutex::new(VecDeque::new()));
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(LineSink::new("stdout", log.clone(), None))
            .stderr(LineSink::new(
                "stderr",
                log.clone(),
                Some(Arc::clone(&last_stderr)),
            ))
            .wall_clock(FrozenClock)
            // Files are opened on this thread rather than on a tokio runtime that the
            // blocking pool does not have.
            .allow_blocking_current_thread(true)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for mount in mounts {
            wasi.preopened_dir(&mount.host, &mount.guest, FsPerms::ReadOnly)
                .map_err(|err| {
                    format!(
                        "cannot show {} to the module: {err:#}",
                        mount.host.display()
                    )
                })?;
        }
        if let Some(first) = mounts.first() {
            // Azure ML's name for where the model is, so ported scoring code finds it.
            wasi.env("AZUREML_MODEL_DIR", &first.guest);
        }
        Ok(Self {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                // A growth beyond the cap traps with that reason, instead of returning -1,
                // which Rust's allocator turns into an abort with no message.
                .trap_on_grow_failure(true)
                .build(),
            models,
            infer: None,
            call_started: std::time::Instant::now(),
            call_deadline: Duration::ZERO,
            last_stderr,
        })
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("models", &self.models.len())
            .finish_non_exhaustive()
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for Sandbox {}

impl host::Host for Sandbox {
    async fn models(&mut self) -> Vec<types::ModelInfo> {
        self.models.to_vec()
    }

    async fn infer(
        &mut self,
        model: String,
        inputs: Vec<types::Tensor>,
    ) -> Result<Vec<types::Tensor>, String> {
        let Some(infer) = self.infer.clone() else {
            return Err("no model can run outside init and run".into());
        };
        let info = if model.is_empty() {
            self.models.first()
        } else {
            self.models.iter().find(|m| m.name == model)
        };
        let Some(info) = info else {
            let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
            return Err(format!(
                "no model {model:?} in this deployment; it has {}",
                names.join(", ")
            ));
        };
        let tensors = inputs
            .into_iter()
            .map(from_wit)
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = infer.infer(&model, tensors).await?;
        Ok(outputs
            .iter()
            .enumerate()
            .map(|(i, tensor)| {
                let name = info.outputs.get(i).map_or("", |o| o.name.as_str());
                to_wit(name, tensor)
            })
            .collect())
    }
}

/// The wall clock a module sees: always the Unix epoch. Time-dependent answers would differ
/// between devices and runs; a module measures durations with the monotonic clock.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// Longest line kept from a module's output; the rest of the line is dropped.
const MAX_LINE_BYTES: usize = 4096;

/// stdout or stderr of an instance: whole lines to the workload's log.
#[derive(Clone)]
struct LineSink {
    source: &'static str,
    log: LogSink,
    pending: Arc<Mutex<Vec<u8>>>,
    last_lines: Option<Arc<Mutex<VecDeque<String>>>>,
}

/// stderr lines kept for a trap's reason: Rust's panic message and the note after it.
const LAST_LINES: usize = 4;

/// What a module printed to stderr before trapping, in words: the panic's location and message
/// when it panicked, else its last line.
pub(crate) fn last_words(lines: &VecDeque<String>) -> Option<String> {
    let at = lines.iter().position(|l| l.contains("panicked at"));
    match at {
        Some(at) => {
            let location = lines[at]
                .split_once("panicked at ")
                .map_or("", |(_, l)| l.trim_end_matches(':'));
            let message = lines.get(at + 1).map_or("", String::as_str);
            Some(format!("panicked at {location}: {message}"))
        }
        None => lines.back().cloned(),
    }
}

impl LineSink {
    fn new(
        source: &'static str,
        log: LogSink,
        last_lines: Option<Arc<Mutex<VecDeque<String>>>>,
    ) -> Self {
        Self {
            source,
            log,
            pending: Arc::default(),
            last_lines,
        }
    }

    fn take(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for &byte in bytes {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&pending).into_owned();
                pending.clear();
                (self.log)(self.source, &line);
                if let Some(last) = &self.last_lines {
                    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
                    if last.len() == LAST_LINES {
                        last.pop_front();
                    }
                    last.push_back(line);
                }
            } else if pending.len() < MAX_LINE_BYTES {
                pending.push(byte);
            }
        }
    }
}

impl IsTerminal for LineSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LineSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LineSink {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.take(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineSink {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineSink {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.take(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
