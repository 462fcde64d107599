//! A TCP proxy between an agent and its broker that damages one large MQTT PUBLISH on its
//! way to the agent: a bit flip in transit that TCP's checksum did not catch.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Listens on a free port; forwards to `broker`; corrupts the first `corrupt` PUBLISH packets
/// larger than 100 KB that flow from the broker to the client.
pub async fn start(broker: SocketAddr, corrupt: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let corrupted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&corrupted);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(broker).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (upstream_read, mut upstream_write) = upstream.into_split();
            tokio::spawn(async move {
                let mut client_read = client_read;
                let _ = tokio::io::copy(&mut client_read, &mut upstream_write).await;
            });
            let counter = Arc::clone(&counter);
            tokio::spawn(downstream(upstream_read, client_write, counter, corrupt));
        }
    });
    (addr, corrupted)
}

async fn downstream(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    corrupted: Arc<AtomicUsize>,
    limit: usize,
) -> std::io::Result<()> {
    loop {
        let header = from.read_u8().await?;
        // Remaining length: MQTT's variable-length integer.
        let mut length_bytes = Vec::new();
        let mut length = 0usize;
        let mut shift = 0;
        loop {
            let byte = from.read_u8().await?;
            length_bytes.push(byte);
            length |= usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; length];
        from.read_exact(&mut body).await?;
        let is_publish = header >> 4 == 3;
        if is_publish && length > 100_000 && corrupted.load(Ordering::SeqCst) < limit {
            // The middle of a blob chunk's payload is its data field.
            body[length / 2] ^= 0x5a;
            corrupted.fetch_add(1, Ordering::SeqCst);
        }
        to.write_u8(header).await?;
        to.write_all(&length_bytes).await?;
        to.write_all(&body).await?;
    }
}
