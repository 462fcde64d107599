//! `edgeship package`: a registered model packaged as an image with no base image, loaded
//! into the real Docker engine and run there, answers `/score` with scikit-learn's values;
//! the image stays under 25 MB plus the model. The static agent it needs is built here with
//! the musl target and its C compiler (`rustup target add x86_64-unknown-linux-musl`,
//! `apt-get install -y musl-tools`; `.ci/run` adds both).
//! Without a Docker daemon or the musl target the test prints a `SKIP:` line (a failure
//! under `EDGESHIP_CI=1`).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{HubProcess, TempDir, edgeship, eventually, expected, fixture, free_port};

use crate::engine::{docker, static_agent_or_skip};

/// Removes the test's container and images however the test ends.
struct Cleanup {
    container: String,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut commands = vec![vec!["rm", "-f", self.container.as_str()]];
        commands.extend(self.images.iter().map(|i| vec!["rmi", "-f", i.as_str()]));
        for args in commands {
            let _ = Command::new("docker")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packaged_model_runs_in_the_docker_engine_and_answers_as_scikit_learn() {
    let Some(agent) = static_agent_or_skip("a_packaged_model_runs_in_the_docker_engine").await
    else {
        return;
    };
    let dir = TempDir::new("package");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let url = hub.url.clone();
    let unique = format!("edgeship-test/diabetes:{}", std::process::id());
    let archive = dir.path().join("image.tar");
    let context = dir.path().join("context");
    let printed = {
        let (url, agent, archive, context, unique) = (
            url.clone(),
            agent.clone(),
            archive.clone(),
            context.clone(),
            unique.clone(),
        );
        tokio::task::spawn_blocking(move || {
            testkit::register_diabetes_cli(&url);
            edgeship(
                &url,
                &[
                    "package",
                    "diabetes:1",
                    "--agent",
                    &agent.to_string_lossy(),
                    "--dockerfile",
                    &context.to_string_lossy(),
                ],
            );
            testkit::package_archive(&url, "diabetes:latest", &agent, &unique, &archive)
        })
        .await
        .expect("cli task")
    };
    assert!(
        printed.starts_with(&format!("wrote {unique} (amd64, ")),
        "{printed}"
    );
    let dockerfile = std::fs::read_to_string(context.join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains("FROM scratch"), "{dockerfile}");
    assert!(context.join("edgeship-agent").is_file());
    assert!(context.join("model/model.onnx").is_file());
    assert!(context.join("model/sample_input.json").is_file());

    let port = free_port();
    let container = format!("edgeship-test-{}", std::process::id());
    let loaded = format!("{unique}-loaded");
    let _cleanup = Cleanup {
        container: container.clone(),
        images: vec![unique.clone(), loaded.clone()],
    };
    // `--load` streams the same image into the engine.
    let (agent_arg, url_arg, loaded_tag) = (
        agent.to_string_lossy().into_owned(),
        url.clone(),
        loaded.clone(),
    );
    let printed = tokio::task::spawn_blocking(move || {
        edgeship(
            &url_arg,
            &[
                "package",
                "diabetes:1",
                "--agent",
                &agent_arg,
                "--tag",
                &loaded_tag,
                "--load",
            ],
        )
    })
    .await
    .expect("cli task");
    assert!(
        printed.starts_with(&format!("loaded {loaded} into")),
        "{printed}"
    );
    docker(&["image", "inspect", &loaded]);
    docker(&["load", "-i", &archive.to_string_lossy()]);
    let size: u64 = docker(&["image", "inspect", "--format", "{{.Size}}", &unique])
        .parse()
        .expect("image size");
    let model_bytes = std::fs::metadata(fixture("diabetes").join("model.onnx"))
        .expect("model")
        .len();
    println!("packaged image: {size} bytes ({model_bytes} of them the model)");
    assert!(size <= 25 * 1024 * 1024 + model_bytes, "{size} bytes");
    docker(&[
        "run",
        "-d",
        "--name",
        &container,
        "-p",
        &format!("127.0.0.1:{port}:5001"),
        &unique,
    ]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let body = serde_json::json!({ "data": expected("diabetes")["inputs"] });
    let answer = eventually(Duration::from_secs(60), "the container answers", || {
        let body = body.clone();
        async move {
            testkit::score(addr, &body)
                .await
                .ok()
                .filter(|r| r.status == 200)
        }
    })
    .await;
    testkit::assert_diabetes_predictions(&answer);
    assert_eq!(answer.header("x-edgeship-model"), Some("diabetes:1"));
}
