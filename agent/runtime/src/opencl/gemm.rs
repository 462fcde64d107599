//! Single-precision GEMM (`C = A·B`, row-major, optional bias and ReLU) as one OpenCL kernel
//! whose tiling is chosen per device (see `tune`). Matrix multiplications and convolutions
//! (as implicit matrices) of the OpenCL runtime run through it.

use std::fmt;
use std::str::FromStr;

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::event::Event;
use opencl3::kernel::{ExecuteKernel, Kernel};
use opencl3::types::cl_int;

use super::buffers::{DeviceBuffer, Precision};
use super::programs::Programs;
use super::{ClDevice, ClError, doing};

const SOURCE: &str = concat!(
    include_str!("kernels/storage.cl"),
    include_str!("kernels/gemm.cl")
);

/// The tiling of one GEMM kernel build. A work-group computes a `tsm`×`tsn` tile of C with
/// `(tsm/wptm)·(tsn/wptn)` work-items, each holding a `wptm`×`wptn` block in registers and
/// reading local memory in vectors of `vwm`/`vwn`; K is walked `tsk` at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmParams {
    pub tsm: usize,
    pub tsn: usize,
    pub tsk: usize,
    pub wptm: usize,
    pub wptn: usize,
    pub vwm: usize,
    pub vwn: usize,
    /// Read the next K tile into registers while the current one is multiplied.
    pub prefetch: bool,
}

impl GemmParams {
    pub fn threads(&self) -> usize {
        (self.tsm / self.wptm) * (self.tsn / self.wptn)
    }

    fn local_memory_bytes(&self) -> u64 {
        (self.tsk * ((self.tsm + self.vwm) + (self.tsn + self.vwn)) * 4) as u64
    }

    /// Whether this tiling is well formed and fits `device`; `Err` says why not.
    pub fn check(&self, device: &ClDevice) -> Result<(), String> {
        let GemmParams {
            tsm,
            tsn,
            tsk,
            wptm,
            wptn,
            vwm,
            vwn,
            ..
        } = *self;
        if ![1, 2, 4].contains(&vwm) || ![1, 2, 4].contains(&vwn) {
            return Err(format!("{self}: vector widths must be 1, 2 or 4"));
        }
        if tsk == 0 || wptm == 0 || wptn == 0 || tsm % wptm != 0 || tsn % wptn != 0 {
            return Err(format!(
                "{self}: tiles must be multiples of the work per item"
            ));
        }
        if wptm % vwm != 0 || wptn % vwn != 0 {
            return Err(format!(
                "{self}: work per item must be a multiple of the vector width"
            ));
        }
        let threads = self.threads();
        if (tsm * tsk) % threads != 0 || (tsn * tsk) % threads != 0 {
            return Err(format!(
                "{self}: a tile must load evenly over {threads} work-items"
            ));
        }
        if threads > device.max_work_group_size {
            return Err(format!(
                "{self}: {threads} work-items exceed the device's {}",
                device.max_work_group_size
            ));
        }
        if self.local_memory_bytes() > device.local_memory_bytes {
            return Err(format!(
                "{self}: {} bytes of local memory exceed the device's {}",
                self.local_memory_bytes(),
                device.local_memory_bytes
            ));
        }
        Ok(())
    }

    fn build_options(&self, epilogue: Epilogue, precision: Precision, guarded: bool) -> String {
        let mut options = format!(
            "-cl-mad-enable -cl-fast-relaxed-math -D TSM={} -D TSN={} -D TSK={} -D WPTM={} -D WPTN={} -D VWM={} -D VWN={}",
            self.tsm, self.tsn, self.tsk, self.wptm, self.wptn, self.vwm, self.vwn
        );
        for (on, flag) in [
            (self.prefetch, "PREFETCH"),
            (guarded, "GUARDED"),
            (epilogue.trans_a, "TRANS_A"),
            (epilogue.trans_b, "TRANS_B"),
            (epilogue.bias == Bias::Columns, "BIAS_N"),
            (epilogue.bias == Bias::Rows, "BIAS_M"),
            (epilogue.relu, "RELU"),
            (precision == Precision::Fp16, "HALF"),
        ] {
            if on {
                options.push_str(" -D ");
                options.push_str(flag);
            }
        }
        options
    }
}

/// `tsm=128 tsn=128 tsk=16 wptm=8 wptn=8 vwm=4 vwn=4 prefetch=1`: how tunings are logged and
/// cached.
impl fmt::Display for GemmParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tsm={} tsn={} tsk={} wptm={} wptn={} vwm={} vwn={} prefetch={}",
            self.tsm,
            self.tsn,
            self.tsk,
            self.wptm,
            self.wptn,
            self.vwm,
            self.vwn,
            u8::from(self.prefetch)
        )
    }
}

impl FromStr for GemmParams {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut values = [None; 8];
        const KEYS: [&str; 8] = [
            "tsm", "tsn", "tsk", "wptm", "wptn", "vwm", "vwn", "prefetch",
        ];
        for pair in text.split_whitespace() {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let slot = KEYS
                .iter()
                .position(|k| *k == key)
                .ok_or_else(|| format!("unknown GEMM parameter `{key}`"))?;
            values[slot] = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("{key}: `{value}` is not a number"))?,
            );
        }
        let get =
            |i: usize| values[i].ok_or_else(|| format!("missing GEMM parameter `{}`", KEYS[i]));
        Ok(GemmParams {
            tsm: get(0)?,
            tsn: get(1)?,
            tsk: get(2)?,
            wptm: get(3)?,
            wptn: get(4)?,
            vwm: get(5)?,
            vwn: get(6)?,
            prefetch: get(7)? != 0,
        })
    }
}

/// How a GEMM build reads its operands and what it does to each result before storing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Epilogue {
    /// A is stored K×M (rows `lda` apart), not M×K.
    pub trans_a: bool,
    /// B is stored N×K, not K×N.
    pub trans_b: bool,
    pub bias: Bias,
    /// Then `max(0, ·)`.
    pub relu: bool,
}

/// Which bias a GEMM build adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Bias {
    #[default]
    None,
    /// `bias[m]` to row m (a convolution's output channel).
    Rows,
    /// `bias[n]` to column n (a dense layer's unit).
    Columns,
}

/// A matrix operand: a buffer, the offset of its first element and the distance between its
/// rows (as stored), in elements.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    pub buffer: &'a DeviceBuffer,
    pub offset: usize,
    pub stride: usize,
}

impl<'a> Operand<'a> {
    pub fn new(buffer: &'a DeviceBuffer, offset: usize, stride: usize) -> Self {
        Operand {
            buffer,
            offset,
            stride,
        }
    }
}

/// A GEMM kernel built for one device: one build for sizes that are multiples of the tiles and
/// one that checks its bounds, for the rest.
#[derive(Debug)]
pub struct Gemm {
    pub params: GemmParams,
    pub epilogue: Epilogue,
    /// How the operands are stored (the sums are single precision either way).
    pub precision: Precision,
    exact: Kernel,
    guarded: Kernel,
}

impl Gemm {
    pub fn build(
        context: &Context,
        device: &ClDevice,
        params: GemmParams,
        epilogue: Epilogue,
        precision: Precision,
        programs: &Programs,
    ) -> Result<Self, ClError> {
        params.check(device).map_err(ClError::Invalid)?;
        let kernel = |guarded: bool| -> Result<Kernel, ClError> {
            let options = params.build_options(epilogue, precision, guarded);
            let program = programs.build(
                context,
                device,
                SOURCE,
                &options,
                &format!("GEMM ({params})"),
            )?;
            Kernel::create(&program, "sgemm").map_err(doing("creating the GEMM kernel"))
        };
        Ok(Gemm {
            params,
            epilogue,
            precision,
            exact: kernel(false)?,
            guarded: kernel(true)?,
        })
    }

    /// Enqueues `C[m×n] = A·B` (+ bias, ReLU as built), A being m×k and B k×n as the build
    /// reads them. Returns the kernel's event (profiled when the queue is).
    pub fn enqueue(
        &self,
        queue: &CommandQueue,
        (m, n, k): (usize, usize, usize),
        a: Operand<'_>,
        b: Operand<'_>,
        bias: Option<Operand<'_>>,
        c: Operand<'_>,
    ) -> Result<Event, ClError> {
        let e = &self.epilogue;
        if bias.is_some() != (e.bias != Bias::None) {
            return Err(ClError::Invalid(
                "a bias must be given exactly when the kernel was built with one".into(),
            ));
        }
        let (a_row, b_row) = (if e.trans_a { m } else { k }, if e.trans_b { k } else { n });
        if a.stride < a_row || b.stride < b_row || c.stride < n {
            return Err(ClError::Invalid(format!(
                "row strides {}, {}, {} are shorter than the rows ({a_row}, {b_row}, {n})",
                a.stride, b.stride, c.stride
            )));
        }
        if m == 0 || n == 0 {
            return Err(ClError::Invalid("an empty GEMM".into()));
        }
        let p = &self.params;
        let exact = m % p.tsm == 0 && n % p.tsn == 0 && k % p.tsk == 0;
        let kernel = if exact { &self.exact } else { &self.guarded };
        let int = |x: usize| -> Result<cl_int, ClError> {
            cl_int::try_from(x)
                .map_err(|_| ClError::Invalid(format!("{x} exceeds a GEMM dimension")))
        };
        let sizes = [int(m)?, int(n)?, int(k)?];
        let a_args = [int(a.offset)?, int(a.stride)?];
        let b_args = [int(b.offset)?, int(b.stride)?];
        let c_args = [int(c.offset)?, int(c.stride)?];
        let bias_offset = int(bias.map_or(0, |b| b.offset))?;
        let mut exec = ExecuteKernel::new(kernel);
        // SAFETY: the arguments match the kernel's signature in order and type (ints, and
        // buffers of the precision it was built for), and the sizes bound every access the
        // kernel makes.
        unsafe {
            exec.set_arg(&sizes[0])
                .set_arg(&sizes[1])
                .set_arg(&sizes[2])
                .set_arg(a.buffer)
                .set_arg(&a_args[0])
                .set_arg(&a_args[1])
                .set_arg(b.buffer)
                .set_arg(&b_args[0])
                .set_arg(&b_args[1]);
            if let Some(bias) = bias {
                exec.set_arg(bias.buffer).set_arg(&bias_offset);
            }
            exec.set_arg(c.buffer)
                .set_arg(&c_args[0])
                .set_arg(&c_args[1]);
        }
        let (rtsm, rtsn) = (p.tsm / p.wptm, p.tsn / p.wptn);
        exec.set_global_work_sizes(&[n.div_ceil(p.tsn) * rtsn, m.div_ceil(p.tsm) * rtsm])
            .set_local_work_sizes(&[rtsn, rtsm]);
        // SAFETY: the buffers outlive the call and the queue orders later uses after it.
        unsafe { exec.enqueue_nd_range(queue) }.map_err(doing("running the GEMM kernel"))
    }
}
