//! Registry benchmark: registration latency for 1,000 small versions, filtered list latency,
//! and upload/download throughput of a 100 MiB file, all through the real gRPC API of an
//! in-process hub on loopback. Each transfer figure is printed beside a local baseline
//! measured in the same run (a plain file copy), because absolute numbers on shared machines
//! are noisy and the ratio is what carries over.
//!
//! Run with `just bench` or `cargo bench -p edgeship-hub --bench registry`.

use std::time::{Duration, Instant};

use edgeship_hub::client;
use edgeship_hub::registry::NewModel;
use edgeship_hub::{HubConfig, RunningHub};
use edgeship_proto::v1 as pb;

const SMALL_VERSIONS: usize = 1000;
const LIST_REPEATS: usize = 200;
const BIG_FILE_BYTES: usize = 100 * 1024 * 1024;
const TRANSFER_REPEATS: usize = 3;

fn percentile(samples: &mut [Duration], pct: f64) -> Duration {
    samples.sort();
    let rank = ((samples.len() as f64 - 1.0) * pct / 100.0).round() as usize;
    samples[rank]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let hub = RunningHub::start(HubConfig::local(data.path().join("hub"))).await?;
    let mut registry = client::connect(&hub.url()).await?;
    let work = tempfile::tempdir()?;

    // 1,000 small versions over 10 names, a quarter tagged stage=prod.
    let mut register_times = Vec::with_capacity(SMALL_VERSIONS);
    let started = Instant::now();
    for i in 0..SMALL_VERSIONS {
        let path = work.path().join("weights.bin");
        std::fs::write(&path, format!("{i:01024}"))?;
        let mut model = NewModel {
            model_id: format!("bench-{}", i % 10),
            ..NewModel::default()
        };
        model.tags.insert("team".into(), format!("t{}", i % 7));
        if i % 4 == 0 {
            model.tags.insert("stage".into(), "prod".into());
        }
        let t = Instant::now();
        client::register(&mut registry, model, &path).await?;
        register_times.push(t.elapsed());
    }
    let register_total = started.elapsed();

    let mut list_times = Vec::with_capacity(LIST_REPEATS);
    let mut listed = 0;
    for _ in 0..LIST_REPEATS {
        let t = Instant::now();
        let page = registry
            .list_models(pb::ListModelsRequest {
                page_size: 1000,
                tags: vec!["stage=prod".into()],
                ..Default::default()
            })
            .await?
            .into_inner();
        list_times.push(t.elapsed());
        listed = page.models.len();
    }
    assert_eq!(listed, SMALL_VERSIONS / 4);

    // 100 MiB: upload through the API, download through the API, and a local copy baseline.
    let big = work.path().join("big.bin");
    let pattern: Vec<u8> = (0..BIG_FILE_BYTES).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&big, &pattern)?;
    drop(pattern);
    let mut upload = Vec::new();
    let mut download = Vec::new();
    let mut copy = Vec::new();
    for round in 0..TRANSFER_REPEATS {
        // Distinct content per round so the blob store cannot deduplicate the upload.
        let mut bytes = std::fs::read(&big)?;
        bytes[0] = round as u8;
        std::fs::write(&big, &bytes)?;
        drop(bytes);

        let t = Instant::now();
        let model = client::register(&mut registry, new_model("big"), &big).await?;
        upload.push(t.elapsed());

        let target = work.path().join(format!("download-{round}"));
        let t = Instant::now();
        client::download(&mut registry, &model.name, &target, false).await?;
        download.push(t.elapsed());

        let t = Instant::now();
        std::fs::copy(&big, work.path().join(format!("copy-{round}")))?;
        let file = std::fs::File::open(work.path().join(format!("copy-{round}")))?;
        file.sync_all()?;
        copy.push(t.elapsed());
    }
    hub.stop().await?;

    let register_p50 = percentile(&mut register_times, 50.0);
    let register_p99 = percentile(&mut register_times, 99.0);
    let list_p50 = percentile(&mut list_times, 50.0);
    let list_p99 = percentile(&mut list_times, 99.0);
    let upload_med = percentile(&mut upload, 50.0);
    let download_med = percentile(&mut download, 50.0);
    let copy_med = percentile(&mut copy, 50.0);
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);

    println!("## registry benchmark ({cpus} CPUs)");
    println!();
    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| register {SMALL_VERSIONS} small versions (1 KiB file each), latency p50 / p99 | {} / {} |",
        ms(register_p50),
        ms(register_p99)
    );
    println!(
        "| register throughput | {:.0} versions/s |",
        SMALL_VERSIONS as f64 / register_total.as_secs_f64()
    );
    println!(
        "| list with tag filter (stage=prod, {listed} of {SMALL_VERSIONS} match), p50 / p99 | {} / {} |",
        ms(list_p50),
        ms(list_p99)
    );
    println!(
        "| upload 100 MiB file, median of {TRANSFER_REPEATS} | {:.0} MB/s ({:.2}x local copy) |",
        mb_per_s(BIG_FILE_BYTES, upload_med),
        copy_med.as_secs_f64() / upload_med.as_secs_f64()
    );
    println!(
        "| download 100 MiB file (verified), median of {TRANSFER_REPEATS} | {:.0} MB/s ({:.2}x local copy) |",
        mb_per_s(BIG_FILE_BYTES, download_med),
        copy_med.as_secs_f64() / download_med.as_secs_f64()
    );
    println!(
        "| baseline: local copy + fsync of the same file | {:.0} MB/s |",
        mb_per_s(BIG_FILE_BYTES, copy_med)
    );
    Ok(())
}

fn new_model(name: &str) -> NewModel {
    NewModel {
        model_id: name.to_owned(),
        ..NewModel::default()
    }
}
