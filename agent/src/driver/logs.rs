//! Answers to log requests (`edgeship deploy logs`): the agent's own lines about a
//! deployment and its container's output, merged by time and bounded to fit one message.

use super::Agent;
use crate::link::LogRequest;
use crate::logbook::{LogLine, clipped};

/// The most bytes of text one log answer carries (the oldest lines go first): it must fit in
/// one MQTT packet with room to spare.
const MAX_LOG_BYTES: usize = 256 * 1024;

impl Agent {
    /// Answers a log request in the background: the agent's own lines about the deployment,
    /// and its container's output when it has one, merged by time.
    pub(super) fn answer_logs(&self, request: LogRequest) {
        let sender = self.sender.clone();
        // A few answers at a time: each may hold a container's 2,000 lines while it is put
        // together, and a flood of requests must not grow the agent.
        let Ok(permit) = std::sync::Arc::clone(&self.log_answers).try_acquire_owned() else {
            tokio::spawn(async move {
                let busy = "the device is answering other log requests; ask again".to_owned();
                sender
                    .send_logs(&request.request_id, Vec::new(), Some(busy))
                    .await;
            });
            return;
        };
        let known = self.statuses.contains_key(&request.deployment);
        #[cfg(feature = "containers")]
        let container = self.stage.container_of(&request.deployment);
        tokio::spawn(async move {
            let _permit = permit;
            #[allow(unused_mut)]
            let mut lines =
                crate::logbook::recent(&request.deployment, request.tail, request.since_ms);
            #[allow(unused_mut)]
            let mut error = None;
            #[cfg(feature = "containers")]
            if let Some((engine, id)) = container {
                match engine.timed_logs(&id, request.tail, request.since_ms).await {
                    Ok(more) => lines.extend(more),
                    Err(why) => error = Some(format!("the container's output: {why}")),
                }
            }
            if !known && lines.is_empty() {
                error = Some(format!(
                    "deployment {} does not run on this device",
                    request.deployment
                ));
            }
            sender
                .send_logs(&request.request_id, bounded(lines, request.tail), error)
                .await;
        });
    }
}

/// The newest `tail` lines by time, each at most `MAX_LINE_BYTES`, together at most
/// `MAX_LOG_BYTES`.
fn bounded(mut lines: Vec<LogLine>, tail: usize) -> Vec<LogLine> {
    lines.sort_by_key(|l| l.at_ms);
    let mut kept = Vec::new();
    let mut bytes = 0;
    for mut line in lines.into_iter().rev().take(tail) {
        let clipped_len = clipped(&line.text).len();
        line.text.truncate(clipped_len);
        bytes += line.text.len();
        if bytes > MAX_LOG_BYTES {
            break;
        }
        kept.push(line);
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logbook::MAX_LINE_BYTES;

    fn line(at_ms: i64, text: &str) -> LogLine {
        LogLine {
            at_ms,
            source: "stdout".into(),
            text: text.into(),
        }
    }

    #[test]
    fn answers_keep_the_newest_lines_by_time_within_their_bounds() {
        let lines = vec![line(3, "c"), line(1, "a"), line(2, "b")];
        let kept: Vec<String> = bounded(lines, 2).into_iter().map(|l| l.text).collect();
        assert_eq!(kept, ["b", "c"]);
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = bounded(vec![line(1, &long)], 10);
        assert!(cut[0].text.len() <= MAX_LINE_BYTES && cut[0].text.starts_with('é'));
        let many: Vec<LogLine> = (0..200).map(|i| line(i, &"x".repeat(4000))).collect();
        let kept = bounded(many, 1000);
        assert_eq!(kept.len(), MAX_LOG_BYTES / 4000);
        assert_eq!(kept.last().map(|l| l.at_ms), Some(199), "the newest stay");
    }
}
