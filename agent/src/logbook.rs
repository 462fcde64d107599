//! The agent's own log lines about each deployment, kept in memory for `edgeship deploy logs`
//! (for a model workload they are its whole log; a container's own output comes from the
//! engine). A `tracing` layer copies every event that carries a `deployment` field here.
//!
//! Design: bounded in both directions (lines per deployment, deployments in all) so a noisy
//! workload or a churn of deployment names cannot grow the agent; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::sync::{Mutex, OnceLock, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Lines kept per deployment.
const LINES_PER_DEPLOYMENT: usize = 500;
/// Deployments kept; the one written to longest ago goes first.
const DEPLOYMENTS: usize = 64;
/// Longer lines are cut (a failure message can carry a container's last lines): with the
/// bounds above, the book holds at most 500 × 64 × 4 KiB.
pub const MAX_LINE_BYTES: usize = 4096;

/// `text` cut to at most [`MAX_LINE_BYTES`], at a character boundary.
pub fn clipped(text: &str) -> &str {
    if text.len() <= MAX_LINE_BYTES {
        return text;
    }
    let mut end = MAX_LINE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// One line, as `deploy logs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at_ms: i64,
    /// `agent`, `stdout` or `stderr`.
    pub source: String,
    pub text: String,
}

#[derive(Debug, Default)]
struct Book {
    lines: HashMap<String, VecDeque<LogLine>>,
    /// Deployments by last write, oldest first.
    order: VecDeque<String>,
}

fn book() -> &'static Mutex<Book> {
    static BOOK: OnceLock<Mutex<Book>> = OnceLock::new();
    BOOK.get_or_init(Mutex::default)
}

/// Keeps a line about `deployment`.
pub fn record(deployment: &str, line: LogLine) {
    let mut book = book().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(at) = book.order.iter().position(|d| d == deployment) {
        book.order.remove(at);
    } else if book.order.len() >= DEPLOYMENTS
        && let Some(oldest) = book.order.pop_front()
    {
        book.lines.remove(&oldest);
    }
    book.order.push_back(deployment.to_owned());
    let lines = book.lines.entry(deployment.to_owned()).or_default();
    if lines.len() >= LINES_PER_DEPLOYMENT {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// The newest `tail` lines about `deployment` written after `since_ms`, oldest first.
pub fn recent(deployment: &str, tail: usize, since_ms: i64) -> Vec<LogLine> {
    let book = book().lock().unwrap_or_else(PoisonError::into_inner);
    let Some(lines) = book.lines.get(deployment) else {
        return Vec::new();
    };
    let newer: Vec<&LogLine> = lines.iter().filter(|l| l.at_ms > since_ms).collect();
    newer[newer.len().saturating_sub(tail)..]
        .iter()
        .map(|l| (*l).clone())
        .collect()
}

/// The layer that copies events with a `deployment` field into the book: the level, the
/// message and the other fields, as the console shows them.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogBookLayer;

impl<S: Subscriber> Layer<S> for LogBookLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // The agent's own lines only: in `edgeship dev` the hub shares the process, and its
        // lines about a deployment are the hub's, not the device's.
        if !event.metadata().target().starts_with("edgeship_agent") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let Some(deployment) = fields.deployment else {
            return;
        };
        let text = format!(
            "{} {}{}",
            event.metadata().level(),
            fields.message,
            fields.rest
        );
        let text = clipped(&text).to_owned();
        record(
            &deployment,
            LogLine {
                at_ms: crate::now_ms(),
                source: "agent".into(),
                text,
            },
        );
    }
}

#[derive(Default)]
struct Fields {
    deployment: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "deployment" => self.deployment = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            // `%deployment` and `?deployment` come as Display/Debug values.
            "deployment" => {
                self.deployment = Some(format!("{value:?}").trim_matches('"').to_owned())
            }
            "message" => self.message = format!("{value:?}"),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_naming_a_deployment_are_kept_newest_last_and_bounded() {
        let subscriber = tracing_subscriber::registry().with(LogBookLayer);
        tracing::subscriber::with_default(subscriber, || {
            let deployment = "logbook-test";
            tracing::info!(%deployment, model = "m:1", "workload switched");
            tracing::info!("a line about no deployment");
            for i in 0..LINES_PER_DEPLOYMENT + 5 {
                tracing::warn!(deployment, i, "line");
            }
        });
        let lines = recent("logbook-test", 3, 0);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2].text,
            format!("WARN line i={}", LINES_PER_DEPLOYMENT + 4)
        );
        assert_eq!(lines[2].source, "agent");
        let all = recent("logbook-test", usize::MAX, 0);
        assert_eq!(all.len(), LINES_PER_DEPLOYMENT, "the oldest went first");
        assert!(all[0].text.starts_with("WARN line i="), "{}", all[0].text);
        let later = recent("logbook-test", 10, all[LINES_PER_DEPLOYMENT - 1].at_ms);
        assert!(later.is_empty(), "nothing after the newest line");
        assert!(recent("no-such-deployment", 10, 0).is_empty());
    }
}
