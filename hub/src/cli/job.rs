//! `edgeship job`: batch inference jobs. `run` uploads an input file, has a device run a model
//! over every record, follows the job and downloads its output; the other commands inspect,
//! cancel, download and delete jobs. Views and `-o json` shapes are in `job/view.rs`.

mod view;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use edgeship_domain::InputFormat;
use edgeship_proto::v1 as pb;
use indicatif::{ProgressBar, ProgressStyle};

use super::{OutputFormat, names, output};
use crate::client::{JobsClient, connect_jobs, create_job, download_job_output, rpc_error};
use view::{JobView, jobs_table};

/// How often a followed job is asked about.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Without a terminal, a progress line at most this often (and whenever the state changes).
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Run a model over every record of an input file on one device, follow the job and
    /// download its output (one JSON line per record, in input order).
    Run(RunArgs),
    /// One job: its state, progress and output; --follow waits until it ends.
    Status {
        #[arg(value_name = "NAME")]
        name: String,
        /// Follow the job until it ends (a progress bar on a terminal, a line per change
        /// otherwise: JSON with -o json); fails when it ends other than Succeeded.
        #[arg(long)]
        follow: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Every job, oldest first.
    List {
        /// Only this device's jobs.
        #[arg(long, value_name = "ID")]
        device: Option<String>,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Stop a job that has not ended; its device drops its work.
    Cancel {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Download a Succeeded job's output; its sha256 is verified.
    Download {
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write it (replaced if it exists).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Delete a job that has ended, with its input and output on the hub.
    Delete {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job's name (unique; delete an old job to reuse its name).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// NAME:VERSION, or NAME for the latest version.
    #[arg(long, value_name = "NAME:VERSION")]
    pub model: String,
    /// The records: JSON lines (.jsonl, .ndjson, .json) or a NumPy array (.npy).
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Where to write the output (JSON lines) once the job succeeds.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// The device that runs it.
    #[arg(long, value_name = "ID")]
    pub device: String,
    /// Records per inference and per saved progress point [default: 100].
    #[arg(long, value_name = "N")]
    pub mini_batch: Option<u32>,
    #[arg(long, default_value = "tract", value_parser = ["tract", "opencl"])]
    pub runtime: String,
    /// Create the job and return; follow it with `job status NAME --follow` and fetch the
    /// output with `job download`.
    #[arg(long)]
    pub detach: bool,
}

pub async fn run(hub: &str, command: JobCommand) -> anyhow::Result<()> {
    let mut client = connect_jobs(hub).await?;
    match command {
        JobCommand::Run(args) => run_job(&mut client, args).await,
        JobCommand::Status {
            name,
            follow,
            output,
        } => {
            let name = job_name(&name)?;
            if follow {
                let view = follow_job(&mut client, &name, output).await?;
                if output == OutputFormat::Table {
                    print!("{}", view.details());
                }
                return ensure_succeeded(&view);
            }
            let view = get(&mut client, &name).await?;
            output::emit(output, &view, JobView::details);
            Ok(())
        }
        JobCommand::List { device, output } => {
            let device_id = device.as_deref().map(names::device_id).transpose()?;
            let jobs = client
                .list_jobs(pb::ListJobsRequest {
                    device_id: device_id.unwrap_or_default(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner()
                .jobs;
            let views: Vec<JobView> = jobs.into_iter().map(JobView::from).collect();
            output::emit(output, views.as_slice(), jobs_table);
            Ok(())
        }
        JobCommand::Cancel { name } => {
            let job = client
                .cancel_job(pb::CancelJobRequest {
                    name: job_name(&name)?,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("canceled job {}", job.job_id);
            Ok(())
        }
        JobCommand::Download { name, output } => {
            let name = job_name(&name)?;
            let data = download_job_output(&mut client, &name, &output).await?;
            println!(
                "wrote {} ({}, sha256 {})",
                output.display(),
                output::size(data.size_bytes),
                data.sha256
            );
            Ok(())
        }
        JobCommand::Delete { name } => {
            let deleted = client
                .delete_job(pb::DeleteJobRequest {
                    name: job_name(&name)?,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!("deleted job {}", deleted.job_id);
            Ok(())
        }
    }
}

/// `NAME` or `jobs/NAME`; the hub checks the name itself.
fn job_name(text: &str) -> anyhow::Result<String> {
    match text.strip_prefix("jobs/") {
        Some(id) if !id.is_empty() && !id.contains('/') => Ok(id.to_owned()),
        _ if text.contains('/') => bail!("invalid job name {text:?}: expected NAME or jobs/NAME"),
        _ => Ok(text.to_owned()),
    }
}

async fn get(client: &mut JobsClient, name: &str) -> anyhow::Result<JobView> {
    let job = client
        .get_job(pb::GetJobRequest {
            name: name.to_owned(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    Ok(JobView::from(job))
}

async fn run_job(client: &mut JobsClient, args: RunArgs) -> anyhow::Result<()> {
    let format = input_format(&args.input)?;
    check_output_folder(&args.output)?;
    let header = pb::JobHeader {
        job_id: args.name.clone(),
        model: names::deployment_model(&args.model)?,
        device_id: names::device_id(&args.device)?,
        input_format: match format {
            InputFormat::JsonLines => pb::JobInputFormat::JsonLines,
            InputFormat::Npy => pb::JobInputFormat::Npy,
        }
        .into(),
        mini_batch: args.mini_batch.unwrap_or(0),
        runtime: args.runtime,
        ..Default::default()
    };
    let job = create_job(client, header, &args.input).await?;
    eprintln!(
        "created job {} on {}: {} records of {}:{}",
        job.job_id, job.device_id, job.records_total, job.model_id, job.model_version
    );
    if args.detach {
        println!("{}", job.job_id);
        return Ok(());
    }
    let view = follow_job(client, &job.job_id, OutputFormat::Table).await?;
    ensure_succeeded(&view)?;
    download_job_output(client, &job.job_id, &args.output).await?;
    println!(
        "job {} succeeded: {} records, {} errors in {:.1} s ({:.1} records/s); output in {}",
        view.job_id,
        view.records_total,
        view.record_errors,
        view.seconds,
        if view.seconds > 0.0 {
            view.records_total as f64 / view.seconds
        } else {
            0.0
        },
        args.output.display()
    );
    Ok(())
}

/// The format an input's file name says.
fn input_format(input: &Path) -> anyhow::Result<InputFormat> {
    let text = input.to_string_lossy();
    InputFormat::from_path(&text).with_context(|| {
        format!(
            "cannot tell the format of {} from its name: use .jsonl, .ndjson or .json for JSON lines, .npy for a NumPy array",
            input.display()
        )
    })
}

/// Fails before anything runs when the output could not be written where asked.
fn check_output_folder(output: &Path) -> anyhow::Result<()> {
    let folder = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        bail!("the output's folder {} does not exist", folder.display());
    }
    if output.is_dir() {
        bail!("the output {} is a folder; name a file", output.display());
    }
    Ok(())
}

fn ensure_succeeded(view: &JobView) -> anyhow::Result<()> {
    match view.state.as_str() {
        "Succeeded" => Ok(()),
        state => bail!(
            "job {} {}: {}",
            view.job_id,
            state.to_lowercase(),
            view.error.as_deref().unwrap_or("canceled through the API")
        ),
    }
}

/// Asks about the job every [`POLL_INTERVAL`] until it ends: a bar on a terminal, otherwise a
/// line per change (JSON with `-o json`) at most every [`PLAIN_LINE_INTERVAL`].
async fn follow_job(
    client: &mut JobsClient,
    name: &str,
    output: OutputFormat,
) -> anyhow::Result<JobView> {
    let bar = (output == OutputFormat::Table && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix:10} [{bar:30}] {pos}/{len} records {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    });
    let mut printed: Option<(JobView, Instant)> = None;
    loop {
        let view = get(client, name).await?;
        match &bar {
            Some(bar) => {
                bar.set_prefix(view.state.clone());
                bar.set_length(view.records_total);
                bar.set_position(view.records_done);
                bar.set_message(format!(
                    "{} errors, {:.1} records/s",
                    view.record_errors,
                    view.records_per_second()
                ));
            }
            None => {
                let due = match &printed {
                    None => true,
                    Some((last, at)) => {
                        last.state != view.state
                            || (last.records_done != view.records_done
                                && at.elapsed() >= PLAIN_LINE_INTERVAL)
                    }
                };
                if due || view.is_terminal() {
                    match output {
                        OutputFormat::Json => println!("{}", serde_json::to_string(&view)?),
                        OutputFormat::Table => eprintln!("{}", view.progress_line()),
                    }
                    printed = Some((view.clone(), Instant::now()));
                }
            }
        }
        if view.is_terminal() {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            return Ok(view);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
