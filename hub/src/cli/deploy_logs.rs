//! `edgeship deploy logs NAME`: a deployment's recent log lines from its devices, once or
//! followed (asking again every second for what came after the last line printed).

use std::time::Duration;

use crate::client::HubChannel;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;

use super::OutputFormat;
use super::output::rfc3339;
use crate::client::rpc_error;

/// The most lines a device sends in one answer.
const MAX_TAIL: u32 = 2000;
/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// What `deploy logs` asks for and how it prints it.
#[derive(Debug, Clone)]
pub struct LogsQuery {
    pub deployment: String,
    /// One device; `None`: every online device of the deployment.
    pub device: Option<String>,
    pub tail: u32,
    pub follow: bool,
    pub output: OutputFormat,
}

pub async fn run(
    client: &mut DeploymentsClient<HubChannel>,
    query: LogsQuery,
) -> anyhow::Result<()> {
    let follow = query.follow;
    let printing = print_lines(client, query);
    if !follow {
        return printing.await;
    }
    // One listener for the whole run: Ctrl-C ends following quietly, whenever it comes.
    tokio::select! {
        printed = printing => printed,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn print_lines(
    client: &mut DeploymentsClient<HubChannel>,
    query: LogsQuery,
) -> anyhow::Result<()> {
    let LogsQuery {
        deployment,
        device,
        mut tail,
        follow,
        output,
    } = query;
    let mut since_ms = 0;
    // Lines of the last printed millisecond: the next answer repeats them (it asks from that
    // millisecond on), and each is skipped once there; identical lines of one answer all print.
    let mut printed_at_last: Vec<(String, String)> = Vec::new();
    loop {
        let asked = client
            .get_deployment_logs(pb::GetDeploymentLogsRequest {
                name: format!("deployments/{deployment}"),
                device: device.clone().unwrap_or_default(),
                tail,
                since_ms: since_ms.max(1) - 1,
            })
            .await;
        let answer = match asked {
            Ok(answer) => answer.into_inner(),
            // Once following, a device that restarts or a hub that is briefly away is a
            // pause, not the end.
            Err(status) if follow && tail == MAX_TAIL => {
                eprintln!("warning: {}", rpc_error(status));
                tokio::time::sleep(FOLLOW_EVERY).await;
                continue;
            }
            Err(status) => return Err(rpc_error(status)),
        };
        for error in &answer.errors {
            match error.device.as_str() {
                "" => eprintln!("warning: {}", error.error),
                device => eprintln!("warning: device {device}: {}", error.error),
            }
        }
        let several = device.is_none()
            && answer
                .lines
                .iter()
                .any(|l| answer.lines.first().is_some_and(|f| f.device != l.device));
        let mut repeated = std::mem::take(&mut printed_at_last);
        let asked_from = since_ms;
        for line in &answer.lines {
            let key = (line.device.clone(), line.text.clone());
            if line.at_ms < asked_from {
                continue;
            }
            if line.at_ms == asked_from
                && let Some(at) = repeated.iter().position(|k| *k == key)
            {
                repeated.swap_remove(at);
                printed_at_last.push(key);
                continue;
            }
            if line.at_ms > since_ms {
                since_ms = line.at_ms;
                printed_at_last.clear();
            }
            printed_at_last.push(key);
            match output {
                // One object per line (JSON Lines): a followed log is read line by line.
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::json!({
                        "device": line.device,
                        "time": rfc3339(line.at_ms),
                        "source": line.source,
                        "text": line.text,
                    })
                ),
                OutputFormat::Table if several => println!(
                    "{} {} [{}] {}",
                    rfc3339(line.at_ms),
                    line.device,
                    line.source,
                    line.text
                ),
                OutputFormat::Table => {
                    println!("{} [{}] {}", rfc3339(line.at_ms), line.source, line.text)
                }
            }
        }
        if !follow {
            if answer.lines.is_empty() && answer.errors.is_empty() {
                eprintln!("no log lines yet");
            }
            return Ok(());
        }
        // `--tail` bounds the first answer only: after it, every line written since counts.
        tail = MAX_TAIL;
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}
