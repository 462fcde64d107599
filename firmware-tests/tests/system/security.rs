//! A hub as it runs by default (TLS API, API tokens, MQTT behind the TLS gate) with real
//! processes: devices enroll with one-time bootstrap tokens, serve over mutual TLS, cannot
//! touch each other's topics, and a revoked device is cut off.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use edgeship_hub::trust::pki::Identity;
use edgeship_proto::topics::{self, DeviceTopic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use testkit::{Process, TempDir, binary, eventually, free_port};

use crate::support::{diabetes_rows, log_contains};

/// A TLS hub process and what its clients need.
struct SecureHub {
    _process: Process,
    url: String,
    mqtt_url: String,
    data: PathBuf,
    token: String,
}

impl SecureHub {
    /// A hub with its embedded broker behind the TLS gate.
    fn start(dir: &Path) -> SecureHub {
        Self::start_with(
            dir,
            &["--mqtt-listen", &format!("127.0.0.1:{}", free_port())],
        )
    }

    fn start_with(dir: &Path, mqtt: &[&str]) -> SecureHub {
        let data = dir.join("hub");
        let mut process = Process::spawn(
            "edgeship hub",
            Command::new(binary("edgeship"))
                .args(["hub", "--listen", "127.0.0.1:0"])
                .args(mqtt)
                .arg("--data-dir")
                .arg(&data)
                .env("RUST_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(log_file(&dir.join("hub.log"))),
        );
        let lines = process.read_lines_starting(
            &["edgeship hub listening on ", "edgeship mqtt broker at "],
            Duration::from_secs(30),
        );
        let token = std::fs::read_to_string(data.join("keys/admin.token")).expect("admin token");
        SecureHub {
            _process: process,
            url: lines[0].clone(),
            mqtt_url: lines[1].clone(),
            token: token.trim().to_owned(),
            data,
        }
    }

    /// `edgeship ARGS` as an admin who trusts the hub's CA file.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("edgeship"))
            .args(args)
            .env("EDGESHIP_HUB", &self.url)
            .env("EDGESHIP_HUB_CA", self.data.join("keys/ca.crt"))
            .env("EDGESHIP_TOKEN", &self.token)
            .env_remove("RUST_LOG")
            .output()
            .expect("run edgeship")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "edgeship {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until the hub has heard from `device` (deploying with `--wait` needs that).
    async fn wait_connected(&self, device: &str) {
        eventually(
            Duration::from_secs(30),
            &format!("{device} connects"),
            || {
                let known = self.cli(&["device", "show", device]).status.success();
                async move { known.then_some(()) }
            },
        )
        .await;
    }

    fn bootstrap_token(&self, device: &str, ttl_secs: u64) -> String {
        self.ok(&[
            "device",
            "enroll",
            device,
            "--ttl-secs",
            &ttl_secs.to_string(),
        ])
    }
}

fn log_file(path: &Path) -> Stdio {
    std::fs::File::create(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// `edgeship-agent enroll` into `data`.
fn enroll(hub: &SecureHub, token: &str, data: &Path) -> Output {
    Command::new(binary("edgeship-agent"))
        .args(["enroll", "--hub", &hub.url, "--data-dir"])
        .arg(data)
        .env("EDGESHIP_BOOTSTRAP_TOKEN", token)
        .env_remove("RUST_LOG")
        .output()
        .expect("run edgeship-agent enroll")
}

/// [`enroll`], which must succeed.
fn enrolled(hub: &SecureHub, token: &str, data: &Path) {
    let out = enroll(hub, token, data);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An enrolled agent: nothing but its data folder, since the device id, the broker, its keys
/// and the director key all come from enrollment.
fn run_enrolled(data: &Path, log: &Path) -> Process {
    Process::spawn(
        "edgeship-agent",
        Command::new(binary("edgeship-agent"))
            .args(["run", "--serve-host", "127.0.0.1", "--data-dir"])
            .arg(data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file(log)),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// An MQTT client over TLS with an enrolled device's own certificate, as a device (or an
/// attacker holding its key) would connect; it reports what the connection saw.
async fn device_client(
    hub: &SecureHub,
    identity_dir: &Path,
    client_id: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
) {
    let read = |name: &str| std::fs::read_to_string(identity_dir.join(name)).expect(name);
    let identity = Identity {
        cert_pem: read("device.crt"),
        key_pem: read("device.key"),
    };
    let tls = edgeship_hub::broker::client_tls(&read("ca.crt"), &identity).expect("tls");
    let broker = edgeship_proto::parse_broker(&hub.mqtt_url).expect("broker url");
    let mut options = MqttOptions::new(client_id, broker.host, broker.port);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls),
    )));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(packet)) => {
                    let _ = tx.send(Ok(packet));
                }
                Ok(_) => {}
                Err(err) => {
                    let _ = tx.send(Err(err.to_string()));
                    return;
                }
            }
        }
    });
    (client, rx)
}

/// Waits up to 20 s for the broker to acknowledge a subscription; false if it closes the
/// connection first.
async fn subscription_granted(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
) -> bool {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.recv().await {
            match event {
                Ok(Packet::SubAck(_)) => return true,
                Err(_) => return false,
                Ok(_) => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// Waits up to 20 s for the broker to close the connection (an error before any
/// subscription is acknowledged); panics, naming `what`, if it keeps the connection open.
async fn closed_after(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Packet, String>>,
    what: &str,
) {
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.recv().await {
            match event {
                Err(_) => return true,
                Ok(Packet::SubAck(_)) => return false,
                Ok(_) => {}
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    assert!(closed, "{what}: the broker kept the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_devices_serve_over_mutual_tls_stay_apart_and_a_revoked_one_is_cut_off() {
    let dir = TempDir::new("security");
    let hub = SecureHub::start(dir.path());
    assert!(hub.url.starts_with("https://"), "{}", hub.url);
    assert!(hub.mqtt_url.starts_with("mqtts://"), "{}", hub.mqtt_url);

    // Enrollment: the device's key stays on the device, private.
    let token_a = hub.bootstrap_token("edge-a", 600);
    assert!(token_a.starts_with("esb1."), "{token_a}");
    let data_a = dir.path().join("edge-a");
    enrolled(&hub, &token_a, &data_a);
    let identity_a = data_a.join("identity");
    assert_eq!(mode(&identity_a.join("device.key")), 0o600);
    assert_eq!(mode(&identity_a), 0o700);
    for file in ["device.crt", "ca.crt", "director.pub", "enrollment.toml"] {
        assert!(identity_a.join(file).is_file(), "{file}");
    }
    // A token works once, and not after it expires.
    let out = enroll(&hub, &token_a, &dir.path().join("reused"));
    assert!(!out.status.success(), "a used token enrolled again");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown bootstrap token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = hub.bootstrap_token("edge-late", 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let out = enroll(&hub, &short, &dir.path().join("late"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data_b = dir.path().join("edge-b");
    enrolled(&hub, &hub.bootstrap_token("edge-b", 600), &data_b);

    // The enrolled agent needs nothing but its data folder: id, broker, keys and the
    // director key come from enrollment.
    let agent_log = dir.path().join("edge-a.log");
    let _agent = run_enrolled(&data_a, &agent_log);
    let model = testkit::fixture("diabetes");
    let sample = testkit::fixture("diabetes/sample_input.json");
    hub.ok(&[
        "model",
        "register",
        "-n",
        "diabetes",
        "-p",
        &model.display().to_string(),
        "--sample-input",
        &sample.display().to_string(),
    ]);
    // A model-signing key made offline signs the version here; the deployment requires it.
    let key_file = dir.path().join("signer.key");
    let signer = hub.ok(&[
        "model",
        "keygen",
        "--output",
        &key_file.display().to_string(),
    ]);
    assert!(signer.starts_with("ed25519:"), "{signer}");
    assert_eq!(mode(&key_file), 0o600);
    let signed = hub.ok(&[
        "model",
        "sign",
        "diabetes:1",
        "--key",
        &key_file.display().to_string(),
    ]);
    assert!(signed.contains("signed diabetes:1"), "{signed}");
    let shown = hub.ok(&["model", "show", "diabetes:1"]);
    assert!(shown.contains(&signer), "{shown}");

    // Deploying with --wait needs the device to have connected once.
    hub.wait_connected("edge-a").await;
    let port = free_port();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(
        &manifest,
        format!(
            "name: web\nmodel: diabetes:1\nendpoint: {{port: {port}}}\n\
             target: {{devices: [edge-a]}}\nmodel_signers: [\"{signer}\"]\n"
        ),
    )
    .expect("manifest");
    hub.ok(&[
        "deploy",
        "apply",
        "-f",
        &manifest.display().to_string(),
        "--wait",
    ]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    testkit::assert_diabetes_predictions(
        &testkit::score(addr, &diabetes_rows())
            .await
            .expect("edge-a serves"),
    );

    // Device B, with its own valid certificate, cannot act as A or touch A's topics.
    let identity_b = data_b.join("identity");
    let a_desired = topics::device("edge-a", DeviceTopic::Desired);
    let (client, mut events) = device_client(&hub, &identity_b, "edgeship-agent-edge-b").await;
    client
        .subscribe(&a_desired, QoS::AtLeastOnce)
        .await
        .expect("queue");
    closed_after(&mut events, "B subscribing to A's desired state").await;
    let (client, mut events) = device_client(&hub, &identity_b, "edgeship-agent-edge-b").await;
    client
        .subscribe("edgeship/v1/devices/+/desired", QoS::AtLeastOnce)
        .await
        .expect("queue");
    closed_after(&mut events, "B subscribing to every desired state").await;
    let (client, mut events) = device_client(&hub, &identity_b, "edgeship-agent-edge-b").await;
    client
        .publish(
            topics::device("edge-a", DeviceTopic::Reported),
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .expect("queue");
    closed_after(&mut events, "B publishing A's report").await;
    let (_client, mut events) = device_client(&hub, &identity_b, "edgeship-agent-edge-a").await;
    closed_after(&mut events, "B connecting under A's client id").await;
    // B's own topics are open to it.
    let (client, mut events) = device_client(&hub, &identity_b, "edgeship-agent-edge-b").await;
    client
        .subscribe(
            topics::device("edge-b", DeviceTopic::Desired),
            QoS::AtLeastOnce,
        )
        .await
        .expect("queue");
    let acked = subscription_granted(&mut events).await;
    assert!(acked, "B could not subscribe to its own desired state");
    drop(client);

    // Each connection was closed by the gate, for what it tried.
    let hub_log = dir.path().join("hub.log");
    for reason in [
        ["edge-b subscribed to", "edgeship/v1/devices/edge-a/desired"],
        ["edge-b subscribed to", "edgeship/v1/devices/+/desired"],
        ["edge-b published to", "edgeship/v1/devices/edge-a/reported"],
        ["edge-b connected as client", "edgeship-agent-edge-a"],
    ] {
        eventually(Duration::from_secs(10), &reason.join(" "), || {
            let text = std::fs::read_to_string(&hub_log).unwrap_or_default();
            let seen = text.lines().any(|line| {
                line.contains("closed by the gate") && reason.iter().all(|part| line.contains(part))
            });
            async move { seen.then_some(()) }
        })
        .await;
    }

    // A plaintext MQTT client is refused by the TLS listener.
    let broker = edgeship_proto::parse_broker(&hub.mqtt_url).expect("broker url");
    let mut options = MqttOptions::new("edgeship-agent-edge-b", broker.host, broker.port);
    options.set_keep_alive(Duration::from_secs(5));
    let (_plain, mut plain_events) = AsyncClient::new(options, 4);
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match plain_events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return false,
                Ok(_) => {}
                Err(_) => return true,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(refused, "a plaintext client was accepted");

    // Revocation cuts A off: its open connection is closed, its certificate refused, its
    // pending bootstrap tokens void, while it keeps serving what it had (offline-safe).
    let pending_a = hub.bootstrap_token("edge-a", 600);
    assert!(
        hub.ok(&["device", "revoke", "edge-a"])
            .contains("revoked device edge-a")
    );
    eventually(
        Duration::from_secs(30),
        "edge-a's connection is cut",
        || {
            let cut = log_contains(&agent_log, "broker unreachable");
            async move { cut.then_some(()) }
        },
    )
    .await;
    let out = enroll(&hub, &pending_a, &dir.path().join("pending"));
    assert!(
        !out.status.success(),
        "a revoked device's pending token enrolled it"
    );
    let (_client, mut events) = device_client(&hub, &identity_a, "edgeship-agent-edge-a").await;
    closed_after(&mut events, "a revoked device connecting").await;
    eventually(Duration::from_secs(30), "the gate refuses edge-a", || {
        let seen = log_contains(&hub_log, "device edge-a is revoked");
        async move { seen.then_some(()) }
    })
    .await;
    testkit::assert_diabetes_predictions(
        &testkit::score(addr, &diabetes_rows())
            .await
            .expect("edge-a still serves its last good state"),
    );
    // An admin may enroll the id again: the new certificate is admitted, the old one (as if
    // stolen) stays refused.
    let renewed = dir.path().join("edge-a-again");
    enrolled(&hub, &hub.bootstrap_token("edge-a", 600), &renewed);
    let (client, mut events) =
        device_client(&hub, &renewed.join("identity"), "edgeship-agent-edge-a").await;
    client
        .subscribe(a_desired.clone(), QoS::AtLeastOnce)
        .await
        .expect("queue");
    let acked = subscription_granted(&mut events).await;
    assert!(acked, "the re-enrolled device was refused");
    drop(client);
    let (_client, mut events) = device_client(&hub, &identity_a, "edgeship-agent-edge-a").await;
    closed_after(&mut events, "the superseded certificate").await;
    eventually(
        Duration::from_secs(10),
        "the old certificate refused",
        || {
            let seen = log_contains(&hub_log, "is not its current one");
            async move { seen.then_some(()) }
        },
    )
    .await;

    // No secret reached a log.
    let key_a = std::fs::read_to_string(identity_a.join("device.key")).expect("key");
    let key_body: String = key_a.lines().nth(1).unwrap_or_default().to_owned();
    for log in [&hub_log, &agent_log] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            !text.contains(&key_body),
            "a device key in {}",
            log.display()
        );
        assert!(
            !text.contains(&hub.token),
            "the admin token in {}",
            log.display()
        );
        assert!(
            !text.contains(&token_a),
            "a bootstrap token in {}",
            log.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_configured_by_the_hub_confines_each_device_and_refuses_a_revoked_one() {
    let test = "mosquitto_configured_by_the_hub_confines_each_device_and_refuses_a_revoked_one";
    let Some(mosquitto) = testkit::require_program("mosquitto", test) else {
        return;
    };
    let dir = TempDir::new("mosquitto-tls");
    let port = free_port();
    let hub = SecureHub::start_with(
        dir.path(),
        &["--mqtt-url", &format!("mqtts://127.0.0.1:{port}")],
    );
    assert_eq!(hub.mqtt_url, format!("mqtts://127.0.0.1:{port}"));
    let config = dir.path().join("mosquitto");
    let write_config = || {
        let out = hub.ok(&[
            "broker",
            "mosquitto-config",
            "--output",
            &config.display().to_string(),
            "--port",
            &port.to_string(),
        ]);
        assert!(out.contains("mosquitto -c"), "{out}");
        assert_eq!(mode(&config.join("server.key")), 0o600);
        // This test runs as root; Mosquitto would drop to its own user and not read the key.
        let mut conf = std::fs::read_to_string(config.join("mosquitto.conf")).expect("conf");
        conf.push_str(&format!(
            "user root\nlog_dest file {}\nlog_type all\n",
            config.join("mosquitto.log").display()
        ));
        std::fs::write(config.join("mosquitto.conf"), conf).expect("conf");
    };
    let start_broker = || {
        let process = Process::spawn(
            "mosquitto",
            Command::new(&mosquitto)
                .arg("-c")
                .arg(config.join("mosquitto.conf"))
                .stdout(Stdio::null())
                .stderr(log_file(&dir.path().join("mosquitto.stderr"))),
        );
        assert!(
            testkit::wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10)),
            "mosquitto did not listen"
        );
        process
    };
    write_config();
    let mut broker = start_broker();

    let data_a = dir.path().join("edge-a");
    let data_b = dir.path().join("edge-b");
    for (device, data) in [("edge-a", &data_a), ("edge-b", &data_b)] {
        enrolled(&hub, &hub.bootstrap_token(device, 600), data);
    }
    let agent_log = dir.path().join("edge-a.log");
    let _agent = run_enrolled(&data_a, &agent_log);
    hub.wait_connected("edge-a").await;
    let model = testkit::fixture("diabetes");
    hub.ok(&[
        "model",
        "register",
        "-n",
        "diabetes",
        "-p",
        &model.display().to_string(),
    ]);
    let serve_port = free_port();
    hub.ok(&[
        "deploy",
        "create",
        "web",
        "-m",
        "diabetes:1",
        "--device",
        "edge-a",
        "--port",
        &serve_port.to_string(),
        "--wait",
    ]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], serve_port));
    testkit::assert_diabetes_predictions(
        &testkit::score(addr, &diabetes_rows())
            .await
            .expect("edge-a serves through Mosquitto"),
    );

    // Mosquitto grants subscriptions and filters what it delivers by the ACL: B, asking for
    // every desired state and for A's by name, receives its own (the hub has one for it)
    // and never A's, which is retained on the broker.
    hub.ok(&[
        "deploy",
        "create",
        "web-b",
        "-m",
        "diabetes:1",
        "--device",
        "edge-b",
        "--port",
        &free_port().to_string(),
    ]);
    let identity_b = data_b.join("identity");
    let (client, mut events) = device_client(&hub, &identity_b, "edgeship-agent-edge-b").await;
    let b_desired = topics::device("edge-b", DeviceTopic::Desired);
    for filter in [
        "edgeship/v1/devices/+/desired".to_owned(),
        topics::device("edge-a", DeviceTopic::Desired),
    ] {
        client
            .subscribe(&filter, QoS::AtLeastOnce)
            .await
            .expect("queue");
    }
    let mut delivered = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = events.recv().await {
            match event {
                Ok(Packet::Publish(publish)) => delivered.push(publish.topic),
                Err(err) => panic!("the broker closed B's connection: {err}"),
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        delivered.contains(&b_desired),
        "B did not get its own desired state: {delivered:?}"
    );
    assert!(
        delivered.iter().all(|topic| *topic == b_desired),
        "B received another device's messages: {delivered:?}"
    );
    client
        .publish(
            topics::device("edge-a", DeviceTopic::Reported),
            QoS::AtLeastOnce,
            false,
            b"forged".to_vec(),
        )
        .await
        .expect("queue");
    let mosquitto_log = config.join("mosquitto.log");
    eventually(
        Duration::from_secs(20),
        "Mosquitto denies B's publish",
        || {
            let text = std::fs::read_to_string(&mosquitto_log).unwrap_or_default();
            let denied = text.lines().any(|line| {
                line.contains("Denied PUBLISH from edgeship-agent-edge-b")
                    && line.contains("edgeship/v1/devices/edge-a/reported")
            });
            async move { denied.then_some(()) }
        },
    )
    .await;
    drop(client);

    // Revoked: after the configuration is written again (with the revocation list) and
    // Mosquitto restarts, A's certificate no longer gets a connection.
    hub.ok(&["device", "revoke", "edge-a"]);
    broker.terminate(Duration::from_secs(5));
    write_config();
    let _broker = start_broker();
    let (_client, mut events) =
        device_client(&hub, &data_a.join("identity"), "edgeship-agent-edge-a").await;
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.recv().await {
            match event {
                Ok(Packet::ConnAck(_)) => return false,
                Err(_) => return true,
                Ok(_) => {}
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    assert!(refused, "Mosquitto accepted a revoked certificate");
    // B is still welcome.
    let (client, mut events) = device_client(&hub, &identity_b, "edgeship-agent-edge-b").await;
    client
        .subscribe(
            topics::device("edge-b", DeviceTopic::Desired),
            QoS::AtLeastOnce,
        )
        .await
        .expect("queue");
    let acked = subscription_granted(&mut events).await;
    assert!(acked, "B was refused after A's revocation");
}
