//! `edgeship package`: a registered model packaged as an image with no base image, loaded
//! into the real Docker engine and run there, answers `/score` with scikit-learn's values;
//! the image stays under 25 MB plus the model. The static agent it needs is built here with
//! the musl target and its C compiler (`rustup target add x86_64-unknown-linux-musl`,
//! `apt-get install -y musl-tools`; `.ci/run` adds both).
//! Without a Docker daemon or the musl target the test prints a `SKIP:` line (a failure
//! under `EDGESHIP_CI=1`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{HubProcess, TempDir, edgeship, eventually, expected, fixture, free_port};

const MUSL: &str = "x86_64-unknown-linux-musl";

fn skip(test: &str, why: &str, fix: &str) {
    if testkit::ci() {
        panic!("{test}: required under EDGESHIP_CI=1: {why}");
    }
    eprintln!("SKIP: {test}: {why} ({fix}); set EDGESHIP_CI=1 to make this a failure");
}

fn docker_works() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn musl_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == MUSL)
        })
}

/// Builds the minimal agent for musl (statically linked) with the `image` profile, in a
/// target folder of its own, so that this cargo does not wait on the lock of the one running
/// the tests.
fn static_agent() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = root.join("target").join("musl");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "image",
            "--target",
            MUSL,
            "-p",
            "edgeship-agent",
            "--no-default-features",
            "--features",
            "tract",
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "building the static agent failed");
    target_dir.join(MUSL).join("image").join("edgeship-agent")
}

fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

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
    let test = "a_packaged_model_runs_in_the_docker_engine";
    if !docker_works() {
        return skip(test, "no Docker daemon answers", "start dockerd");
    }
    if !musl_installed() {
        return skip(
            test,
            "the musl target is not installed, so no static agent can be built",
            "rustup target add x86_64-unknown-linux-musl",
        );
    }
    if testkit::find_program("musl-gcc").is_none() {
        return skip(
            test,
            "no musl C compiler (musl-gcc), which tract's kernels need for a static agent",
            "apt-get install -y musl-tools",
        );
    }
    let agent = tokio::task::spawn_blocking(static_agent)
        .await
        .expect("build task");
    let dir = TempDir::new("package");
    let hub = HubProcess::start(
        &dir.path().join("hub"),
        Err(free_port()),
        &dir.path().join("hub.log"),
    );
    let url = hub.url.clone();
    let diabetes = fixture("diabetes");
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
            edgeship(
                &url,
                &[
                    "model",
                    "register",
                    "-n",
                    "diabetes",
                    "-p",
                    &diabetes.to_string_lossy(),
                    "--sample-input",
                    &diabetes.join("sample_input.json").to_string_lossy(),
                ],
            );
            let agent = agent.to_string_lossy();
            edgeship(
                &url,
                &[
                    "package",
                    "diabetes:1",
                    "--agent",
                    &agent,
                    "--dockerfile",
                    &context.to_string_lossy(),
                ],
            );
            edgeship(
                &url,
                &[
                    "package",
                    "diabetes:latest",
                    "--agent",
                    &agent,
                    "--tag",
                    &unique,
                    "--output",
                    &archive.to_string_lossy(),
                ],
            )
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
