//! Matrix products (tract's `EinSum`) as batched GEMMs on the device.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use super::super::gemm::{Epilogue, Operand};
use super::nodes::{Planned, output_shape, strides, unsupported};
use super::{Builder, Env};

/// An Einstein sum that is a (batched) matrix product: one contracted axis, the output's
/// trailing axes split into rows from one operand and columns from the other, each operand
/// holding its rows (or columns) and the contracted axis as its last axes, in either order
/// (the GEMM reads transposed operands), and any leading output axes looped over.
pub(super) fn matmul(
    b: &mut Builder<'_, '_>,
    node: &TypedNode,
    op: &EinSum,
    inputs: &[usize],
) -> Planned {
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
