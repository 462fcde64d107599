//! Choosing a GEMM tiling per device: every candidate that fits is built and timed on the
//! device, the fastest that also computes correctly wins, and the choice is kept in a file
//! keyed by device and driver, so tuning happens once per device (CLBlast's approach, with a
//! short candidate list instead of a search).

use std::fs;
use std::path::{Path, PathBuf};

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;

use super::buffers::{
    Precision, download, max_relative_error, pseudo_random, reference, scratch, stored, upload,
};
use super::gemm::Epilogue;
use super::programs::Programs;
use super::{ClDevice, ClError, Gemm, GemmParams, Operand, doing};

/// The tilings tried, largest first: big register blocks suit GPUs, small ones CPUs and
/// devices with little local memory.
const CANDIDATES: &[GemmParams] = &[
    tiling(256, 128, 16, 16, 8, 4, 4, true),
    tiling(128, 256, 16, 8, 16, 4, 4, true),
    tiling(128, 128, 16, 8, 8, 4, 4, true),
    tiling(128, 128, 16, 8, 8, 4, 4, false),
    tiling(128, 128, 8, 8, 8, 4, 4, true),
    tiling(128, 128, 32, 8, 8, 4, 4, true),
    tiling(128, 128, 16, 8, 8, 1, 1, true),
    tiling(128, 64, 16, 8, 4, 4, 4, true),
    tiling(64, 128, 16, 4, 8, 4, 4, true),
    tiling(64, 64, 16, 4, 4, 4, 4, true),
    tiling(64, 64, 16, 8, 8, 4, 4, false),
    tiling(64, 64, 8, 4, 4, 2, 2, false),
    tiling(32, 32, 16, 4, 4, 4, 4, false),
    tiling(32, 32, 8, 2, 2, 1, 1, false),
    tiling(16, 16, 16, 2, 2, 2, 2, false),
];

#[allow(clippy::too_many_arguments)]
const fn tiling(
    tsm: usize,
    tsn: usize,
    tsk: usize,
    wptm: usize,
    wptn: usize,
    vwm: usize,
    vwn: usize,
    prefetch: bool,
) -> GemmParams {
    GemmParams {
        tsm,
        tsn,
        tsk,
        wptm,
        wptn,
        vwm,
        vwn,
        prefetch,
    }
}

/// The candidate tilings that fit `device`.
pub fn candidates(device: &ClDevice) -> Vec<GemmParams> {
    CANDIDATES
        .iter()
        .copied()
        .filter(|p| p.check(device).is_ok())
        .collect()
}

/// The outcome of tuning: the tiling chosen and what it reached at the tuning size.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmTuning {
    pub params: GemmParams,
    pub gflops: f64,
    /// Every candidate timed and found correct, with its GFLOP/s (for the benchmark's report).
    pub tried: Vec<(GemmParams, f64)>,
    /// Candidates that did not build or computed wrongly, with the reason (a driver's bug
    /// shows here rather than in answers).
    pub rejected: Vec<String>,
}

/// Times every candidate on `size`³ and returns the fastest one whose results match a CPU
/// reference (bounds-checked build included).
pub fn tune_gemm(
    context: &Context,
    queue: &CommandQueue,
    device: &ClDevice,
    size: usize,
    programs: &Programs,
) -> Result<GemmTuning, ClError> {
    let a = pseudo_random(size * size, 1);
    let b = pseudo_random(size * size, 2);
    let single = Precision::Fp32;
    let a_buf = upload(context, queue, &a, single)?;
    let b_buf = upload(context, queue, &b, single)?;
    let c_buf = scratch(context, size * size, single)?;
    let mut tried = Vec::new();
    let mut rejected = Vec::new();
    for params in candidates(device) {
        let built = Gemm::build(
            context,
            device,
            params,
            Epilogue::default(),
            single,
            programs,
        );
        let gemm = match built {
            Ok(gemm) => gemm,
            Err(err) => {
                rejected.push(err.to_string());
                continue;
            }
        };
        let mut best = f64::MAX;
        for _ in 0..3 {
            let event = gemm.enqueue(
                queue,
                (size, size, size),
                Operand::new(&a_buf, 0, size),
                Operand::new(&b_buf, 0, size),
                None,
                Operand::new(&c_buf, 0, size),
            )?;
            event.wait().map_err(doing("waiting for the GEMM kernel"))?;
            let ns = event
                .profiling_command_end()
                .and_then(|end| Ok(end - event.profiling_command_start()?))
                .map_err(doing("reading the GEMM kernel's time"))?;
            best = best.min(ns as f64);
        }
        let gflops = 2.0 * (size as f64).powi(3) / best;
        match verify(context, queue, &gemm) {
            Ok(()) => tried.push((params, gflops)),
            Err(why) => rejected.push(why),
        }
    }
    let (params, gflops) = tried
        .iter()
        .copied()
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .ok_or_else(|| {
            ClError::Invalid(format!(
                "no GEMM tiling builds and computes correctly on {}: {}",
                device.label(),
                rejected.join("; ")
            ))
        })?;
    Ok(GemmTuning {
        params,
        gflops,
        tried,
        rejected,
    })
}

/// Shapes every tiling is checked on: 1×1×1, single rows and columns, sizes one off the tiles
/// (the bounds-checked build) and exact multiples of them (the unguarded one).
pub fn verification_shapes(p: &GemmParams) -> [(usize, usize, usize); 6] {
    [
        (1, 1, 1),
        (1, 7, 5),
        (9, 1, 300),
        (67, 45, 33),
        (p.tsm + 1, p.tsn - 1, p.tsk + 3),
        (p.tsm * 2, p.tsn, p.tsk * 4),
    ]
}

/// Checks a built GEMM against a plain CPU product on [`verification_shapes`]; `Err` names
/// the shape and the error.
pub fn verify(context: &Context, queue: &CommandQueue, gemm: &Gemm) -> Result<(), String> {
    let p = gemm.params;
    let precision = gemm.precision;
    for (m, n, k) in verification_shapes(&p) {
        // The operands as the device stores them, so that only the kernel's error shows.
        let a = stored(&pseudo_random(m * k, 3), precision);
        let b = stored(&pseudo_random(k * n, 4), precision);
        let expected = reference(&a, &b, m, n, k);
        let run = || -> Result<Vec<f32>, ClError> {
            let a_buf = upload(context, queue, &a, precision)?;
            let b_buf = upload(context, queue, &b, precision)?;
            let c_buf = scratch(context, m * n, precision)?;
            gemm.enqueue(
                queue,
                (m, n, k),
                Operand::new(&a_buf, 0, k),
                Operand::new(&b_buf, 0, n),
                None,
                Operand::new(&c_buf, 0, n),
            )?;
            download(queue, &c_buf, m * n, precision)
        };
        let actual = run().map_err(|e| e.to_string())?;
        let worst = max_relative_error(&expected, &actual);
        if worst > verify_tolerance(precision) {
            return Err(format!("{p}: off by {worst:e} on {m}×{n}×{k}"));
        }
    }
    Ok(())
}

/// Largest relative error a tiling may show against the f64 reference: single-precision sums
/// of up to a few hundred products, reordered by the tiling.
pub const VERIFY_TOLERANCE: f32 = 1e-4;

/// [`VERIFY_TOLERANCE`], or for results stored in half precision its rounding (2⁻¹¹) with a
/// margin.
pub fn verify_tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::Fp32 => VERIFY_TOLERANCE,
        Precision::Fp16 => 1e-3,
    }
}

/// Tuned tilings kept on disk, one file per device and driver version.
#[derive(Debug, Clone)]
pub struct TuneCache {
    dir: PathBuf,
}

impl TuneCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        TuneCache { dir: dir.into() }
    }

    fn path(&self, device: &ClDevice) -> PathBuf {
        let info = &device.info;
        let key: String = format!("{}-{}-{}", info.platform, info.name, info.driver_version)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.dir.join(format!("gemm-{key}.txt"))
    }

    /// The tiling tuned earlier for this device and driver, if any (an unreadable or
    /// damaged file counts as none: tuning again is always safe).
    pub fn load(&self, device: &ClDevice) -> Option<GemmParams> {
        let text = fs::read_to_string(self.path(device)).ok()?;
        let params: GemmParams = text.lines().next()?.parse().ok()?;
        params.check(device).ok().map(|()| params)
    }

    /// Keeps a tuning (written to a temporary file, then renamed over the old one).
    pub fn store(&self, device: &ClDevice, tuning: &GemmTuning) -> Result<(), String> {
        let path = self.path(device);
        write_atomically(
            &path,
            &format!(
                "{}\n# {:.1} GFLOP/s when tuned\n",
                tuning.params, tuning.gflops
            ),
        )
        .map_err(|e| format!("keeping the GEMM tuning in {}: {e}", path.display()))
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, text)?;
    fs::rename(&temporary, path)
}
