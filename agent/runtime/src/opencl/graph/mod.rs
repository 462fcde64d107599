//! Runs a model's graph on an OpenCL device: tract reads and declutters the ONNX graph for one
//! set of concrete input shapes, and each node becomes an action on the device (a GEMM, an
//! element-wise, pooling, reduction, softmax or copy kernel) or, where the runtime has no
//! kernel for it, tract's own evaluation on the CPU. Values stay in device buffers between
//! device actions; a value crossing between device and CPU is copied once, and every such
//! copy is counted ([`Placement`]).

mod constants;
mod layout;
mod matmul;
mod nodes;

use std::collections::BTreeMap;
use std::sync::Arc;

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use tract_onnx::prelude::*;

use super::buffers::{DeviceBuffer, Precision, download, scratch, write};
use super::gemm::{Epilogue, Gemm, GemmParams};
use super::ops::Ops;
use super::programs::Programs;
use super::{ClDevice, ClError};

pub use constants::ConstantBuffers;

/// Where a graph's nodes run, for reports (`model show`, the registration check) and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Operator name → nodes of it run on the device.
    pub on_device: BTreeMap<String, usize>,
    /// Operator name → nodes of it run in tract on the CPU, with the reason.
    pub on_cpu: BTreeMap<String, (usize, String)>,
    /// Values copied between host and device per run (inputs and outputs of the model
    /// excluded).
    pub transfers: usize,
}

/// Everything an action needs while the graph runs.
pub(crate) struct Env<'a> {
    queue: &'a CommandQueue,
    ops: &'a Ops,
    buffers: &'a [Arc<DeviceBuffer>],
    gemms: &'a [Gemm],
    host: Vec<Option<TValue>>,
}

impl std::fmt::Debug for Env<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

type Action = Box<dyn Fn(&mut Env<'_>) -> Result<(), ClError> + Send + Sync>;

/// One tensor of the graph (a node's output).
#[derive(Debug, Clone)]
struct Value {
    shape: Vec<usize>,
    datum_type: DatumType,
    /// The device buffer holding it, if it is ever on the device (views share their
    /// source's buffer).
    buffer: Option<usize>,
    /// A constant's value, known when planning.
    konst: Option<Arc<Tensor>>,
}

/// A graph planned for one device and one set of input shapes.
pub struct Graph {
    actions: Vec<(String, Action)>,
    buffers: Vec<Arc<DeviceBuffer>>,
    gemms: Vec<Gemm>,
    /// Value ids of the model's inputs and outputs.
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    /// Host values known when planning (constants the CPU steps read).
    constants: Vec<(usize, TValue)>,
    values: usize,
    output_buffers: Vec<Option<(usize, Vec<usize>)>>,
    precision: Precision,
    pub placement: Placement,
    /// Device memory of the graph's own buffers (activations, im2col scratch), in bytes;
    /// weights are the model's [`ConstantBuffers`].
    pub activation_bytes: usize,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("actions", &self.actions.len())
            .field("buffers", &self.buffers.len())
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

/// What planning needs: the device, its context and queue, its operator kernels and the
/// GEMM tiling tuned for it.
#[derive(Debug)]
pub struct Planner<'a> {
    pub device: &'a ClDevice,
    pub context: &'a Context,
    pub queue: &'a CommandQueue,
    pub tiling: GemmParams,
    /// A tiling with small tiles, for products too small to fill the device with the tuned
    /// one.
    pub small_tiling: GemmParams,
    pub programs: &'a Programs,
    /// How tensors are stored on the device.
    pub precision: Precision,
    /// Weights already on the device, shared by every graph planned for the same model (one
    /// per batch size): each is uploaded once.
    pub constants: &'a ConstantBuffers,
}

/// Planning state: values so far, buffers to allocate, actions, GEMM builds.
pub(crate) struct Builder<'p, 'a> {
    /// `None` when only the placement is wanted (the hub's registration report): nothing is
    /// built.
    planner: Option<&'p Planner<'a>>,
    model: &'p TypedModel,
    values: Vec<Value>,
    /// Node outlet → value id.
    outlets: BTreeMap<OutletId, usize>,
    /// Sizes (in elements) of the device buffers to allocate; constants come with data.
    buffer_sizes: Vec<usize>,
    buffer_data: BTreeMap<usize, Arc<Tensor>>,
    actions: Vec<(String, Action)>,
    gemms: Vec<Gemm>,
    gemm_keys: Vec<(GemmParams, Epilogue)>,
    /// Which values are valid on the host, and on the device, at this point of the plan.
    on_host: Vec<bool>,
    on_device: Vec<bool>,
    placement: Placement,
    /// The scratch buffer shared by every im2col (the queue runs in order).
    scratch: Option<(usize, usize)>,
}

impl<'p, 'a> Builder<'p, 'a> {
    fn new_value(&mut self, shape: Vec<usize>, datum_type: DatumType) -> usize {
        self.values.push(Value {
            shape,
            datum_type,
            buffer: None,
            konst: None,
        });
        self.on_host.push(false);
        self.on_device.push(false);
        self.values.len() - 1
    }

    fn new_buffer(&mut self, elements: usize) -> usize {
        self.buffer_sizes.push(elements.max(1));
        self.buffer_sizes.len() - 1
    }

    /// How tensors are stored on the device (single precision when only placing).
    fn precision(&self) -> Precision {
        self.planner.map_or(Precision::Fp32, |p| p.precision)
    }

    /// The device buffer of `value`, created on first use.
    pub(crate) fn buffer_of(&mut self, value: usize) -> usize {
        if let Some(buffer) = self.values[value].buffer {
            return buffer;
        }
        let elements = self.values[value].shape.iter().product();
        let buffer = self.new_buffer(elements);
        self.values[value].buffer = Some(buffer);
        buffer
    }

    /// Makes `value` valid on the device, uploading it (once) if it is only on the host.
    pub(crate) fn on_device(&mut self, value: usize) -> Result<usize, ClError> {
        if self.values[value].datum_type != DatumType::F32 {
            return Err(ClError::Invalid(format!(
                "value of type {:?} on the device",
                self.values[value].datum_type
            )));
        }
        let buffer = self.buffer_of(value);
        if !self.on_device[value] {
            if let Some(konst) = self.values[value].konst.clone() {
                // Constants are uploaded once, when the graph is built.
                self.buffer_data.insert(buffer, konst);
            } else {
                self.placement.transfers += 1;
                let precision = self.precision();
                self.actions.push((
                    format!("upload value {value}"),
                    Box::new(move |env: &mut Env<'_>| {
                        let host = env.host[value]
                            .as_ref()
                            .ok_or_else(|| ClError::Invalid(format!("value {value} is missing")))?;
                        let floats = floats(host)?;
                        write(env.queue, &env.buffers[buffer], floats, precision)
                    }),
                ));
            }
            self.on_device[value] = true;
        }
        Ok(buffer)
    }

    /// Makes `value` valid on the host, downloading it if it is only on the device.
    fn on_host(&mut self, value: usize) {
        if self.on_host[value] {
            return;
        }
        let Some(buffer) = self.values[value].buffer else {
            return;
        };
        self.placement.transfers += 1;
        let shape = self.values[value].shape.clone();
        let precision = self.precision();
        self.actions.push((
            format!("download value {value}"),
            Box::new(move |env: &mut Env<'_>| {
                let elements = shape.iter().product();
                let floats = download(env.queue, &env.buffers[buffer], elements, precision)?;
                let tensor = Tensor::from_shape(&shape, &floats).map_err(tract_err)?;
                env.host[value] = Some(tensor.into_tvalue());
                Ok(())
            }),
        ));
        self.on_host[value] = true;
    }

    /// A device-side output value for a node.
    pub(crate) fn device_output(&mut self, shape: Vec<usize>) -> (usize, usize) {
        let value = self.new_value(shape, DatumType::F32);
        let buffer = self.buffer_of(value);
        self.on_device[value] = true;
        (value, buffer)
    }

    /// A constant made while planning (a bias spread per channel), uploaded with the graph.
    pub(crate) fn constant(&mut self, tensor: Arc<Tensor>) -> usize {
        let value = self.new_value(tensor.shape().to_vec(), tensor.datum_type());
        self.values[value].konst = Some(tensor);
        self.on_host[value] = true;
        value
    }

    /// An output that is a view of `source` (same buffer, another shape).
    pub(crate) fn view_of(&mut self, source: usize, shape: Vec<usize>) -> usize {
        let value = self.new_value(shape, self.values[source].datum_type);
        self.values[value].buffer = self.values[source].buffer;
        self.on_device[value] = self.on_device[source];
        value
    }

    pub(crate) fn shape(&self, value: usize) -> &[usize] {
        &self.values[value].shape
    }

    pub(crate) fn konst(&self, value: usize) -> Option<&Arc<Tensor>> {
        self.values[value].konst.as_ref()
    }

    pub(crate) fn push(&mut self, name: String, action: Action) {
        self.actions.push((name, action));
    }

    /// The index of a GEMM build with this tiling and epilogue, built on first use. Products
    /// too small to give every compute unit a tile take the small tiling.
    pub(crate) fn gemm(
        &mut self,
        (m, n): (usize, usize),
        epilogue: Epilogue,
    ) -> Result<usize, ClError> {
        let Some(planner) = self.planner else {
            return Ok(0);
        };
        let tuned = planner.tiling;
        let tiles = m.div_ceil(tuned.tsm) * n.div_ceil(tuned.tsn);
        let params = if tiles < planner.device.info.compute_units as usize {
            planner.small_tiling
        } else {
            tuned
        };
        if let Some(index) = self.gemm_keys.iter().position(|k| *k == (params, epilogue)) {
            return Ok(index);
        }
        let gemm = Gemm::build(
            planner.context,
            planner.device,
            params,
            epilogue,
            planner.precision,
            planner.programs,
        )?;
        self.gemms.push(gemm);
        self.gemm_keys.push((params, epilogue));
        Ok(self.gemms.len() - 1)
    }

    /// The shared im2col scratch buffer, grown to at least `elements`.
    pub(crate) fn scratch(&mut self, elements: usize) -> usize {
        match self.scratch {
            Some((buffer, size)) if size >= elements => buffer,
            Some((buffer, _)) => {
                self.buffer_sizes[buffer] = elements;
                self.scratch = Some((buffer, elements));
                buffer
            }
            None => {
                let buffer = self.new_buffer(elements);
                self.scratch = Some((buffer, elements));
                buffer
            }
        }
    }
}

/// The elements of a single-precision tensor, in place.
pub(crate) fn floats(tensor: &Tensor) -> Result<&[f32], ClError> {
    tensor
        .try_as_plain_ram()
        .and_then(|view| view.as_slice::<f32>())
        .map_err(tract_err)
}

pub(crate) fn tract_err(err: TractError) -> ClError {
    ClError::Invalid(format!("{err:#}"))
}

/// A planned graph before anything is allocated on a device.
struct Plan<'p, 'a> {
    b: Builder<'p, 'a>,
    inputs: Vec<usize>,
    outputs: Vec<usize>,
    constants: Vec<(usize, TValue)>,
}

/// Where each node of `model` (typed, decluttered, every shape concrete) would run, without a
/// device: the registration's report. Planning decisions depend on operators and shapes
/// only, so a device gives the same answer (unless a kernel fails to build there).
pub fn placement_without_device(model: &TypedModel) -> Result<Placement, ClError> {
    Ok(plan_nodes(None, model)?.b.placement)
}

fn plan_nodes<'p, 'a>(
    planner: Option<&'p Planner<'a>>,
    model: &'p TypedModel,
) -> Result<Plan<'p, 'a>, ClError> {
    let mut b = Builder {
        planner,
        model,
        values: vec![],
        outlets: BTreeMap::new(),
        buffer_sizes: vec![],
        buffer_data: BTreeMap::new(),
        actions: vec![],
        gemms: vec![],
        gemm_keys: vec![],
        on_host: vec![],
        on_device: vec![],
        placement: Placement::default(),
        scratch: None,
    };
    let mut constants = Vec::new();
    for node_id in model.eval_order().map_err(tract_err)? {
        let node = &model.nodes()[node_id];
        let input_values: Vec<usize> = node.inputs.iter().map(|o| b.outlets[o]).collect();
        let op_name = node.op().name().to_string();
        if node.op_is::<tract_onnx::tract_core::ops::source::TypedSource>() {
            let fact = &node.outputs[0].fact;
            let value = b.new_value(concrete(fact)?, fact.datum_type);
            b.on_host[value] = true;
            b.outlets.insert(OutletId::new(node_id, 0), value);
            continue;
        }
        if let Some(konst) = node.outputs[0]
            .fact
            .konst
            .clone()
            .filter(|_| node.outputs.len() == 1)
        {
            let fact = &node.outputs[0].fact;
            let value = b.new_value(concrete(fact)?, fact.datum_type);
            b.values[value].konst = Some(konst.clone());
            b.on_host[value] = true;
            constants.push((value, konst.into_tvalue()));
            b.outlets.insert(OutletId::new(node_id, 0), value);
            continue;
        }
        let all_f32 = input_values
            .iter()
            .all(|&v| b.values[v].datum_type == DatumType::F32)
            && node
                .outputs
                .iter()
                .all(|o| o.fact.datum_type == DatumType::F32);
        let planned = if all_f32 {
            nodes::plan_node(&mut b, node, &input_values)
        } else {
            Err(nodes::NotPlanned::Unsupported(
                "not single-precision floats".into(),
            ))
        };
        match planned {
            Ok(outputs) => {
                *b.placement.on_device.entry(op_name).or_default() += 1;
                for (slot, value) in outputs.into_iter().enumerate() {
                    b.outlets.insert(OutletId::new(node_id, slot), value);
                }
            }
            Err(nodes::NotPlanned::Failed(err)) => return Err(err),
            Err(nodes::NotPlanned::Unsupported(why)) => {
                let entry = b.placement.on_cpu.entry(op_name).or_insert((0, why));
                entry.0 += 1;
                plan_on_cpu(&mut b, node_id, &input_values)?;
            }
        }
    }
    // In the model's input order, not the order the graph visits its sources in.
    let inputs: Vec<usize> = model
        .input_outlets()
        .map_err(tract_err)?
        .iter()
        .map(|o| b.outlets[o])
        .collect();
    let outputs: Vec<usize> = model
        .output_outlets()
        .map_err(tract_err)?
        .iter()
        .map(|o| b.outlets[o])
        .collect();
    // Model inputs and outputs cross once per run whatever runs the graph: they are not
    // counted as transfers between nodes.
    let counted = b.placement.transfers;
    let uploads_of_inputs = inputs.iter().filter(|&&v| b.on_device[v]).count();
    b.placement.transfers = counted.saturating_sub(uploads_of_inputs);
    Ok(Plan {
        b,
        inputs,
        outputs,
        constants,
    })
}

impl Graph {
    /// Plans `model` (typed, decluttered, every shape concrete) for the planner's device.
    pub fn plan(planner: &Planner<'_>, model: &TypedModel) -> Result<Graph, ClError> {
        let Plan {
            b,
            inputs,
            outputs,
            constants,
        } = plan_nodes(Some(planner), model)?;
        let output_buffers = outputs
            .iter()
            .map(|&v| {
                (!b.on_host[v])
                    .then(|| (b.values[v].buffer, b.values[v].shape.clone()))
                    .and_then(|(buffer, shape)| buffer.map(|buffer| (buffer, shape)))
            })
            .collect();
        let mut buffers = Vec::with_capacity(b.buffer_sizes.len());
        let mut scratch_bytes = 0;
        for (index, &size) in b.buffer_sizes.iter().enumerate() {
            let buffer = match b.buffer_data.get(&index) {
                Some(tensor) => {
                    planner
                        .constants
                        .get_or_upload(tensor, planner.context, planner.queue)?
                }
                None => {
                    scratch_bytes += size * planner.precision.bytes();
                    Arc::new(scratch(planner.context, size, planner.precision)?)
                }
            };
            buffers.push(buffer);
        }
        Ok(Graph {
            actions: b.actions,
            buffers,
            gemms: b.gemms,
            inputs,
            outputs,
            constants,
            values: b.values.len(),
            output_buffers,
            precision: planner.precision,
            activation_bytes: scratch_bytes,
            placement: b.placement,
        })
    }

    /// Runs the graph on `inputs` (in the model's input order) and returns its outputs.
    pub fn run(
        &self,
        queue: &CommandQueue,
        ops: &Ops,
        inputs: TVec<TValue>,
    ) -> Result<TVec<TValue>, ClError> {
        if inputs.len() != self.inputs.len() {
            return Err(ClError::Invalid(format!(
                "{} inputs given, the model takes {}",
                inputs.len(),
                self.inputs.len()
            )));
        }
        let mut host: Vec<Option<TValue>> = vec![None; self.values];
        for (value, konst) in &self.constants {
            host[*value] = Some(konst.clone());
        }
        for (&value, input) in self.inputs.iter().zip(inputs) {
            host[value] = Some(input);
        }
        let mut env = Env {
            queue,
            ops,
            buffers: &self.buffers,
            gemms: &self.gemms,
            host,
        };
        for (name, action) in &self.actions {
            action(&mut env).map_err(|err| ClError::Invalid(format!("{name}: {err}")))?;
        }
        let mut outputs = TVec::new();
        for (index, &value) in self.outputs.iter().enumerate() {
            match (&self.output_buffers[index], env.host[value].take()) {
                (Some((buffer, shape)), _) => {
                    let elements = shape.iter().product();
                    let floats = download(queue, &self.buffers[*buffer], elements, self.precision)?;
                    let tensor = Tensor::from_shape(shape, &floats).map_err(tract_err)?;
                    outputs.push(tensor.into_tvalue());
                }
                (None, Some(host)) => outputs.push(host),
                (None, None) => {
                    return Err(ClError::Invalid(format!("output {index} was not computed")));
                }
            }
        }
        Ok(outputs)
    }
}

fn concrete(fact: &TypedFact) -> Result<Vec<usize>, ClError> {
    fact.shape
        .as_concrete()
        .map(<[usize]>::to_vec)
        .ok_or_else(|| ClError::Invalid(format!("shape {:?} is not concrete", fact.shape)))
}

/// A node tract evaluates on the CPU: its inputs are brought to the host first.
fn plan_on_cpu(b: &mut Builder<'_, '_>, node_id: usize, inputs: &[usize]) -> Result<(), ClError> {
    for &value in inputs {
        b.on_host(value);
    }
    let node = &b.model.nodes()[node_id];
    let mut outputs = Vec::new();
    for (slot, output) in node.outputs.iter().enumerate() {
        let value = b.new_value(concrete(&output.fact)?, output.fact.datum_type);
        b.on_host[value] = true;
        b.outlets.insert(OutletId::new(node_id, slot), value);
        outputs.push(value);
    }
    let op = node.op.clone();
    let inputs = inputs.to_vec();
    let name = node.name.clone();
    b.push(
        format!("{name} (on the CPU)"),
        Box::new(move |env: &mut Env<'_>| {
            let args: TVec<TValue> = inputs
                .iter()
                .map(|&v| {
                    env.host[v]
                        .clone()
                        .ok_or_else(|| ClError::Invalid(format!("value {v} is missing")))
                })
                .collect::<Result<_, _>>()?;
            let results = op
                .eval_out_of_plan(args)
                .map_err(tract_err)?
                .ok_or_else(|| ClError::Invalid(format!("{name} cannot run outside a plan")))?;
            for (&value, result) in outputs.iter().zip(results) {
                env.host[value] = Some(result);
            }
            Ok(())
        }),
    );
    Ok(())
}
