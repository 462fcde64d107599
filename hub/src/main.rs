//! `edgeship`: the hub daemon (`edgeship hub`) and the command-line client, in one binary.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use edgeship_hub::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Daemons log what they do; client commands stay quiet unless RUST_LOG asks. rumqttd
    // logs every client disconnect as an error, so its logs are off unless asked for
    // (RUST_LOG=info,rumqttd=info); the hub logs device births and departures itself.
    let default_level = match cli.command {
        Command::Hub(_) | Command::Dev(_) => "info,rumqttd=off",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match edgeship_hub::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
