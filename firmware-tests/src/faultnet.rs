//! A fault-injecting TCP proxy for the link between an agent and its broker: added latency,
//! a bandwidth cap, partitions (nothing flows, connections held open or cut and refused) and
//! cut connections. These machines have no `tc netem`, so faults are made here, in user
//! space, on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the link does right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkMode {
    /// Bytes flow as they come.
    Clear,
    /// Every piece of data arrives `delay` after it was sent, in each direction.
    Slow {
        delay: Duration,
        /// At most this many bytes a second in each direction (0: no cap).
        bytes_per_second: u64,
    },
    /// Nothing flows: connections stay open, their bytes wait (a cable pulled out briefly).
    Blackhole,
    /// Every connection is cut and new ones are refused (a link that is down).
    Down,
}

/// The proxy: listens on loopback, forwards to the broker, obeys [`FaultProxy::set`].
#[derive(Debug)]
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<(LinkMode, u64)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, watcher) = watch::channel((LinkMode::Clear, 0));
        let task = tokio::spawn(accept(listener, upstream, watcher));
        FaultProxy { addr, mode, task }
    }

    /// `mqtt://` URL of the proxy, for the agent.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_modify(|(current, _)| *current = mode);
    }

    /// Cuts every open connection (both sides see a reset), keeping the mode.
    pub fn cut(&self) {
        self.mode.send_modify(|(_, epoch)| *epoch += 1);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    watcher: watch::Receiver<(LinkMode, u64)>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if watcher.borrow().0 == LinkMode::Down {
            drop(client);
            continue;
        }
        let watcher = watcher.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let mut cut = watcher.clone();
            let epoch = cut.borrow().1;
            let pumps = async {
                tokio::join!(
                    pump(client_read, server_write, watcher.clone()),
                    pump(server_read, client_write, watcher.clone())
                )
            };
            tokio::select! {
                _ = pumps => {}
                _ = cut.wait_for(|(mode, now)| *now != epoch || *mode == LinkMode::Down) => {}
            }
        });
    }
}

/// One direction: reads, stamps each piece with its arrival time, and a writer releases it
/// once the current mode allows (delay, rate, blackhole).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    watcher: watch::Receiver<(LinkMode, u64)>,
) {
    // Bounded: a stalled writer stops the reader, so TCP's own flow control holds the rest.
    let (pieces, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if pieces
                        .send((Instant::now(), buffer[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut watcher = watcher;
        while let Some((arrived, piece)) = queued.recv().await {
            loop {
                let mode = watcher.borrow().0;
                match mode {
                    LinkMode::Clear => break,
                    LinkMode::Slow { delay, .. } => {
                        tokio::time::sleep_until(arrived + delay).await;
                        break;
                    }
                    LinkMode::Blackhole | LinkMode::Down => {
                        if watcher.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if to.write_all(&piece).await.is_err() {
                return;
            }
            let mode = watcher.borrow().0;
            if let LinkMode::Slow {
                bytes_per_second, ..
            } = mode
                && bytes_per_second > 0
            {
                let pause = piece.len() as f64 / bytes_per_second as f64;
                tokio::time::sleep(Duration::from_secs_f64(pause)).await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}
