//! `edgeship deploy apply|rollout status|pause|resume|abort|rollback|history`: manifests and
//! rollouts, as a gRPC client. The JSON shapes (`RolloutView`, `ApplyView`) follow the
//! contract in `view` and are documented in docs/cli-json.md.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Duration;

use crate::client::HubChannel;
use anyhow::Context;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::deployments_client::DeploymentsClient;
use futures::StreamExt;
use serde::Serialize;

use super::output::{print_json, rfc3339, table};
use super::view::DeploymentView;
use super::{OutputFormat, names};
use crate::client::{rpc_error, wait_healthy};

/// One rollout (or history note) as the CLI shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RolloutView {
    pub deployment_id: String,
    pub revision: u64,
    /// `null` for a deployment's first rollout.
    pub from_revision: Option<u64>,
    pub phase: String,
    pub reason: Option<String>,
    pub cause: String,
    pub changes: Vec<String>,
    pub models: Option<String>,
    pub start_time: String,
    pub finish_time: Option<String>,
    pub devices: u32,
    pub moved: u32,
    pub healthy: u32,
    pub failed: u32,
    pub waves: Vec<WaveView>,
    pub failures: Vec<FailureView>,
    /// A change that moved no device (a target or policy edit, a deletion).
    pub note: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WaveView {
    /// Devices moved once the wave is done (cumulative).
    pub target: u32,
    pub start_time: String,
    /// `null` until its health gate passed.
    pub pass_time: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureView {
    pub device_id: String,
    pub reason: String,
}

/// What `deploy apply` did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyView {
    /// `created`, `updated`, `unchanged`, or with `--dry-run` the same prefixed `would be `.
    pub outcome: String,
    pub dry_run: bool,
    pub changes: Vec<String>,
    pub deployment: DeploymentView,
    /// The rollout the apply started; `null` when what devices run did not change.
    pub rollout: Option<RolloutView>,
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl From<pb::Rollout> for RolloutView {
    fn from(r: pb::Rollout) -> Self {
        RolloutView {
            deployment_id: r.deployment_id,
            revision: r.revision,
            from_revision: (r.from_revision != 0).then_some(r.from_revision),
            phase: r.phase,
            reason: non_empty(r.reason),
            cause: r.cause,
            changes: r.changes,
            models: non_empty(r.models),
            start_time: rfc3339(r.start_time_ms),
            finish_time: (r.finish_time_ms != 0).then(|| rfc3339(r.finish_time_ms)),
            devices: r.devices,
            moved: r.moved,
            healthy: r.healthy,
            failed: r.failed,
            waves: r
                .waves
                .into_iter()
                .map(|w| WaveView {
                    target: w.target,
                    start_time: rfc3339(w.start_time_ms),
                    pass_time: (w.pass_time_ms != 0).then(|| rfc3339(w.pass_time_ms)),
                })
                .collect(),
            failures: r
                .failures
                .into_iter()
                .map(|f| FailureView {
                    device_id: f.device_id,
                    reason: f.reason,
                })
                .collect(),
            note: r.note,
        }
    }
}

impl RolloutView {
    fn running(&self) -> bool {
        matches!(self.phase.as_str(), "Progressing" | "Paused")
    }

    /// An error naming how the rollout ended, unless it completed (or still runs).
    pub(super) fn ensure_completed(&self) -> anyhow::Result<()> {
        if self.running() || self.phase == "Completed" {
            return Ok(());
        }
        anyhow::bail!(
            "the rollout of revision {} ended {}{}",
            self.revision,
            self.phase,
            self.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )
    }

    /// `wave 2, 5 of 10 devices moved, 4 healthy, 0 failed`.
    fn progress_line(&self) -> String {
        let wave = match self.waves.len() {
            0 | 1 => String::new(),
            n => format!("wave {n}, "),
        };
        format!(
            "{wave}{} of {} devices moved, {} healthy, {} failed",
            self.moved, self.devices, self.healthy, self.failed
        )
    }

    /// The multi-line status block.
    fn details(&self) -> String {
        let mut out = format!(
            "deployment {}: revision {}{} — {}{}\n",
            self.deployment_id,
            self.revision,
            self.from_revision
                .map(|f| format!(" (from {f})"))
                .unwrap_or_default(),
            self.phase,
            self.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
        out.push_str(&format!("  cause:   {}\n", self.cause));
        if let Some(models) = &self.models {
            out.push_str(&format!("  runs:    {models}\n"));
        }
        out.push_str(&format!("  started: {}\n", self.start_time));
        if let Some(finished) = &self.finish_time {
            out.push_str(&format!("  ended:   {finished}\n"));
        }
        out.push_str(&format!("  devices: {}\n", self.progress_line()));
        for (i, wave) in self.waves.iter().enumerate() {
            let moved = self.moved.min(wave.target);
            out.push_str(&format!(
                "  wave {}: {} {moved}/{} {}\n",
                i + 1,
                bar(moved, wave.target, 20),
                wave.target,
                match &wave.pass_time {
                    Some(at) => format!("gate passed {at}"),
                    None => "gate pending".to_owned(),
                }
            ));
        }
        for failure in &self.failures {
            out.push_str(&format!(
                "  failed:  {}: {}\n",
                failure.device_id, failure.reason
            ));
        }
        out
    }
}

/// Follows the rollout until it ends; returns how it ended.
pub(super) async fn follow(
    client: &mut DeploymentsClient<HubChannel>,
    name: &str,
) -> anyhow::Result<RolloutView> {
    let mut stream = client
        .watch_deployment(pb::WatchDeploymentRequest {
            name: format!("deployments/{name}"),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut last = None;
    while let Some(update) = stream.next().await {
        last = Some(RolloutView::from(update.map_err(rpc_error)?));
    }
    last.ok_or_else(|| anyhow::anyhow!("the hub ended the watch of {name} without a rollout"))
}

/// A text progress bar, `[#####-----]`.
fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        (done as usize * width / total as usize).min(width)
    };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// The hub's manifest of a deployment (JSON) as YAML, the form people edit.
pub(super) fn manifest_yaml(json: &str) -> anyhow::Result<String> {
    // Through the manifest type, so keys come in the documented order.
    let manifest: crate::fleet::spec::Manifest =
        serde_json::from_str(json).context("the hub sent a manifest this CLI cannot read")?;
    serde_yaml_ng::to_string(&manifest).context("writing the manifest as YAML")
}

/// Reads a manifest from a file, or from standard input for `-`.
fn read_manifest(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub async fn apply(
    client: &mut DeploymentsClient<HubChannel>,
    file: &Path,
    dry_run: bool,
    wait: Option<Duration>,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let manifest = read_manifest(file)?;
    let response = client
        .apply_deployment(pb::ApplyDeploymentRequest { manifest, dry_run })
        .await
        .map_err(|status| rpc_error(status).context(format!("applying {}", file.display())))?
        .into_inner();
    let mut deployment = response.deployment.unwrap_or_default();
    let name = deployment.deployment_id.clone();
    let outcome = match (response.created, response.changes.is_empty()) {
        (true, _) => "created",
        (false, true) => "unchanged",
        (false, false) => "updated",
    };
    if let (Some(timeout), false) = (wait, dry_run) {
        // Devices a wave has not reached yet are healthy on the old revision: wait for the
        // rollout to end first, then for every device to serve.
        if response.rollout.is_some() {
            let ended = tokio::time::timeout(timeout, follow(client, &name))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "the rollout of {name} did not end within {} s; follow it with `edgeship deploy rollout status {name} --watch`",
                        timeout.as_secs()
                    )
                })??;
            ended.ensure_completed()?;
        }
        deployment = wait_healthy(client, &name, timeout).await?;
    }
    let view = ApplyView {
        outcome: if dry_run {
            format!("would be {outcome}")
        } else {
            outcome.to_owned()
        },
        dry_run,
        changes: response.changes,
        deployment: DeploymentView::from(deployment),
        rollout: response.rollout.map(RolloutView::from),
    };
    match output {
        OutputFormat::Json => print_json(&view),
        OutputFormat::Table => {
            println!("deployment {name} {}", view.outcome);
            if !view.changes.iter().any(|c| c == "created") {
                for change in &view.changes {
                    println!("  {change}");
                }
            }
            if let Some(rollout) = &view.rollout {
                println!(
                    "rollout of revision {} started: {} (follow it with `edgeship deploy rollout status {name} --watch`)",
                    rollout.revision,
                    rollout.models.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

pub async fn status(
    client: &mut DeploymentsClient<HubChannel>,
    name: &str,
    watch: bool,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let resource = format!("deployments/{}", names::deployment_id(name)?);
    if !watch {
        let rollout = client
            .get_rollout(pb::GetRolloutRequest { name: resource })
            .await
            .map_err(rpc_error)?
            .into_inner();
        let view = RolloutView::from(rollout);
        match output {
            OutputFormat::Json => print_json(&view),
            OutputFormat::Table => print!("{}", view.details()),
        }
        return Ok(());
    }
    let mut stream = client
        .watch_deployment(pb::WatchDeploymentRequest { name: resource })
        .await
        .map_err(rpc_error)?
        .into_inner();
    // A person at a terminal gets a live bar; otherwise one line per change: JSON with
    // `-o json`, text without.
    let live = output == OutputFormat::Table && std::io::stdout().is_terminal();
    let bar = live.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("#>-"),
        );
        bar
    });
    let mut last: Option<RolloutView> = None;
    while let Some(update) = stream.next().await {
        let view = RolloutView::from(update.map_err(rpc_error)?);
        match (&bar, output) {
            (Some(bar), _) => {
                bar.set_prefix(format!("revision {} {}", view.revision, view.phase));
                bar.set_length(u64::from(view.devices));
                bar.set_position(u64::from(view.moved));
                bar.set_message(format!("{} healthy, {} failed", view.healthy, view.failed));
            }
            (None, OutputFormat::Json) => println!("{}", serde_json::to_string(&view)?),
            (None, OutputFormat::Table) => println!("{}: {}", view.phase, view.progress_line()),
        }
        last = Some(view);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(view) = &last {
        if live {
            print!("{}", view.details());
        }
        // A rollout that ends other than completed fails the command, whatever the output.
        view.ensure_completed()?;
    }
    Ok(())
}

pub async fn control(
    client: &mut DeploymentsClient<HubChannel>,
    name: &str,
    action: pb::RolloutAction,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let name = names::deployment_id(name)?;
    let rollout = client
        .update_rollout(pb::UpdateRolloutRequest {
            name: format!("deployments/{name}"),
            action: action.into(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let view = RolloutView::from(rollout);
    match output {
        OutputFormat::Json => print_json(&view),
        OutputFormat::Table => print!("{}", view.details()),
    }
    Ok(())
}

pub async fn history(
    client: &mut DeploymentsClient<HubChannel>,
    name: &str,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let name = names::deployment_id(name)?;
    let history = client
        .list_rollout_history(pb::ListRolloutHistoryRequest {
            name: format!("deployments/{name}"),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let views: Vec<RolloutView> = history
        .rollouts
        .into_iter()
        .map(RolloutView::from)
        .collect();
    match output {
        OutputFormat::Json => print_json(&views),
        OutputFormat::Table => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    vec![
                        if v.note {
                            "·".to_owned()
                        } else {
                            v.revision.to_string()
                        },
                        v.start_time.clone(),
                        if v.note {
                            "-".to_owned()
                        } else {
                            v.phase.clone()
                        },
                        v.cause.clone(),
                        if v.note {
                            v.changes.join("; ")
                        } else {
                            format!("{} moved, {} failed", v.moved, v.failed)
                        },
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["REVISION", "STARTED", "OUTCOME", "CAUSE", "DETAIL"],
                    &rows
                )
            );
        }
    }
    Ok(())
}
