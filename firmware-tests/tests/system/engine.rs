//! The Docker engine and the static agent, for the tests that run images: whether each is
//! here (with the one-line skip), the musl build of the agent, and a busybox image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Prints the skip line, or fails under `EDGESHIP_CI=1`.
pub fn skip(test: &str, why: &str, fix: &str) {
    if testkit::ci() {
        panic!("{test}: required under EDGESHIP_CI=1: {why}");
    }
    eprintln!("SKIP: {test}: {why} ({fix}); set EDGESHIP_CI=1 to make this a failure");
}

pub fn docker_works() -> bool {
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
                .any(|l| l.trim() == testkit::MUSL)
        })
}

/// The static agent, built for musl; `None` (after the skip line) when Docker, the musl
/// target or its C compiler is missing.
pub async fn static_agent_or_skip(test: &str) -> Option<PathBuf> {
    if !docker_works() {
        skip(test, "no Docker daemon answers", "start dockerd");
        return None;
    }
    if !musl_installed() {
        skip(
            test,
            "the musl target is not installed, so no static agent can be built",
            "rustup target add x86_64-unknown-linux-musl",
        );
        return None;
    }
    if testkit::find_program("musl-gcc").is_none() {
        skip(
            test,
            "no musl C compiler (musl-gcc), which tract's kernels need for a static agent",
            "apt-get install -y musl-tools",
        );
        return None;
    }
    Some(
        tokio::task::spawn_blocking(testkit::static_agent)
            .await
            .expect("build task"),
    )
}

/// Runs `docker ARGS`, asserts it succeeded, and returns its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let output = Command::new("docker").args(args).output().expect("docker");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Runs `docker ARGS`; `None` when it fails.
pub fn try_docker(args: &[&str]) -> Option<String> {
    let output = Command::new("docker").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A statically linked busybox (Debian's `busybox-static`), if installed.
pub fn static_busybox() -> Option<PathBuf> {
    let path = PathBuf::from("/bin/busybox");
    let output = Command::new("ldd").arg(&path).output().ok()?;
    // ldd fails on a static executable ("not a dynamic executable").
    (path.is_file() && !output.status.success()).then_some(path)
}

/// Saves an image with busybox as its only file (and its applets as links) to `archive`, in
/// `docker save` layout, under `tag`; the engine keeps no copy.
pub fn busybox_image(busybox: &Path, dir: &Path, tag: &str, archive: &Path) {
    let root = dir.join("busybox-root");
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    std::fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "httpd", "sleep", "echo", "mkdir", "head", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("link");
    }
    let rootfs = dir.join("busybox-rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&rootfs)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());
    docker(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        &rootfs.to_string_lossy(),
        tag,
    ]);
    docker(&["save", "-o", &archive.to_string_lossy(), tag]);
    docker(&["rmi", tag]);
}

/// Ids of every container, in any state, that an agent labelled for `device` (and
/// `deployment`, when given).
pub fn labelled_containers(device: &str, deployment: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "ps".to_owned(),
        "-aq".to_owned(),
        "--no-trunc".to_owned(),
        "--filter".to_owned(),
        format!("label=dev.edgeship.device={device}"),
    ];
    if let Some(deployment) = deployment {
        args.extend([
            "--filter".to_owned(),
            format!("label=dev.edgeship.deployment={deployment}"),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Removes a device's containers and the given images however a test ends.
pub struct EngineCleanup {
    pub device: String,
    pub images: Vec<String>,
}

impl Drop for EngineCleanup {
    fn drop(&mut self) {
        if docker_works() {
            for id in labelled_containers(&self.device, None) {
                let _ = try_docker(&["rm", "-f", &id]);
            }
        }
        for image in &self.images {
            let _ = try_docker(&["rmi", "-f", image]);
        }
    }
}
