//! Free ports for the processes a test starts.

/// The lowest port handed out.
const LOWEST: u16 = 10_000;

/// A port that was free a moment ago, from below the kernel's ephemeral range where it can:
/// a port from that range may be taken, before its user listens on it, as the local port of
/// any outgoing connection on the machine (a fault trial's endpoint once failed so, with
/// "address already in use"). A process walks its ports in order from a start of its own,
/// so it never hands out one port twice and parallel test processes seldom meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    if ephemeral_low > LOWEST + 1_000 {
        let span = u64::from(ephemeral_low - LOWEST);
        static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let start = *START.get_or_init(|| {
            let since_epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            crate::trials::Rng::new(u64::from(std::process::id()) ^ since_epoch.as_nanos() as u64)
                .below(span)
        });
        for _ in 0..span.min(500) {
            let step = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOWEST + ((start + step) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn ports_come_from_below_the_ephemeral_range_bindable_and_never_twice() {
        let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("Linux")
            .split_whitespace()
            .next()
            .and_then(|low| low.parse().ok())
            .expect("a range");
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port handed out twice");
        for port in ports {
            // Where the range starts too low to leave room below it, any free port will do.
            if ephemeral_low > LOWEST + 1_000 {
                assert!(port < ephemeral_low, "{port} is in the ephemeral range");
            }
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
