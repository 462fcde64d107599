//! The `edgeship-agent` binary's command line: its example config is valid, and bad
//! configuration is refused before anything starts, with a message that names the problem.

use std::process::{Command, Output};

use edgeship_agent::config::RawConfig;

const BIN: &str = env!("CARGO_BIN_EXE_edgeship-agent");

fn agent(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("EDGESHIP_DEVICE_ID")
        .env_remove("EDGESHIP_BROKER")
        .env_remove("EDGESHIP_AGENT_DATA_DIR")
        .env_remove("EDGESHIP_AGENT_CONFIG")
        .output()
        .expect("run edgeship-agent")
}

#[test]
fn the_generated_config_is_a_valid_config() {
    let output = agent(&["generate-config"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let raw: RawConfig = toml::from_str(&text).expect("the example parses");
    let config = raw.validate().expect("the example validates");
    assert_eq!(config.device_id, "edge-001");
    assert_eq!(config.broker.to_string(), "mqtt://127.0.0.1:1883");
}

#[test]
fn bad_configuration_is_refused_with_a_clear_message_and_exit_code_2() {
    let dir = tempfile::tempdir().expect("temp");
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "device_id = \"d\"\nbrokr = \"mqtt://x\"\n").expect("write");
    let unknown = unknown.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let cases: [(Vec<&str>, &str); 5] = [
        (vec!["run", "--data-dir", &data], "a device id is required"),
        (
            vec!["run", "--device-id", "a/b", "--data-dir", &data],
            "invalid device id \"a/b\"",
        ),
        (
            vec![
                "run",
                "--device-id",
                "d",
                "--data-dir",
                &data,
                "--broker",
                "mqtts://h:1",
            ],
            "unsupported broker URL",
        ),
        (
            vec![
                "run",
                "--device-id",
                "d",
                "--data-dir",
                &data,
                "--label",
                "novalue",
            ],
            "expected key=value",
        ),
        (
            vec!["run", "--config", &unknown, "--data-dir", &data],
            "brokr",
        ),
    ];
    for (args, text) in cases {
        let output = agent(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(text), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
