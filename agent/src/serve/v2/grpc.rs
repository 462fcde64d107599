//! The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), on the
//! endpoint's `grpc_port`. Tensors arrive as typed `contents` or as `raw_input_contents`
//! (what `tritonclient.grpc` sends); outputs always go back raw, as Triton answers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use edgeship_domain::ElementType;
use edgeship_proto::inference as pb;
use edgeship_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use edgeship_runtime::TensorData;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status};

use super::infer::{self, ErrorKind, NamedInput, V2Error};
use super::{EXTENSIONS, PLATFORM, SERVER_NAME};
use crate::serve::clients::{CLIENTS, Seat};
use crate::serve::{MODEL_HEADER, ROUTING_KEY_HEADER, Shared};

/// The service over one endpoint's shared state.
#[derive(Debug, Clone)]
struct Inference {
    shared: Arc<Shared>,
}

fn status(err: V2Error) -> Status {
    match err.kind {
        ErrorKind::BadRequest => Status::invalid_argument(err.message),
        ErrorKind::NotFound => Status::not_found(err.message),
        ErrorKind::Unavailable => Status::unavailable(err.message),
        ErrorKind::TooLarge => Status::resource_exhausted(err.message),
        ErrorKind::Internal => Status::internal(err.message),
    }
}

impl Inference {
    /// The endpoint's auth, from the `authorization` metadata; liveness and readiness calls
    /// need none, as over REST.
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.shared
            .auth()
            .check(presented)
            .map_err(|refusal| Status::unauthenticated(refusal.message()))
    }
}

/// Serves the endpoint's models on `listener` until `shutdown` fires.
pub fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<&edgeship_domain::ServingCertificate>,
    shutdown: oneshot::Receiver<()>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let addr = listener.local_addr()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(certificate) = tls {
        let identity =
            tonic::transport::Identity::from_pem(&certificate.cert_pem, &certificate.key_pem);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    }
    let limit = shared.max_body_bytes();
    let service = GrpcInferenceServiceServer::new(Inference { shared })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |accepted| accepted.map(Counted::new),
    );
    let task = tokio::spawn(async move {
        let served = server
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!(%addr, error = %err, "gRPC scoring endpoint failed");
        }
    });
    Ok((addr, task))
}

/// A gRPC connection, counted among the agent's clients as one that can send any number of
/// requests at once (so batches never stop waiting for more while it is open).
struct Counted {
    stream: TcpStream,
    _seat: Seat,
}

impl Counted {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            _seat: CLIENTS.multiplexed_seat(),
        }
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.shared.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = infer::route(&self.shared, &request.name, Some(&request.version), None).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| (*e).to_owned()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let version = Some(request.version.as_str()).filter(|v| !v.is_empty());
        let scorer = infer::scorer_for(&self.shared, &request.name, version).map_err(status)?;
        let describe = |specs: &[edgeship_domain::TensorSpec]| {
            specs
                .iter()
                .map(|s| pb::model_metadata_response::TensorMetadata {
                    name: s.name.clone(),
                    datatype: infer::datatype(s),
                    shape: infer::metadata_shape(s),
                })
                .collect()
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            versions: infer::versions_of(&self.shared, &request.name),
            name: request.name,
            platform: PLATFORM.into(),
            inputs: describe(scorer.inputs()),
            outputs: describe(scorer.outputs()),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        self.authorize(&request)?;
        let key = request
            .metadata()
            .get(ROUTING_KEY_HEADER)
            .map(|v| v.as_bytes().to_vec());
        let request = request.into_inner();
        let version = Some(request.model_version.as_str()).filter(|v| !v.is_empty());
        let call = infer::route(&self.shared, &request.model_name, version, key.as_deref())
            .map_err(status)?;
        let scorer = Arc::clone(call.scorer());
        let result = async {
            let requested: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
            let inputs = decode_inputs(scorer.as_ref(), &request)?;
            let tensors = infer::arrange(scorer.as_ref(), inputs)?;
            infer::run(&scorer, tensors, &requested).await
        }
        .await;
        let code = match &result {
            Ok(_) => 200,
            Err(err) => super::rest::http_status(err.kind).as_u16(),
        };
        let answered = self.shared.finish_call(call, code);
        let outputs = result.map_err(status)?;
        let (model_name, model_version) = infer::split_ref(&answered);
        let mut response = Response::new(pb::ModelInferResponse {
            model_name: model_name.to_owned(),
            model_version: model_version.to_owned(),
            id: request.id,
            parameters: Default::default(),
            outputs: outputs
                .iter()
                .map(|o| pb::model_infer_response::InferOutputTensor {
                    name: o.name.clone(),
                    datatype: o
                        .tensor
                        .data
                        .element_type()
                        .oip_name()
                        .unwrap_or("BYTES")
                        .into(),
                    shape: o.tensor.shape.iter().map(|d| *d as i64).collect(),
                    parameters: Default::default(),
                    contents: None,
                })
                .collect(),
            raw_output_contents: outputs
                .iter()
                .map(|o| o.tensor.data.to_le_bytes().into())
                .collect(),
        });
        if let Ok(value) = answered.parse() {
            response.metadata_mut().insert(MODEL_HEADER, value);
        }
        Ok(response)
    }
}

/// Reads the inputs from `raw_input_contents` (all of them, in order) or from each input's
/// typed `contents`.
fn decode_inputs(
    scorer: &dyn crate::serve::Scorer,
    request: &pb::ModelInferRequest,
) -> Result<Vec<NamedInput>, V2Error> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(V2Error::bad(format!(
            "raw_input_contents holds {} tensors for {} inputs",
            raw.len(),
            request.inputs.len()
        )));
    }
    request
        .inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let spec = scorer.inputs().iter().find(|s| s.name == input.name);
            let element_type = infer::input_type(spec, &input.name, &input.datatype)?;
            let (shape, count) = infer::element_count(&input.name, &input.shape)?;
            let fail = |why: String| V2Error::bad(format!("input {:?}: {why}", input.name));
            let data = match raw.get(index) {
                Some(bytes) => TensorData::from_raw(&element_type, bytes).map_err(fail)?,
                None => {
                    let contents = input
                        .contents
                        .as_ref()
                        .ok_or_else(|| fail("has no contents and no raw_input_contents".into()))?;
                    from_contents(&element_type, contents).map_err(fail)?
                }
            };
            if data.len() != count {
                return Err(fail(format!(
                    "shape {:?} holds {count} elements, the request sent {}",
                    input.shape,
                    data.len()
                )));
            }
            Ok(NamedInput {
                name: input.name.clone(),
                shape,
                data,
            })
        })
        .collect()
}

/// Typed contents: each datatype in the protocol's field for its kind, narrowed with a check.
fn from_contents(
    element_type: &ElementType,
    contents: &pb::InferTensorContents,
) -> Result<TensorData, String> {
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        values: &[S],
        what: &str,
    ) -> Result<Vec<T>, String> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                T::try_from(*v).map_err(|_| format!("element {i} ({v}) does not fit {what}"))
            })
            .collect()
    }
    Ok(match element_type {
        ElementType::Bool => TensorData::Bool(contents.bool_contents.clone()),
        ElementType::I8 => TensorData::I8(narrow(&contents.int_contents, "INT8")?),
        ElementType::I16 => TensorData::I16(narrow(&contents.int_contents, "INT16")?),
        ElementType::I32 => TensorData::I32(contents.int_contents.clone()),
        ElementType::I64 => TensorData::I64(contents.int64_contents.clone()),
        ElementType::U8 => TensorData::U8(narrow(&contents.uint_contents, "UINT8")?),
        ElementType::U16 => TensorData::U16(narrow(&contents.uint_contents, "UINT16")?),
        ElementType::U32 => TensorData::U32(contents.uint_contents.clone()),
        ElementType::U64 => TensorData::U64(contents.uint64_contents.clone()),
        ElementType::F32 => TensorData::F32(contents.fp32_contents.clone()),
        ElementType::F64 => TensorData::F64(contents.fp64_contents.clone()),
        ElementType::String => TensorData::String(
            contents
                .bytes_contents
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.to_vec())
                        .map_err(|_| format!("element {i} is not UTF-8 text"))
                })
                .collect::<Result<_, _>>()?,
        ),
        ElementType::F16 => return Err("FP16 values travel only in raw_input_contents".into()),
        ElementType::Other(name) => return Err(format!("element type {name} is not supported")),
    })
}
