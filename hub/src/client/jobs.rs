//! Batch jobs from the client's side: creating one (its header, then the input file in
//! chunks, as registrations stream files), and downloading its output into a temporary file
//! beside the target, verified (size and sha256) and only then renamed into place.

use std::path::{Path, PathBuf};

use crate::client::HubChannel;
use anyhow::{Context, bail};
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::jobs_client::JobsClient as GrpcJobsClient;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::files::progress_bar;
use super::{channel, rpc_error};

pub type JobsClient = GrpcJobsClient<HubChannel>;

/// Input bytes per message, as for model files.
const CHUNK_BYTES: usize = 1024 * 1024;

/// A client of the jobs service.
pub async fn connect_jobs(hub: &str) -> anyhow::Result<JobsClient> {
    Ok(GrpcJobsClient::new(channel(hub).await?))
}

/// The hub stopped reading the stream (it refused the job).
#[derive(Debug, thiserror::Error)]
#[error("the hub closed the upload")]
struct HubClosedUpload;

/// Creates a job from `header` (its size is filled in here) with the file at `input`.
pub async fn create_job(
    client: &mut JobsClient,
    mut header: pb::JobHeader,
    input: &Path,
) -> anyhow::Result<pb::Job> {
    use pb::create_job_request::Payload;
    let mut reader = tokio::fs::File::open(input)
        .await
        .with_context(|| format!("opening {}", input.display()))?;
    let size = reader
        .metadata()
        .await
        .with_context(|| format!("reading {}", input.display()))?
        .len();
    header.input_size_bytes = size;
    let bar = progress_bar(size, "uploading");
    let (sender, receiver) = mpsc::channel::<pb::CreateJobRequest>(4);
    let producer_bar = bar.clone();
    let path = input.to_owned();
    let producer = tokio::spawn(async move {
        let send = |payload| {
            let sender = sender.clone();
            async move {
                sender
                    .send(pb::CreateJobRequest {
                        payload: Some(payload),
                    })
                    .await
                    .map_err(|_| anyhow::Error::new(HubClosedUpload))
            }
        };
        send(Payload::Header(header)).await?;
        let mut remaining = size;
        while remaining > 0 {
            let mut chunk = vec![0; CHUNK_BYTES.min(remaining as usize)];
            reader
                .read_exact(&mut chunk)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            remaining -= chunk.len() as u64;
            producer_bar.inc(chunk.len() as u64);
            send(Payload::Chunk(chunk.into())).await?;
        }
        anyhow::Ok(())
    });
    let response = client.create_job(ReceiverStream::new(receiver)).await;
    bar.finish_and_clear();
    let produced = producer.await?;
    match (response, produced) {
        (Ok(response), _) => Ok(response.into_inner()),
        // The hub hanging up is a consequence of its refusal; the refusal is the news.
        (Err(status), Err(local)) if local.is::<HubClosedUpload>() => Err(rpc_error(status)),
        (Err(_), Err(local)) => Err(local),
        (Err(status), Ok(())) => Err(rpc_error(status)),
    }
}

/// Downloads a Succeeded job's output to `target`: written beside it first, verified, then
/// renamed over it. Returns the output's digest and size.
pub async fn download_job_output(
    client: &mut JobsClient,
    name: &str,
    target: &Path,
) -> anyhow::Result<pb::JobData> {
    use pb::download_job_output_response::Payload;
    let mut stream = client
        .download_job_output(pb::DownloadJobOutputRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let output = match stream
        .message()
        .await
        .map_err(rpc_error)?
        .and_then(|m| m.payload)
    {
        Some(Payload::Output(output)) => output,
        _ => bail!("the hub's download stream did not start with the output's description"),
    };
    let partial = partial_path(target);
    let written = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        let bar = progress_bar(output.size_bytes, "downloading");
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(message) = stream.message().await.map_err(rpc_error)? {
            match message.payload {
                Some(Payload::Chunk(bytes)) => {
                    written += bytes.len() as u64;
                    if written > output.size_bytes {
                        bail!("the hub sent more than the output's {} bytes", output.size_bytes);
                    }
                    hasher.update(&bytes);
                    file.write_all(&bytes)
                        .await
                        .with_context(|| format!("writing {}", partial.display()))?;
                    bar.inc(bytes.len() as u64);
                }
                _ => bail!("the hub sent an unexpected message in the download"),
            }
        }
        bar.finish_and_clear();
        let digest = hex::encode(hasher.finalize());
        if written != output.size_bytes || digest != output.sha256 {
            bail!(
                "the output failed verification ({written} of {} bytes, sha256 {digest}, expected {})",
                output.size_bytes,
                output.sha256
            );
        }
        file.flush().await?;
        file.sync_all().await?;
        anyhow::Ok(())
    }
    .await;
    if let Err(err) = written {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(err);
    }
    tokio::fs::rename(&partial, target)
        .await
        .with_context(|| format!("moving the output into {}", target.display()))?;
    Ok(output)
}

/// `<dir>/.<name>.partial`: beside the target (one file system, so the rename is atomic) and
/// hidden.
fn partial_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    target.with_file_name(format!(".{name}.partial"))
}
