//! `edgeship job` as a script uses it: `run --detach`, `list` and `status` with `-o json`,
//! `cancel` and `delete`, and the refusals it makes before calling the hub.

use super::{diabetes_lines, setup};
use crate::cli::edgeship;

fn json(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "edgeship failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_run_detached_then_list_status_cancel_and_delete_from_the_command_line() {
    let setup = setup("edge-c1").await;
    let url = setup.hub.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("records.jsonl");
    std::fs::write(&input, diabetes_lines(250)).expect("write");
    let output_file = dir.path().join("out.jsonl");
    let (input, output_file) = (
        input.display().to_string(),
        output_file.display().to_string(),
    );

    let run = tokio::task::spawn_blocking({
        let (url, input, output_file) = (url.clone(), input.clone(), output_file.clone());
        move || {
            edgeship(
                &url,
                &[
                    "job",
                    "run",
                    "cli-job",
                    "--model",
                    "diabetes:1",
                    "--input",
                    &input,
                    "--output",
                    &output_file,
                    "--device",
                    "edge-c1",
                    "--mini-batch",
                    "50",
                    "--detach",
                ],
            )
        }
    })
    .await
    .expect("run");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "cli-job\n");

    let cli = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            edgeship(&url, &args)
        })
    };
    let args = |text: &str| text.split(' ').map(str::to_owned).collect::<Vec<_>>();
    let listed = json(
        &cli(args("job list --device edge-c1 -o json"))
            .await
            .expect("list"),
    );
    let jobs = listed.as_array().expect("a list");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["job_id"], "cli-job");
    assert_eq!(jobs[0]["records_total"], 250);

    let status = json(
        &cli(args("job status jobs/cli-job -o json"))
            .await
            .expect("status"),
    );
    assert_eq!(status["name"], "jobs/cli-job");
    assert_eq!(status["model"], "diabetes:1");
    assert_eq!(status["device"], "edge-c1");
    assert_eq!(status["state"], "Queued");
    assert_eq!(status["input_format"], "jsonl");
    assert_eq!(status["mini_batch"], 50);
    assert_eq!(status["output"], serde_json::Value::Null);
    assert_eq!(status["finish_time"], serde_json::Value::Null);

    let canceled = cli(args("job cancel cli-job")).await.expect("cancel");
    assert_eq!(
        String::from_utf8_lossy(&canceled.stdout),
        "canceled job cli-job\n"
    );
    // Following a canceled job fails, with the state in the message.
    let followed = cli(args("job status cli-job --follow"))
        .await
        .expect("follow");
    assert!(!followed.status.success());
    assert!(String::from_utf8_lossy(&followed.stderr).contains("job cli-job canceled"));
    let deleted = cli(args("job delete cli-job")).await.expect("delete");
    assert_eq!(
        String::from_utf8_lossy(&deleted.stdout),
        "deleted job cli-job\n"
    );

    // A file name that names no format is refused before anything is sent.
    let unknown = cli(vec![
        "job".into(),
        "run".into(),
        "x".into(),
        "--model".into(),
        "diabetes".into(),
        "--input".into(),
        format!("{}/records.csv", dir.path().display()),
        "--output".into(),
        output_file,
        "--device".into(),
        "edge-c1".into(),
    ])
    .await
    .expect("run");
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("cannot tell the format"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}
