//! `edgeship deploy logs NAME`: a deployment's recent log lines from its devices, once or
//! followed (asking again every second for what came after the last line printed).

use std::time::Duration;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use tonic::transport::Channel;

use super::OutputFormat;
use super::output::rfc3339;
use crate::client::rpc_error;

/// The most lines a device sends in one answer.
const MAX_TAIL: u32 = 2000;
/// How often `--follow` asks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub async fn run(
    client: &mut DeploymentsClient<Channel>,
    deployment: &str,
    device: Option<String>,
    tail: u32,
    follow: bool,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let mut since_ms = 0;
    // Lines at the last printed millisecond, so a line the next answer repeats (it asks from
    // that millisecond on) is not printed twice.
    let mut printed_at_last: Vec<(String, String)> = Vec::new();
    let mut tail = tail;
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
                if interrupted_while_waiting().await {
                    return Ok(());
                }
                continue;
            }
            Err(status) => return Err(rpc_error(status)),
        };
        for error in &answer.errors {
            eprintln!("warning: device {}: {}", error.device, error.error);
        }
        let several = device.is_none()
            && answer
                .lines
                .iter()
                .any(|l| answer.lines.first().is_some_and(|f| f.device != l.device));
        for line in &answer.lines {
            let key = (line.device.clone(), line.text.clone());
            if line.at_ms < since_ms || (line.at_ms == since_ms && printed_at_last.contains(&key)) {
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
        if interrupted_while_waiting().await {
            return Ok(());
        }
    }
}

/// Waits until the next ask; `true` when Ctrl-C came first (following ends quietly).
async fn interrupted_while_waiting() -> bool {
    tokio::select! {
        _ = tokio::time::sleep(FOLLOW_EVERY) => false,
        _ = tokio::signal::ctrl_c() => true,
    }
}
