//! Log lines fetched from devices (`edgeship deploy logs`, Azure ML's `get_logs()`): a request
//! over MQTT to each device, matched to its answer by id, with a deadline. Devices keep their
//! logs; the hub keeps none.
//!
//! Design: the API side waits on a oneshot per request; `link.rs` publishes the requests from
//! an outbox and hands the answers back by id, so this module never touches MQTT or protobuf.
//! An answer nobody waits for any more (it came after the deadline) is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// One line of a device's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at_ms: i64,
    /// `stdout`, `stderr` or `agent`.
    pub source: String,
    pub text: String,
}

/// A request on its way to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAsk {
    pub device_id: String,
    pub request_id: String,
    pub deployment: String,
    pub tail: u32,
    pub since_ms: i64,
}

/// A device's answer: its lines, or why it has none.
pub type LogAnswer = Result<Vec<LogLine>, String>;

/// Requests waiting for their answers; shared by the API and the link.
#[derive(Debug)]
pub struct DeviceLogs {
    outbox: mpsc::UnboundedSender<LogAsk>,
    /// Request id → (device asked, where its answer goes).
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<LogAnswer>)>>,
    next_id: AtomicU64,
}

impl DeviceLogs {
    /// The requests the link must publish come out of the returned receiver.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<LogAsk>) {
        let (outbox, requests) = mpsc::unbounded_channel();
        let logs = Self {
            outbox,
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
        };
        (logs, requests)
    }

    /// Asks `device_id` for `deployment`'s newest `tail` lines after `since_ms`; waits at most
    /// `deadline` for the answer.
    pub async fn fetch(
        &self,
        device_id: &str,
        deployment: &str,
        tail: u32,
        since_ms: i64,
        deadline: Duration,
    ) -> LogAnswer {
        let request_id = format!(
            "{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (answer, answered) = oneshot::channel();
        self.lock()
            .insert(request_id.clone(), (device_id.to_owned(), answer));
        let ask = LogAsk {
            device_id: device_id.to_owned(),
            request_id: request_id.clone(),
            deployment: deployment.to_owned(),
            tail,
            since_ms,
        };
        if self.outbox.send(ask).is_err() {
            self.lock().remove(&request_id);
            return Err("the hub is not connected to the broker".into());
        }
        // Removed however this ends, a caller that gives up (a cancelled call) included.
        let _forget = Forget {
            logs: self,
            request_id: &request_id,
        };
        let result = tokio::time::timeout(deadline, answered).await;
        match result {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the request was dropped".into()),
            Err(_) => Err(format!(
                "no answer within {} s (offline, or an agent without logs)",
                deadline.as_secs()
            )),
        }
    }

    /// Hands a device's answer to whoever waits for it; answers from another device than the
    /// one asked, or for no pending request, are dropped.
    pub fn answer(&self, device_id: &str, request_id: &str, answer: LogAnswer) {
        let mut waiting = self.lock();
        let Some((asked, _)) = waiting.get(request_id) else {
            tracing::debug!(device = %device_id, %request_id, "late or unknown log answer dropped");
            return;
        };
        if asked != device_id {
            tracing::warn!(device = %device_id, %request_id, "log answer from a device not asked; dropped");
            return;
        }
        if let Some((_, sender)) = waiting.remove(request_id) {
            let _ = sender.send(answer);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, oneshot::Sender<LogAnswer>)>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Forgets a request when dropped.
struct Forget<'a> {
    logs: &'a DeviceLogs,
    request_id: &'a str,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.logs.lock().remove(self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_their_request_and_strangers_are_dropped() {
        let (logs, mut outbox) = DeviceLogs::new();
        let logs = std::sync::Arc::new(logs);
        let asking = {
            let logs = std::sync::Arc::clone(&logs);
            tokio::spawn(async move {
                logs.fetch("edge-1", "web", 10, 0, Duration::from_secs(5))
                    .await
            })
        };
        let ask = outbox.recv().await.expect("published");
        assert_eq!(
            (ask.device_id.as_str(), ask.deployment.as_str(), ask.tail),
            ("edge-1", "web", 10)
        );
        let line = LogLine {
            at_ms: 1,
            source: "agent".into(),
            text: "INFO workload switched".into(),
        };
        // Another device cannot answer for edge-1, nor anyone for an unknown request.
        logs.answer("edge-2", &ask.request_id, Ok(vec![]));
        logs.answer("edge-1", "no-such-request", Ok(vec![]));
        logs.answer("edge-1", &ask.request_id, Ok(vec![line.clone()]));
        assert_eq!(asking.await.expect("task"), Ok(vec![line]));
    }

    #[tokio::test]
    async fn a_silent_device_ends_in_a_clear_error() {
        let (logs, _outbox) = DeviceLogs::new();
        let answer = logs
            .fetch("edge-1", "web", 10, 0, Duration::from_millis(50))
            .await;
        assert!(answer.expect_err("no answer").contains("no answer within"));
        assert!(logs.lock().is_empty(), "nothing left waiting");
    }
}
