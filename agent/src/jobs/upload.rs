//! Uploading a finished job's output to the hub over MQTT (`uploads/req` → `uploads/resp`):
//! pieces in order, a few ahead of the hub's acknowledgements, resumed from whatever the hub
//! says it holds, so neither side's restart sends the output again from the start.
//!
//! Design: the hub answers every piece (and an empty probe) with the length it holds in a
//! row. That length is the only truth: the sender keeps at most `WINDOW` pieces beyond it,
//! and when acknowledgements stop coming (a lost piece, a restarted hub) it rewinds to that
//! length and probes again.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use edgeship_domain::BlobRef;
use tokio::sync::mpsc;

use crate::link::{LinkSender, UploadAck};

/// The largest piece (the hub refuses more; it fits a 320 KiB packet with its envelope).
pub const PIECE_BYTES: u64 = 256 * 1024;
/// Pieces sent beyond what the hub has acknowledged.
const WINDOW: u64 = 8;
/// How long the sender waits for an acknowledgement before rewinding and probing.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How an upload ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Uploaded {
    /// The hub holds and has verified the whole output.
    Done,
    /// The hub refuses it, and says why (the job was cancelled there, say).
    Refused(String),
}

/// Sends `output` (described by `blob`) for `job_id` until the hub holds all of it, or refuses.
/// Never gives up on silence: the link may be down for hours.
pub async fn upload(
    sender: &LinkSender,
    job_id: &str,
    output: &Path,
    blob: &BlobRef,
    acks: &mut mpsc::Receiver<UploadAck>,
) -> Result<Uploaded, String> {
    let file = File::open(output).map_err(|e| format!("opening the output: {e}"))?;
    let size = blob.size_bytes;
    // Whatever the hub holds, as it last said; and how far pieces have been sent.
    let mut held = 0u64;
    let mut sent = 0u64;
    let mut silent_rounds = 0u32;
    sender
        .send_upload(job_id, &blob.sha256, size, 0, Vec::new())
        .await;
    loop {
        while sent < size && sent < held + WINDOW * PIECE_BYTES {
            let length = PIECE_BYTES.min(size - sent);
            let mut data = vec![0; length as usize];
            file.read_exact_at(&mut data, sent)
                .map_err(|e| format!("reading the output: {e}"))?;
            sender
                .send_upload(job_id, &blob.sha256, size, sent, data)
                .await;
            sent += length;
        }
        let ack = match tokio::time::timeout(ACK_TIMEOUT, acks.recv()).await {
            Ok(Some(ack)) => ack,
            Ok(None) => return Err("the agent is stopping".into()),
            Err(_) => {
                // Nothing heard: rewind to what the hub holds and ask where it stands.
                silent_rounds += 1;
                if silent_rounds % 12 == 1 {
                    tracing::info!(job = %job_id, held, size, "no answer from the hub about the output; asking again");
                }
                sent = held;
                sender
                    .send_upload(job_id, &blob.sha256, size, held, Vec::new())
                    .await;
                continue;
            }
        };
        if ack.sha256 != blob.sha256 {
            continue;
        }
        silent_rounds = 0;
        if !ack.error.is_empty() {
            if ack.received_bytes == 0 && ack.error.contains("digest") {
                // The hub's copy did not verify and it dropped it: send everything again.
                tracing::warn!(job = %job_id, error = %ack.error, "the hub's copy of the output did not verify; sending it again");
                held = 0;
                sent = 0;
                continue;
            }
            return Ok(Uploaded::Refused(ack.error));
        }
        if ack.received_bytes >= size {
            return Ok(Uploaded::Done);
        }
        if ack.received_bytes < held {
            // The hub holds less than it said before (it restarted from its partial copy):
            // resend from there.
            sent = ack.received_bytes;
        }
        held = ack.received_bytes;
        sent = sent.max(held);
    }
}
