//! Moving host data to and from device buffers (stored in single or half precision), and the
//! CPU reference that kernels are checked against.

use std::ptr;

use half::f16;
use half::slice::HalfFloatSliceExt;
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::memory::{Buffer, CL_MEM_READ_WRITE, ClMem};
use opencl3::types::CL_BLOCKING;

pub use edgeship_domain::Precision;

use super::{ClError, doing};

/// Device memory holding a tensor stored at one [`Precision`]: the kernels built for that
/// precision know the element type, Rust sees bytes.
pub type DeviceBuffer = Buffer<u8>;

/// A device buffer holding `data`, stored at `precision`.
pub fn upload(
    context: &Context,
    queue: &CommandQueue,
    data: &[f32],
    precision: Precision,
) -> Result<DeviceBuffer, ClError> {
    let buffer = scratch(context, data.len(), precision)?;
    write(queue, &buffer, data, precision)?;
    Ok(buffer)
}

/// An uninitialised device buffer of `len` elements at `precision`.
pub fn scratch(
    context: &Context,
    len: usize,
    precision: Precision,
) -> Result<DeviceBuffer, ClError> {
    let bytes = len.max(1) * precision.bytes();
    // SAFETY: no host pointer is given; the size is in bytes, the buffer's element type.
    unsafe { Buffer::<u8>::create(context, CL_MEM_READ_WRITE, bytes, ptr::null_mut()) }.map_err(
        doing(format!("allocating {len} {precision} values on the device")),
    )
}

/// Writes `data` (converted to `precision`) to the start of `buffer`, blocking until done.
pub fn write(
    queue: &CommandQueue,
    buffer: &DeviceBuffer,
    data: &[f32],
    precision: Precision,
) -> Result<(), ClError> {
    let halves: Vec<f16>;
    let (bytes, source) = match precision {
        Precision::Fp32 => (size_of_val(data), data.as_ptr().cast::<std::ffi::c_void>()),
        Precision::Fp16 => {
            halves = {
                let mut out = vec![f16::ZERO; data.len()];
                out.convert_from_f32_slice(data);
                out
            };
            (size_of_val(halves.as_slice()), halves.as_ptr().cast())
        }
    };
    // SAFETY: a blocking write of `bytes` from a live host slice into a buffer at least as
    // long (both sized from the same element count); the event is released by its drop.
    let event = unsafe {
        opencl3::command_queue::enqueue_write_buffer(
            queue.get(),
            buffer.get(),
            CL_BLOCKING,
            0,
            bytes,
            source,
            0,
            ptr::null(),
        )
    }
    .map_err(|code| doing("copying to the device")(opencl3::error_codes::ClError(code)))?;
    drop(opencl3::event::Event::new(event));
    Ok(())
}

/// The first `len` elements of a device buffer stored at `precision`, as floats.
pub fn download(
    queue: &CommandQueue,
    buffer: &DeviceBuffer,
    len: usize,
    precision: Precision,
) -> Result<Vec<f32>, ClError> {
    let mut out = vec![0.0f32; len];
    match precision {
        Precision::Fp32 => read(
            queue,
            buffer,
            out.as_mut_ptr().cast(),
            size_of_val(&out[..]),
        )?,
        Precision::Fp16 => {
            let mut halves = vec![f16::ZERO; len];
            read(
                queue,
                buffer,
                halves.as_mut_ptr().cast(),
                size_of_val(&halves[..]),
            )?;
            halves.convert_to_f32_slice(&mut out);
        }
    }
    Ok(out)
}

fn read(
    queue: &CommandQueue,
    buffer: &DeviceBuffer,
    target: *mut std::ffi::c_void,
    bytes: usize,
) -> Result<(), ClError> {
    // SAFETY: a blocking read of `bytes` into host memory the caller owns and sized to
    // `bytes`; the event is released by its drop.
    let event = unsafe {
        opencl3::command_queue::enqueue_read_buffer(
            queue.get(),
            buffer.get(),
            CL_BLOCKING,
            0,
            bytes,
            target,
            0,
            ptr::null(),
        )
    }
    .map_err(|code| doing("copying from the device")(opencl3::error_codes::ClError(code)))?;
    drop(opencl3::event::Event::new(event));
    Ok(())
}

/// `data` as the device stores it at `precision` (rounded to half and back for `Fp16`): what
/// a CPU reference must start from to see only a kernel's own error.
pub fn stored(data: &[f32], precision: Precision) -> Vec<f32> {
    match precision {
        Precision::Fp32 => data.to_vec(),
        Precision::Fp16 => data.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
    }
}

/// The largest `|a-b| / max(1, |a|)` over two equally long slices.
pub fn max_relative_error(expected: &[f32], actual: &[f32]) -> f32 {
    if expected.len() != actual.len() {
        return f32::INFINITY;
    }
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| (e - a).abs() / e.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// `A·B` on the CPU in f64, the reference the kernels are checked against.
pub fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f64;
            for l in 0..k {
                sum += f64::from(a[i * k + l]) * f64::from(b[l * n + j]);
            }
            c[i * n + j] = sum as f32;
        }
    }
    c
}

/// Deterministic values in [-1, 1): tuning and tests need data, not randomness.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
