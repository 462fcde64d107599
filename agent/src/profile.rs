//! Profiles (`edgeship model profile`, Azure ML's `Model.profile`): the agent loads one of its
//! own endpoints from inside the device, at each concurrency level in turn, and measures what
//! callers would see (latency, throughput, failures) and what it costs the device (cores kept
//! busy, resident memory). The hub turns the figures into a recommendation.
//!
//! Design: one keep-alive HTTP/1.1 connection per concurrent caller, each sending the same
//! request as soon as the last one is answered (a closed loop, as wrk does); a sampler reads
//! the process's CPU time and memory from `/proc/self` while the level runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use edgeship_domain::{DeviceProfile, ProfileLevel};

use crate::link::ProfileRequest;

/// The agent's resident memory, from `/proc/self/status` (0 where there is none).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The CPU time the agent process has used, user and system.
fn cpu_time() -> Duration {
    cpu_time_of("/proc/self/stat")
}

/// The CPU time the calling thread has used, user and system.
fn thread_cpu_time() -> Duration {
    cpu_time_of("/proc/thread-self/stat")
}

/// User and system time from a `/proc` `stat` file.
fn cpu_time_of(stat: &str) -> Duration {
    // USER_HZ: /proc reports times in ticks of 1/100 s on every Linux architecture.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command (which may hold spaces), from field 3 on: utime is 14, stime 15.
    let after_command = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 1000 / TICKS_PER_SECOND)
}

/// Runs every level of `request` against the endpoint at `addr`.
pub async fn run(
    addr: SocketAddr,
    request: &ProfileRequest,
    load_bytes: u64,
) -> Result<DeviceProfile, String> {
    let wire = Arc::new(wire_request(request));
    let start_rss_bytes = rss_bytes();
    let mut levels = Vec::with_capacity(request.concurrency.len());
    for &connections in &request.concurrency {
        let length = Duration::from_secs(u64::from(request.seconds_per_level));
        levels.push(level(addr, &wire, connections, length).await?);
    }
    Ok(DeviceProfile {
        levels,
        load_bytes,
        start_rss_bytes,
        cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    })
}

/// The request's bytes on the wire, sent unchanged every time.
fn wire_request(request: &ProfileRequest) -> Vec<u8> {
    let mut wire = format!(
        "POST {} HTTP/1.1\r\nhost: localhost\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
        request.path,
        request.content_type,
        request.body.len()
    )
    .into_bytes();
    wire.extend_from_slice(&request.body);
    wire
}

/// One level: `connections` callers for `length`, and the process's figures meanwhile.
async fn level(
    addr: SocketAddr,
    wire: &Arc<Vec<u8>>,
    connections: u32,
    length: Duration,
) -> Result<ProfileLevel, String> {
    let peak = Arc::new(AtomicU64::new(rss_bytes()));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let cpu_before = cpu_time();
    let started = Instant::now();
    // The callers run on a thread of their own, whose CPU time is then taken out of the
    // process's: what remains is what serving the requests cost the device.
    let wire = Arc::clone(wire);
    let (outcome, callers_cpu) = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the profile's callers: {err}"))?;
        let cpu_before = thread_cpu_time();
        let outcome = runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + length;
            let callers: Vec<_> = (0..connections)
                .map(|_| tokio::spawn(caller(addr, Arc::clone(&wire), deadline)))
                .collect();
            futures::future::join_all(callers).await
        });
        Ok::<_, String>((outcome, thread_cpu_time().saturating_sub(cpu_before)))
    })
    .await
    .map_err(|err| format!("the profile's callers failed: {err}"))??;
    let mut latencies = Vec::new();
    let mut errors = 0;
    for caller in outcome {
        let (mine, failed) = caller.map_err(|err| format!("a profile caller failed: {err}"))?;
        latencies.extend(mine);
        errors += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_time()
        .saturating_sub(cpu_before)
        .saturating_sub(callers_cpu)
        .as_secs_f64();
    sampler.abort();
    if latencies.is_empty() {
        return Err(format!(
            "no request succeeded at {connections} connections in {seconds:.1} s ({errors} failed: check that the input is a request the endpoint accepts)"
        ));
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i] as f64 / 1000.0
    };
    Ok(ProfileLevel {
        concurrency: connections,
        requests: latencies.len() as u64,
        errors,
        seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        cpu_cores: cpu / seconds,
        peak_rss_bytes: peak.load(Ordering::Relaxed),
    })
}

/// One caller until `deadline`: the answered requests' latencies in µs, and the failures
/// (any status but 2xx, or a broken connection, after which it connects again).
async fn caller(
    addr: SocketAddr,
    wire: Arc<Vec<u8>>,
    deadline: tokio::time::Instant,
) -> (Vec<u64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buffer = Vec::with_capacity(4096);
    let mut connection: Option<TcpStream> = None;
    while tokio::time::Instant::now() < deadline {
        let stream = match connection.as_mut() {
            Some(stream) => stream,
            None => match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    connection.insert(stream)
                }
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let answered = tokio::time::timeout_at(
            deadline + Duration::from_secs(10),
            exchange(stream, &wire, &mut buffer),
        )
        .await;
        match answered {
            // Only a success counts: a refused request (4xx) measures the refusal, not the model.
            Ok(Ok(status)) if (200..300).contains(&status) => {
                latencies.push(sent.elapsed().as_micros() as u64)
            }
            Ok(Ok(_)) => errors += 1,
            _ => {
                errors += 1;
                connection = None;
            }
        }
    }
    (latencies, errors)
}

/// Sends the request and reads the whole response; its status.
async fn exchange(
    stream: &mut TcpStream,
    wire: &[u8],
    buffer: &mut Vec<u8>,
) -> std::io::Result<u16> {
    stream.write_all(wire).await?;
    buffer.clear();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > 64 * 1024 {
            return Err(std::io::Error::other("response headers too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| std::io::Error::other("a response without content-length"))?;
    let mut remaining = (head_end + length).saturating_sub(buffer.len());
    let mut chunk = [0u8; 4096];
    while remaining > 0 {
        let n = stream.read(&mut chunk[..remaining.min(4096)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        remaining -= n;
    }
    Ok(status)
}
