//! Batching tests: coalescing under concurrency, the bounded queue, and results equal to
//! single requests bit for bit on the real fixture models.

use std::sync::Mutex;
use std::sync::mpsc;

use edgeship_domain::{Dim, ElementType};
use edgeship_runtime::{ModelBundle, Runtime, TensorData};
use testkit::{expected, fixture};

use super::*;

fn spec(name: &str, shape: Vec<Dim>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        element_type: ElementType::F32,
        shape,
    }
}

fn policy(max_batch_size: usize, delay_ms: u64, max_queue_size: usize) -> BatchPolicy {
    BatchPolicy {
        max_batch_size,
        max_queue_delay: Duration::from_millis(delay_ms),
        max_queue_size,
        workers: 2,
    }
}

fn rows(values: &[f32], width: usize) -> Tensor {
    Tensor {
        shape: vec![values.len() / width, width],
        data: TensorData::F32(values.to_vec()),
    }
}

/// Doubles each row and appends its sum; records the rows of every call. Calls wait while
/// `gate` holds a receiver that has not been fed.
#[derive(Debug)]
struct RowWise {
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    calls: Mutex<Vec<usize>>,
    gate: Mutex<Option<mpsc::Receiver<()>>>,
}

impl RowWise {
    fn new() -> Self {
        Self {
            inputs: vec![spec("x", vec![Dim::Unknown, Dim::Fixed(2)])],
            outputs: vec![spec("y", vec![Dim::Unknown, Dim::Fixed(3)])],
            calls: Mutex::new(Vec::new()),
            gate: Mutex::new(None),
        }
    }
}

impl Runnable for RowWise {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        if let Some(gate) = self.gate.lock().expect("gate").as_ref() {
            let _ = gate.recv_timeout(Duration::from_secs(10));
        }
        let x = &inputs[0];
        self.calls.lock().expect("calls").push(x.shape[0]);
        let TensorData::F32(v) = &x.data else {
            return Err(RuntimeError::BadInput("float32 only".into()));
        };
        if v.iter().any(|x| x.is_nan()) {
            return Err(RuntimeError::BadInput("NaN in the input".into()));
        }
        let out: Vec<f32> = v
            .chunks(2)
            .flat_map(|r| [r[0] * 2.0, r[1] * 2.0, r[0] + r[1]])
            .collect();
        Ok(vec![Tensor {
            shape: vec![x.shape[0], 3],
            data: TensorData::F32(out),
        }])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_runtime_calls_and_get_their_own_rows() {
    let model = Arc::new(RowWise::new());
    let batcher = Batcher::start(
        model.clone(),
        "m:1",
        policy(8, 20, 256),
        &sample(),
        anyone(),
    )
    .expect("batchable");
    assert_eq!(
        batcher.slots(),
        [0, 1, 2, 3, 4, 5, 6, 7],
        "row-wise: every place"
    );
    model.calls.lock().expect("calls").clear();
    let batcher = Arc::new(batcher);
    let mut tasks = Vec::new();
    for i in 0..64u16 {
        let batcher = Arc::clone(&batcher);
        // Mostly one row; now and then two or three, which share batches too (every place
        // of a row-wise model gives a row its own results).
        let n = 1 + usize::from(i % 8 == 0) + usize::from(i % 16 == 0);
        let values: Vec<f32> = (0..2 * n).map(|k| f32::from(i) + k as f32 / 8.0).collect();
        tasks.push(tokio::spawn(async move {
            let single = model_rows(&values);
            let got = batcher.infer(vec![rows(&values, 2)]).await.expect("scored");
            (single, got)
        }));
    }
    for task in tasks {
        let (single, got) = task.await.expect("task");
        assert_eq!(got, single, "a request's rows and nobody else's");
    }
    let calls = model.calls.lock().expect("calls").clone();
    assert!(calls.iter().all(|&rows| rows <= 8), "{calls:?}");
    assert_eq!(
        calls.iter().sum::<usize>(),
        64 + 8 + 4,
        "every row once: {calls:?}"
    );
    assert!(
        calls.iter().any(|&rows| rows > 2),
        "64 concurrent requests shared no call: {calls:?}"
    );
    let stats = batcher.stats();
    assert_eq!(stats.requests.load(Ordering::Relaxed), 64);
    assert_eq!(
        stats.batches.load(Ordering::Relaxed),
        calls.len() as u64,
        "one runtime call per batch"
    );
}

/// Clients of whom any could send another request at any time (an open gRPC connection):
/// batches wait for more until full or past their delay.
fn anyone() -> &'static Clients {
    let clients: &'static Clients = Box::leak(Box::new(Clients::new()));
    std::mem::forget(clients.multiplexed_seat());
    clients
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_holding_every_clients_request_does_not_wait_for_more() {
    // Longer than any test may take: a batch that waited it out would fail the test.
    const LONG: Duration = Duration::from_secs(600);
    let clients: &'static Clients = Box::leak(Box::new(Clients::new()));
    let model = Arc::new(RowWise::new());
    let mut patient = policy(8, 0, 64);
    patient.max_queue_delay = LONG;
    let batcher = Arc::new(
        Batcher::start(model.clone(), "m:1", patient, &sample(), clients).expect("batchable"),
    );
    model.calls.lock().expect("calls").clear();
    let ask = |values: [f32; 2]| {
        let batcher = Arc::clone(&batcher);
        tokio::spawn(async move { batcher.infer(vec![rows(&values, 2)]).await })
    };
    let within = |task| tokio::time::timeout(Duration::from_secs(60), task);

    // One HTTP/1 client: its request is all that can come.
    let first = clients.seat();
    let got = within(ask([1.0, 2.0])).await.expect("not kept waiting");
    assert_eq!(got.expect("task").expect("scored"), model_rows(&[1.0, 2.0]));

    // Two more clients, three in all: the first request waits for the other two, then all
    // three run in one call, without waiting out the delay.
    let (second, third) = (clients.seat(), clients.seat());
    let asked = [[3.0, 4.0], [5.0, 6.0], [7.0, 8.0]];
    let tasks: Vec<_> = asked.iter().map(|values| ask(*values)).collect();
    for (task, values) in tasks.into_iter().zip(asked) {
        let got = within(task).await.expect("not kept waiting");
        assert_eq!(got.expect("task").expect("scored"), model_rows(&values));
    }
    assert_eq!(*model.calls.lock().expect("calls"), [1, 3]);
    drop((second, third));

    // A client without a request in the batch could still send one: it waits its delay.
    let _idle = clients.seat();
    let short = {
        let mut p = policy(8, 0, 64);
        p.max_queue_delay = Duration::from_millis(300);
        Batcher::start(model.clone(), "m:2", p, &sample(), clients).expect("batchable")
    };
    let started = Instant::now();
    short
        .infer(vec![rows(&[1.0, 1.0], 2)])
        .await
        .expect("scored");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "one of two clients' request went without waiting for the other's"
    );
    assert!(
        !short.would_run_alone(),
        "two clients: a request may find company"
    );
    drop(first);
    assert!(short.would_run_alone(), "one client, nothing queued");
    short.count_alone();
    assert_eq!(short.stats().batches.load(Ordering::Relaxed), 2);
    assert_eq!(short.stats().sizes[0].load(Ordering::Relaxed), 2);
}

/// The self-test request the batcher probes with.
fn sample() -> Vec<Tensor> {
    vec![rows(&[0.5, 0.25], 2)]
}

/// What [`RowWise`] answers for `values` alone.
fn model_rows(values: &[f32]) -> Vec<Tensor> {
    RowWise::new().run(vec![rows(values, 2)]).expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_a_bad_request_fails_alone() {
    let model = Arc::new(RowWise::new());
    let mut one_worker = policy(4, 1, 2);
    one_worker.workers = 1;
    let batcher = Arc::new(
        Batcher::start(model.clone(), "m:1", one_worker, &sample(), anyone()).expect("batchable"),
    );
    let (open, gate) = mpsc::channel();
    *model.gate.lock().expect("gate") = Some(gate);
    // The worker takes the first request and waits at the gate; two more fill the queue.
    let first = {
        let b = Arc::clone(&batcher);
        tokio::spawn(async move { b.infer(vec![rows(&[1.0, 2.0], 2)]).await })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while batcher.queue_depth() > 0 || model.gate.lock().expect("gate").is_none() {
        assert!(Instant::now() < deadline, "the worker never took a request");
        tokio::time::sleep(Duration::from_millis(5)).await;
        if batcher.queue_depth() == 0 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let queued: Vec<_> = [[3.0, 4.0], [f32::NAN, 0.0]]
        .into_iter()
        .map(|values| {
            let b = Arc::clone(&batcher);
            tokio::spawn(async move { b.infer(vec![rows(&values, 2)]).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while batcher.queue_depth() < 2 {
        assert!(Instant::now() < deadline, "requests never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = batcher
        .infer(vec![rows(&[5.0, 6.0], 2)])
        .await
        .expect_err("the queue is full");
    assert!(matches!(refused, RuntimeError::Overloaded(_)), "{refused}");
    assert!(refused.to_string().contains("queue is full"), "{refused}");
    assert_eq!(batcher.stats().refused.load(Ordering::Relaxed), 1);
    for _ in 0..8 {
        let _ = open.send(());
    }
    let first = first.await.expect("task").expect("scored");
    assert_eq!(first, model_rows(&[1.0, 2.0]));
    let mut queued = queued.into_iter();
    let good = queued.next().expect("task").await.expect("task");
    assert_eq!(good.expect("scored"), model_rows(&[3.0, 4.0]));
    let bad = queued.next().expect("task").await.expect("task");
    let err = bad.expect_err("NaN is refused");
    assert!(err.to_string().contains("NaN"), "{err}");
}

/// Adds a trace of each row's place in the batch to every place in `uneven`, as a runtime
/// whose reductions depend on alignment would.
#[derive(Debug)]
struct Placed {
    inner: RowWise,
    uneven: Vec<usize>,
}

impl Runnable for Placed {
    fn inputs(&self) -> &[TensorSpec] {
        self.inner.inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.inner.outputs()
    }
    fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RuntimeError> {
        let mut outputs = self.inner.run(inputs)?;
        if let TensorData::F32(v) = &mut outputs[0].data {
            for (place, row) in v.chunks_mut(3).enumerate() {
                if self.uneven.contains(&place) {
                    row[2] = f32::from_bits(row[2].to_bits() ^ 1);
                }
            }
        }
        Ok(outputs)
    }
}

#[test]
fn a_model_whose_results_depend_on_their_place_is_not_batched() {
    for uneven in [vec![1, 5], (1..8).collect()] {
        let placed = Arc::new(Placed {
            inner: RowWise::new(),
            uneven,
        });
        let err = Batcher::start(placed, "m:1", policy(8, 50, 64), &sample(), anyone())
            .expect_err("refused");
        assert!(err.contains("depend on its place"), "{err}");
    }
    let err = Batcher::start(
        Arc::new(Placed {
            inner: RowWise::new(),
            uneven: vec![1, 5],
        }),
        "m:1",
        policy(8, 50, 64),
        &sample(),
        anyone(),
    )
    .expect_err("refused");
    assert!(err.contains("only places [0, 2, 3, 4, 6, 7] of 8"), "{err}");
}

#[test]
fn models_without_a_batch_axis_are_not_batched() {
    let fixed = spec("x", vec![Dim::Fixed(1), Dim::Fixed(2)]);
    let open = spec("x", vec![Dim::Unknown, Dim::Fixed(2)]);
    assert!(has_batch_axis(
        std::slice::from_ref(&open),
        std::slice::from_ref(&open)
    ));
    assert!(!has_batch_axis(
        std::slice::from_ref(&fixed),
        std::slice::from_ref(&open)
    ));
    assert!(!has_batch_axis(
        std::slice::from_ref(&open),
        std::slice::from_ref(&fixed)
    ));
    assert!(!has_batch_axis(&[], &[]));
    let scalar = spec("x", vec![]);
    assert!(!has_batch_axis(std::slice::from_ref(&scalar), &[]));
}

/// The fixture's registered signature and its scikit-learn inputs, one row per request.
fn fixture_model(name: &str) -> (Arc<dyn Runnable>, Vec<Vec<f32>>) {
    let path = fixture(name).join("model.onnx");
    let signature = edgeship_runtime::onnx::inspect("model.onnx", &path).expect("inspect");
    let bundle = ModelBundle {
        entry: path,
        inputs: signature.inputs,
        outputs: signature.outputs,
        device: String::new(),
        precision: Default::default(),
    };
    let runnable = edgeship_runtime::tract::TractRuntime
        .prepare(&bundle)
        .expect("prepare");
    let inputs = expected(name)["inputs"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect();
    (runnable, inputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_results_equal_single_requests_bit_for_bit_on_the_fixture_models() {
    // One row per request, then one to three.
    for (name, most_rows) in [
        ("diabetes", 1),
        ("digits", 1),
        ("diabetes", 3),
        ("digits", 3),
    ] {
        let (runnable, samples) = fixture_model(name);
        let started = Batcher::start(
            Arc::clone(&runnable),
            name,
            policy(16, 20, 512),
            &[rows(&samples[0], samples[0].len())],
            anyone(),
        );
        // Whether a model's rows keep their own results in every place depends on the CPU's
        // kernels (digits does on AVX-512, not on AVX2): a refusal must say why, and the
        // model then runs requests one by one.
        let batcher = match started {
            Ok(batcher) => Arc::new(batcher),
            Err(why) => {
                assert!(why.contains("depend on its place"), "{name}: {why}");
                assert_ne!(name, "diabetes", "a linear model batches everywhere: {why}");
                println!("{name}: not batched on this CPU: {why}");
                continue;
            }
        };
        let mut tasks = Vec::new();
        for i in 0..96 {
            // Varied so no two neighbours in a batch are alike.
            let width = samples[0].len();
            let mut row: Vec<f32> = (0..1 + i % most_rows)
                .flat_map(|r| samples[(i + r) % samples.len()].clone())
                .collect();
            for (k, x) in row.iter_mut().enumerate() {
                *x += (i * 7 + k) as f32 * 1e-3;
            }
            let single = runnable.run(vec![rows(&row, width)]).expect("single");
            let batcher = Arc::clone(&batcher);
            tasks.push(tokio::spawn(async move {
                let got = batcher
                    .infer(vec![rows(&row, width)])
                    .await
                    .expect("batched");
                (single, got)
            }));
        }
        for task in tasks {
            let (single, got) = task.await.expect("task");
            assert_eq!(single.len(), got.len());
            for (a, b) in single.iter().zip(&got) {
                assert_eq!(a.shape, b.shape, "{name}");
                assert_eq!(
                    a.data.to_le_bytes(),
                    b.data.to_le_bytes(),
                    "{name}: bit for bit"
                );
            }
        }
        // Requests of one and of several rows share batches, their rows side by side.
        let stats = batcher.stats();
        assert!(
            stats.batches.load(Ordering::Relaxed) < 96,
            "{name}, up to {most_rows} rows: 96 concurrent requests were never batched"
        );
    }
}
