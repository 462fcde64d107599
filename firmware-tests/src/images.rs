//! The static agent that `edgeship package` puts in container images, built for the musl
//! target by the tests and benchmarks that run images.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The musl target the static agent (for `edgeship package` images) is built for.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Builds the minimal agent for musl (statically linked) with the `image` profile, in a
/// target folder of its own, so that this cargo does not wait on the lock of the one running
/// the tests.
pub fn static_agent() -> PathBuf {
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

/// Registers the committed `diabetes` fixture with its sample input, through the CLI, as the
/// next version of model `diabetes`.
pub fn register_diabetes_cli(hub: &str) -> String {
    let diabetes = crate::fixture("diabetes");
    crate::edgeship(
        hub,
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
    )
}

/// `edgeship package MODEL --agent AGENT --tag TAG --output ARCHIVE`: the model and the static
/// agent as an image archive.
pub fn package_archive(hub: &str, model: &str, agent: &Path, tag: &str, archive: &Path) -> String {
    crate::edgeship(
        hub,
        &[
            "package",
            model,
            "--agent",
            &agent.to_string_lossy(),
            "--tag",
            tag,
            "--output",
            &archive.to_string_lossy(),
        ],
    )
}
