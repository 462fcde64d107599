//! `edgeship`: the hub daemon (`edgeship hub`) and the command-line client, in one binary.

use std::process::ExitCode;

use clap::Parser;
use edgeship_hub::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match edgeship_hub::cli::logs::init(&cli.command) {
        Ok(()) => edgeship_hub::cli::run(cli).await,
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
