//! `edgeship model profile`: a model version measured on one device under rising load, with
//! the recommended CPU and memory the hub stores on the version (Azure ML's `Model.profile`).
//! Its view is the `-o json` shape documented in `docs/cli-json.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::profiles_client::ProfilesClient;
use serde::Serialize;

use super::{OutputFormat, names, output};
use crate::client::{channel, rpc_error};
use crate::profiles::{DEFAULT_CONCURRENCY, MAX_BODY_BYTES, MAX_SECONDS_PER_LEVEL};
use crate::registry::Kind;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The version to profile: NAME:VERSION, NAME (the latest) or
    /// models/NAME/versions/VERSION.
    #[arg(value_name = "NAME:VERSION")]
    pub model: String,
    /// The device to profile on; it must be online. Its other workloads keep serving.
    #[arg(long)]
    pub device: String,
    /// The scoring request to send again and again, e.g. a sample_input.json (at most 960 KiB).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// An entry module the requests go through: NAME:VERSION (or NAME, the latest).
    #[arg(long, value_name = "NAME:VERSION")]
    pub entry_module: Option<String>,
    /// The request's content type [default: application/json].
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Connections of each level, in order (at most 8 levels of 1 to 64).
    #[arg(long, value_delimiter = ',', value_name = "N,N,...", default_values_t = DEFAULT_CONCURRENCY)]
    pub concurrency: Vec<u32>,
    /// Seconds each level runs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SECONDS_PER_LEVEL)))]
    pub seconds: u32,
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// A finished profile as `model profile` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileView {
    /// `models/{model_id}/versions/{version}`.
    pub name: String,
    pub device: String,
    pub device_class: String,
    /// `NAME:VERSION`, or `null` without one.
    pub entry_module: Option<String>,
    pub cpu_count: u32,
    /// How much the agent's memory grew when the model loaded.
    pub load_bytes: u64,
    pub levels: Vec<ProfileLevelView>,
    pub recommendation: RecommendationView,
    /// What the hub stored on the model version.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileLevelView {
    pub concurrency: u32,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_cores: f64,
    pub peak_memory_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecommendationView {
    /// The level it comes from: the one with the most requests per second.
    pub concurrency: u32,
    pub cpu: f64,
    pub memory_bytes: u64,
}

impl From<pb::ModelProfile> for ProfileView {
    fn from(profile: pb::ModelProfile) -> Self {
        let levels = profile
            .levels
            .into_iter()
            .map(|l| ProfileLevelView {
                concurrency: l.concurrency,
                requests: l.requests,
                errors: l.errors,
                seconds: l.seconds,
                requests_per_second: if l.seconds > 0.0 {
                    l.requests as f64 / l.seconds
                } else {
                    0.0
                },
                p50_ms: l.p50_ms,
                p99_ms: l.p99_ms,
                cpu_cores: l.cpu_cores,
                peak_memory_bytes: l.peak_rss_bytes,
            })
            .collect();
        Self {
            name: profile.name,
            device: profile.device,
            device_class: profile.device_class,
            entry_module: Some(profile.entry_module).filter(|m| !m.is_empty()),
            cpu_count: profile.cpu_count,
            load_bytes: profile.load_bytes,
            levels,
            recommendation: RecommendationView {
                concurrency: profile.best_concurrency,
                cpu: profile.recommended_cpu,
                memory_bytes: profile.recommended_memory_bytes,
            },
            properties: profile.properties.into_iter().collect(),
        }
    }
}

pub async fn run(hub: &str, args: ProfileArgs) -> anyhow::Result<()> {
    let model = names::model_version(&args.model)?;
    let entry_module = args
        .entry_module
        .as_deref()
        .map(|m| names::version(Kind::Module, m))
        .transpose()?
        .map(|m| m.to_string())
        .unwrap_or_default();
    let device = names::device_id(&args.device)?;
    // Refused before reading: a wrong file can be large.
    let size = tokio::fs::metadata(&args.input)
        .await
        .with_context(|| format!("reading {}", args.input.display()))?
        .len();
    if size > MAX_BODY_BYTES as u64 {
        bail!(
            "{} is {size} bytes; a profile's request is at most {MAX_BODY_BYTES} bytes",
            args.input.display()
        );
    }
    let body = tokio::fs::read(&args.input)
        .await
        .with_context(|| format!("reading {}", args.input.display()))?;
    let mut client = ProfilesClient::new(channel(hub).await?);
    if args.output == OutputFormat::Table {
        // The call takes as long as the levels and a deployment: say so before the wait.
        let levels = args.concurrency.len();
        eprintln!(
            "profiling {model} on {device}: {levels} level{} of {} s, after deploying it there",
            if levels == 1 { "" } else { "s" },
            args.seconds
        );
    }
    let profile = client
        .profile_model(pb::ProfileModelRequest {
            name: model.resource_name(),
            device,
            entry_module,
            body: body.into(),
            content_type: args.content_type.unwrap_or_default(),
            concurrency: args.concurrency,
            seconds_per_level: args.seconds,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    output::emit(args.output, &ProfileView::from(profile), profile_table);
    Ok(())
}

/// The levels, then the recommendation and where it is stored.
pub fn profile_table(profile: &ProfileView) -> String {
    let rows: Vec<Vec<String>> = profile
        .levels
        .iter()
        .map(|l| {
            vec![
                l.concurrency.to_string(),
                format!("{:.1}", l.requests_per_second),
                format!("{:.2}", l.p50_ms),
                format!("{:.2}", l.p99_ms),
                l.errors.to_string(),
                format!("{:.2}", l.cpu_cores),
                format!("{:.1}", l.peak_memory_bytes as f64 / MIB),
            ]
        })
        .collect();
    let mut out = output::table(
        &[
            "CONCURRENCY",
            "REQ/S",
            "P50 MS",
            "P99 MS",
            "ERRORS",
            "CORES",
            "PEAK MEMORY MIB",
        ],
        &rows,
    );
    let stored_on = profile
        .name
        .strip_prefix("models/")
        .map_or(profile.name.clone(), |rest| {
            rest.replacen("/versions/", ":", 1)
        });
    out.push_str(&format!(
        "recommended: {:.1} CPU, {} MiB for {} (stored on {stored_on})\n",
        profile.recommendation.cpu,
        profile.recommendation.memory_bytes / (1024 * 1024),
        profile.device_class,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_levels_then_the_recommendation() {
        let profile = pb::ModelProfile {
            name: "models/diabetes/versions/1".into(),
            device: "edge-1".into(),
            device_class: "x86_64-2cpu".into(),
            levels: vec![
                pb::ProfileLevel {
                    concurrency: 1,
                    requests: 1624,
                    errors: 0,
                    seconds: 2.0,
                    p50_ms: 1.2,
                    p99_ms: 2.31,
                    cpu_cores: 0.52,
                    peak_rss_bytes: 96 * 1024 * 1024,
                },
                pb::ProfileLevel {
                    concurrency: 2,
                    requests: 2000,
                    errors: 1,
                    seconds: 2.0,
                    p50_ms: 1.9,
                    p99_ms: 3.5,
                    cpu_cores: 0.58,
                    peak_rss_bytes: 100 * 1024 * 1024,
                },
            ],
            recommended_cpu: 0.6,
            recommended_memory_bytes: 96 * 1024 * 1024,
            best_concurrency: 2,
            cpu_count: 2,
            ..pb::ModelProfile::default()
        };
        let view = ProfileView::from(profile);
        assert_eq!(view.entry_module, None);
        assert_eq!(view.levels[1].requests_per_second, 1000.0);
        insta::assert_snapshot!(profile_table(&view), @r"
        CONCURRENCY  REQ/S   P50 MS  P99 MS  ERRORS  CORES  PEAK MEMORY MIB
        1            812.0   1.20    2.31    0       0.52   96.0
        2            1000.0  1.90    3.50    1       0.58   100.0
        recommended: 0.6 CPU, 96 MiB for x86_64-2cpu (stored on diabetes:1)
        ");
    }
}
