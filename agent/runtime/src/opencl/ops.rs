//! Host side of the operators in `kernels/ops.cl`: one program per context, its kernels, and
//! a typed call per operator that sets the arguments and enqueues it.

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::kernel::{ExecuteKernel, Kernel};
use opencl3::types::{cl_float, cl_int};

use super::buffers::{DeviceBuffer, Precision};
use super::programs::Programs;
use super::{ClDevice, ClError, doing};

const SOURCE: &str = concat!(
    include_str!("kernels/storage.cl"),
    include_str!("kernels/ops.cl")
);

/// Axes a shape may have on the device (the kernels take shapes as `int8`).
pub const MAX_RANK: usize = 8;

/// Work-items per work-group for the one-dimensional kernels.
const GROUP: usize = 64;

/// Binary element-wise operators, numbered as `binary` in ops.cl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add = 0,
    Sub = 1,
    Mul = 2,
    Div = 3,
    Max = 4,
    Min = 5,
    Pow = 6,
}

/// Unary element-wise operators, numbered as `unary` in ops.cl.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    Abs,
    Neg,
    Sqrt,
    Recip,
    Clip(f32, f32),
    Ln,
    Erf,
    Floor,
    Ceil,
    Square,
}

impl UnaryOp {
    fn code(self) -> (cl_int, cl_float, cl_float) {
        match self {
            UnaryOp::Relu => (0, 0.0, 0.0),
            UnaryOp::Sigmoid => (1, 0.0, 0.0),
            UnaryOp::Tanh => (2, 0.0, 0.0),
            UnaryOp::Exp => (3, 0.0, 0.0),
            UnaryOp::Abs => (4, 0.0, 0.0),
            UnaryOp::Neg => (5, 0.0, 0.0),
            UnaryOp::Sqrt => (6, 0.0, 0.0),
            UnaryOp::Recip => (7, 0.0, 0.0),
            UnaryOp::Clip(lo, hi) => (8, lo, hi),
            UnaryOp::Ln => (9, 0.0, 0.0),
            UnaryOp::Erf => (10, 0.0, 0.0),
            UnaryOp::Floor => (11, 0.0, 0.0),
            UnaryOp::Ceil => (12, 0.0, 0.0),
            UnaryOp::Square => (13, 0.0, 0.0),
        }
    }
}

/// Pooling modes of `pool2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Max = 0,
    Sum = 1,
    /// Average over the window's cells inside the image.
    AverageInside = 2,
    /// Average over the whole window, padding counted.
    AverageWindow = 3,
}

/// Reductions of `reduce_mid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceMode {
    Sum = 0,
    Max = 1,
    Min = 2,
    Mean = 3,
}

/// The geometry of a 2-D window over NCHW planes: kernel, strides, padding before, dilations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub input: (usize, usize),
    pub kernel: (usize, usize),
    pub strides: (usize, usize),
    pub padding: (usize, usize),
    pub dilations: (usize, usize),
    pub output: (usize, usize),
}

/// Up to eight sizes or strides, padded, as the kernels' `int8`.
pub type Int8 = [cl_int; MAX_RANK];

/// Pads `values` on the left to eight entries with `fill` (leading axes of size 1).
pub fn int8(values: &[usize], fill: usize) -> Result<Int8, ClError> {
    if values.len() > MAX_RANK {
        return Err(ClError::Invalid(format!(
            "{} axes: the OpenCL kernels take at most {MAX_RANK}",
            values.len()
        )));
    }
    let mut out = [fill as cl_int; MAX_RANK];
    for (slot, &value) in out[MAX_RANK - values.len()..].iter_mut().zip(values) {
        *slot = int(value)?;
    }
    Ok(out)
}

pub fn int(value: usize) -> Result<cl_int, ClError> {
    cl_int::try_from(value).map_err(|_| ClError::Invalid(format!("{value} exceeds an int")))
}

/// The operator kernels, built once per context. `Kernel` objects are not shareable between
/// threads while their arguments are set: the owner serialises calls.
#[derive(Debug)]
pub struct Ops {
    binary: Kernel,
    unary: Kernel,
    copy_nd: Kernel,
    im2col: Kernel,
    pool2d: Kernel,
    reduce_mid: Kernel,
    softmax_mid: Kernel,
}

fn launch(exec: &mut ExecuteKernel<'_>, queue: &CommandQueue, items: usize) -> Result<(), ClError> {
    exec.set_global_work_size(items.div_ceil(GROUP).max(1) * GROUP)
        .set_local_work_size(GROUP);
    // SAFETY: every kernel checks its index against its element count, and the buffers
    // outlive the in-order queue's use of them (the plan owns them).
    unsafe { exec.enqueue_nd_range(queue) }
        .map(drop)
        .map_err(doing("running an OpenCL operator"))
}

impl Ops {
    pub fn build(
        context: &Context,
        device: &ClDevice,
        precision: Precision,
        programs: &Programs,
    ) -> Result<Self, ClError> {
        let options = match precision {
            Precision::Fp32 => "-cl-fast-relaxed-math",
            Precision::Fp16 => "-cl-fast-relaxed-math -D HALF",
        };
        let program = programs.build(context, device, SOURCE, options, "the operators")?;
        let kernel = |name: &str| {
            Kernel::create(&program, name).map_err(doing(format!("creating kernel {name}")))
        };
        Ok(Ops {
            binary: kernel("binary")?,
            unary: kernel("unary")?,
            copy_nd: kernel("copy_nd")?,
            im2col: kernel("im2col")?,
            pool2d: kernel("pool2d")?,
            reduce_mid: kernel("reduce_mid")?,
            softmax_mid: kernel("softmax_mid")?,
        })
    }

    /// `out = a OP b` over `shape`, the operands read through strides (0 where broadcast).
    #[allow(clippy::too_many_arguments)]
    pub fn binary(
        &self,
        queue: &CommandQueue,
        op: BinaryOp,
        shape: &[usize],
        (a, a_off, a_strides): (&DeviceBuffer, usize, &[usize]),
        (b, b_off, b_strides): (&DeviceBuffer, usize, &[usize]),
        out: &DeviceBuffer,
    ) -> Result<(), ClError> {
        let count: usize = shape.iter().product();
        let args = (
            int(count)?,
            int8(shape, 1)?,
            int8(a_strides, 0)?,
            int8(b_strides, 0)?,
            int(a_off)?,
            int(b_off)?,
            op as cl_int,
        );
        let mut exec = ExecuteKernel::new(&self.binary);
        // SAFETY: arguments in the kernel's order and types (int, int8 ×3, buffers, ints).
        unsafe {
            exec.set_arg(&args.0)
                .set_arg(&args.1)
                .set_arg(&args.2)
                .set_arg(&args.3)
                .set_arg(a)
                .set_arg(&args.4)
                .set_arg(b)
                .set_arg(&args.5)
                .set_arg(out)
                .set_arg(&args.6);
        }
        launch(&mut exec, queue, count)
    }

    pub fn unary(
        &self,
        queue: &CommandQueue,
        op: UnaryOp,
        count: usize,
        x: &DeviceBuffer,
        out: &DeviceBuffer,
    ) -> Result<(), ClError> {
        let n = int(count)?;
        let (code, lo, hi) = op.code();
        let mut exec = ExecuteKernel::new(&self.unary);
        // SAFETY: arguments in the kernel's order and types.
        unsafe {
            exec.set_arg(&n)
                .set_arg(x)
                .set_arg(out)
                .set_arg(&code)
                .set_arg(&lo)
                .set_arg(&hi);
        }
        launch(&mut exec, queue, count)
    }

    /// Copies the view `(x, off, strides)` of `shape` into `out` at `out_off` with
    /// `out_strides` (a contiguous tensor, or a slice of one).
    pub fn copy(
        &self,
        queue: &CommandQueue,
        shape: &[usize],
        (x, off, strides): (&DeviceBuffer, usize, &[usize]),
        (out, out_off, out_strides): (&DeviceBuffer, usize, &[usize]),
    ) -> Result<(), ClError> {
        let count: usize = shape.iter().product();
        let args = (
            int(count)?,
            int8(shape, 1)?,
            int8(strides, 0)?,
            int(off)?,
            int8(out_strides, 0)?,
            int(out_off)?,
        );
        let mut exec = ExecuteKernel::new(&self.copy_nd);
        // SAFETY: arguments in the kernel's order and types.
        unsafe {
            exec.set_arg(&args.0)
                .set_arg(&args.1)
                .set_arg(&args.2)
                .set_arg(x)
                .set_arg(&args.3)
                .set_arg(out)
                .set_arg(&args.4)
                .set_arg(&args.5);
        }
        launch(&mut exec, queue, count)
    }

    /// Unfolds `channels` planes of one image, starting at `x_off`, into `col`
    /// (`channels·KH·KW` rows of `OH·OW`).
    pub fn im2col(
        &self,
        queue: &CommandQueue,
        (x, x_off): (&DeviceBuffer, usize),
        channels: usize,
        w: &Window,
        col: &DeviceBuffer,
    ) -> Result<(), ClError> {
        let ints = [
            int(x_off)?,
            int(w.input.0)?,
            int(w.input.1)?,
            int(channels)?,
            int(w.kernel.0)?,
            int(w.kernel.1)?,
            int(w.strides.0)?,
            int(w.strides.1)?,
            int(w.padding.0)?,
            int(w.padding.1)?,
            int(w.dilations.0)?,
            int(w.dilations.1)?,
            int(w.output.0)?,
            int(w.output.1)?,
        ];
        let mut exec = ExecuteKernel::new(&self.im2col);
        // SAFETY: arguments in the kernel's order and types.
        unsafe {
            exec.set_arg(x);
            for value in &ints {
                exec.set_arg(value);
            }
            exec.set_arg(col);
        }
        let points = w.output.0 * w.output.1;
        let rows = channels * w.kernel.0 * w.kernel.1;
        exec.set_global_work_sizes(&[points.div_ceil(16) * 16, rows.div_ceil(4) * 4])
            .set_local_work_sizes(&[16, 4]);
        // SAFETY: the kernel checks both indices against the sizes.
        unsafe { exec.enqueue_nd_range(queue) }
            .map(drop)
            .map_err(doing("running im2col"))
    }

    pub fn pool2d(
        &self,
        queue: &CommandQueue,
        planes: usize,
        x: &DeviceBuffer,
        w: &Window,
        out: &DeviceBuffer,
        mode: PoolMode,
    ) -> Result<(), ClError> {
        let ints = [
            int(w.input.0)?,
            int(w.input.1)?,
            int(w.kernel.0)?,
            int(w.kernel.1)?,
            int(w.strides.0)?,
            int(w.strides.1)?,
            int(w.padding.0)?,
            int(w.padding.1)?,
            int(w.dilations.0)?,
            int(w.dilations.1)?,
            int(w.output.0)?,
            int(w.output.1)?,
        ];
        let (planes_arg, mode_arg) = (int(planes)?, mode as cl_int);
        let mut exec = ExecuteKernel::new(&self.pool2d);
        // SAFETY: arguments in the kernel's order and types.
        unsafe {
            exec.set_arg(&planes_arg).set_arg(x);
            for value in &ints {
                exec.set_arg(value);
            }
            exec.set_arg(out).set_arg(&mode_arg);
        }
        launch(&mut exec, queue, planes * w.output.0 * w.output.1)
    }

    /// Reduces the middle axis of `[outer, r, inner]`.
    pub fn reduce(
        &self,
        queue: &CommandQueue,
        (outer, r, inner): (usize, usize, usize),
        x: &DeviceBuffer,
        out: &DeviceBuffer,
        mode: ReduceMode,
    ) -> Result<(), ClError> {
        let args = [int(outer)?, int(r)?, int(inner)?, mode as cl_int];
        let mut exec = ExecuteKernel::new(&self.reduce_mid);
        // SAFETY: arguments in the kernel's order and types.
        unsafe {
            exec.set_arg(&args[0])
                .set_arg(&args[1])
                .set_arg(&args[2])
                .set_arg(x)
                .set_arg(out)
                .set_arg(&args[3]);
        }
        launch(&mut exec, queue, outer * inner)
    }

    /// Softmax (or log-softmax) along the middle axis of `[outer, r, inner]`.
    pub fn softmax(
        &self,
        queue: &CommandQueue,
        (outer, r, inner): (usize, usize, usize),
        x: &DeviceBuffer,
        out: &DeviceBuffer,
        log: bool,
    ) -> Result<(), ClError> {
        let args = [int(outer)?, int(r)?, int(inner)?, cl_int::from(log)];
        let mut exec = ExecuteKernel::new(&self.softmax_mid);
        // SAFETY: arguments in the kernel's order and types.
        unsafe {
            exec.set_arg(&args[0])
                .set_arg(&args[1])
                .set_arg(&args[2])
                .set_arg(x)
                .set_arg(out)
                .set_arg(&args[3]);
        }
        launch(&mut exec, queue, outer * inner)
    }
}
