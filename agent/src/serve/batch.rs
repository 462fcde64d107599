//! Dynamic batching: concurrent requests for one model coalesce into one runtime call along
//! the model's batch dimension (the first axis of every input and output), as Triton's
//! dynamic batcher does.
//!
//! Design: requests enter a bounded multi-consumer queue (`flume`: no lock shared by the
//! request path). A few worker threads take from it in turns: the one gathering takes the
//! first waiting request, then whatever arrives until the batch is full, the first request
//! has waited `max_queue_delay`, or no other request can come (see `clients`), and hands the
//! turn on; it stacks the inputs, runs the model once and splits the outputs back by rows
//! while the next gathers. A full queue refuses at once ([`RuntimeError::Overloaded`], a 503
//! with `Retry-After`), so memory never grows with load. Requests that cannot share a run
//! (other shapes beyond the batch axis) run in the next batch or alone; a failed batch is run
//! again one request at a time, so one bad request never fails its neighbours.
//!
//! A request's results never depend on its neighbours: at load, [`probe`] finds the places
//! in a batch where a row gets exactly what it gets alone, and requests go only there. Where
//! every place is such a place, requests of several rows share batches too, their rows side
//! by side, up to `max_batch_size` rows in all; elsewhere they run alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgeship_domain::TensorSpec;
use edgeship_runtime::tensor::f16;
use edgeship_runtime::{Runnable, RuntimeError, Tensor, TensorData};
use tokio::sync::oneshot;

use super::clients::Clients;

/// Upper bounds of the batch-size buckets (requests in one runtime call).
pub const SIZE_BUCKETS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// How a model's requests are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Rows in one runtime call, at most.
    pub max_batch_size: usize,
    /// Longest time the first request of a batch waits for others; none where no other
    /// request can come (every client's request is in the batch already).
    pub max_queue_delay: Duration,
    /// Requests waiting, at most; more are refused with 503.
    pub max_queue_size: usize,
    /// Threads taking batches from the queue.
    pub workers: usize,
}

impl BatchPolicy {
    /// Requests waiting when the manifest does not say: enough for every worker to fill a
    /// batch while as many again wait.
    pub fn default_queue_size(max_batch_size: usize, workers: usize) -> usize {
        (2 * max_batch_size * workers).max(64)
    }
}

/// What `/metrics` shows of a batching model.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Runtime calls by requests in them, each in its first bucket of [`SIZE_BUCKETS`].
    pub sizes: [AtomicU64; SIZE_BUCKETS.len()],
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    /// Requests refused because the queue was full.
    pub refused: AtomicU64,
}

impl BatchStats {
    fn record(&self, requests: usize) {
        let n = requests as u64;
        if let Some(slot) = SIZE_BUCKETS.iter().position(|le| n <= *le) {
            self.sizes[slot].fetch_add(1, Ordering::Relaxed);
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(n, Ordering::Relaxed);
    }
}

type Reply = oneshot::Sender<Result<Vec<Tensor>, RuntimeError>>;

/// One request in the queue.
struct Job {
    inputs: Vec<Tensor>,
    rows: usize,
    queued: Instant,
    reply: Reply,
}

/// The queue in front of one model and the workers behind it. Dropping it closes the queue:
/// the workers answer what is queued and stop.
#[derive(Debug)]
pub struct Batcher {
    queue: flume::Sender<Job>,
    policy: BatchPolicy,
    slots: Arc<[usize]>,
    stats: Arc<BatchStats>,
    clients: &'static Clients,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Job({} rows)", self.rows)
    }
}

/// Whether a model with this signature has a batch dimension: an open first axis on every
/// input and output.
pub fn has_batch_axis(inputs: &[TensorSpec], outputs: &[TensorSpec]) -> bool {
    !inputs.is_empty()
        && inputs
            .iter()
            .chain(outputs)
            .all(|spec| spec.shape.first().is_some_and(|d| d.is_open()))
}

impl Batcher {
    /// Starts batching `runnable`'s requests, after [`probe`] has found where in a batch a
    /// request's results equal its results alone; `sample` is one request (the self-test's).
    /// Refused, with the reason, when the model has no batch dimension or batching would
    /// change its results. `clients` tells who else could still send a request
    /// ([`CLIENTS`](super::clients::CLIENTS) but in tests).
    pub fn start(
        runnable: Arc<dyn Runnable>,
        model_ref: &str,
        policy: BatchPolicy,
        sample: &[Tensor],
        clients: &'static Clients,
    ) -> Result<Self, String> {
        if policy.max_batch_size < 2 {
            return Err("batches of one are no batching".into());
        }
        if !has_batch_axis(runnable.inputs(), runnable.outputs()) {
            return Err(
                "the model has no batch dimension (an open first axis on every input and output)"
                    .into(),
            );
        }
        let slots = probe(runnable.as_ref(), sample, policy.max_batch_size)?;
        // Only a model whose every place gives a row its own results is batched. Where some
        // place does not, the others were once used alone, with padding; but on CPUs without
        // AVX-512 a row's last bits there also depended on its neighbours' values (digits:
        // places the probe found exact answered differently beside other requests), which no
        // probe of a few rows can rule out.
        if slots.len() < policy.max_batch_size {
            return Err(format!(
                "the runtime's results for a request depend on its place in a batch (only places {slots:?} of {} give a request its own results)",
                policy.max_batch_size
            ));
        }
        let (queue, taken) = flume::bounded::<Job>(policy.max_queue_size.max(1));
        let stats = Arc::new(BatchStats::default());
        let slots: Arc<[usize]> = slots.into();
        let gathering = Arc::new(Mutex::new(None));
        for n in 0..policy.workers.max(1) {
            let worker = Worker {
                queue: taken.clone(),
                runnable: Arc::clone(&runnable),
                policy,
                slots: Arc::clone(&slots),
                stats: Arc::clone(&stats),
                gathering: Arc::clone(&gathering),
                clients,
            };
            std::thread::Builder::new()
                .name(format!("batch-{model_ref}-{n}"))
                .spawn(move || worker.run())
                .map_err(|err| format!("cannot start a batch worker: {err}"))?;
        }
        Ok(Self {
            queue,
            policy,
            slots,
            stats,
            clients,
        })
    }

    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// The places in a batch requests take (the others carry padding).
    pub fn slots(&self) -> &[usize] {
        &self.slots
    }

    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Whether a request now would be a batch of one for certain: nothing waits in the queue
    /// and its client is the only one connected. The caller then runs it as an unbatched
    /// request, and counts it with [`Self::count_alone`]: handing it to a batch thread and
    /// back would only add two thread wake-ups to its time.
    pub fn would_run_alone(&self) -> bool {
        self.queue.is_empty() && self.clients.all_waiting(1)
    }

    /// Counts a request run alone (see [`Self::would_run_alone`]) as a batch of one.
    pub fn count_alone(&self) {
        self.stats.record(1);
    }

    /// Queues one request and waits for its share of a batch's outputs.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let rows = batch_rows(&inputs)?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            queued: Instant::now(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(RuntimeError::Overloaded(format!(
                    "the model's queue is full ({} requests waiting); retry later",
                    self.policy.max_queue_size
                )));
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                return Err(RuntimeError::Run("the model is being unloaded".into()));
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(RuntimeError::Run("the batch worker stopped".into())))
    }
}

/// Finds the places in a batch of up to `max_batch_size` rows where a one-row request gets
/// exactly (bit for bit) what it gets alone, and returns them in order.
///
/// Why: a runtime's vectorised reductions (a softmax's sum, say) may take another order of
/// additions for a row that starts at another memory alignment, so row 1 of a batch can
/// differ from the same row alone in the last bit. The order depends on the layout, not on
/// the values, so a few varied rows at every place, in batches of several sizes, tell which
/// places are safe; the worker puts requests only there and pads the rest.
pub fn probe(
    runnable: &dyn Runnable,
    sample: &[Tensor],
    max_batch_size: usize,
) -> Result<Vec<usize>, String> {
    let one_row: Vec<Tensor> = sample
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t.split_rows(1);
            t
        })
        .collect();
    if one_row.iter().any(|t| t.shape.first() != Some(&1)) {
        return Err("the sample request has no row to probe batching with".into());
    }
    // Several sets of rows: whether a vectorised loop's remainder (scalar code, another
    // rounding) touches a row depends on its place, but whether that changes the last bit
    // depends on the values too, so one set can make a place look exact by luck.
    let variants: Vec<Vec<Tensor>> = (0..max_batch_size * PROBE_SETS)
        .map(|k| vary(&one_row, k))
        .collect();
    let alone: Vec<Vec<Vec<u8>>> = variants
        .iter()
        .map(|inputs| {
            let outputs = runnable
                .run(inputs.clone())
                .map_err(|err| format!("probing batching: {err}"))?;
            Ok(outputs.iter().map(|t| t.data.to_le_bytes()).collect())
        })
        .collect::<Result<_, String>>()?;
    let mut exact = vec![true; max_batch_size];
    for (round, &size) in probe_sizes(max_batch_size).iter().enumerate() {
        for (set, reversed) in (0..PROBE_SETS).flat_map(|set| [(set, false), (set, true)]) {
            // Which variant sits at each place: every place sees several different rows.
            let order: Vec<usize> = (0..size)
                .map(|p| {
                    let within = if reversed {
                        size - 1 - p
                    } else {
                        (p + round) % size
                    };
                    set * max_batch_size + within
                })
                .collect();
            let columns = (0..one_row.len())
                .map(|i| {
                    Tensor::concat_rows(order.iter().map(|&v| variants[v][i].clone()).collect())
                })
                .collect::<Option<Vec<Tensor>>>()
                .ok_or("the sample rows cannot be stacked")?;
            let outputs = runnable
                .run(columns)
                .map_err(|err| format!("probing batching: {err}"))?;
            let parts = split_outputs(outputs, &vec![1; size]).map_err(|err| err.to_string())?;
            for (place, (part, &v)) in parts.iter().zip(&order).enumerate() {
                let bytes: Vec<Vec<u8>> = part.iter().map(|t| t.data.to_le_bytes()).collect();
                if bytes != alone[v] {
                    exact[place] = false;
                }
            }
        }
    }
    if !exact[0] {
        return Ok(Vec::new());
    }
    Ok((0..max_batch_size).filter(|&p| exact[p]).collect())
}

/// Sets of varied rows the probe runs at every place of every size.
const PROBE_SETS: usize = 16;

/// The batch lengths the probe tries, and the only ones a batch of one-row requests at exact
/// places is run at.
fn probe_sizes(max_batch_size: usize) -> [usize; 3] {
    [
        max_batch_size,
        max_batch_size / 2 + 1,
        2.min(max_batch_size),
    ]
}

/// The `k`-th probe row: floating-point inputs scaled and shifted by `k` so no two rows are
/// alike; other types as sampled.
fn vary(row: &[Tensor], k: usize) -> Vec<Tensor> {
    let scale = 1.0 + k as f64 * 0.0173;
    let shift = k as f64 * 0.0011;
    row.iter()
        .map(|t| {
            let data = match &t.data {
                TensorData::F32(v) => TensorData::F32(
                    v.iter()
                        .map(|x| (f64::from(*x) * scale + shift) as f32)
                        .collect(),
                ),
                TensorData::F64(v) => {
                    TensorData::F64(v.iter().map(|x| x * scale + shift).collect())
                }
                TensorData::F16(v) => TensorData::F16(
                    v.iter()
                        .map(|x| f16::from_f64(x.to_f64() * scale + shift))
                        .collect(),
                ),
                other => other.clone(),
            };
            Tensor {
                shape: t.shape.clone(),
                data,
            }
        })
        .collect()
}

/// The rows a request brings: its inputs' common first dimension.
fn batch_rows(inputs: &[Tensor]) -> Result<usize, RuntimeError> {
    let mut rows = inputs.iter().map(|t| t.shape.first().copied());
    let first = rows.next().flatten().ok_or_else(|| {
        RuntimeError::BadInput("a batched model takes inputs with a batch dimension".into())
    })?;
    if rows.any(|r| r != Some(first)) {
        return Err(RuntimeError::BadInput(
            "every input must have the same batch size (first dimension)".into(),
        ));
    }
    Ok(first)
}

/// Whether two requests can share a runtime call: the same element types and the same shapes
/// beyond the batch axis.
fn compatible(a: &Job, b: &Job) -> bool {
    a.inputs.len() == b.inputs.len()
        && a.inputs.iter().zip(&b.inputs).all(|(x, y)| {
            x.shape.get(1..) == y.shape.get(1..) && x.data.element_type() == y.data.element_type()
        })
}

struct Worker {
    queue: flume::Receiver<Job>,
    runnable: Arc<dyn Runnable>,
    policy: BatchPolicy,
    /// Where one-row requests go in a batch (see [`probe`]).
    slots: Arc<[usize]>,
    stats: Arc<BatchStats>,
    /// The turn to gather a batch, with a request the last gathering left for the next.
    gathering: Arc<Mutex<Option<Job>>>,
    clients: &'static Clients,
}

impl Worker {
    fn run(self) {
        loop {
            // One worker gathers at a time, so concurrent requests fill one batch instead of
            // starting one per worker; the others run the batches gathered before.
            let batch = {
                let mut held = self
                    .gathering
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match self.gather(&mut held) {
                    Some(batch) => batch,
                    None => return,
                }
            };
            self.answer(batch);
        }
    }

    /// Takes the next batch: the request left over from the last gathering (`held`) or the
    /// next in the queue, then what arrives until the batch is full, its first request has
    /// waited `max_queue_delay`, or every client that could send a request has one in it.
    /// `None` once the queue is closed and empty.
    fn gather(&self, held: &mut Option<Job>) -> Option<Vec<Job>> {
        let first = match held.take() {
            Some(job) => job,
            None => self.queue.recv().ok()?,
        };
        let capacity = self.slots.len();
        // Every place gives a row its own results: requests share a batch, their rows side by
        // side, as long as it has room.
        if first.rows >= capacity {
            return Some(vec![first]);
        }
        let deadline = first.queued + self.policy.max_queue_delay;
        let mut rows = first.rows;
        let mut batch = vec![first];
        while rows < capacity {
            let next = match self.queue.try_recv() {
                Ok(job) => job,
                Err(flume::TryRecvError::Disconnected) => break,
                // Waiting for a request that cannot come would only delay these.
                Err(flume::TryRecvError::Empty) if self.clients.all_waiting(batch.len()) => break,
                Err(flume::TryRecvError::Empty) => match self.queue.recv_deadline(deadline) {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let fits = rows + next.rows <= capacity;
            if !fits || !compatible(&batch[0], &next) {
                *held = Some(next);
                break;
            }
            rows += next.rows;
            batch.push(next);
        }
        Some(batch)
    }

    /// Runs one batch and answers each request with its rows.
    fn answer(&self, batch: Vec<Job>) {
        // Callers that gave up (a closed connection) need no answer and take no place.
        let mut batch: Vec<Job> = batch.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        self.stats.record(batch.len());
        if batch.len() == 1 {
            let job = batch.pop().expect("one job");
            let _ = job.reply.send(self.call(job.inputs));
            return;
        }
        // The requests side by side, all their rows.
        let rows: Vec<usize> = batch.iter().map(|job| job.rows).collect();
        let columns = (0..batch[0].inputs.len())
            .map(|i| Tensor::concat_rows(batch.iter().map(|job| job.inputs[i].clone()).collect()))
            .collect::<Option<Vec<Tensor>>>();
        let parts = columns
            .ok_or_else(|| RuntimeError::Run("the batch's inputs could not be stacked".into()))
            .and_then(|inputs| self.call(inputs))
            .and_then(|outputs| split_outputs(outputs, &rows));
        match parts {
            Ok(parts) => {
                for (job, part) in batch.into_iter().zip(parts) {
                    let _ = job.reply.send(Ok(part));
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "a batch failed; running its requests one by one");
                for job in batch {
                    let _ = job.reply.send(self.call(job.inputs));
                }
            }
        }
    }

    /// One runtime call; a panic fails the call, never the worker.
    fn call(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.runnable.run(inputs)))
            .unwrap_or_else(|_| Err(RuntimeError::Run("the runtime panicked".into())))
    }
}

/// Splits each output along its first axis into one part per request, in order.
pub(crate) fn split_outputs(
    outputs: Vec<Tensor>,
    rows: &[usize],
) -> Result<Vec<Vec<Tensor>>, RuntimeError> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::new()).collect();
    for mut output in outputs {
        if output.shape.first() != Some(&total) {
            return Err(RuntimeError::Run(format!(
                "an output has shape {:?}, not {total} rows: the model does not batch on its first axis",
                output.shape
            )));
        }
        // From the back, so each split moves only the rows it returns.
        let mut end = total;
        for (part, &n) in parts.iter_mut().zip(rows).rev() {
            end -= n;
            let tail = output
                .split_rows(end)
                .ok_or_else(|| RuntimeError::Run("an output lost rows".into()))?;
            part.push(tail);
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests;
