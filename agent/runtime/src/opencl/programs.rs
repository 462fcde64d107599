//! Compiled OpenCL programs kept on disk, so that a restarted agent serves without compiling,
//! and prebuilt binaries shipped with a model, the way FPGA toolchains deliver kernels
//! (compiled offline, loaded with `clCreateProgramWithBinary`; an FPGA board cannot compile
//! OpenCL C itself).
//!
//! A program is named by a digest of what it is for: the device (platform, name, driver
//! version), the source and the build options. Binaries are looked for in the prebuilt
//! folders first, then in the cache; one that does not load (another driver's, damaged) is
//! passed over and, where compiling is allowed, replaced.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use opencl3::context::Context;
use opencl3::program::Program;
use sha2::{Digest, Sha256};

use super::device::keeping_signal_handlers;
use super::{ClDevice, ClError, doing};

/// Where programs come from and go to, with counts of each (for tests and logs).
#[derive(Debug, Default)]
pub struct Programs {
    /// The cache folder compiled programs are written to; `None`: nothing is kept.
    cache: Option<PathBuf>,
    /// Folders of prebuilt binaries (a model's `opencl/` folder), searched first.
    prebuilt: Vec<PathBuf>,
    /// Whether a program may be compiled from source when no binary loads (false: binaries
    /// only, as on an FPGA).
    compile: bool,
    compiled: AtomicUsize,
    loaded: AtomicUsize,
}

impl Programs {
    /// Compiles from source every time (no cache).
    pub fn uncached() -> Self {
        Programs {
            compile: true,
            ..Programs::default()
        }
    }

    /// Keeps compiled programs under `dir`.
    pub fn cached(dir: impl Into<PathBuf>) -> Self {
        Programs {
            cache: Some(dir.into()),
            compile: true,
            ..Programs::default()
        }
    }

    /// Looks in `folder` first for prebuilt binaries.
    pub fn with_prebuilt(mut self, folder: impl Into<PathBuf>) -> Self {
        self.prebuilt.push(folder.into());
        self
    }

    /// Loads binaries only: a program with no binary for the device is an error.
    pub fn binaries_only(mut self) -> Self {
        self.compile = false;
        self
    }

    /// Programs compiled from source so far.
    pub fn compiled(&self) -> usize {
        self.compiled.load(Ordering::Relaxed)
    }

    /// Programs loaded from binaries so far.
    pub fn loaded(&self) -> usize {
        self.loaded.load(Ordering::Relaxed)
    }

    /// The file name of a program's binary: a digest of device, driver, source and options.
    pub fn file_name(device: &ClDevice, source: &str, options: &str) -> String {
        let info = &device.info;
        let mut digest = Sha256::new();
        for part in [
            info.platform.as_str(),
            info.name.as_str(),
            info.driver_version.as_str(),
            source,
            options,
        ] {
            digest.update((part.len() as u64).to_le_bytes());
            digest.update(part.as_bytes());
        }
        format!("{}.clbin", hex(&digest.finalize()))
    }

    /// The built program for `device`: from a prebuilt or cached binary when one loads, else
    /// compiled (and cached).
    pub fn build(
        &self,
        context: &Context,
        device: &ClDevice,
        source: &str,
        options: &str,
        what: &str,
    ) -> Result<Program, ClError> {
        let name = Self::file_name(device, source, options);
        let folders = self.prebuilt.iter().chain(self.cache.as_ref());
        for folder in folders {
            let path = folder.join(&name);
            let Ok(binary) = fs::read(&path) else {
                continue;
            };
            if let Some(program) = from_binary(context, device, &binary, options) {
                self.loaded.fetch_add(1, Ordering::Relaxed);
                return Ok(program);
            }
        }
        if !self.compile {
            return Err(ClError::Build {
                what: what.to_owned(),
                device: device.label(),
                log: format!(
                    "no prebuilt binary {name} loads on this device, and compiling from source is off"
                ),
            });
        }
        let mut program = Program::create_from_source(context, source)
            .map_err(doing(format!("creating the program of {what}")))?;
        if keeping_signal_handlers(|| program.build(&[device.id()], options)).is_err() {
            return Err(ClError::Build {
                what: what.to_owned(),
                device: device.label(),
                log: program.get_build_log(device.id()).unwrap_or_default(),
            });
        }
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Some(cache) = &self.cache
            && let Ok(binaries) = program.get_binaries()
            && let Some(binary) = binaries.into_iter().find(|b| !b.is_empty())
        {
            // A cache that cannot be written costs a compile at the next start, nothing more.
            let _ = write_atomically(&cache.join(&name), &binary);
        }
        Ok(program)
    }
}

/// A program made from `binary` and built for `device`, or `None` if the device refuses it.
fn from_binary(
    context: &Context,
    device: &ClDevice,
    binary: &[u8],
    options: &str,
) -> Option<Program> {
    // SAFETY: the device belongs to the context (both come from `ClDevice::open`), and the
    // binary is a byte slice the call only reads.
    let mut program =
        unsafe { Program::create_from_binary(context, &[device.id()], &[binary]) }.ok()?;
    keeping_signal_handlers(|| program.build(&[device.id()], options))
        .ok()
        .map(|()| program)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    fs::write(&temporary, bytes)?;
    fs::rename(&temporary, path)
}
