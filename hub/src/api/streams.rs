//! The streaming messages of both registries seen as one. A registration is metadata, then
//! each file as a header and its chunks, then a commit; a download is the version, then each
//! file as a header and its chunks. Models and modules each have their own messages of that
//! shape (`RegisterModelRequest`, `RegisterModuleRequest`, ...); the services and the client
//! convert through [`UploadMessage`] and [`DownloadMessage`], so each stream's rules are
//! written once (`api/transfer.rs`, `client/files.rs`).

use bytes::Bytes;
use edgeship_proto::v1 as pb;

/// One message of a registration.
#[derive(Debug)]
pub(crate) enum Upload<M> {
    Metadata(M),
    File(pb::FileHeader),
    Chunk(Bytes),
    Commit(pb::Commit),
    /// A message without a payload.
    Empty,
}

/// One message of a download.
#[derive(Debug)]
pub(crate) enum Download<V> {
    Version(V),
    File(pb::FileHeader),
    Chunk(Bytes),
    /// A message without a payload.
    Empty,
}

pub(crate) trait UploadMessage: Sized {
    type Metadata;
    fn wrap(part: Upload<Self::Metadata>) -> Self;
    fn unwrap(self) -> Upload<Self::Metadata>;
}

pub(crate) trait DownloadMessage: Sized {
    type Version;
    fn wrap(part: Download<Self::Version>) -> Self;
    fn unwrap(self) -> Download<Self::Version>;
}

/// `upload!(RegisterModelRequest, register_model_request, ModelMetadata)`: the message, the
/// module of its `Payload` oneof, and its metadata.
macro_rules! upload {
    ($message:ident, $oneof:ident, $metadata:ident) => {
        impl UploadMessage for pb::$message {
            type Metadata = pb::$metadata;

            fn wrap(part: Upload<pb::$metadata>) -> Self {
                use pb::$oneof::Payload;
                let payload = match part {
                    Upload::Metadata(metadata) => Some(Payload::Metadata(metadata)),
                    Upload::File(header) => Some(Payload::File(header)),
                    Upload::Chunk(bytes) => Some(Payload::Chunk(bytes)),
                    Upload::Commit(commit) => Some(Payload::Commit(commit)),
                    Upload::Empty => None,
                };
                Self { payload }
            }

            fn unwrap(self) -> Upload<pb::$metadata> {
                use pb::$oneof::Payload;
                match self.payload {
                    Some(Payload::Metadata(metadata)) => Upload::Metadata(metadata),
                    Some(Payload::File(header)) => Upload::File(header),
                    Some(Payload::Chunk(bytes)) => Upload::Chunk(bytes),
                    Some(Payload::Commit(commit)) => Upload::Commit(commit),
                    None => Upload::Empty,
                }
            }
        }
    };
}

/// `download!(DownloadModelResponse, download_model_response, Model)`: the message, the
/// module of its `Payload` oneof, and the version's message (also its variant's name).
macro_rules! download {
    ($message:ident, $oneof:ident, $version:ident) => {
        impl DownloadMessage for pb::$message {
            type Version = pb::$version;

            fn wrap(part: Download<pb::$version>) -> Self {
                use pb::$oneof::Payload;
                let payload = match part {
                    Download::Version(version) => Some(Payload::$version(version)),
                    Download::File(header) => Some(Payload::File(header)),
                    Download::Chunk(bytes) => Some(Payload::Chunk(bytes)),
                    Download::Empty => None,
                };
                Self { payload }
            }

            fn unwrap(self) -> Download<pb::$version> {
                use pb::$oneof::Payload;
                match self.payload {
                    Some(Payload::$version(version)) => Download::Version(version),
                    Some(Payload::File(header)) => Download::File(header),
                    Some(Payload::Chunk(bytes)) => Download::Chunk(bytes),
                    None => Download::Empty,
                }
            }
        }
    };
}

upload!(RegisterModelRequest, register_model_request, ModelMetadata);
upload!(
    RegisterModuleRequest,
    register_module_request,
    ModuleMetadata
);
download!(DownloadModelResponse, download_model_response, Model);
download!(DownloadModuleResponse, download_module_response, Module);
