//! Weights on the device, shared by every graph planned for one model: dynamic batching asks
//! for several batch sizes, each its own graph, and the weights are the same.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use tract_onnx::prelude::*;

use super::super::ClError;
use super::super::buffers::{DeviceBuffer, Precision, upload};
use super::floats;

/// Device copies of constant tensors, by a digest of their shape and contents, stored at one
/// precision.
#[derive(Debug, Default)]
pub struct ConstantBuffers {
    precision: Precision,
    buffers: std::sync::Mutex<BTreeMap<[u8; 32], Arc<DeviceBuffer>>>,
    uploaded: AtomicUsize,
    bytes: AtomicUsize,
}

impl ConstantBuffers {
    pub fn new(precision: Precision) -> Self {
        ConstantBuffers {
            precision,
            ..ConstantBuffers::default()
        }
    }

    /// Constants uploaded so far (a second graph of the same model adds none).
    pub fn uploaded(&self) -> usize {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Device memory the constants take, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn get_or_upload(
        &self,
        tensor: &Tensor,
        context: &Context,
        queue: &CommandQueue,
    ) -> Result<Arc<DeviceBuffer>, ClError> {
        use sha2::{Digest, Sha256};
        let data = floats(tensor)?;
        let mut digest = Sha256::new();
        for &dim in tensor.shape() {
            digest.update((dim as u64).to_le_bytes());
        }
        for value in data {
            digest.update(value.to_le_bytes());
        }
        let key: [u8; 32] = digest.finalize().into();
        let mut buffers = self
            .buffers
            .lock()
            .map_err(|_| ClError::Invalid("the constants' cache failed earlier".into()))?;
        if let Some(buffer) = buffers.get(&key) {
            return Ok(buffer.clone());
        }
        let buffer = Arc::new(upload(context, queue, data, self.precision)?);
        buffers.insert(key, buffer.clone());
        self.uploaded.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(data.len() * self.precision.bytes(), Ordering::Relaxed);
        Ok(buffer)
    }
}
