//! Who could send the agent's endpoints a request now: their open client connections,
//! counted by whether a connection can have more than one request in flight.
//!
//! Why: an HTTP/1.1 connection sends its next request only after the answer to the last
//! (pipelined requests too are read and answered one at a time), so once every such connection
//! has a request waiting in a batch, and no HTTP/2 or gRPC connection is open, no other
//! request can come until that batch is answered: a batch queue that still waited out its
//! `max_queue_delay` would only delay every request in it (a lone client paid the whole
//! delay on every request). The lanes' polling asks the same census whether one connection is
//! all there is.
//!
//! The counts cover every endpoint of the agent, so a connection to one endpoint keeps
//! another's batches waiting: a wait too many, never a batch dispatched while a request
//! could still join it.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The agent's open client connections, by kind.
#[derive(Debug, Default)]
pub struct Clients {
    /// HTTP/1.x connections: one request at a time each.
    one_at_a_time: AtomicUsize,
    /// HTTP/2 and gRPC connections: any number of requests at once.
    multiplexed: AtomicUsize,
}

/// The census of every endpoint of this agent.
pub static CLIENTS: Clients = Clients::new();

impl Clients {
    pub const fn new() -> Self {
        Self {
            one_at_a_time: AtomicUsize::new(0),
            multiplexed: AtomicUsize::new(0),
        }
    }

    /// Counts a new connection, as HTTP/1 until [`Seat::multiplexing`] says otherwise.
    pub fn seat(&'static self) -> Seat {
        self.one_at_a_time.fetch_add(1, Ordering::Relaxed);
        Seat {
            clients: self,
            multiplexed: false,
        }
    }

    /// Counts a new connection that may carry several requests at once (gRPC).
    pub fn multiplexed_seat(&'static self) -> Seat {
        self.multiplexed.fetch_add(1, Ordering::Relaxed);
        Seat {
            clients: self,
            multiplexed: true,
        }
    }

    /// Whether one connection is open in all: the one asking.
    pub fn alone(&self) -> bool {
        self.one_at_a_time.load(Ordering::Relaxed) + self.multiplexed.load(Ordering::Relaxed) == 1
    }

    /// Whether `requests` waiting requests can be every request that could come now: no
    /// connection can send several at once, and there are at least as many requests as
    /// connections that send one at a time (each waiting request holds its connection).
    pub fn all_waiting(&self, requests: usize) -> bool {
        self.multiplexed.load(Ordering::Relaxed) == 0
            && requests >= self.one_at_a_time.load(Ordering::Relaxed)
    }
}

/// One open connection, counted while it lives.
#[derive(Debug)]
pub struct Seat {
    clients: &'static Clients,
    multiplexed: bool,
}

impl Seat {
    /// The connection turned out to be able to carry several requests at once (HTTP/2).
    pub fn multiplexing(&mut self) {
        if !self.multiplexed {
            self.multiplexed = true;
            self.clients.multiplexed.fetch_add(1, Ordering::Relaxed);
            self.clients.one_at_a_time.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let count = if self.multiplexed {
            &self.clients.multiplexed
        } else {
            &self.clients.one_at_a_time
        };
        count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a connection whose first bytes are `first` may be HTTP/2 (its connection preface,
/// or too few bytes to tell).
pub fn may_be_http2(first: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let known = first.len().min(PREFACE.len());
    first[..known] == PREFACE[..known]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn census() -> &'static Clients {
        Box::leak(Box::new(Clients::new()))
    }

    #[test]
    fn requests_from_every_one_at_a_time_connection_are_all_that_can_come() {
        let clients = census();
        assert!(clients.all_waiting(0), "no connection: nothing can come");
        let first = clients.seat();
        assert!(clients.alone());
        assert!(!clients.all_waiting(0));
        assert!(clients.all_waiting(1));
        let second = clients.seat();
        assert!(!clients.alone());
        assert!(!clients.all_waiting(1), "the second connection may send");
        assert!(clients.all_waiting(2));
        drop(first);
        assert!(clients.all_waiting(1) && clients.alone());
        drop(second);
        assert!(clients.all_waiting(0) && !clients.alone());
    }

    #[test]
    fn a_multiplexed_connection_can_always_send_more() {
        let clients = census();
        let mut h2 = clients.seat();
        h2.multiplexing();
        h2.multiplexing();
        assert!(clients.alone());
        assert!(!clients.all_waiting(100));
        let grpc = clients.multiplexed_seat();
        drop(h2);
        assert!(!clients.all_waiting(100));
        drop(grpc);
        assert!(clients.all_waiting(0));
        assert_eq!(clients.one_at_a_time.load(Ordering::Relaxed), 0);
        assert_eq!(clients.multiplexed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_http2_preface_is_told_from_http1_heads() {
        assert!(may_be_http2(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(may_be_http2(b"PRI"), "too short to tell");
        assert!(may_be_http2(b""), "nothing to tell by");
        assert!(!may_be_http2(b"POST /score HTTP/1.1\r\n"));
        assert!(!may_be_http2(b"GET /v2 HTTP/1.1\r\n"));
    }
}
