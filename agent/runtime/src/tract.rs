//! The default runtime: ONNX models on the CPU with tract. The plan is optimized once with a
//! symbolic batch dimension, so one plan serves every batch size.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use edgeship_domain::{Dim, ElementType, RuntimeKind, TensorSpec};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{DimFact, Factoid, ShapeFactoid};

use crate::tensor::{Tensor as EdgeTensor, TensorData};
use crate::{ModelBundle, Runnable, Runtime, RuntimeError};

#[derive(Debug, Clone, Copy)]
pub struct TractRuntime;

type Plan = Arc<TypedRunnableModel>;

#[derive(Debug)]
struct TractModel {
    plan: Plan,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// Run states kept between runs. Building one allocates a slot per node and each
    /// operator's state, and dropping one walks every node again; a kept state skips both
    /// (0.94–1.09× the requests a second on the small fixtures, within the noise on some
    /// rows; docs/benchmarks.md). A state
    /// is reset at the end of every run (values and resolved symbols), so the next run, of
    /// any batch size, starts clean.
    idle: Mutex<Vec<TypedSimpleState>>,
}

/// Idle run states kept per model: one per core covers every run at once (inferences run
/// one per core); a state beyond it is dropped after its run rather than kept. Looked up
/// once: `available_parallelism` reads the process's cgroup files on every call, which cost
/// more than a small model's whole run.
fn states_kept() -> usize {
    static KEPT: OnceLock<usize> = OnceLock::new();
    *KEPT.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

impl Runtime for TractRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Tract
    }

    fn check(&self) -> Result<(), RuntimeError> {
        // Pure Rust on the CPU: available wherever the agent runs.
        Ok(())
    }

    fn prepare(&self, bundle: &ModelBundle) -> Result<Arc<dyn Runnable>, RuntimeError> {
        let load = |err: TractError| RuntimeError::Load(format!("{err:#}"));
        let model = onnx().model_for_path(&bundle.entry).map_err(load)?;
        if model.inputs.len() != bundle.inputs.len() {
            return Err(RuntimeError::Load(format!(
                "the file has {} inputs but the registered signature lists {}",
                model.inputs.len(),
                bundle.inputs.len()
            )));
        }
        let plan = plan_symbolic(model, &bundle.inputs).map_err(load)?;
        Ok(Arc::new(TractModel {
            plan,
            inputs: bundle.inputs.clone(),
            outputs: bundle.outputs.clone(),
            idle: Mutex::new(Vec::new()),
        }))
    }

    fn can_plan(&self, path: &Path) -> Result<(), String> {
        let model = onnx()
            .model_for_path(path)
            .map_err(|err| format!("{err:#}"))?;
        plan_symbolic(model, &[])
            .map(drop)
            .map_err(|err| format!("{err:#}"))
    }
}

/// Fixes every input's shape and builds the optimized plan. Dimensions the file fixes stay;
/// one it leaves open becomes a symbol (named as `declared` says, else unique), so a single
/// plan serves any batch size.
pub(crate) fn plan_symbolic(
    mut model: InferenceModel,
    declared: &[TensorSpec],
) -> TractResult<Plan> {
    for index in 0..model.inputs.len() {
        let fact = model.input_fact(index)?.clone();
        let declared_dims = declared.get(index).map(|spec| spec.shape.as_slice());
        let dims: TVec<DimFact> = fact
            .shape
            .dims()
            .enumerate()
            .map(
                |(axis, dim)| match (dim.concretize(), declared_dims.and_then(|d| d.get(axis))) {
                    (Some(dim), _) => dim.into(),
                    (None, Some(Dim::Symbol(symbol))) => model.symbols.sym(symbol).to_dim().into(),
                    (None, _) => model
                        .symbols
                        .sym(&format!("unk_{index}_{axis}"))
                        .to_dim()
                        .into(),
                },
            )
            .collect();
        let fact = InferenceFact {
            shape: ShapeFactoid::closed(dims),
            ..fact
        };
        model.set_input_fact(index, fact)?;
    }
    model.into_optimized()?.into_runnable()
}

impl Runnable for TractModel {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&self, inputs: Vec<EdgeTensor>) -> Result<Vec<EdgeTensor>, RuntimeError> {
        let run = |err: TractError| RuntimeError::Run(format!("{err:#}"));
        let inputs = to_tract_values(inputs)?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut state = match idle {
            Some(state) => state,
            None => self.plan.spawn().map_err(run)?,
        };
        // A failed run may leave values behind in its state: such a state is dropped, not
        // kept. So is one whose run panicked, as it unwinds out of here.
        let outputs = state.run(inputs).map_err(run)?;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < states_kept() {
            idle.push(state);
        }
        drop(idle);
        from_tract_values(&outputs, &self.outputs)
    }
}

/// A request's tensors as tract values, in signature order.
pub(crate) fn to_tract_values(inputs: Vec<EdgeTensor>) -> Result<TVec<TValue>, RuntimeError> {
    inputs.into_iter().map(to_tract).collect()
}

/// A run's outputs as runtime tensors, checked against the declared `outputs`.
pub(crate) fn from_tract_values(
    outputs: &[TValue],
    declared: &[TensorSpec],
) -> Result<Vec<EdgeTensor>, RuntimeError> {
    outputs
        .iter()
        .enumerate()
        .map(|(i, t)| from_tract(t, declared.get(i)))
        .collect()
}

fn to_tract(tensor: EdgeTensor) -> Result<TValue, RuntimeError> {
    let shape = tensor.shape;
    // Plain values are copied once into tract's aligned storage, without an ndarray array
    // in between (its shape checks and strides cost more than the copy on a small request).
    fn plain<D: Datum + Copy>(shape: &[usize], v: &[D]) -> Result<Tensor, RuntimeError> {
        Tensor::from_shape(shape, v).map_err(|err| RuntimeError::BadInput(format!("{err:#}")))
    }
    let t = match tensor.data {
        TensorData::Bool(v) => plain(&shape, &v),
        TensorData::U8(v) => plain(&shape, &v),
        TensorData::U16(v) => plain(&shape, &v),
        TensorData::U32(v) => plain(&shape, &v),
        TensorData::U64(v) => plain(&shape, &v),
        TensorData::I8(v) => plain(&shape, &v),
        TensorData::I16(v) => plain(&shape, &v),
        TensorData::I32(v) => plain(&shape, &v),
        TensorData::I64(v) => plain(&shape, &v),
        TensorData::F16(v) => plain(&shape, &v),
        TensorData::F32(v) => plain(&shape, &v),
        TensorData::F64(v) => plain(&shape, &v),
        TensorData::String(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v)
            .map(Tensor::from)
            .map_err(|err| RuntimeError::BadInput(format!("{err:#}"))),
    }?;
    Ok(t.into_tvalue())
}

/// tract's datum type for an element type scoring carries.
fn datum_type(element_type: &ElementType) -> Option<DatumType> {
    Some(match element_type {
        ElementType::Bool => DatumType::Bool,
        ElementType::U8 => DatumType::U8,
        ElementType::U16 => DatumType::U16,
        ElementType::U32 => DatumType::U32,
        ElementType::U64 => DatumType::U64,
        ElementType::I8 => DatumType::I8,
        ElementType::I16 => DatumType::I16,
        ElementType::I32 => DatumType::I32,
        ElementType::I64 => DatumType::I64,
        ElementType::F16 => DatumType::F16,
        ElementType::F32 => DatumType::F32,
        ElementType::F64 => DatumType::F64,
        ElementType::String => DatumType::String,
        ElementType::Other(_) => return None,
    })
}

/// Converts an output, casting to the element type the signature declares when tract's
/// internal type differs (tract may keep integer results as dimension values).
pub(crate) fn from_tract(
    tensor: &Tensor,
    declared: Option<&TensorSpec>,
) -> Result<EdgeTensor, RuntimeError> {
    let shape = tensor.shape().to_vec();
    let wanted = declared.and_then(|d| datum_type(&d.element_type));
    let cast;
    let tensor = match wanted {
        Some(dt) if dt != tensor.datum_type() => {
            cast = tensor.cast_to_dt(dt).map_err(|err| {
                RuntimeError::Run(format!("converting an output to {dt:?}: {err:#}"))
            })?;
            cast.as_ref()
        }
        _ => tensor,
    };
    let data = match tensor.datum_type() {
        DatumType::Bool => TensorData::Bool(values(tensor)?),
        DatumType::U8 => TensorData::U8(values(tensor)?),
        DatumType::U16 => TensorData::U16(values(tensor)?),
        DatumType::U32 => TensorData::U32(values(tensor)?),
        DatumType::U64 => TensorData::U64(values(tensor)?),
        DatumType::I8 => TensorData::I8(values(tensor)?),
        DatumType::I16 => TensorData::I16(values(tensor)?),
        DatumType::I32 => TensorData::I32(values(tensor)?),
        DatumType::I64 => TensorData::I64(values(tensor)?),
        DatumType::F16 => TensorData::F16(values(tensor)?),
        DatumType::F32 => TensorData::F32(values(tensor)?),
        DatumType::F64 => TensorData::F64(values(tensor)?),
        DatumType::String => TensorData::String(
            tensor
                .to_plain_array_view::<String>()
                .map_err(|err| RuntimeError::Run(format!("reading an output: {err:#}")))?
                .iter()
                .cloned()
                .collect(),
        ),
        other => {
            // Types scoring has no name for (dimension values, quantized): as numbers.
            let cast = tensor.cast_to::<f64>().map_err(|err| {
                RuntimeError::Run(format!("output type {other:?} cannot be returned: {err:#}"))
            })?;
            TensorData::F64(values(&cast)?)
        }
    };
    Ok(EdgeTensor { shape, data })
}

/// A tensor's values in row-major order: tract keeps them dense, so one copy of the slice
/// (walking an n-dimensional view element by element cost more than a small model's output).
fn values<D: Datum + Copy>(tensor: &Tensor) -> Result<Vec<D>, RuntimeError> {
    tensor
        .try_as_plain_ram()
        .and_then(|plain| plain.as_slice::<D>().map(<[D]>::to_vec))
        .map_err(|err| RuntimeError::Run(format!("reading an output: {err:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::{expected, fixture};

    fn features(name: &str, n: u64) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Unknown, Dim::Fixed(n)],
        }
    }

    fn rows(value: &serde_json::Value) -> (Vec<usize>, Vec<f32>) {
        let rows = value.as_array().expect("rows");
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.as_array().expect("row").iter())
            .map(|x| x.as_f64().expect("number") as f32)
            .collect();
        (vec![rows.len(), flat.len() / rows.len()], flat)
    }

    #[test]
    fn diabetes_predictions_match_scikit_learn() {
        let bundle = ModelBundle {
            entry: fixture("diabetes").join("model.onnx"),
            inputs: vec![features("data", 10)],
            outputs: vec![features("variable", 1)],
            device: String::new(),
            precision: Default::default(),
        };
        let model = TractRuntime.prepare(&bundle).expect("prepare");
        let expected = expected("diabetes");
        let (shape, flat) = rows(&expected["inputs"]);
        let outputs = model
            .run(vec![EdgeTensor {
                shape,
                data: TensorData::F32(flat),
            }])
            .expect("run");
        let TensorData::F32(got) = &outputs[0].data else {
            panic!("float output expected: {:?}", outputs[0]);
        };
        let want = expected["predictions"].as_array().expect("array");
        assert_eq!(got.len(), want.len());
        for (row, (got, want)) in got.iter().zip(want).enumerate() {
            let want = want.as_f64().expect("number");
            let got = f64::from(*got);
            assert!(
                (got - want).abs() < 1e-3 * want.abs().max(1.0),
                "row {row}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn digits_returns_labels_and_probabilities() {
        let bundle = ModelBundle {
            entry: fixture("digits").join("model.onnx"),
            inputs: vec![features("pixels", 64)],
            outputs: vec![
                TensorSpec {
                    name: "label".into(),
                    element_type: ElementType::I64,
                    shape: vec![Dim::Unknown],
                },
                features("probabilities", 10),
            ],
            device: String::new(),
            precision: Default::default(),
        };
        let model = TractRuntime.prepare(&bundle).expect("prepare");
        let (shape, flat) = rows(&expected("digits")["inputs"]);
        let outputs = model
            .run(vec![EdgeTensor {
                shape,
                data: TensorData::F32(flat),
            }])
            .expect("run");
        assert_eq!(outputs[0].data, TensorData::I64(vec![0, 1, 2, 3, 4]));
        assert_eq!(outputs[1].shape, [5, 10]);
    }

    /// Kept run states answer as fresh ones do, bit for bit, whatever batch size the run
    /// before had; runs on many threads at once each take a state of their own.
    #[test]
    fn reused_run_states_answer_as_fresh_ones_across_batch_sizes() {
        let bundle = ModelBundle {
            entry: fixture("digits").join("model.onnx"),
            inputs: vec![features("pixels", 64)],
            outputs: vec![],
            device: String::new(),
            precision: Default::default(),
        };
        let model = TractRuntime.prepare(&bundle).expect("prepare");
        let plan = onnx()
            .model_for_path(&bundle.entry)
            .and_then(|m| plan_symbolic(m, &bundle.inputs))
            .expect("plan");
        let (_, flat) = rows(&expected("digits")["inputs"]);
        let batch = |rows: usize| EdgeTensor {
            shape: vec![rows, 64],
            data: TensorData::F32(flat[..rows * 64].to_vec()),
        };
        for rows in [5, 1, 3, 5, 1] {
            let fresh = plan
                .run(to_tract_values(vec![batch(rows)]).expect("values"))
                .expect("fresh run");
            let fresh = from_tract_values(&fresh, &[]).expect("outputs");
            let reused = model.run(vec![batch(rows)]).expect("run");
            assert_eq!(reused, fresh, "{rows} rows");
        }
        let alone = from_tract_values(
            &plan
                .run(to_tract_values(vec![batch(2)]).expect("values"))
                .expect("fresh run"),
            &[],
        )
        .expect("outputs");
        let threads: Vec<_> = (0..4 * states_kept())
            .map(|_| {
                let model = Arc::clone(&model);
                let input = batch(2);
                std::thread::spawn(move || model.run(vec![input]))
            })
            .collect();
        for thread in threads {
            let outputs = thread.join().expect("joins").expect("runs");
            assert_eq!(outputs, alone, "a run beside others answers as one alone");
        }
    }

    #[test]
    fn a_file_that_is_not_onnx_fails_to_load_and_to_plan() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, "nope").expect("write");
        let bundle = ModelBundle {
            entry: path.clone(),
            inputs: vec![],
            outputs: vec![],
            device: String::new(),
            precision: Default::default(),
        };
        let err = TractRuntime.prepare(&bundle).expect_err("not onnx");
        assert!(matches!(err, RuntimeError::Load(_)), "{err}");
        assert!(TractRuntime.can_plan(&path).is_err());
        assert_eq!(
            TractRuntime.can_plan(&fixture("diabetes").join("model.onnx")),
            Ok(())
        );
    }
}
