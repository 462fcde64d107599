//! Log lines fetched from devices (`edgeship deploy logs`, Azure ML's `get_logs()`): a request
//! over MQTT to each device, matched to its answer by id, with a deadline
//! ([`DeviceRequests`]). Devices keep their logs; the hub keeps none.

use std::time::Duration;

use crate::device_requests::{Asked, DeviceRequests, Exchange};

/// One line of a device's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at_ms: i64,
    /// `stdout`, `stderr` or `agent`.
    pub source: String,
    pub text: String,
}

/// What a log request asks a device for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub deployment: String,
    pub tail: u32,
    pub since_ms: i64,
}

impl Exchange for LogQuery {
    type Answer = Vec<LogLine>;
    const NOUN: &'static str = "log";
    const SILENCE: &'static str = "offline, or an agent without logs";
}

/// A log request on its way to a device.
pub type LogAsk = Asked<LogQuery>;

/// A device's answer: its lines, or why it has none.
pub type LogAnswer = Result<Vec<LogLine>, String>;

/// Log requests waiting for their answers; shared by the API and the link.
pub type DeviceLogs = DeviceRequests<LogQuery>;

impl DeviceRequests<LogQuery> {
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
        let query = LogQuery {
            deployment: deployment.to_owned(),
            tail,
            since_ms,
        };
        self.ask(device_id, query, deadline)
            .await
            .map_err(|err| err.to_string())
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
            (
                ask.device_id.as_str(),
                ask.query.deployment.as_str(),
                ask.query.tail
            ),
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
        let error = answer.expect_err("no answer");
        assert!(
            error.contains("no answer within") && error.contains("an agent without logs"),
            "{error}"
        );
        assert_eq!(logs.waiting(), 0, "nothing left waiting");
    }
}
