//! Finding OpenCL devices and opening one: a context and an in-order, profiling command queue.

use std::sync::OnceLock;

use opencl3::command_queue::{CL_QUEUE_PROFILING_ENABLE, CommandQueue};
use opencl3::context::Context;
use opencl3::device::{
    CL_DEVICE_TYPE_ACCELERATOR, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_CPU, CL_DEVICE_TYPE_GPU, Device,
};
use opencl3::platform::get_platforms;

use edgeship_domain::OpenClDevice;

use super::{ClError, doing};

/// Makes the runtime look for the loader's versioned name first. Distributions install
/// `libOpenCL.so.1` with the ICD loader and the unversioned `libOpenCL.so` (the only name the
/// binding tries by itself) only with development headers, which devices do not have.
///
/// # Safety
/// Sets an environment variable: call it before any other thread starts (first thing in
/// `main`), as [`std::env::set_var`] requires.
pub unsafe fn use_installed_library() {
    const SEARCH: &str = "OPENCL_DYLIB_PATH";
    if std::env::var_os(SEARCH).is_none() {
        // SAFETY: the caller guarantees no other thread runs yet.
        unsafe { std::env::set_var(SEARCH, "libOpenCL.so.1;libOpenCL.so") };
    }
}

/// One OpenCL device, described for the birth message and ready to be opened.
#[derive(Debug, Clone)]
pub struct ClDevice {
    pub info: OpenClDevice,
    /// Local memory per work-group, in bytes: bounds the GEMM tiles.
    pub local_memory_bytes: u64,
    pub max_work_group_size: usize,
    device: Device,
}

/// Every device of every platform, found once per process: loading the ICD loader and the
/// vendors' drivers is not safe to race (two threads listing platforms at once crashed in
/// ocl-icd), and the answer does not change while the process runs. `Err(ClError::NoLibrary)`
/// where no OpenCL library is installed; an installed loader with no platform is `Ok` and
/// empty.
pub fn discover() -> Result<Vec<ClDevice>, ClError> {
    static FOUND: OnceLock<Result<Vec<ClDevice>, ClError>> = OnceLock::new();
    FOUND
        .get_or_init(|| keeping_signal_handlers(find_devices))
        .clone()
}

/// Runs `call` and then puts back the process's signal handlers as they were before it.
///
/// OpenCL drivers built on LLVM (PoCL, Mesa's rusticl) register LLVM's handlers when they
/// start their compiler: for SIGTERM and SIGINT they clean up, restore the default action
/// and raise the signal again, so a process that would stop gracefully (the agent, on
/// SIGTERM from systemd) is killed instead; for SIGSEGV they replace Rust's stack-overflow
/// report. LLVM registers its handlers once per process, so restoring them after the calls
/// that can start the compiler (discovery and program builds) keeps the process's own.
pub(crate) fn keeping_signal_handlers<T>(call: impl FnOnce() -> T) -> T {
    const SIGNALS: [libc::c_int; 19] = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGUSR1,
        libc::SIGSEGV,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGTERM,
        libc::SIGSYS,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGWINCH,
    ];
    let saved: Vec<(libc::c_int, libc::sigaction)> = SIGNALS
        .iter()
        .filter_map(|&signal| {
            // SAFETY: sigaction with a null new action only reads the current one into a
            // zero-initialised struct of the right type.
            unsafe {
                let mut current: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(signal, std::ptr::null(), &mut current) == 0)
                    .then_some((signal, current))
            }
        })
        .collect();
    let result = call();
    for (signal, previous) in &saved {
        // SAFETY: reinstalls exactly the action read above for the same signal.
        unsafe { libc::sigaction(*signal, previous, std::ptr::null_mut()) };
    }
    result
}

fn find_devices() -> Result<Vec<ClDevice>, ClError> {
    let platforms = match get_platforms() {
        Ok(platforms) => platforms,
        // The ICD loader's "no platform" (CL_PLATFORM_NOT_FOUND_KHR): installed, but nothing
        // registered under /etc/OpenCL/vendors.
        Err(code) if code.0 == -1001 => return Ok(vec![]),
        Err(code) => return Err(doing("listing OpenCL platforms")(code)),
    };
    let mut devices = Vec::new();
    for platform in platforms {
        let platform_name = platform.name().unwrap_or_default();
        let ids = match platform.get_devices(CL_DEVICE_TYPE_ALL) {
            Ok(ids) => ids,
            // A platform without devices (CL_DEVICE_NOT_FOUND) is not an error.
            Err(code) if code.0 == -1 => continue,
            Err(code) => {
                return Err(doing(format!("listing the devices of {platform_name}"))(
                    code,
                ));
            }
        };
        for id in ids {
            let device = Device::new(id);
            if !device.available().unwrap_or(false) {
                continue;
            }
            devices.push(describe(&platform_name, device));
        }
    }
    Ok(devices)
}

fn describe(platform: &str, device: Device) -> ClDevice {
    let kind = match device.dev_type().unwrap_or(0) {
        t if t & CL_DEVICE_TYPE_GPU != 0 => "gpu",
        t if t & CL_DEVICE_TYPE_CPU != 0 => "cpu",
        t if t & CL_DEVICE_TYPE_ACCELERATOR != 0 => "accelerator",
        _ => "custom",
    };
    let extensions = device.extensions().unwrap_or_default();
    ClDevice {
        info: OpenClDevice {
            platform: platform.to_owned(),
            name: device.name().unwrap_or_default().trim().to_owned(),
            kind: kind.to_owned(),
            vendor: device.vendor().unwrap_or_default().trim().to_owned(),
            driver_version: device
                .driver_version()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            compute_units: device.max_compute_units().unwrap_or(0),
            global_memory_bytes: device.global_mem_size().unwrap_or(0),
            opencl_c_version: device
                .opencl_c_version()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            fp16: extensions.split_whitespace().any(|e| e == "cl_khr_fp16"),
        },
        local_memory_bytes: device.local_mem_size().unwrap_or(0),
        max_work_group_size: device.max_work_group_size().unwrap_or(1),
        device,
    }
}

impl ClDevice {
    /// `platform / name`, how logs and errors name a device.
    pub fn label(&self) -> String {
        format!("{} / {}", self.info.platform, self.info.name)
    }

    pub fn id(&self) -> opencl3::types::cl_device_id {
        self.device.id()
    }

    /// A context on this device alone and an in-order queue that records kernel times.
    pub fn open(&self) -> Result<(Context, CommandQueue), ClError> {
        let context = Context::from_device(&self.device)
            .map_err(doing(format!("creating a context on {}", self.label())))?;
        // clCreateCommandQueue is deprecated from OpenCL 2.0 but the one call every
        // platform (1.2 ones included) still has.
        #[allow(deprecated)]
        let queue = CommandQueue::create_default(&context, CL_QUEUE_PROFILING_ENABLE)
            .map_err(doing(format!("creating a queue on {}", self.label())))?;
        Ok((context, queue))
    }
}
