//! The ready instances of one deployment version. Each instance is made from the checked
//! component and initialized (`init`) ahead of traffic; a request leases one, runs `run` in
//! it, and gives it back. An instance that trapped (deadline, memory cap, panic) may be in
//! any state, so it is dropped and a fresh one takes its place; the endpoint keeps serving.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime::Trap;
use wasmtime::component::Component;

use crate::bindings::edgeship::entry::types::{ModelInfo, Request, Response};
use crate::bindings::{Entry, EntryPre};
use crate::engine::{EPOCH_TICK, ModuleEngine};
use crate::sandbox::{Infer, LogSink, Mount, Sandbox, SandboxLimits, last_words};

/// `init` may read files and run the models once; it gets this long, whatever the request
/// deadline.
const INIT_DEADLINE: Duration = Duration::from_secs(10);

/// What a pool is made with.
#[derive(Clone)]
pub struct PoolSettings {
    /// `name:version` of the module, for messages.
    pub module_ref: String,
    pub limits: SandboxLimits,
    pub mounts: Vec<Mount>,
    pub models: Vec<ModelInfo>,
    pub log: LogSink,
}

impl std::fmt::Debug for PoolSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSettings")
            .field("module_ref", &self.module_ref)
            .field("limits", &self.limits)
            .field("mounts", &self.mounts)
            .finish_non_exhaustive()
    }
}

struct Instance {
    store: Store<Sandbox>,
    entry: Entry,
}

/// A version's instances: `limits.instances` of them, each serving one request at a time.
pub struct EntryPool {
    pre: EntryPre<Sandbox>,
    settings: PoolSettings,
    models: Arc<[ModelInfo]>,
    /// What `init` of a replacement instance runs models with.
    init_infer: Arc<dyn Infer>,
    idle: Mutex<Vec<Instance>>,
    turns: Arc<Semaphore>,
}

impl std::fmt::Debug for EntryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryPool")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EntryPool {
    /// Checks `component`, then makes and initializes every instance. Blocking: `init` runs
    /// here, and may run the models. An `init` that fails, traps or is refused fails the
    /// whole pool, with the module's reason.
    pub fn start(
        engine: &ModuleEngine,
        component: &Component,
        settings: PoolSettings,
        init_infer: Arc<dyn Infer>,
    ) -> Result<Self, String> {
        let pre = engine.prepare(component)?;
        let instances = settings.limits.instances.max(1);
        let pool = Self {
            pre,
            models: settings.models.clone().into(),
            settings,
            init_infer,
            idle: Mutex::new(Vec::with_capacity(instances)),
            turns: Arc::new(Semaphore::new(instances)),
        };
        for _ in 0..instances {
            let instance = pool.instantiate()?;
            pool.lock().push(instance);
        }
        Ok(pool)
    }

    /// `name:version` of the module.
    pub fn module_ref(&self) -> &str {
        &self.settings.module_ref
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new instance, initialized.
    fn instantiate(&self) -> Result<Instance, String> {
        let engine = self.pre.engine();
        let sandbox = Sandbox::new(
            &self.settings.limits,
            &self.settings.mounts,
            Arc::clone(&self.models),
            &self.settings.log,
        )?;
        let mut store = Store::new(engine, sandbox);
        store.limiter(|sandbox| &mut sandbox.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(INIT_DEADLINE));
        store.data_mut().infer = Some(Arc::clone(&self.init_infer));
        let entry = self
            .pre
            .instantiate(&mut store)
            .map_err(|err| self.reason("instantiating it", &store, &err, INIT_DEADLINE))?;
        match entry.call_init(&mut store) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                return Err(format!("{}: init failed: {why}", self.settings.module_ref));
            }
            Err(err) => return Err(self.reason("init", &store, &err, INIT_DEADLINE)),
        }
        store.data_mut().infer = None;
        Ok(Instance { store, entry })
    }

    /// Why a call into the module failed, in words a user can act on.
    fn reason(
        &self,
        during: &str,
        store: &Store<Sandbox>,
        err: &wasmtime::Error,
        deadline: Duration,
    ) -> String {
        let module = &self.settings.module_ref;
        let last_words = last_words(
            &store
                .data()
                .last_stderr
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let what = match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("ran past its deadline of {} ms", deadline.as_millis())
            }
            Some(Trap::UnreachableCodeReached) if let Some(words) = last_words => {
                format!("stopped: {words}")
            }
            Some(trap) => format!("trapped: {trap}"),
            None if format!("{err:#}").contains("growing memory") => format!(
                "went over its memory cap of {} MiB",
                self.settings.limits.memory_bytes / (1024 * 1024)
            ),
            None => format!("failed: {err:#}"),
        };
        format!("{module} {what} (during {during})")
    }

    /// Waits for a free instance.
    pub async fn lease(self: &Arc<Self>) -> Lease {
        // The semaphore is never closed, so a permit always comes.
        let permit = Arc::clone(&self.turns)
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the pool's semaphore is never closed"));
        let instance = self.lock().pop();
        Lease {
            pool: Arc::clone(self),
            instance,
            _permit: permit,
        }
    }
}

/// Epoch ticks that cover `deadline`, with one more for the tick already under way.
fn ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros().max(1);
    (deadline.as_micros().div_ceil(tick) as u64).saturating_add(1)
}

/// One instance, leased for one request; given back when dropped.
pub struct Lease {
    pool: Arc<EntryPool>,
    instance: Option<Instance>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("module", &self.pool.settings.module_ref)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Runs `run` for `request`, with `infer` for the models. Blocking (CPU-bound, and the
    /// models run inside). `Err` when the module trapped, with why; its instance is replaced.
    pub fn run(&mut self, request: &Request, infer: Arc<dyn Infer>) -> Result<Response, String> {
        let pool = Arc::clone(&self.pool);
        // An instance lost to a trap whose replacement failed is made again here.
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => pool.instantiate()?,
        };
        let deadline = pool.settings.limits.deadline;
        instance.store.set_epoch_deadline(ticks(deadline));
        instance.store.data_mut().infer = Some(infer);
        // A panic in the host (a runtime called through `infer`) unwinds through the module's
        // frames: the instance is dropped as after a trap, and the request fails.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            instance.entry.call_run(&mut instance.store, request)
        }))
        .unwrap_or_else(|_| Err(wasmtime::Error::msg("the host panicked during the call")));
        instance.store.data_mut().infer = None;
        match result {
            Ok(response) => {
                self.instance = Some(instance);
                Ok(response)
            }
            Err(err) => {
                let why = pool.reason("run", &instance.store, &err, deadline);
                drop(instance);
                match pool.instantiate() {
                    Ok(fresh) => self.instance = Some(fresh),
                    Err(again) => tracing::warn!(
                        module = %pool.settings.module_ref,
                        "cannot replace a trapped instance: {again}"
                    ),
                }
                Err(why)
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            self.pool.lock().push(instance);
        }
    }
}
