//! The ready instances of one deployment version. Each instance is made from the checked
//! component and initialized (`init`) ahead of traffic; a request leases one, runs `run` in
//! it, and gives it back. An instance that trapped (deadline, memory cap, panic) may be in
//! any state, so it is dropped and a fresh one takes its place; the endpoint keeps serving.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Component;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::bindings::edgeship::entry::types::{ModelInfo, Request, Response};
use crate::bindings::{Entry, EntryPre};
use crate::engine::ModuleEngine;
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
    /// Checks `component`, then makes and initializes every instance (`init` may run the
    /// models). An `init` that fails, traps or is refused fails the whole pool, with the
    /// module's reason.
    pub async fn start(
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
            let instance = pool.instantiate().await?;
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
    async fn instantiate(&self) -> Result<Instance, String> {
        let engine = self.pre.engine();
        let sandbox = Sandbox::new(
            &self.settings.limits,
            &self.settings.mounts,
            Arc::clone(&self.models),
            &self.settings.log,
        )?;
        let mut store = Store::new(engine, sandbox);
        store.limiter(|sandbox| &mut sandbox.limits);
        // At every epoch tick the module yields to the other tasks of its thread, until its
        // deadline: then the call traps (`Trap::Interrupt`).
        store.epoch_deadline_callback(|store| {
            let sandbox = store.data();
            if sandbox.call_started.elapsed() < sandbox.call_deadline {
                Ok(UpdateDeadline::Yield(1))
            } else {
                Err(Trap::Interrupt.into())
            }
        });
        begin_call(&mut store, INIT_DEADLINE, Arc::clone(&self.init_infer));
        let entry = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|err| self.reason("instantiating it", &store, &err, INIT_DEADLINE))?;
        match entry.call_init(&mut store).await {
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

/// Starts the clock of one call and lends it the models.
fn begin_call(store: &mut Store<Sandbox>, deadline: Duration, infer: Arc<dyn Infer>) {
    let sandbox = store.data_mut();
    sandbox.call_started = Instant::now();
    sandbox.call_deadline = deadline;
    sandbox.infer = Some(infer);
    // The next tick checks the deadline (and yields).
    store.set_epoch_deadline(1);
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
    /// Runs `run` for `request`, with `infer` for the models, on this task (the module
    /// yields at every epoch tick). `Err` when the module trapped, with why; its instance is
    /// replaced.
    pub async fn run(
        &mut self,
        request: &Request,
        infer: Arc<dyn Infer>,
    ) -> Result<Response, String> {
        let pool = Arc::clone(&self.pool);
        // An instance lost to a trap whose replacement failed is made again here.
        let mut instance = match self.instance.take() {
            Some(instance) => instance,
            None => pool.instantiate().await?,
        };
        let deadline = pool.settings.limits.deadline;
        // Held here, not in the lease, while the call runs: dropped mid-call (the caller went
        // away), it goes with the call, since it may be in any state, and the next lease makes
        // a fresh one.
        begin_call(&mut instance.store, deadline, infer);
        // A panic in the host (a runtime called through `infer`) unwinds through the module's
        // frames: the instance is dropped as after a trap, and the request fails.
        let result = AssertUnwindSafe(instance.entry.call_run(&mut instance.store, request))
            .catch_unwind()
            .await
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
                match pool.instantiate().await {
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
