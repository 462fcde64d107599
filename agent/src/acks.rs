//! Deferred, ordered MQTT acknowledgements: a blob chunk is acknowledged only once the
//! download has written it (or let it go), so chunks lost with a killed agent are delivered
//! again by the broker's persistent session, in order, instead of being requested again.
//!
//! Design: brokers expect acknowledgements in the order the publishes arrived (rumqttd drops
//! a connection on an out-of-order one), so one task owns the queue and acknowledges from the
//! front. A message nobody has finished with after `HOLD` is acknowledged anyway: brokers
//! limit the unacknowledged messages per client (Mosquitto: 20), and a chunk left in a queue
//! must never hold back a desired state behind it. A reconnect forgets what the old connection
//! held; the broker delivers those messages again on the new one.

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest an acknowledgement waits for the download to finish with its chunk (a download
/// writes one in milliseconds; a chunk untaken this long has no download to take it).
const HOLD: Duration = Duration::from_secs(1);

enum AckEvent {
    Received { seq: u64, qos: QoS, pkid: u16 },
    Done(u64),
    Reconnected,
}

/// The poll loop's side: registers every publish that needs an acknowledgement.
#[derive(Debug)]
pub struct Acks {
    events: mpsc::UnboundedSender<AckEvent>,
    next_seq: u64,
}

/// Acknowledges its message (in order with the others) when dropped.
#[derive(Debug)]
pub struct AckToken {
    seq: u64,
    events: mpsc::UnboundedSender<AckEvent>,
}

impl Drop for AckToken {
    fn drop(&mut self) {
        let _ = self.events.send(AckEvent::Done(self.seq));
    }
}

impl std::fmt::Debug for AckEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Received { seq, pkid, .. } => write!(f, "received #{seq} (pkid {pkid})"),
            Self::Done(seq) => write!(f, "done #{seq}"),
            Self::Reconnected => f.write_str("reconnected"),
        }
    }
}

impl Acks {
    /// Starts the task that sends acknowledgements through `client`.
    pub fn start(client: AsyncClient) -> (Self, tokio::task::JoinHandle<()>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(acknowledge(client, receiver));
        (
            Self {
                events,
                next_seq: 0,
            },
            task,
        )
    }

    /// Registers a received publish; `None` for QoS 0, which needs no acknowledgement.
    pub fn track(&mut self, publish: &Publish) -> Option<AckToken> {
        if publish.qos == QoS::AtMostOnce {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let _ = self.events.send(AckEvent::Received {
            seq,
            qos: publish.qos,
            pkid: publish.pkid,
        });
        Some(AckToken {
            seq,
            events: self.events.clone(),
        })
    }

    /// A new connection: what the old one held will be delivered again.
    pub fn reconnected(&self) {
        let _ = self.events.send(AckEvent::Reconnected);
    }
}

struct Pending {
    qos: QoS,
    pkid: u16,
    done: bool,
    received: Instant,
}

async fn acknowledge(client: AsyncClient, mut events: mpsc::UnboundedReceiver<AckEvent>) {
    let mut queue: VecDeque<Pending> = VecDeque::new();
    // The sequence number of the queue's front.
    let mut first_seq = 0u64;
    loop {
        let hold_until = queue.front().map(|p| p.received + HOLD);
        tokio::select! {
            event = events.recv() => match event {
                None => return,
                Some(AckEvent::Received { seq, qos, pkid }) => {
                    if queue.is_empty() {
                        first_seq = seq;
                    }
                    queue.push_back(Pending { qos, pkid, done: false, received: Instant::now() });
                }
                Some(AckEvent::Done(seq)) => {
                    // A token from before a reconnect finds nothing (its entry was dropped).
                    if let Some(pending) = seq
                        .checked_sub(first_seq)
                        .and_then(|i| queue.get_mut(usize::try_from(i).ok()?))
                    {
                        pending.done = true;
                    }
                }
                Some(AckEvent::Reconnected) => {
                    first_seq += queue.len() as u64;
                    queue.clear();
                }
            },
            _ = tokio::time::sleep_until(hold_until.unwrap_or_else(far_future)), if hold_until.is_some() => {
                if let Some(front) = queue.front_mut() {
                    front.done = true;
                }
            }
        }
        while queue.front().is_some_and(|p| p.done) {
            let Some(pending) = queue.pop_front() else {
                break;
            };
            first_seq += 1;
            let mut ack = Publish::new("", pending.qos, Vec::new());
            ack.pkid = pending.pkid;
            if client.ack(&ack).await.is_err() {
                // The event loop is gone: nothing more can be acknowledged.
                return;
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::Request;

    /// Acks whose client feeds a queue the test reads instead of an event loop.
    fn harness() -> (Acks, flume::Receiver<Request>) {
        let (requests, sent) = flume::bounded(64);
        let (acks, _task) = Acks::start(AsyncClient::from_senders(requests));
        (acks, sent)
    }

    fn publish(pkid: u16) -> Publish {
        let mut p = Publish::new("t", QoS::AtLeastOnce, vec![1]);
        p.pkid = pkid;
        p
    }

    async fn next_ack(sent: &flume::Receiver<Request>) -> u16 {
        let request = tokio::time::timeout(Duration::from_secs(5), sent.recv_async())
            .await
            .expect("an acknowledgement in time")
            .expect("request queue open");
        match request {
            Request::PubAck(ack) => ack.pkid,
            other => panic!("expected a PubAck, got {other:?}"),
        }
    }

    async fn nothing_sent(sent: &flume::Receiver<Request>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), sent.recv_async())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn acknowledges_in_arrival_order_whatever_order_tokens_finish() {
        let (mut acks, sent) = harness();
        let first = acks.track(&publish(1)).expect("qos 1");
        let second = acks.track(&publish(2)).expect("qos 1");
        let third = acks.track(&publish(3)).expect("qos 1");
        drop(third);
        drop(second);
        assert!(
            nothing_sent(&sent).await,
            "nothing goes out before the first is done"
        );
        drop(first);
        assert_eq!(next_ack(&sent).await, 1);
        assert_eq!(next_ack(&sent).await, 2);
        assert_eq!(next_ack(&sent).await, 3);
    }

    #[tokio::test]
    async fn a_held_message_is_acknowledged_after_the_hold() {
        let (mut acks, sent) = harness();
        let held = acks.track(&publish(7)).expect("qos 1");
        let after = acks.track(&publish(8)).expect("qos 1");
        drop(after);
        let started = Instant::now();
        assert_eq!(next_ack(&sent).await, 7);
        assert!(started.elapsed() >= HOLD);
        assert_eq!(next_ack(&sent).await, 8);
        drop(held);
        assert!(nothing_sent(&sent).await, "a message is acknowledged once");
    }

    #[tokio::test]
    async fn a_reconnect_forgets_what_the_old_connection_held() {
        let (mut acks, sent) = harness();
        let old = acks.track(&publish(1)).expect("qos 1");
        acks.reconnected();
        let new = acks.track(&publish(2)).expect("qos 1");
        drop(old);
        drop(new);
        assert_eq!(next_ack(&sent).await, 2);
        assert!(
            nothing_sent(&sent).await,
            "the old connection's message is not acknowledged on the new one"
        );
    }

    #[tokio::test]
    async fn qos0_needs_no_acknowledgement() {
        let (mut acks, _sent) = harness();
        let publish = Publish::new("t", QoS::AtMostOnce, vec![1]);
        assert!(acks.track(&publish).is_none());
    }
}
