//! `edgeship`: the hub daemon (`edgeship hub`) and the command-line client, in one binary.

use std::process::ExitCode;

use clap::Parser;
use edgeship_hub::cli::Cli;

/// Tensors' aligned allocations from the per-thread caches (`edgeship_agent::aligned`).
#[global_allocator]
static ALLOCATOR: edgeship_agent::aligned::Allocator = edgeship_agent::aligned::Allocator;

fn main() -> ExitCode {
    // SAFETY: first thing in `main`, before the runtime's threads start (`edgeship dev` runs
    // an agent in this process).
    #[allow(unsafe_code)]
    unsafe {
        edgeship_agent::device::prepare_process()
    };
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match edgeship_hub::cli::logs::init(&cli.command) {
        Ok(()) => runtime.block_on(edgeship_hub::cli::run(cli)),
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
