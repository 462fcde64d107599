//! Brief polling for a kept-alive connection's next request, when it is the only connection
//! the agent's endpoints have (`clients`), instead of going to sleep in the kernel until it
//! comes.
//!
//! Why: with one connection, a client that sends its next request as soon as it has read an
//! answer found the lane asleep every time, and waking a sleeping thread (on a virtual
//! machine, an idle core with it) was most of a round trip (docs/benchmarks.md, *Scoring
//! throughput*). Polling is bounded so that it costs no other work its CPU:
//! - only the agent's one connection polls: with two, a lane polling for one took the core
//!   that the other's lane (or a local client) was waiting for, 0.85× the rate at two
//!   connections on two cores; with more, some request is nearly always waiting;
//! - a poll lasts at most the window after the answer;
//! - a connection whose client did not come within the window polls again only after twice as
//!   many requests as before (up to 1,024), so a slow or sporadic client costs next to nothing.
//!
//! `EDGESHIP_LANE_POLL_US` sets the window in microseconds (default 100); `0` turns polling
//! off, for a device where every milliwatt counts more than a round trip's time.

use std::io::{ErrorKind, Read as _};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::serve::clients::CLIENTS;

/// How long a lane polls after an answer when nothing else says: a client on the same host
/// or a fast network turns around well within it, and a miss costs one window.
const DEFAULT_WINDOW: Duration = Duration::from_micros(100);

/// The longest window `EDGESHIP_LANE_POLL_US` may set: past it, polling would hold a core
/// for longer than any wake-up it saves.
const MAX_WINDOW: Duration = Duration::from_millis(10);

/// The longest a connection that keeps missing goes between polls, in requests.
const MAX_SKIP_SHIFT: u32 = 10;

/// How much one poll reads at most: a small request whole; more comes the ordinary way.
const POLL_READ: usize = 4096;

/// The polling window, from `EDGESHIP_LANE_POLL_US` or [`DEFAULT_WINDOW`].
fn window() -> Duration {
    static WINDOW: OnceLock<Duration> = OnceLock::new();
    *WINDOW.get_or_init(|| match std::env::var("EDGESHIP_LANE_POLL_US") {
        Ok(value) => window_from(&value),
        Err(_) => DEFAULT_WINDOW,
    })
}

/// The window `EDGESHIP_LANE_POLL_US=value` sets; a value that is not a number of
/// microseconds, or over [`MAX_WINDOW`], is named in a warning and not taken.
fn window_from(value: &str) -> Duration {
    match value.trim().parse::<u64>().map(Duration::from_micros) {
        Ok(window) if window <= MAX_WINDOW => window,
        Ok(_) => {
            tracing::warn!(
                value,
                "EDGESHIP_LANE_POLL_US is over 10000 (10 ms); polling for 10 ms at most"
            );
            MAX_WINDOW
        }
        Err(_) => {
            tracing::warn!(
                value,
                "EDGESHIP_LANE_POLL_US is not a number of microseconds; polling for the default 100"
            );
            DEFAULT_WINDOW
        }
    }
}

/// One connection's pace: when it was last answered, and how its client kept up.
#[derive(Debug, Default)]
pub(in crate::serve) struct Pace {
    answered: Option<Instant>,
    /// Polls that found nothing in a row (capped).
    misses: u32,
    /// Requests to let pass before the next poll.
    skip: u32,
}

impl Pace {
    /// An answer has just been written.
    pub(in crate::serve) fn answered(&mut self) {
        self.answered = Some(Instant::now());
    }

    /// Polls `stream` for the next request's bytes, within the window after the last answer,
    /// where this lane and connection may; true when bytes were read into `buf`. False leaves
    /// the wait (and an end of stream, or an error) to the ordinary read.
    pub(in crate::serve) fn poll(&mut self, stream: &TcpStream, buf: &mut BytesMut) -> bool {
        let Some(answered) = self.answered.take() else {
            return false;
        };
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        let window = window();
        if window.is_zero() || !CLIENTS.alone() {
            return false;
        }
        let socket = socket2::SockRef::from(stream);
        let start = buf.len();
        buf.resize(start + POLL_READ, 0);
        let read = loop {
            match (&*socket).read(&mut buf[start..]) {
                Ok(0) => break None,
                Ok(read) => break Some(read),
                Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
            if !CLIENTS.alone() {
                break None;
            }
            if answered.elapsed() >= window {
                self.misses = (self.misses + 1).min(MAX_SKIP_SHIFT);
                self.skip = (1 << self.misses) - 1;
                break None;
            }
            std::hint::spin_loop();
        };
        buf.truncate(start + read.unwrap_or(0));
        if read.is_some() {
            self.misses = 0;
        }
        read.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: the served side and the client.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (served, _) = listener.accept().await.expect("accept");
        (served, client)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_connection_reads_its_next_request_by_polling_and_backs_off_after_misses() {
        let (served, mut client) = pair().await;
        let seat = CLIENTS.seat();
        let mut pace = Pace::default();
        let mut buf = BytesMut::new();
        assert!(!pace.poll(&served, &mut buf), "nothing answered yet");

        pace.answered();
        client.write_all(b"POST /score").await.expect("write");
        let started = Instant::now();
        while !pace.poll(&served, &mut buf) {
            // The bytes are on loopback at once, but a loaded machine may delay them past one
            // window, and another test's connection on the lanes makes a poll give way.
            assert!(started.elapsed() < Duration::from_secs(5), "never read");
            pace.answered();
            pace.skip = 0;
        }
        assert_eq!(&buf[..], b"POST /score");

        // A client that does not come: one window's wait, then polls only every 2nd, 4th, ...
        // request. (Another test's connection on the lanes makes a poll give way without a
        // miss: ask again.)
        buf.clear();
        pace = Pace::default();
        for misses in [1, 2] {
            let started = Instant::now();
            loop {
                assert!(started.elapsed() < Duration::from_secs(5), "never missed");
                pace.answered();
                let waited = Instant::now();
                assert!(!pace.poll(&served, &mut buf));
                assert!(buf.is_empty(), "nothing read is nothing kept");
                if pace.misses == misses {
                    assert!(waited.elapsed() >= window());
                    break;
                }
            }
            assert_eq!(pace.skip, (1 << misses) - 1);
            for _ in 0..pace.skip {
                pace.answered();
                assert!(!pace.poll(&served, &mut buf), "skipped");
            }
            assert_eq!(pace.skip, 0);
        }
        drop(seat);
    }

    #[test]
    fn the_window_setting_is_read_in_microseconds_and_a_bad_one_is_not_taken() {
        assert_eq!(window_from("250"), Duration::from_micros(250));
        assert_eq!(window_from(" 0 "), Duration::ZERO);
        assert_eq!(window_from("fast"), DEFAULT_WINDOW);
        assert_eq!(window_from("-5"), DEFAULT_WINDOW);
        assert_eq!(window_from("99999999999"), MAX_WINDOW);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn two_connections_or_a_closed_one_do_not_poll() {
        let (served, mut client) = pair().await;
        let (_other, _other_client) = pair().await;
        let seats = (CLIENTS.seat(), CLIENTS.seat());
        client.write_all(b"POST /score").await.expect("write");
        let mut pace = Pace::default();
        let mut buf = BytesMut::new();
        pace.answered();
        assert!(!pace.poll(&served, &mut buf), "two connections: no polling");
        assert!(buf.is_empty());
        assert_eq!(pace.misses, 0, "not polling is not a miss");
        drop(seats);

        let (served, client) = pair().await;
        drop(client);
        let _seat = CLIENTS.seat();
        pace.answered();
        assert!(
            !pace.poll(&served, &mut buf),
            "the end of the stream is left to the ordinary read"
        );
    }
}
