//! The model registry, and the entry-module registry beside it: validated metadata in sled,
//! file bytes in the content-addressed [`BlobStore`](crate::blobs::BlobStore) both share.

mod holds;
pub mod image;
pub mod model;
pub mod module;
mod page;
mod signatures;
mod store;
mod upload;
pub mod validate;

pub use holds::{BlobHolds, StagedBlob};
pub use model::*;
pub use page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use store::{Limits, Registry};
pub use upload::{StagedModel, Upload};

/// Everything the registry can refuse or fail at. The gRPC adapter maps each variant to one
/// status code; messages are meant for users as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    InvalidOnnx(#[from] edgeship_runtime::onnx::InvalidOnnx),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("stored data is damaged: {0}")]
    DataLoss(String),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
