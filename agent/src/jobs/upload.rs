//! Uploading a finished job's output to the hub over MQTT (`uploads/req` → `uploads/resp`):
//! pieces in order, a few ahead of the hub's acknowledgements, resumed from whatever the hub
//! says it holds, so neither side's restart sends the output again from the start.
//!
//! Design: the hub answers every piece (and an empty probe) with the length it holds in a
//! row. That length is the only truth: the sender starts with a probe, keeps at most `WINDOW`
//! pieces beyond the length, and when acknowledgements stop coming (a lost piece, a restarted
//! hub) it probes again and goes on from the answer.

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
/// First and longest pause after the hub could not take the output.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    // What the hub holds, as it last said; how far pieces have been sent; and whether the
    // sender waits for the answer to a probe before sending anything.
    let mut held = 0u64;
    let mut sent = 0u64;
    let mut probing = true;
    let mut silent_rounds = 0u32;
    let mut refusals = 0u32;
    sender
        .send_upload(job_id, &blob.sha256, size, 0, Vec::new())
        .await;
    loop {
        while !probing && sent < size && sent < held + WINDOW * PIECE_BYTES {
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
                // Nothing heard: ask where the hub stands before sending more.
                silent_rounds += 1;
                if silent_rounds % 12 == 1 {
                    tracing::info!(job = %job_id, held, size, "no answer from the hub about the output; asking again");
                }
                probing = true;
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
            if !ack.retry {
                return Ok(Uploaded::Refused(ack.error));
            }
            // The hub dropped its copy (it did not verify) or could not store it: after a
            // pause, ask again and go on from whatever it holds.
            refusals += 1;
            let pause = RETRY_FIRST
                .saturating_mul(1 << refusals.min(5))
                .min(RETRY_MAX);
            tracing::warn!(job = %job_id, error = %ack.error, retry_in = ?pause, "the hub could not take the output; sending again");
            tokio::time::sleep(pause).await;
            while acks.try_recv().is_ok() {}
            (held, sent, probing) = (0, 0, true);
            sender
                .send_upload(job_id, &blob.sha256, size, 0, Vec::new())
                .await;
            continue;
        }
        if ack.received_bytes >= size {
            return Ok(Uploaded::Done);
        }
        if probing || ack.received_bytes < held {
            // A probe's answer, or the hub holds less than it said (it restarted from its
            // partial copy): send from there.
            sent = ack.received_bytes;
        }
        probing = false;
        held = ack.received_bytes;
        sent = sent.max(held);
    }
}
