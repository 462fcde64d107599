// Shared by the build scripts of the crates whose tests need external components (included
// with `include!`). A test that needs a missing component is compiled as `#[ignore]`d with the
// reason, so `cargo test` shows it as ignored rather than passing without running; under
// `EDGESHIP_CI=1` nothing is ignored and a missing component fails the test.

/// Emits `cfg(no_<name>)` for each of `programs` that is not installed.
fn detect_components(programs: &[&str]) {
    println!("cargo:rerun-if-env-changed=EDGESHIP_CI");
    println!("cargo:rerun-if-env-changed=PATH");
    let ci = std::env::var("EDGESHIP_CI").is_ok_and(|v| v == "1");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(std::path::PathBuf::from))
        .collect();
    for dir in &dirs {
        // Installing a program changes its folder: look again then.
        if dir.is_dir() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    for program in programs {
        println!("cargo:rustc-check-cfg=cfg(no_{program})");
        let installed = dirs.iter().any(|dir| dir.join(program).is_file());
        if !installed && !ci {
            println!("cargo:rustc-cfg=no_{program}");
        }
    }
}
