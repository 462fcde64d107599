//! Packs the agent binary's relative relocations (DT_RELR) when the C library it is built
//! against supports them (glibc 2.36 and later). The loader then reads a few kilobytes
//! instead of 1.4 MB of relocation records at start, and fewer pages are touched: measured
//! 1.4 MB off the binary and 1.3 MiB off its idle memory (docs/benchmarks.md).
//!
//! Only for native builds on such a glibc, where the binary runs on the machine that built it;
//! cross builds and older systems link as before. `EDGESHIP_AGENT_RELR=0` turns it off, for
//! agents that must run on an older glibc than the build machine's.
//!
//! It also has LLD fold identical functions where LLD links the agent (`links_with_rust_lld`).
//!
//! It also marks tests that need an external component (Mosquitto) as ignored when it is
//! missing, as the hub's and the system tests' build scripts do.

use std::process::Command;

include!("../firmware-tests/build/components.rs");

fn main() {
    detect_components(&["mosquitto"]);
    println!("cargo:rerun-if-env-changed=EDGESHIP_AGENT_RELR");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    let wanted = std::env::var("EDGESHIP_AGENT_RELR").map_or(true, |v| v != "0");
    if wanted && target == host && target.ends_with("-linux-gnu") && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=edgeship-agent=-Wl,-z,pack-relative-relocs");
    }
    if links_with_rust_lld(&target) {
        println!("cargo:rustc-link-arg-bin=edgeship-agent=-Wl,--icf=all");
    }
}

/// Whether the agent is linked by the LLD that rustc ships, which folds identical functions
/// (`--icf=all`: the many monomorphized copies of the same machine code in tract and the
/// HTTP stack; 0.55 MB off the agent, where `--icf=safe` takes 0.12 MB). Rust promises no
/// distinct addresses for functions or vtables, so folding them all changes no meaning. It is
/// rustc's default linker for x86_64 Linux since 1.90; any other linker, or one chosen in
/// RUSTFLAGS, links as before.
fn links_with_rust_lld(target: &str) -> bool {
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let chosen_elsewhere = flags.contains("linker") || flags.contains("link-self-contained");
    let linker_env = format!(
        "CARGO_TARGET_{}_LINKER",
        target.to_uppercase().replace('-', "_")
    );
    println!("cargo:rerun-if-env-changed={linker_env}");
    target == "x86_64-unknown-linux-gnu"
        && !chosen_elsewhere
        && std::env::var_os(linker_env).is_none()
}

/// Reads the build machine's glibc version (`getconf GNU_LIBC_VERSION` prints `glibc 2.36`).
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(output) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}
