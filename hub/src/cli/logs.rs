//! Where `edgeship`'s logs go, decided once per command before it runs.
//!
//! * `edgeship hub` is a daemon: it logs what it does to stderr, at `info`.
//! * `edgeship dev` is used in a terminal by someone reading its summary: INFO lines there
//!   would bury it, so the full log goes to `<data-dir>/dev.log` and the terminal shows only
//!   warnings and errors.
//! * Client commands stay quiet (`warn`).
//!
//! `RUST_LOG` overrides every default, on the terminal and in `dev.log` alike. rumqttd logs
//! every client disconnect as an error, so its logs are off unless asked for
//! (`RUST_LOG=info,rumqttd=info`); the hub logs device births and departures itself.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::Command;

const DAEMON: &str = "info,rumqttd=off";
const QUIET: &str = "warn,rumqttd=off";

/// `RUST_LOG` when it is set (and valid), else `default`.
fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

fn terminal<S>(default: &str) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter(default))
}

/// The file `edgeship dev` logs to: `dev.log` in its data folder, as an absolute path so the
/// line that points to it can be followed from any folder.
pub fn dev_log_path(data_dir: &Path) -> PathBuf {
    std::path::absolute(data_dir)
        .unwrap_or_else(|_| data_dir.to_owned())
        .join("dev.log")
}

/// Installs the global subscriber for `command`. Fails only when `dev` cannot open its log
/// file, which is reported before anything starts.
pub fn init(command: &Command) -> anyhow::Result<()> {
    let registry = tracing_subscriber::registry();
    match command {
        Command::Dev(args) => {
            let path = dev_log_path(&args.data_dir);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            // Appended to, so the log of an earlier run that went wrong is still there.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            let to_file = tracing_subscriber::fmt::layer()
                .with_writer(Arc::new(file))
                .with_ansi(false)
                .with_filter(filter(DAEMON));
            // The in-process agent's lines about each deployment, for `deploy logs`.
            let logbook = edgeship_agent::logbook::LogBookLayer.with_filter(filter(DAEMON));
            registry
                .with(to_file)
                .with(terminal(QUIET))
                .with(logbook)
                .init();
        }
        Command::Hub(_) => registry.with(terminal(DAEMON)).init(),
        _ => registry.with(terminal("warn")).init(),
    }
    Ok(())
}
