//! The `opencl` runtime behind the `Runtime` trait: tract reads the ONNX file, and each set
//! of input shapes a model is asked with gets its own planned graph on the device (kept, a
//! few per model), its weights uploaded once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use edgeship_domain::{RuntimeKind, TensorSpec};
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use tract_onnx::prelude::*;

use super::buffers::Precision;
use super::graph::{ConstantBuffers, Graph, Planner};
use super::ops::Ops;
use super::{ClDevice, ClError, GemmParams, Programs, TuneCache, candidates, discover, tune_gemm};
use crate::tensor::Tensor as EdgeTensor;
use crate::tract::{from_tract_values, to_tract_values};
use crate::{ModelBundle, Runnable, Runtime, RuntimeError};

/// Graphs kept per model, one per distinct set of input shapes: batch sizes, mostly, which
/// dynamic batching varies from 2 to its maximum (they share the model's weights on the
/// device).
const GRAPHS_KEPT: usize = 8;

/// Where tuned tilings are kept (the agent sets its data folder at start); without it every
/// process tunes again.
static CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Keeps GEMM tunings and compiled programs under `dir`.
pub fn set_cache_dir(dir: impl Into<PathBuf>) {
    let _ = CACHE_DIR.set(dir.into());
}

#[derive(Debug, Clone, Copy)]
pub struct OpenClRuntime;

/// The device a model runs on: `selector` is empty (the first GPU, else accelerator, else
/// any), a kind (`gpu`, `cpu`, `accelerator`) or a part of the device's name, as the hub
/// checks it before scheduling (`OpenClDevice::matches`).
pub fn pick_device(devices: &[ClDevice], selector: &str) -> Option<ClDevice> {
    let rank = |d: &&ClDevice| {
        ["gpu", "accelerator", "cpu"]
            .iter()
            .position(|k| *k == d.info.kind)
            .unwrap_or(3)
    };
    devices
        .iter()
        .filter(|d| d.info.matches(selector))
        .min_by_key(rank)
        .cloned()
}

/// A device opened for running graphs: context, queue, operator kernels, tilings.
#[derive(Debug)]
pub struct Engine {
    pub device: ClDevice,
    context: Context,
    queue: CommandQueue,
    ops: Ops,
    pub tiling: GemmParams,
    small_tiling: GemmParams,
    /// Where this engine's programs come from (cache, prebuilt binaries) and how many were
    /// compiled or loaded.
    pub programs: Programs,
    /// Weights on the device, shared by the graphs this engine plans (one per batch size).
    pub constants: ConstantBuffers,
    /// How tensors are stored on the device.
    pub precision: Precision,
}

impl Engine {
    /// Opens `device` with a GEMM tiling: `tiling`, else the one tuned earlier (cache),
    /// else one tuned now; programs come from `programs`; tensors are stored at `precision`
    /// (tilings are tuned in single precision and serve both: the arithmetic is the same).
    pub fn open(
        device: ClDevice,
        tiling: Option<GemmParams>,
        programs: Programs,
        precision: Precision,
    ) -> Result<Engine, ClError> {
        let (context, queue) = device.open()?;
        let ops = Ops::build(&context, &device, precision, &programs)?;
        let fitting = candidates(&device);
        let small_tiling = fitting
            .iter()
            .copied()
            .find(|p| p.tsm == 32 && p.tsn == 32)
            .or_else(|| fitting.last().copied())
            .ok_or_else(|| ClError::Invalid(format!("no GEMM tiling fits {}", device.label())))?;
        let tiling = match tiling {
            Some(tiling) => tiling,
            None => {
                let cache = CACHE_DIR.get().map(TuneCache::new);
                match cache.as_ref().and_then(|c| c.load(&device)) {
                    Some(tiling) => tiling,
                    None => {
                        let size = if device.info.kind == "cpu" { 256 } else { 1024 };
                        let tuning = tune_gemm(&context, &queue, &device, size, &programs)?;
                        if let Some(cache) = &cache {
                            let _ = cache.store(&device, &tuning);
                        }
                        tuning.params
                    }
                }
            }
        };
        Ok(Engine {
            device,
            context,
            queue,
            ops,
            tiling,
            small_tiling,
            programs,
            constants: ConstantBuffers::new(precision),
            precision,
        })
    }

    /// Plans `model` (typed, every shape concrete) on this device.
    pub fn plan(&self, model: &TypedModel) -> Result<Graph, ClError> {
        let planner = Planner {
            device: &self.device,
            context: &self.context,
            queue: &self.queue,
            tiling: self.tiling,
            small_tiling: self.small_tiling,
            programs: &self.programs,
            precision: self.precision,
            constants: &self.constants,
        };
        Graph::plan(&planner, model)
    }

    pub fn run(&self, graph: &Graph, inputs: TVec<TValue>) -> Result<TVec<TValue>, ClError> {
        graph.run(&self.queue, &self.ops, inputs)
    }
}

/// `model` with every input fixed to the given shape, typed and decluttered: the graph the
/// device runs.
pub fn concrete_model(
    model: &InferenceModel,
    inputs: &[(DatumType, Vec<usize>)],
) -> TractResult<TypedModel> {
    let mut model = model.clone();
    for (index, (datum_type, shape)) in inputs.iter().enumerate() {
        model.set_input_fact(index, InferenceFact::dt_shape(*datum_type, shape.clone()))?;
    }
    model.into_typed()?.into_decluttered()
}

/// The element type and shape of each input: what a planned graph is for.
pub type InputShapes = Vec<(DatumType, Vec<usize>)>;

struct Loaded {
    engine: Engine,
    graphs: Vec<(InputShapes, Graph)>,
}

#[derive(Debug)]
struct OpenClModel {
    model: InferenceModel,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("device", &self.engine.device.label())
            .field("graphs", &self.graphs.len())
            .finish()
    }
}

fn unavailable(why: impl Into<String>) -> RuntimeError {
    RuntimeError::Unavailable {
        runtime: RuntimeKind::Opencl,
        why: why.into(),
    }
}

impl Runtime for OpenClRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Opencl
    }

    fn check(&self) -> Result<(), RuntimeError> {
        match discover() {
            Ok(devices) if !devices.is_empty() => Ok(()),
            Ok(_) => Err(unavailable("no OpenCL device is installed")),
            Err(err) => Err(unavailable(err.to_string())),
        }
    }

    fn prepare(&self, bundle: &ModelBundle) -> Result<Arc<dyn Runnable>, RuntimeError> {
        let devices = discover().map_err(|err| unavailable(err.to_string()))?;
        let device = pick_device(&devices, &bundle.device).ok_or_else(|| {
            unavailable(format!(
                "no OpenCL device matches `{}` (found: {})",
                bundle.device,
                devices
                    .iter()
                    .map(|d| format!("{} ({})", d.info.name, d.info.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let model = onnx()
            .model_for_path(&bundle.entry)
            .map_err(|err| RuntimeError::Load(format!("{err:#}")))?;
        // Programs compiled earlier on this device are kept in the agent's data folder; a
        // model may ship prebuilt ones (an FPGA's) in its `opencl/` folder.
        let mut programs = match CACHE_DIR.get() {
            Some(dir) => Programs::cached(dir.join("programs")),
            None => Programs::uncached(),
        };
        if let Some(folder) = bundle.entry.parent() {
            programs = programs.with_prebuilt(folder.join("opencl"));
        }
        let engine = Engine::open(device, None, programs, bundle.precision)
            .map_err(|err| RuntimeError::Load(err.to_string()))?;
        Ok(Arc::new(OpenClModel {
            model,
            inputs: bundle.inputs.clone(),
            outputs: bundle.outputs.clone(),
            loaded: Mutex::new(Loaded {
                engine,
                graphs: vec![],
            }),
        }))
    }

    fn can_plan(&self, path: &Path) -> Result<(), String> {
        // The graph is read by tract: what tract can read, the runtime can run (nodes
        // without a kernel run in tract on the CPU).
        crate::tract::TractRuntime.can_plan(path)
    }
}

impl Runnable for OpenClModel {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<EdgeTensor>) -> Result<Vec<EdgeTensor>, RuntimeError> {
        let inputs = to_tract_values(inputs)?;
        let key: InputShapes = inputs
            .iter()
            .map(|t| (t.datum_type(), t.shape().to_vec()))
            .collect();
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| RuntimeError::Run("the OpenCL model failed earlier".into()))?;
        let index = match loaded.graphs.iter().position(|(k, _)| *k == key) {
            Some(index) => index,
            None => {
                let typed = concrete_model(&self.model, &key)
                    .map_err(|err| RuntimeError::BadInput(format!("{err:#}")))?;
                let graph = loaded
                    .engine
                    .plan(&typed)
                    .map_err(|err| RuntimeError::Load(err.to_string()))?;
                if loaded.graphs.len() >= GRAPHS_KEPT {
                    loaded.graphs.remove(0);
                }
                loaded.graphs.push((key, graph));
                loaded.graphs.len() - 1
            }
        };
        let Loaded { engine, graphs } = &*loaded;
        let outputs = engine
            .run(&graphs[index].1, inputs)
            .map_err(|err| RuntimeError::Run(err.to_string()))?;
        from_tract_values(&outputs, &self.outputs)
    }
}
