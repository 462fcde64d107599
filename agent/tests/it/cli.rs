//! The `edgeship-agent` binary's command line: its example config is valid, and bad
//! configuration is refused before anything starts, with a message that names the problem.

use std::process::{Command, Output};

use edgeship_agent::config::{DEFAULT_BROKER, RawConfig};

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
    // A device with the example as is still needs the hub's key, from enrollment or here.
    let refused = raw.validate().expect_err("no director key");
    assert!(
        refused.to_string().contains("enroll this device"),
        "{refused}"
    );
    let raw: RawConfig = toml::from_str(&text).expect("the example parses");
    let key = edgeship_domain::trust::SigningKey::generate().expect("key");
    let config = RawConfig {
        director_key: Some(key.public().to_string()),
        // The example's broker is plain MQTT on loopback.
        insecure: Some(true),
        ..raw
    }
    .validate()
    .expect("the example validates");
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
    let cases: [(Vec<&str>, &str); 6] = [
        (vec!["run", "--data-dir", &data], "a device id is required"),
        (
            vec!["run", "--device-id", "d", "--data-dir", &data],
            "no director key to check desired states with",
        ),
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
                "ws://h:1",
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

#[test]
fn run_help_describes_every_flag_and_shows_the_default_broker() {
    let output = agent(&["run", "--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    let line = |flag: &str| {
        help.lines()
            .find(|line| line.trim_start().starts_with(flag))
            .unwrap_or_else(|| panic!("no {flag} in:\n{help}"))
            .to_owned()
    };
    assert!(
        line("--broker").contains(&format!("[default: {DEFAULT_BROKER}]")),
        "{help}"
    );
    assert!(
        line("--device-id").contains("Unique id of this device"),
        "{help}"
    );
    for flag in ["--config", "--data-dir", "--label", "--serve-host"] {
        // A described flag has text after its value name.
        let described = line(flag).split_whitespace().count() > 2;
        assert!(described, "{flag} has no description:\n{help}");
    }
}

#[test]
fn the_config_files_broker_is_used_when_no_flag_names_one() {
    // The help shows a default broker, but it must not override the file's: an unsupported
    // broker in the file is reported, which proves the file's value was the one used.
    let dir = tempfile::tempdir().expect("temp");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "device_id = \"d\"\nbroker = \"ws://from-file:8883\"\n",
    )
    .expect("write");
    let data = dir.path().join("data").display().to_string();
    let config = config.display().to_string();
    let output = agent(&["run", "--config", &config, "--data-dir", &data]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ws://from-file:8883"), "{stderr}");
}
