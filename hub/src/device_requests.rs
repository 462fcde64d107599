//! Requests the hub puts to one device over MQTT and the answers it waits for: log lines
//! (`deploy logs`, `device_logs.rs`) and profiles (`model profile`, `profiles/`). Each request
//! gets an id that the device echoes; the answer goes to whoever waits for that id, within a
//! deadline.
//!
//! Design: the caller waits on a oneshot per request; `link.rs` publishes the requests from an
//! outbox and hands the answers back by id, so this module never touches MQTT or protobuf. An
//! answer nobody waits for any more (it came after the deadline), or from another device than
//! the one asked, is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// What one kind of request asks a device and what the device answers.
pub trait Exchange: Send + std::fmt::Debug + 'static {
    /// What the device answers when it has what was asked.
    type Answer: Send + std::fmt::Debug + 'static;
    /// Names the kind in logs: `log`, `profile`.
    const NOUN: &'static str;
    /// Why a device may not answer at all, for the caller's error (`offline, or an agent
    /// without logs`).
    const SILENCE: &'static str;
}

/// A request on its way to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked<Q> {
    pub device_id: String,
    pub request_id: String,
    pub query: Q,
}

/// Why a request got no answer to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    #[error("the hub is not connected to the broker")]
    NotConnected,
    #[error("the request was dropped")]
    Dropped,
    #[error("no answer within {seconds} s ({silence})")]
    Silent { seconds: u64, silence: &'static str },
    /// The device answered that it cannot: its own words.
    #[error("{0}")]
    Refused(String),
}

/// What a device said: the answer, or why it has none.
pub type Reply<Q> = Result<<Q as Exchange>::Answer, String>;

type Waiting<Q> = HashMap<String, (String, oneshot::Sender<Reply<Q>>)>;

/// Requests of one kind waiting for their answers; shared by the caller's side and the link.
#[derive(Debug)]
pub struct DeviceRequests<Q: Exchange> {
    outbox: mpsc::UnboundedSender<Asked<Q>>,
    /// Request id → (device asked, where its answer goes).
    waiting: Mutex<Waiting<Q>>,
    next_id: AtomicU64,
}

impl<Q: Exchange> DeviceRequests<Q> {
    /// The requests the link must publish come out of the returned receiver.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Asked<Q>>) {
        let (outbox, requests) = mpsc::unbounded_channel();
        let requests_of_kind = Self {
            outbox,
            waiting: Mutex::default(),
            next_id: AtomicU64::new(1),
        };
        (requests_of_kind, requests)
    }

    /// Sends `query` to `device_id` and waits at most `deadline` for its answer.
    pub async fn ask(
        &self,
        device_id: &str,
        query: Q,
        deadline: Duration,
    ) -> Result<Q::Answer, AskError> {
        // The process id keeps ids apart across hub restarts: a late answer to a request of
        // the previous process must not reach a new caller.
        let request_id = format!(
            "{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (answer, answered) = oneshot::channel();
        self.lock()
            .insert(request_id.clone(), (device_id.to_owned(), answer));
        let asked = Asked {
            device_id: device_id.to_owned(),
            request_id: request_id.clone(),
            query,
        };
        if self.outbox.send(asked).is_err() {
            self.lock().remove(&request_id);
            return Err(AskError::NotConnected);
        }
        // Removed however this ends, a caller that gives up (a cancelled call) included.
        let _forget = Forget {
            requests: self,
            request_id: &request_id,
        };
        match tokio::time::timeout(deadline, answered).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(refused))) => Err(AskError::Refused(refused)),
            Ok(Err(_)) => Err(AskError::Dropped),
            Err(_) => Err(AskError::Silent {
                seconds: deadline.as_secs(),
                silence: Q::SILENCE,
            }),
        }
    }

    /// Hands a device's answer to whoever waits for it; answers from another device than the
    /// one asked, or for no pending request, are dropped.
    pub fn answer(&self, device_id: &str, request_id: &str, reply: Reply<Q>) {
        let mut waiting = self.lock();
        let Some((asked, _)) = waiting.get(request_id) else {
            tracing::debug!(device = %device_id, %request_id, kind = Q::NOUN, "late or unknown answer dropped");
            return;
        };
        if asked != device_id {
            tracing::warn!(device = %device_id, %request_id, kind = Q::NOUN, "answer from a device not asked; dropped");
            return;
        }
        if let Some((_, sender)) = waiting.remove(request_id) {
            let _ = sender.send(reply);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Waiting<Q>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.lock().len()
    }
}

/// Forgets a request when dropped.
struct Forget<'a, Q: Exchange> {
    requests: &'a DeviceRequests<Q>,
    request_id: &'a str,
}

impl<Q: Exchange> Drop for Forget<'_, Q> {
    fn drop(&mut self) {
        self.requests.lock().remove(self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A request whose answer is a number.
    #[derive(Debug, PartialEq)]
    struct Ping(u32);

    impl Exchange for Ping {
        type Answer = u32;
        const NOUN: &'static str = "ping";
        const SILENCE: &'static str = "offline";
    }

    /// Asks edge-1 in the background.
    fn ask_edge_1(
        pings: &Arc<DeviceRequests<Ping>>,
        ping: Ping,
    ) -> tokio::task::JoinHandle<Result<u32, AskError>> {
        let pings = Arc::clone(pings);
        tokio::spawn(async move { pings.ask("edge-1", ping, Duration::from_secs(5)).await })
    }

    #[tokio::test]
    async fn answers_reach_their_request_and_strangers_are_dropped() {
        let (pings, mut outbox) = DeviceRequests::<Ping>::new();
        let pings = Arc::new(pings);
        let asking = ask_edge_1(&pings, Ping(7));
        let asked = outbox.recv().await.expect("published");
        assert_eq!(
            (asked.device_id.as_str(), &asked.query),
            ("edge-1", &Ping(7))
        );
        // Another device cannot answer for edge-1, nor anyone for an unknown request.
        pings.answer("edge-2", &asked.request_id, Ok(1));
        pings.answer("edge-1", "no-such-request", Ok(2));
        pings.answer("edge-1", &asked.request_id, Ok(3));
        assert_eq!(asking.await.expect("task"), Ok(3));
        assert_eq!(pings.waiting(), 0);
    }

    #[tokio::test]
    async fn a_refusal_carries_the_devices_words() {
        let (pings, mut outbox) = DeviceRequests::<Ping>::new();
        let pings = Arc::new(pings);
        let asking = ask_edge_1(&pings, Ping(1));
        let asked = outbox.recv().await.expect("published");
        pings.answer("edge-1", &asked.request_id, Err("busy; ask again".into()));
        assert_eq!(
            asking.await.expect("task"),
            Err(AskError::Refused("busy; ask again".into()))
        );
    }

    #[tokio::test]
    async fn a_silent_device_ends_in_a_clear_error_and_nothing_stays_waiting() {
        let (pings, _outbox) = DeviceRequests::<Ping>::new();
        let answer = pings
            .ask("edge-1", Ping(1), Duration::from_millis(50))
            .await;
        assert_eq!(
            answer.expect_err("no answer").to_string(),
            "no answer within 0 s (offline)"
        );
        assert_eq!(pings.waiting(), 0, "nothing left waiting");
    }

    #[tokio::test]
    async fn without_a_link_the_caller_hears_so_at_once() {
        let (pings, outbox) = DeviceRequests::<Ping>::new();
        drop(outbox);
        let answer = pings.ask("edge-1", Ping(1), Duration::from_secs(5)).await;
        assert_eq!(answer, Err(AskError::NotConnected));
        assert_eq!(pings.waiting(), 0);
    }
}
