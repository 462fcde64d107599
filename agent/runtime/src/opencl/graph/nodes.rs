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
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, Softmax, SoftmaxKind};

use super::super::ClError;
use super::super::gemm::{Bias, Epilogue, Operand};
use super::super::ops::{BinaryOp, PoolMode, ReduceMode, UnaryOp, Window};
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

fn unsupported<T>(why: impl Into<String>) -> Result<T, NotPlanned> {
    Err(NotPlanned::Unsupported(why.into()))
}

type Planned = Result<Vec<usize>, NotPlanned>;

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for axis in (0..shape.len().saturating_sub(1)).rev() {
        strides[axis] = strides[axis + 1] * shape[axis + 1];
    }
    strides
}

fn output_shape(node: &TypedNode) -> Result<Vec<usize>, NotPlanned> {
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
        return matmul(b, node, einsum, inputs);
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
        return pool2d(b, node, &pool.pool_spec, PoolMode::Max, inputs);
    }
    if let Some(pool) = node.op_as::<SumPool>() {
        let mode = match (pool.normalize, pool.count_include_pad) {
            (false, _) => PoolMode::Sum,
            (true, true) => PoolMode::AverageWindow,
            (true, false) => PoolMode::AverageInside,
        };
        return pool2d(b, node, &pool.pool_spec, mode, inputs);
    }
    if let Some(op) = node.op_as::<Downsample>() {
        return downsample(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<Reduce>() {
        return reduce(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<Softmax>() {
        return softmax(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<TypedConcat>() {
        return concat(b, node, op, inputs);
    }
    if let Some(op) = node.op_as::<AxisOp>() {
        return axis_op(b, node, op, inputs);
    }
    unsupported("no OpenCL kernel for this operator")
}

/// An image batch's shape as NCHW: tract drops a batch axis of 1 (CHW).
fn nchw(shape: &[usize]) -> Option<[usize; 4]> {
    match *shape {
        [n, c, h, w] => Some([n, c, h, w]),
        [c, h, w] => Some([1, c, h, w]),
        _ => None,
    }
}

/// The 2-D window of a pooling or convolution over an NCHW input of `input` spatial size.
fn window(
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

/// An Einstein sum that is a (batched) matrix product: one contracted axis, the output's
/// trailing axes split into rows from one operand and columns from the other, each operand
/// holding its rows (or columns) and the contracted axis as its last axes, in either order
/// (the GEMM reads transposed operands), and any leading output axes looped over.
fn matmul(b: &mut Builder<'_, '_>, node: &TypedNode, op: &EinSum, inputs: &[usize]) -> Planned {
    if op.q_params.is_some() || inputs.len() != 2 || op.operating_dt != DatumType::F32 {
        return unsupported("not a single-precision product of two operands");
    }
    let out = output_shape(node)?;
    let shapes = [b.shape(inputs[0]).to_vec(), b.shape(inputs[1]).to_vec()];
    struct Ax {
        pos: [Option<usize>; 2],
        out: Option<usize>,
        size: usize,
    }
    let mut axes = Vec::new();
    for axis in op.axes.iter_all_axes() {
        if axis.inputs.iter().chain(&axis.outputs).any(|p| p.len() > 1) {
            return unsupported("an axis repeated in one operand");
        }
        let pos = [
            axis.inputs[0].first().copied(),
            axis.inputs[1].first().copied(),
        ];
        let out_pos = axis.outputs[0].first().copied();
        let size = match (out_pos, pos) {
            (Some(p), _) => out[p],
            (None, [Some(p), _]) => shapes[0][p],
            (None, [None, Some(p)]) => shapes[1][p],
            (None, [None, None]) => 1,
        };
        axes.push(Ax {
            pos,
            out: out_pos,
            size,
        });
    }
    let contracted: Vec<&Ax> = axes
        .iter()
        .filter(|a| a.out.is_none() && a.pos[0].is_some() && a.pos[1].is_some())
        .collect();
    if contracted.len() != 1 {
        return unsupported("not exactly one contracted axis");
    }
    if axes
        .iter()
        .any(|a| a.out.is_none() && a.size > 1 && (a.pos[0].is_none() || a.pos[1].is_none()))
    {
        return unsupported("an axis summed within one operand");
    }
    let k_axis = contracted[0];
    let kdim = k_axis.size;
    // Output axes in order, with the operand that alone holds each (None: both).
    if axes
        .iter()
        .any(|a| a.out.is_some() && a.pos == [None, None] && a.size > 1)
    {
        return unsupported("an output axis broadcast from neither operand");
    }
    // Output axes of size 1 that come from neither operand hold no stride: left out.
    let mut by_out: Vec<&Ax> = axes
        .iter()
        .filter(|a| a.out.is_some() && a.pos != [None, None])
        .collect();
    by_out.sort_by_key(|a| a.out);
    let owner = |a: &Ax| match a.pos {
        [Some(_), None] => Some(0),
        [None, Some(_)] => Some(1),
        _ => None,
    };
    let Some(y) = by_out.last().and_then(|a| owner(a)) else {
        return unsupported(format!(
            "the output's last axis is not from one operand ({})",
            op.axes
        ));
    };
    let x = 1 - y;
    let mut split = by_out.len();
    while split > 0 && owner(by_out[split - 1]) == Some(y) {
        split -= 1;
    }
    let columns: Vec<&Ax> = by_out[split..].to_vec();
    let mut row_start = split;
    while row_start > 0 && owner(by_out[row_start - 1]) == Some(x) {
        row_start -= 1;
    }
    let rows: Vec<&Ax> = by_out[row_start..split].to_vec();
    let loops: Vec<&Ax> = by_out[..row_start].to_vec();
    // Each operand must end with its block (rows or columns) and K, in one of two orders.
    // Axes of size 1 hold no stride: they are left out of the layout check unless they are
    // K or part of the block.
    let trailing = |operand: usize, block: &[&Ax]| -> Option<bool> {
        let k_full = k_axis.pos[operand]?;
        let block_full: Vec<usize> = block.iter().filter_map(|a| a.pos[operand]).collect();
        let kept: Vec<usize> = (0..shapes[operand].len())
            .filter(|&p| shapes[operand][p] != 1 || p == k_full || block_full.contains(&p))
            .collect();
        let at = |full: usize| kept.iter().position(|&p| p == full);
        let rank = kept.len();
        let k = at(k_full)?;
        let block_pos: Vec<usize> = block_full.iter().map(|&p| at(p)).collect::<Option<_>>()?;
        let n = block_pos.len();
        let consecutive = |start: usize| block_pos.iter().enumerate().all(|(i, &p)| p == start + i);
        if k + 1 == rank && (n == 0 || consecutive(rank - 1 - n)) {
            Some(false) // [.., block, K]
        } else if n > 0 && k + n + 1 == rank && consecutive(k + 1) {
            Some(true) // [.., K, block]
        } else {
            None
        }
    };
    let (Some(x_k_last), Some(y_k_last)) = (trailing(x, &rows), trailing(y, &columns)) else {
        return unsupported(format!("operands not laid out as matrices ({})", op.axes));
    };
    // A = X (M×K): trans_a when K comes first; B = Y (K×N): trans_b when K comes last.
    let trans_a = x_k_last;
    let trans_b = !y_k_last;
    let m: usize = rows.iter().map(|a| a.size).product();
    let n: usize = columns.iter().map(|a| a.size).product();
    let (lda, ldb) = (
        if trans_a { m } else { kdim },
        if trans_b { kdim } else { n },
    );
    let x_strides = strides(&shapes[x]);
    let y_strides = strides(&shapes[y]);
    let out_strides = strides(&out);
    let loop_axes: Vec<(usize, usize, usize, usize)> = loops
        .iter()
        .map(|a| {
            (
                a.size,
                a.pos[x].map_or(0, |p| x_strides[p]),
                a.pos[y].map_or(0, |p| y_strides[p]),
                out_strides[a.out.unwrap_or(0)],
            )
        })
        .collect();
    let gemm = b.gemm(
        (m, n),
        Epilogue {
            trans_a,
            trans_b,
            ..Epilogue::default()
        },
    )?;
    let a_buf = b.on_device(inputs[x])?;
    let b_buf = b.on_device(inputs[y])?;
    let (value, out_buf) = b.device_output(out);
    let count: usize = loop_axes.iter().map(|l| l.0).product();
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            for index in 0..count {
                let (mut rest, mut xo, mut yo, mut oo) = (index, 0, 0, 0);
                for &(size, xs, ys, os) in loop_axes.iter().rev() {
                    let coord = rest % size;
                    rest /= size;
                    xo += coord * xs;
                    yo += coord * ys;
                    oo += coord * os;
                }
                env.gemms[gemm].enqueue(
                    env.queue,
                    (m, n, kdim),
                    Operand::new(&env.buffers[a_buf], xo, lda),
                    Operand::new(&env.buffers[b_buf], yo, ldb),
                    None,
                    Operand::new(&env.buffers[out_buf], oo, n),
                )?;
            }
            Ok(())
        }),
    );
    Ok(vec![value])
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

fn pool2d(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    spec: &PoolSpec,
    mode: PoolMode,
    inputs: &[usize],
) -> Planned {
    let out = output_shape(node)?;
    let (Some(xs), Some(out_nchw)) = (nchw(b.shape(inputs[0])), nchw(&out)) else {
        return unsupported("only 2-D pooling over NCHW data");
    };
    let win = window(spec, (xs[2], xs[3]), (out_nchw[2], out_nchw[3]))?;
    let planes = xs[0] * xs[1];
    let x_buf = b.on_device(inputs[0])?;
    let (value, out_buf) = b.device_output(out);
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            env.ops.pool2d(
                env.queue,
                planes,
                &env.buffers[x_buf],
                &win,
                &env.buffers[out_buf],
                mode,
            )
        }),
    );
    Ok(vec![value])
}

/// Every `stride`-th element of one axis, from `modulo`: a strided copy.
fn downsample(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    op: &Downsample,
    inputs: &[usize],
) -> Planned {
    if op.stride <= 0 {
        return unsupported("a reversed downsampling");
    }
    let xs = b.shape(inputs[0]).to_vec();
    let out = output_shape(node)?;
    let mut view = strides(&xs);
    let offset = op.modulo * view[op.axis];
    view[op.axis] *= op.stride as usize;
    copy_view(b, node, inputs[0], out, offset, view)
}

/// Copies the view (`offset`, `view` strides) of `source` into a new contiguous tensor.
fn copy_view(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    source: usize,
    out: Vec<usize>,
    offset: usize,
    view: Vec<usize>,
) -> Planned {
    if out.len() > super::super::ops::MAX_RANK {
        return unsupported("more than 8 axes");
    }
    let x_buf = b.on_device(source)?;
    let out_strides = strides(&out);
    let (value, out_buf) = b.device_output(out.clone());
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            env.ops.copy(
                env.queue,
                &out,
                (&env.buffers[x_buf], offset, &view),
                (&env.buffers[out_buf], 0, &out_strides),
            )
        }),
    );
    Ok(vec![value])
}

/// `[outer, r, inner]` around the contiguous `axes` of `shape`, if they are contiguous.
fn around(shape: &[usize], axes: &[usize]) -> Option<(usize, usize, usize)> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    let first = *sorted.first()?;
    let last = *sorted.last()?;
    if last - first + 1 != sorted.len() || last >= shape.len() {
        return None;
    }
    Some((
        shape[..first].iter().product(),
        shape[first..=last].iter().product(),
        shape[last + 1..].iter().product(),
    ))
}

fn reduce(b: &mut Builder<'_, '_>, node: &TypedNode, op: &Reduce, inputs: &[usize]) -> Planned {
    let mode = match op.reducer {
        Reducer::Sum => ReduceMode::Sum,
        Reducer::Max => ReduceMode::Max,
        Reducer::Min => ReduceMode::Min,
        _ => return unsupported(format!("no kernel for {:?}", op.reducer)),
    };
    let Some(dims) = around(b.shape(inputs[0]), &op.axes) else {
        return unsupported("reduced axes that are not contiguous");
    };
    let out = output_shape(node)?;
    let x_buf = b.on_device(inputs[0])?;
    let (value, out_buf) = b.device_output(out);
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            env.ops.reduce(
                env.queue,
                dims,
                &env.buffers[x_buf],
                &env.buffers[out_buf],
                mode,
            )
        }),
    );
    Ok(vec![value])
}

fn softmax(b: &mut Builder<'_, '_>, node: &TypedNode, op: &Softmax, inputs: &[usize]) -> Planned {
    if op.quant_output_dt.is_some() {
        return unsupported("a quantized softmax");
    }
    let log = matches!(op.kind, SoftmaxKind::LogSoftmax);
    let Some(dims) = around(b.shape(inputs[0]), &op.axes) else {
        return unsupported("a softmax over axes that are not contiguous");
    };
    let out = output_shape(node)?;
    let x_buf = b.on_device(inputs[0])?;
    let (value, out_buf) = b.device_output(out);
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            env.ops.softmax(
                env.queue,
                dims,
                &env.buffers[x_buf],
                &env.buffers[out_buf],
                log,
            )
        }),
    );
    Ok(vec![value])
}

/// Each input copied into its slice of the output along the axis.
fn concat(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    op: &TypedConcat,
    inputs: &[usize],
) -> Planned {
    let out = output_shape(node)?;
    if out.len() > super::super::ops::MAX_RANK {
        return unsupported("more than 8 axes");
    }
    let out_strides = strides(&out);
    let mut parts = Vec::new();
    let mut offset = 0;
    for &input in inputs {
        let shape = b.shape(input).to_vec();
        let buffer = b.on_device(input)?;
        let along = shape[op.axis];
        parts.push((
            buffer,
            strides(&shape),
            shape,
            offset * out_strides[op.axis],
        ));
        offset += along;
    }
    let (value, out_buf) = b.device_output(out);
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            for (buffer, part_strides, shape, at) in &parts {
                env.ops.copy(
                    env.queue,
                    shape,
                    (&env.buffers[*buffer], 0, part_strides),
                    (&env.buffers[out_buf], *at, &out_strides),
                )?;
            }
            Ok(())
        }),
    );
    Ok(vec![value])
}

/// Adding, removing or regrouping axes changes no element's place: a view of the same
/// buffer. Moving an axis is a permuting copy.
fn axis_op(b: &mut Builder<'_, '_>, node: &TypedNode, op: &AxisOp, inputs: &[usize]) -> Planned {
    let out = output_shape(node)?;
    match op {
        AxisOp::Move(from, to) => {
            let xs = b.shape(inputs[0]).to_vec();
            let natural = strides(&xs);
            let mut order: Vec<usize> = (0..xs.len()).collect();
            let moved = order.remove(*from);
            order.insert(*to, moved);
            let view = order.iter().map(|&axis| natural[axis]).collect();
            copy_view(b, node, inputs[0], out, 0, view)
        }
        _ => {
            b.on_device(inputs[0])?;
            Ok(vec![b.view_of(inputs[0], out)])
        }
    }
}
