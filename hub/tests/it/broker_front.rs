//! Clients that used to break the embedded broker for everyone (rumqttd 0.20 panicked with a
//! lock held when a client id connected again after a connection that ended during setup, or
//! after an id its router refused): the broker's front now takes those cases away, and the
//! broker keeps serving everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::TestHub;

fn broker_addr(hub: &TestHub) -> SocketAddr {
    let (host, port) = edgeship_hub::server::parse_mqtt_url(&hub.mqtt_url()).expect("url");
    format!("{host}:{port}").parse().expect("address")
}

/// Opens a TCP connection and sends a CONNECT for `client_id`.
async fn send_connect(broker: SocketAddr, client_id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(broker).await.expect("connect");
    let mut bytes = BytesMut::new();
    rumqttc::Connect::new(client_id)
        .write(&mut bytes)
        .expect("encode");
    stream.write_all(&bytes).await.expect("send CONNECT");
    stream
}

/// Whether a CONNACK comes back within 5 s.
async fn connack(stream: &mut TcpStream) -> bool {
    let mut first = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut first)).await,
        Ok(Ok(_)) if first[0] == 0x20
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_broke_the_embedded_broker_leave_it_serving_everyone_else() {
    let hub = TestHub::start().await;
    let broker = broker_addr(&hub);

    // An id the router refuses, twice: refused with the reason, nobody else affected.
    for _ in 0..2 {
        let mut refused = send_connect(broker, "bad/id").await;
        assert!(
            !connack(&mut refused).await,
            "a client id with '/' was taken"
        );
    }

    // A reconnect storm: 30 rounds of 12 connections sharing 3 client ids, half of them
    // vanishing right after their CONNECT, the rest right after their CONNACK.
    for round in 0..30 {
        let clients = (0..12).map(|i| async move {
            let mut stream = send_connect(broker, &format!("storm-{}", i % 3)).await;
            if (round + i) % 2 == 0 {
                let _ = connack(&mut stream).await;
            }
        });
        futures::future::join_all(clients).await;
    }

    // Everyone else is still welcome, under fresh ids and under the storm's ids.
    for id in ["after-the-storm", "storm-0", "storm-1", "storm-2"] {
        let mut stream = send_connect(broker, id).await;
        assert!(
            connack(&mut stream).await,
            "{id} got no CONNACK after the storm"
        );
    }
}
