//! Container workloads through manifests, on a real agent driving the real Docker engine:
//! images delivered as registered artifacts (these machines have no registry), the agent's
//! proxy with auth in front, blue/green switches under a scoring loop, a broken version that
//! leaves the old one serving with its log lines in the report, adoption after kill -9,
//! deletion of container and image, the out-of-memory killer, and bad input leaving nothing
//! behind. Without Docker, the musl target or busybox-static: a `SKIP:` line (a failure under
//! `EDGESHIP_CI=1`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgeship_hub::client;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use testkit::{
    HubProcess, TempDir, edgeship, eventually, free_port, package_archive, register_diabetes_cli,
    start_agent_with,
};

use crate::engine::{
    EngineCleanup, busybox_image, docker, labelled_containers, skip, static_agent_or_skip,
    static_busybox, try_docker,
};
use crate::support::{diabetes_rows, wait_serving};

const LIMIT: Duration = Duration::from_secs(120);
/// The browser origin the scoring endpoint allows.
const ORIGIN: &str = "https://app.example";

/// The device's view of a deployment: state, error, what serves.
async fn device_view(hub: &str, deployment: &str) -> Option<pb::DeviceWorkload> {
    let mut client = DeploymentsClient::connect(hub.to_owned()).await.ok()?;
    let d = client
        .get_deployment(pb::GetDeploymentRequest {
            name: format!("deployments/{deployment}"),
        })
        .await
        .ok()?
        .into_inner();
    d.devices.into_iter().next()
}

/// Waits until the device reports the deployment `Failed` with an error containing `text`;
/// returns the error.
async fn wait_failed(hub: &str, deployment: &str, text: &str) -> String {
    eventually(
        LIMIT,
        &format!("{deployment} failed with {text:?}"),
        || async {
            let view = device_view(hub, deployment).await?;
            (view.state() == pb::ServiceState::Failed && view.error.contains(text))
                .then_some(view.error)
        },
    )
    .await
}

fn apply(hub: &str, dir: &Path, name: &str, manifest: &str) {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, manifest).expect("manifest");
    edgeship(hub, &["deploy", "apply", "-f", &path.to_string_lossy()]);
}

async fn primary_key(hub: &str, deployment: &str) -> String {
    let channel = client::channel(hub).await.expect("channel");
    DeploymentsClient::new(channel)
        .get_deployment_keys(pb::GetDeploymentKeysRequest {
            name: format!("deployments/{deployment}"),
        })
        .await
        .expect("keys")
        .into_inner()
        .primary_key
}

async fn score_with(addr: SocketAddr, key: Option<&str>) -> Option<testkit::HttpResponse> {
    let body = diabetes_rows().to_string();
    let bearer = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("content-type", "application/json")];
    headers.extend(bearer.as_deref().map(|b| ("authorization", b)));
    testkit::http(addr, "POST", "/score", &headers, body.as_bytes())
        .await
        .ok()
}

/// Scores in a loop until stopped; returns the failures (with why) and the versions that
/// answered, in order of first answer.
fn scoring_loop(
    addr: SocketAddr,
    key: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let (mut failures, mut versions) = (Vec::new(), Vec::<String>::new());
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            match score_with(addr, Some(&key)).await {
                Some(r) if r.status == 200 => {
                    let version = r.header("x-edgeship-model").unwrap_or_default().to_owned();
                    if !versions.contains(&version) {
                        versions.push(version);
                    }
                }
                Some(r) => failures.push(format!("{}: {}", r.status, r.body)),
                None => failures.push("no answer".into()),
            }
        }
        (failures, versions)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_workload_is_proxied_switched_blue_green_adopted_and_deleted() {
    let Some(agent_binary) = static_agent_or_skip("container_workload_lifecycle").await else {
        return;
    };
    let dir = TempDir::new("containers");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let url = hub.url.clone();
    let device = format!("ctr-{}", std::process::id());
    let tag = format!("edgeship-test/scorer:{}", std::process::id());
    let _cleanup = EngineCleanup {
        device: device.clone(),
        images: vec![tag.clone()],
    };
    let archive = dir.path().join("scorer.tar");
    register_diabetes_cli(&url);
    package_archive(&url, "diabetes:1", &agent_binary, &tag, &archive);
    // The engine has no copy: the agent must load the artifact it downloads.
    let _ = try_docker(&["rmi", &tag]);
    edgeship(
        &url,
        &[
            "model",
            "register",
            "-n",
            "scorer-image",
            "-p",
            &archive.to_string_lossy(),
        ],
    );

    let agent_dir = dir.path().join("agent");
    let agent_log = dir.path().join("agent.log");
    let start_agent = || {
        start_agent_with(
            &device,
            &hub.mqtt_url,
            &agent_dir,
            &agent_log,
            &["--containers", "docker"],
        )
    };
    let mut agent = start_agent();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let manifest = |extra: &str| {
        format!(
            "name: scorer\ncontainer:\n  image_artifact: scorer-image:1\n  ports: [5001]\n  health: {{path: /}}\n  resources: {{cpus: 0.5, memory: 128Mi}}\n{extra}endpoint: {{port: {port}, auth: key, cors_origins: [\"{ORIGIN}\"]}}\ntarget: {{devices: [{device}]}}\n"
        )
    };
    apply(&url, dir.path(), "v1", &manifest(""));
    wait_serving(&url, "scorer", "scorer-image:1").await;
    let key = primary_key(&url, "scorer").await;
    // The birth named the engine and its version.
    let shown = edgeship(&url, &["device", "show", &device, "-o", "json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("device JSON");
    let engine = shown["capabilities"]["container_engine"]
        .as_str()
        .unwrap_or_default();
    assert!(engine.starts_with("docker "), "{shown}");

    // Scored through the agent's proxy, with the endpoint's auth in front.
    let answer = score_with(addr, Some(&key)).await.expect("answers");
    assert_eq!(answer.status, 200, "{}", answer.body);
    testkit::assert_diabetes_predictions(&answer);
    assert_eq!(answer.header("x-edgeship-model"), Some("scorer-image:1"));
    let refused = score_with(addr, None).await.expect("answers");
    assert_eq!(refused.status, 401, "{}", refused.body);
    // CORS from the endpoint, in front of a container that knows nothing of it: the preflight
    // is answered by the agent, and answers name the allowed origin.
    let preflight = testkit::http(
        addr,
        "OPTIONS",
        "/score",
        &[
            ("origin", ORIGIN),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
        b"",
    )
    .await
    .expect("preflight");
    assert_eq!(preflight.status, 200, "{}", preflight.body);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some(ORIGIN)
    );
    let bearer = format!("Bearer {key}");
    let body = diabetes_rows().to_string();
    let cross = testkit::http(
        addr,
        "POST",
        "/score",
        &[
            ("origin", ORIGIN),
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
    .expect("cross-origin score");
    assert_eq!(cross.status, 200, "{}", cross.body);
    assert_eq!(cross.header("access-control-allow-origin"), Some(ORIGIN));
    let containers = labelled_containers(&device, Some("scorer"));
    assert_eq!(containers.len(), 1, "{containers:?}");
    // `deploy logs`: the agent's own lines about the deployment and the container's output,
    // fetched from the device over MQTT.
    let logs = edgeship(&url, &["deploy", "logs", "scorer", "--tail", "50"]);
    assert!(
        logs.contains("[agent] INFO container started and healthy"),
        "{logs}"
    );
    assert!(
        logs.contains("[stderr]") && logs.contains("scoring endpoint listening"),
        "{logs}"
    );
    let json = edgeship(
        &url,
        &["deploy", "logs", "scorer", "--tail", "1", "-o", "json"],
    );
    let line: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
    assert_eq!(line["device"], device.as_str());
    assert!(
        line["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    let limits = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}}",
        &containers[0],
    ]);
    assert_eq!(limits, "134217728 500000000 on-failure");

    // Blue/green under a scoring loop: the new container mounts diabetes:2 read-only and
    // serves it from the folder its environment names.
    register_diabetes_cli(&url);
    let followed = dir.path().join("followed.log");
    let mut follow = testkit::edgeship_command(&url)
        .args(["deploy", "logs", "scorer", "--follow", "--tail", "1"])
        .stdout(std::fs::File::create(&followed).expect("log file"))
        .stderr(std::fs::File::create(dir.path().join("follow.err")).expect("log file"))
        .spawn()
        .expect("edgeship deploy logs --follow");
    let stop = Arc::new(AtomicBool::new(false));
    let scoring = scoring_loop(addr, key.clone(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = "  model: diabetes:2\n  command: [/edgeship-agent, serve, --port, \"5001\"]\n";
    apply(&url, dir.path(), "v2", &manifest(v2));
    wait_serving(&url, "scorer", "scorer-image:1, diabetes:2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (failures, versions) = scoring.await.expect("loop");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(versions, ["scorer-image:1", "scorer-image:1, diabetes:2"]);
    let green = labelled_containers(&device, Some("scorer"));
    assert_eq!(green.len(), 1, "the old container is gone: {green:?}");
    // `--follow` printed the switch as it happened, new lines only.
    let waited = std::time::Instant::now();
    while !std::fs::read_to_string(&followed)
        .unwrap_or_default()
        .contains("container stopped and removed")
    {
        assert!(
            waited.elapsed() < LIMIT,
            "--follow printed:\n{}\nand on stderr:\n{}\nagent log:\n{}",
            std::fs::read_to_string(&followed).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("follow.err")).unwrap_or_default(),
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let text = std::fs::read_to_string(&followed).expect("followed");
    let mut seen = std::collections::HashSet::new();
    assert!(
        text.lines().all(|l| seen.insert(l)),
        "no line printed twice:\n{text}"
    );
    assert_ne!(green, containers);
    let mounts = docker(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Destination}} {{.RW}}{{end}}",
        &green[0],
    ]);
    assert_eq!(mounts, "/var/azureml-app/azureml-models/diabetes/2 false");

    // A version that exits at once: the old one keeps serving, and the report says why with
    // the container's last lines.
    let broken = "  command: [/edgeship-agent, serve, --model, /no/such/model]\n";
    apply(&url, dir.path(), "v3", &manifest(broken));
    let error = wait_failed(&url, "scorer", "before passing its health check").await;
    assert!(error.contains("/no/such/model"), "{error}");
    let still = score_with(addr, Some(&key)).await.expect("answers");
    assert_eq!(still.status, 200, "{}", still.body);
    assert_eq!(
        still.header("x-edgeship-model"),
        Some("scorer-image:1, diabetes:2")
    );
    assert_eq!(labelled_containers(&device, Some("scorer")), green);

    // kill -9 and a restart: the running container is adopted, not started again.
    agent.kill_hard();
    let mut agent = start_agent();
    let answer = eventually(LIMIT, "the restarted agent serves", || async {
        score_with(addr, Some(&key))
            .await
            .filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(
        answer.header("x-edgeship-model"),
        Some("scorer-image:1, diabetes:2")
    );
    assert_eq!(labelled_containers(&device, Some("scorer")), green);

    // Deleting the deployment removes the container and the image it loaded.
    let image = docker(&["inspect", "--format", "{{.Image}}", &green[0]]);
    edgeship(&url, &["deploy", "delete", "scorer"]);
    eventually(LIMIT, "container and image removed", || async {
        (labelled_containers(&device, None).is_empty()
            && try_docker(&["image", "inspect", &image]).is_none())
        .then_some(())
    })
    .await;
    agent.terminate(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_failures_are_reported_and_leave_nothing_behind() {
    let test = "container_failures_are_reported";
    if !crate::engine::docker_works() {
        return skip(test, "no Docker daemon answers", "start dockerd");
    }
    let Some(busybox) = static_busybox() else {
        return skip(
            test,
            "no statically linked busybox for a test image",
            "apt-get install -y busybox-static",
        );
    };
    let dir = TempDir::new("container-failures");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let url = hub.url.clone();
    let device = format!("ctr-bad-{}", std::process::id());
    let tag = format!("edgeship-test/busybox:{}", std::process::id());
    let _cleanup = EngineCleanup {
        device: device.clone(),
        images: vec![tag.clone()],
    };
    let archive = dir.path().join("busybox.tar");
    busybox_image(&busybox, dir.path(), &tag, &archive);
    edgeship(
        &url,
        &[
            "model",
            "register",
            "-n",
            "busybox",
            "-p",
            &archive.to_string_lossy(),
        ],
    );
    let mut agent = start_agent_with(
        &device,
        &hub.mqtt_url,
        &dir.path().join("agent"),
        &dir.path().join("agent.log"),
        &["--containers", "docker"],
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let serve = "mkdir -p /www && echo ok > /www/index.html && httpd -p 8080 -h /www";
    let deploy = |name: &str, port: u16, container: &str| {
        let manifest = format!(
            "name: {name}\ncontainer:\n{container}endpoint: {{port: {port}}}\ntarget: {{devices: [{device}]}}\n"
        );
        apply(&url, dir.path(), name, &manifest);
    };
    // Serves, then outgrows its memory limit every time it runs.
    let hog = format!("{serve} && sleep 2 && a=x && while true; do a=$a$a; done");
    deploy(
        "hog",
        free_port(),
        &format!(
            "  image_artifact: busybox:1\n  command: [/bin/sh, -c, \"{hog}\"]\n  ports: [8080]\n  resources: {{memory: 16Mi}}\n  restart: on_failure\n  max_restarts: 2\n"
        ),
    );
    deploy(
        "crash",
        free_port(),
        "  image_artifact: busybox:1\n  command: [/bin/sh, -c, \"echo broken on purpose >&2; exit 3\"]\n  ports: [8080]\n",
    );
    deploy(
        "unknown",
        free_port(),
        "  image: edgeship-test/no-such-image:1\n  ports: [8080]\n",
    );
    // One CPU more than the engine's host has: the engine refuses it, on any host.
    let host_cpus = std::process::Command::new("docker")
        .args(["info", "--format", "{{.NCPU}}"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        })
        .expect("docker info names the host's CPUs");
    deploy(
        "greedy",
        free_port(),
        &format!(
            "  image_artifact: busybox:1\n  command: [/bin/sh, -c, \"{serve} -f\"]\n  ports: [8080]\n  resources: {{cpus: {}}}\n",
            host_cpus + 1
        ),
    );
    deploy(
        "clash",
        taken_port,
        &format!(
            "  image_artifact: busybox:1\n  command: [/bin/sh, -c, \"{serve} -f\"]\n  ports: [8080]\n"
        ),
    );

    let crash = wait_failed(&url, "crash", "exited with code 3").await;
    assert!(crash.contains("broken on purpose"), "{crash}");
    // The failed container is gone; the agent's own lines about it remain.
    let logs = edgeship(&url, &["deploy", "logs", "crash"]);
    assert!(logs.contains("[agent] WARN workload not applied"), "{logs}");
    let unknown = wait_failed(&url, "unknown", "cannot be pulled").await;
    assert!(
        unknown.contains("edgeship-test/no-such-image:1"),
        "{unknown}"
    );
    let greedy = wait_failed(&url, "greedy", "the engine refused the container").await;
    assert!(greedy.contains("CPU"), "{greedy}");
    let clash = wait_failed(&url, "clash", "cannot listen").await;
    assert!(clash.contains(&taken_port.to_string()), "{clash}");
    for name in ["crash", "unknown", "greedy", "clash"] {
        let left = labelled_containers(&device, Some(name));
        assert!(left.is_empty(), "{name} left {left:?}");
    }

    // The memory hog: reported, restarted at most twice, then failed for good.
    let hog = wait_failed(&url, "hog", "exceeded its memory limit (16 MiB)").await;
    assert!(hog.contains("not restarted again"), "{hog}");
    let hogs = labelled_containers(&device, Some("hog"));
    assert_eq!(hogs.len(), 1, "{hogs:?}");
    let restarts = docker(&["inspect", "--format", "{{.RestartCount}}", &hogs[0]]);
    assert_eq!(restarts, "2");
    drop(taken);
    agent.terminate(Duration::from_secs(10));
}
