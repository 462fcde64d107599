//! Moving host data to and from device buffers, and the CPU reference that kernels are checked
//! against.

use std::ptr;

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::memory::{Buffer, CL_MEM_READ_WRITE};
use opencl3::types::CL_BLOCKING;

use super::{ClError, doing};

/// A device buffer holding `data`.
pub fn upload(
    context: &Context,
    queue: &CommandQueue,
    data: &[f32],
) -> Result<Buffer<f32>, ClError> {
    let mut buffer = scratch(context, data.len())?;
    // SAFETY: a blocking write of exactly the buffer's length from a live slice.
    unsafe { queue.enqueue_write_buffer(&mut buffer, CL_BLOCKING, 0, data, &[]) }
        .map_err(doing("copying to the device"))?;
    Ok(buffer)
}

/// An uninitialised device buffer of `len` floats.
pub fn scratch(context: &Context, len: usize) -> Result<Buffer<f32>, ClError> {
    // SAFETY: no host pointer is given; the size is the element count times 4.
    unsafe { Buffer::<f32>::create(context, CL_MEM_READ_WRITE, len.max(1), ptr::null_mut()) }
        .map_err(doing(format!("allocating {len} floats on the device")))
}

/// The first `len` floats of a device buffer.
pub fn download(
    queue: &CommandQueue,
    buffer: &Buffer<f32>,
    len: usize,
) -> Result<Vec<f32>, ClError> {
    let mut out = vec![0.0f32; len];
    // SAFETY: a blocking read into a slice of the requested length.
    unsafe { queue.enqueue_read_buffer(buffer, CL_BLOCKING, 0, &mut out, &[]) }
        .map_err(doing("copying from the device"))?;
    Ok(out)
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
