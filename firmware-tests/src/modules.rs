//! The entry modules of `edge-modules/`, built for `wasm32-wasip2` by the test build itself
//! (once per test process; cargo's lock on the target folder serializes processes), in a
//! target folder of their own so that this cargo does not wait on the one running the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The target entry modules are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Whether rustup lists the target as installed (without rustup, whether cargo can build
/// for it is left to the build).
fn target_installed() -> bool {
    match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == WASM_TARGET),
        Err(_) => true,
    }
}

/// The folder holding every built module (`records.wasm`, `image_label.wasm`, `top_k.wasm`,
/// `hostile.wasm`, `init_panics.wasm`, `wrong_exports.wasm`), or `None` after a `SKIP:` line
/// when the target is not installed. Under `EDGESHIP_CI=1` a missing target is a failure.
pub fn entry_modules(test: &str) -> Option<PathBuf> {
    if !target_installed() {
        assert!(
            !crate::ci(),
            "the {WASM_TARGET} target is required under EDGESHIP_CI=1 (rustup target add {WASM_TARGET})"
        );
        eprintln!(
            "SKIP: {test}: the {WASM_TARGET} target is not installed (rustup target add {WASM_TARGET}); set EDGESHIP_CI=1 to make this a failure"
        );
        return None;
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(dir) => Some(dir.clone()),
        Err(why) => panic!("{why}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = root.join("target").join("wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("edge-modules"))
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        // The test's own build settings (its RUSTFLAGS, a coverage wrapper) are for the host.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .status()
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if !status.success() {
        return Err(format!(
            "building the entry modules for {WASM_TARGET} failed"
        ));
    }
    Ok(target_dir.join(WASM_TARGET).join("release"))
}

/// An 8×8 digits-data row (ink 0..1, row by row) as a grayscale PNG of `scale`× the size, dark
/// ink on white paper, as a phone or scanner would give it.
pub fn digit_png(ink: &[f64], scale: u32) -> Vec<u8> {
    let side = 8 * scale;
    let mut pixels = Vec::with_capacity((side * side) as usize);
    for y in 0..side {
        for x in 0..side {
            let v = ink[((y / scale) * 8 + x / scale) as usize];
            pixels.push((255.0 * (1.0 - v)).round() as u8);
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("PNG header");
    writer.write_image_data(&pixels).expect("PNG data");
    writer.finish().expect("PNG end");
    out
}

/// The diabetes data set's columns, in the model's order.
pub const DIABETES_COLUMNS: [&str; 10] = [
    "age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6",
];

/// The diabetes fixture's rows as the records Power BI sends (`{"data": [{"age": …}, …]}`):
/// the records example module's input.
pub fn diabetes_records() -> serde_json::Value {
    let rows = crate::expected("diabetes")["inputs"].clone();
    let records: Vec<serde_json::Value> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            DIABETES_COLUMNS
                .iter()
                .zip(row.as_array().expect("row"))
                .map(|(c, v)| ((*c).to_owned(), v.clone()))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    serde_json::json!({ "data": records })
}
