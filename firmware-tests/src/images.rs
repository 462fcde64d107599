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
    let mut command = Command::new(cargo);
    // Cargo runs a test with its package's variables set (`CARGO_MANIFEST_DIR`,
    // `CARGO_PKG_NAME`, ...). Build scripts that watch them (ring's does) would see them
    // changed since CI built this agent from a shell, and the whole TLS stack and the agent
    // would be built again, for minutes, beside the other tests.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_for_a_package) {
            command.env_remove(name);
        }
    }
    let status = command
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

/// Variables cargo sets for one package's test or build script, which a cargo started from
/// there must not inherit.
fn set_by_cargo_for_a_package(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_BIN_")
        || name.starts_with("CARGO_MANIFEST_")
        || matches!(
            name,
            "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
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
