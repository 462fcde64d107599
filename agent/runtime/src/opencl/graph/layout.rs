//! Pooling, reductions, softmax, and the operators that move elements (concatenation,
//! strided slices, axis moves) or only relabel them (reshapes, as views).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::PoolSpec;
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, Softmax, SoftmaxKind};

use super::super::ClError;
use super::super::buffers::DeviceBuffer;
use super::super::ops::{PoolMode, ReduceMode};
use super::nodes::{Planned, nchw, output_shape, strides, unsupported, window};
use super::{Builder, Env};

pub(super) fn pool2d(
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
pub(super) fn downsample(
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

pub(super) fn reduce(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    op: &Reduce,
    inputs: &[usize],
) -> Planned {
    let mode = match op.reducer {
        Reducer::Sum => ReduceMode::Sum,
        Reducer::Max => ReduceMode::Max,
        Reducer::Min => ReduceMode::Min,
        _ => return unsupported(format!("no kernel for {:?}", op.reducer)),
    };
    along_axes(
        b,
        node,
        inputs[0],
        &op.axes,
        "reduced",
        move |env, dims, x, out| env.ops.reduce(env.queue, dims, x, out, mode),
    )
}

pub(super) fn softmax(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    op: &Softmax,
    inputs: &[usize],
) -> Planned {
    if op.quant_output_dt.is_some() {
        return unsupported("a quantized softmax");
    }
    let log = matches!(op.kind, SoftmaxKind::LogSoftmax);
    along_axes(
        b,
        node,
        inputs[0],
        &op.axes,
        "softmax",
        move |env, dims, x, out| env.ops.softmax(env.queue, dims, x, out, log),
    )
}

/// A kernel over `[outer, r, inner]` around contiguous `axes` of the input (a reduction or a
/// softmax), into a new output.
fn along_axes(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    input: usize,
    axes: &[usize],
    what: &str,
    kernel: impl Fn(
        &mut Env<'_>,
        (usize, usize, usize),
        &DeviceBuffer,
        &DeviceBuffer,
    ) -> Result<(), ClError>
    + Send
    + Sync
    + 'static,
) -> Planned {
    let Some(dims) = around(b.shape(input), axes) else {
        return unsupported(format!("{what} axes that are not contiguous"));
    };
    let out = output_shape(node)?;
    let x_buf = b.on_device(input)?;
    let (value, out_buf) = b.device_output(out);
    b.push(
        node.name.clone(),
        Box::new(move |env: &mut Env<'_>| {
            let (x, out) = (env.buffers[x_buf].clone(), env.buffers[out_buf].clone());
            kernel(env, dims, &x, &out)
        }),
    );
    Ok(vec![value])
}

/// Each input copied into its slice of the output along the axis.
pub(super) fn concat(
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
pub(super) fn axis_op(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    op: &AxisOp,
    inputs: &[usize],
) -> Planned {
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
