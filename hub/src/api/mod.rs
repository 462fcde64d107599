//! gRPC adapters: the only place (with the CLI client) where protobuf types meet the registry.

pub mod access;
pub mod convert;
mod deployments;
mod fleet;
mod jobs;
mod logs;
mod modules;
mod profiles;
mod registry;
pub(crate) mod streams;
mod transfer;

pub use access::{AccessService, EnrollmentService};
pub use fleet::FleetService;
pub use jobs::JobsService;
pub use modules::ModuleRegistryService;
pub use profiles::ProfilesService;
pub use registry::ModelRegistryService;

use tonic::Status;

use crate::registry::Error;

/// The one place that decides which gRPC code each registry error becomes.
impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        match err {
            Error::InvalidArgument(_) | Error::InvalidOnnx(_) => Status::invalid_argument(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::DataLoss(_) => {
                tracing::error!(error = %message, "stored data is damaged");
                Status::data_loss(message)
            }
            Error::Storage(_) | Error::Io { .. } => {
                tracing::error!(error = %message, "registry storage failure");
                Status::internal(message)
            }
        }
    }
}

/// Chunk size for file data on the wire: well under tonic's 4 MiB default message limit.
pub const CHUNK_SIZE: usize = 1024 * 1024;
