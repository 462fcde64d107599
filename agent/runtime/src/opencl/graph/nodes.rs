//! Planning one node on the device: which kernel runs it with which arguments, or why it
//! cannot run there (then tract runs it on the CPU).

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::cnn::{MaxPool, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Softmax};

use super::super::ClError;
use super::super::gemm::{Bias, Epilogue, Operand};
use super::super::ops::{BinaryOp, PoolMode, UnaryOp, Window};
use super::{Builder, Env, concrete};

/// Why a node was not planned on the device.
pub(crate) enum NotPlanned {
    /// No kernel for it: tract runs it on the CPU, for this reason.
    Unsupported(String),
    /// Planning failed (a kernel did not build): the graph cannot run.
    Failed(ClError),
}

impl From<ClError> for NotPlanned {
    fn from(err: ClError) -> Self {
        NotPlanned::Failed(err)
    }
}

pub(super) fn unsupported<T>(why: impl Into<String>) -> Result<T, NotPlanned> {
    Err(NotPlanned::Unsupported(why.into()))
}

pub(super) type Planned = Result<Vec<usize>, NotPlanned>;

/// Row-major strides of `shape`.
pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

pub(super) fn output_shape(node: &TypedNode) -> Result<Vec<usize>, NotPlanned> {
    Ok(concrete(&node.outputs[0].fact)?)
}

pub(crate) fn plan_node(b: &mut Builder<'_, '_>, node: &TypedNode, inputs: &[usize]) -> Planned {
    if node.outputs.len() != 1 {
        return unsupported("several outputs");
    }
    if let Some(conv) = node.op_as::<Conv>() {
        return conv2d(b, node, conv, inputs);
    }
    if let Some(einsum) = node.op_as::<EinSum>() {
        return super::matmul::matmul(b, node, einsum, inputs);
    }
    if let Some(op) = node.op_as::<TypedBinOp>() {
        return binary(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<ElementWiseOp>() {
        return unary(b, node, op, inputs);
    }
    if let Some(pool) = node.op_as::<MaxPool>() {
        if pool.with_index_outputs.is_some() {
            return unsupported("max pooling with indices");
        }
        return super::layout::pool2d(b, node, &pool.pool_spec, PoolMode::Max, inputs);
    }
    if let Some(pool) = node.op_as::<SumPool>() {
        let mode = match (pool.normalize, pool.count_include_pad) {
            (false, _) => PoolMode::Sum,
            (true, true) => PoolMode::AverageWindow,
            (true, false) => PoolMode::AverageInside,
        };
        return super::layout::pool2d(b, node, &pool.pool_spec, mode, inputs);
    }
    if let Some(op) = node.op_as::<Downsample>() {
        return super::layout::downsample(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<Reduce>() {
        return super::layout::reduce(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<Softmax>() {
        return super::layout::softmax(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<TypedConcat>() {
        return super::layout::concat(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<AxisOp>() {
        return super::layout::axis_op(b, node, op, inputs);
    }
    unsupported("no OpenCL kernel for this operator")
}

/// An image batch's shape as NCHW: tract drops a batch axis of 1 (CHW).
pub(super) fn nchw(shape: &[usize]) -> Option<[usize; 4]> {
    match *shape {
        [n, c, h, w] => Some([n, c, h, w]),
        [c, h, w] => Some([1, c, h, w]),
        _ => None,
    }
}

/// The 2-D window of a pooling or convolution over an NCHW input of `input` spatial size.
pub(super) fn window(
    spec: &PoolSpec,
    input: (usize, usize),
    output: (usize, usize),
) -> Result<Window, NotPlanned> {
    if !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || spec.kernel_shape.len() != 2
    {
        return unsupported("only 2-D windows over NCHW data");
    }
    let dilations = spec.dilations.clone().unwrap_or_else(|| tvec![1, 1]);
    let strides = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
    let padded = spec.padding.compute(
        &[input.0, input.1],
        &spec.kernel_shape,
        &dilations,
        &strides,
    );
    if (padded[0].convoluted, padded[1].convoluted) != output {
        return unsupported("the window's output size differs from the node's");
    }
    Ok(Window {
        input,
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        strides: (strides[0], strides[1]),
        padding: (padded[0].pad_before, padded[1].pad_before),
        dilations: (dilations[0], dilations[1]),
        output,
    })
}

/// A convolution as one GEMM per image and group: weights (O/g × C/g·KH·KW) times the
/// image's unfolded columns (im2col; a 1×1 convolution with unit strides reads the image
/// itself), with the bias added per output channel as the GEMM stores.
fn conv2d(b: &mut Builder<'_, '_>, node: &TypedNode, conv: &Conv, inputs: &[usize]) -> Planned {
    if conv.q_params.is_some() || conv.kernel_fmt != KernelFormat::OIHW {
        return unsupported("quantized, or kernel not in OIHW");
    }
    let (x, kernel) = (inputs[0], inputs[1]);
    if b.konst(kernel).is_none() {
        return unsupported("weights that are not constants");
    }
    let (xs, out) = (nchw(b.shape(x)), output_shape(node)?);
    let (Some(xs), Some(out_nchw)) = (xs, nchw(&out)) else {
        return unsupported("only 2-D convolutions over NCHW data");
    };
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let (o, oh, ow) = (out_nchw[1], out_nchw[2], out_nchw[3]);
    let group = conv.group.max(1);
    if c % group != 0 || o % group != 0 {
        return unsupported("channels not divisible by the groups");
    }
    let win = window(&conv.pool_spec, (h, w), (oh, ow))?;
    let (cg, og) = (c / group, o / group);
    let kdim = cg * win.kernel.0 * win.kernel.1;
    if b.shape(kernel).iter().product::<usize>() != o * kdim {
        return unsupported("weights of an unexpected shape");
    }
    // The bias, one per output channel (a scalar bias is spread to every channel).
    let bias = match inputs.get(2).map(|&v| (v, b.konst(v).cloned())) {
        None => None,
        Some((_, None)) => return unsupported("a bias that is not a constant"),
        Some((_, Some(t))) => {
            let values = t.cast_to::<f32>().map_err(super::tract_err)?;
            let values = super::floats(&values)?;
            if values.iter().all(|&v| v == 0.0) {
                None
            } else {
                let per_channel: Vec<f32> = match values.len() {
                    1 => vec![values[0]; o],
                    len if len == o => values.to_vec(),
                    _ => return unsupported("a bias of an unexpected length"),
                };
                let tensor = tensor1(&per_channel);
                Some(b.constant(tensor))
            }
        }
    };
    let epilogue = Epilogue {
        bias: if bias.is_some() {
            Bias::Rows
        } else {
            Bias::None
        },
        ..Epilogue::default()
    };
    let gemm = b.gemm((og, oh * ow), epilogue)?;
    let direct = win.kernel == (1, 1)
        && win.strides == (1, 1)
        && win.padding == (0, 0)
        && (oh, ow) == (h, w);
    let col = (!direct).then(|| b.scratch(kdim * oh * ow));
    let x_buf = b.on_device(x)?;
    let k_buf = b.on_device(kernel)?;
    let bias_buf = match bias {
        Some(v) => Some(b.on_device(v)?),
        None => None,
    };
    let (value, out_buf) = b.device_output(out);
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            for image in 0..n {
                for g in 0..group {
                    let x_off = (image * c + g * cg) * h * w;
                    let (cols, cols_off, cols_stride) = match col {
                        None => (x_buf, x_off, h * w),
                        Some(col) => {
                            env.ops.im2col(
                                env.queue,
                                (&env.buffers[x_buf], x_off),
                                cg,
                                &win,
                                &env.buffers[col],
                            )?;
                            (col, 0, oh * ow)
                        }
                    };
                    env.gemms[gemm].enqueue(
                        env.queue,
                        (og, oh * ow, kdim),
                        Operand::new(&env.buffers[k_buf], g * og * kdim, kdim),
                        Operand::new(&env.buffers[cols], cols_off, cols_stride),
                        bias_buf.map(|bb| Operand::new(&env.buffers[bb], g * og, 0)),
                        Operand::new(
                            &env.buffers[out_buf],
                            (image * o + g * og) * oh * ow,
                            oh * ow,
                        ),
                    )?;
                }
            }
            Ok(())
        }),
    );
    Ok(vec![value])
}

fn tensor1(values: &[f32]) -> Arc<Tensor> {
    Arc::new(tract_ndarray::arr1(values).into_tensor())
}

/// Strides reading `shape` as broadcast to `out` (0 along broadcast axes).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Option<Vec<usize>> {
    if shape.len() > out.len() {
        return None;
    }
    let mut padded = vec![1; out.len() - shape.len()];
    padded.extend_from_slice(shape);
    let natural = strides(&padded);
    padded
        .iter()
        .zip(out)
        .zip(natural)
        .map(|((&d, &o), s)| match (d, o) {
            (d, o) if d == o => Some(s),
            (1, _) => Some(0),
            _ => None,
        })
        .collect()
}

fn binary(b: &mut Builder<'_, '_>, node: &TypedNode, op: &TypedBinOp, inputs: &[usize]) -> Planned {
    let kind = match op.0.name() {
        "Add" => BinaryOp::Add,
        "Sub" => BinaryOp::Sub,
        "Mul" => BinaryOp::Mul,
        "Div" => BinaryOp::Div,
        "Max" => BinaryOp::Max,
        "Min" => BinaryOp::Min,
        "Pow" => BinaryOp::Pow,
        other => return unsupported(format!("no kernel for {other}")),
    };
    let out = output_shape(node)?;
    let (Some(sa), Some(sb)) = (
        broadcast_strides(b.shape(inputs[0]), &out),
        broadcast_strides(b.shape(inputs[1]), &out),
    ) else {
        return unsupported("shapes that do not broadcast");
    };
    if out.len() > super::super::ops::MAX_RANK {
        return unsupported("more than 8 axes");
    }
    let a_buf = b.on_device(inputs[0])?;
    let b_buf = b.on_device(inputs[1])?;
    let (value, out_buf) = b.device_output(out.clone());
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            env.ops.binary(
                env.queue,
                kind,
                &out,
                (&env.buffers[a_buf], 0, &sa),
                (&env.buffers[b_buf], 0, &sb),
                &env.buffers[out_buf],
            )
        }),
    );
    Ok(vec![value])
}

fn unary(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    op: &ElementWiseOp,
    inputs: &[usize],
) -> Planned {
    let kind = match op.0.name().as_str() {
        "Sigmoid" => UnaryOp::Sigmoid,
        "Tanh" => UnaryOp::Tanh,
        "Exp" => UnaryOp::Exp,
        "Abs" => UnaryOp::Abs,
        "Neg" => UnaryOp::Neg,
        "Sqrt" => UnaryOp::Sqrt,
        "Recip" => UnaryOp::Recip,
        "Ln" => UnaryOp::Ln,
        "Erf" => UnaryOp::Erf,
        "Floor" => UnaryOp::Floor,
        "Ceil" => UnaryOp::Ceil,
        "Square" => UnaryOp::Square,
        other => return unsupported(format!("no kernel for {other}")),
    };
    let out = output_shape(node)?;
    let count = out.iter().product();
    let x_buf = b.on_device(inputs[0])?;
    let (value, out_buf) = b.device_output(out);
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            env.ops.unary(
                env.queue,
                kind,
                count,
                &env.buffers[x_buf],
                &env.buffers[out_buf],
            )
        }),
    );
    Ok(vec![value])
}
