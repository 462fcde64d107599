//! Table-driven tests of the module above.

use super::*;
use edgeship_domain::Protocol;

const FULL: &str = r#"
name: diabetes
model: diabetes:latest
runtime: tract
endpoint: {port: 5001, auth: none}
target:
  devices: [edge-1]
  selector: "site in (berlin,paris),accelerator=opencl,!canary"
priority: 0
rollout:
  strategy: waves
  waves: ["10%", "50%", "100%"]
  max_unavailable: 1
  health_gate: {min_healthy_seconds: 30, max_error_rate: 0.01, max_p99_ms: 50}
  abort: {max_failure_percent: 20, min_devices: 3, on_failure: rollback}
  device_timeout_seconds: 300
traffic:
  - {model: diabetes:3, weight: 90}
  - {model: diabetes:4, weight: 10}
batching: {max_batch_size: 8, max_queue_delay_ms: 2}
"#;

fn validate(text: &str) -> Result<DeploymentSpec, SpecError> {
    parse_manifest(text)?.validate()
}

#[test]
fn the_documented_manifest_is_accepted_in_yaml_and_json() {
    let spec = validate(FULL).expect("valid");
    assert_eq!(spec.name, "diabetes");
    assert_eq!(spec.endpoint.port, 5001);
    assert_eq!(spec.target.devices.len(), 1);
    assert!(spec.target.selector.is_some());
    assert_eq!(
        spec.rollout.strategy,
        Strategy::Waves(vec![
            WaveSize::Percent(10.0),
            WaveSize::Percent(50.0),
            WaveSize::Percent(100.0)
        ])
    );
    assert_eq!(
        spec.rollout.abort.map(|a| a.on_failure),
        Some(OnFailure::Rollback)
    );
    assert_eq!(spec.traffic.len(), 2);
    assert_eq!(
        (
            spec.options.max_batch_size,
            spec.options.max_queue_delay_ms,
            spec.options.max_queue_size
        ),
        (8, 2, 0)
    );
    // JSON, and the manifest written back from the spec, give the same spec.
    let json = serde_json::to_string(&spec.to_manifest()).expect("json");
    assert_eq!(validate(&json).expect("valid json"), spec);
    let yaml = serde_yaml_ng::to_string(&spec.to_manifest()).expect("yaml");
    assert_eq!(validate(&yaml).expect("valid yaml"), spec);
}

#[test]
fn a_minimal_manifest_gets_the_defaults() {
    let spec = validate("name: web\nmodel: m:2\nendpoint: {port: 8080}\ntarget: {devices: [d1]}\n")
        .expect("valid");
    assert_eq!(spec.runtime, RuntimeKind::Tract);
    assert_eq!(spec.rollout, RolloutPolicy::default());
    assert_eq!(spec.model.version, VersionSelector::Exact(2));
    assert_eq!(spec.endpoint.protocols, vec![Protocol::Azureml]);
}

#[test]
fn an_opencl_deployment_names_its_device_and_it_goes_round_trip() {
    let spec = validate(
        "name: web\nmodel: m:2\nruntime: opencl\nopencl_device: gpu\nopencl_precision: fp16\nendpoint: {port: 8080}\ntarget: {devices: [d1]}\n",
    )
    .expect("valid");
    assert_eq!(spec.runtime, RuntimeKind::Opencl);
    assert_eq!(spec.options.opencl_device, "gpu");
    assert_eq!(
        spec.options.opencl_precision,
        edgeship_domain::Precision::Fp16
    );
    let yaml = serde_yaml_ng::to_string(&spec.to_manifest()).expect("yaml");
    assert!(yaml.contains("opencl_device: gpu"), "{yaml}");
    assert!(yaml.contains("opencl_precision: fp16"), "{yaml}");
    assert_eq!(validate(&yaml).expect("valid yaml"), spec);
}

#[test]
fn each_kind_of_mistake_names_the_field_and_the_reason() {
    let base = "name: web\nmodel: m:1\nendpoint: {port: 8080}\ntarget: {devices: [d1]}\n";
    let with = |extra: &str| format!("{base}{extra}");
    let table: Vec<(&str, String, &str)> = vec![
        ("unknown key", with("replicas: 3\n"), "replicas: unknown field `replicas`, expected one of `name`"),
        ("misspelled nested key", with("rollout: {stratgy: waves}\n"), "rollout.stratgy: unknown field `stratgy`"),
        ("bad name", "name: Web App\nmodel: m:1\nendpoint: {port: 1}\ntarget: {devices: [d1]}\n".into(), "name:"),
        ("missing model", "name: web\nendpoint: {port: 1}\ntarget: {devices: [d1]}\n".into(), "model: required"),
        ("bad version", "name: web\nmodel: m:zero\nendpoint: {port: 1}\ntarget: {devices: [d1]}\n".into(), "model: \"m:zero\": the version must be a number"),
        ("port out of range", "name: web\nmodel: m:1\nendpoint: {port: 70000}\ntarget: {devices: [d1]}\n".into(), "endpoint.port: 70000 is not a TCP port"),
        ("port missing", "name: web\nmodel: m:1\nendpoint: {}\ntarget: {devices: [d1]}\n".into(), "endpoint: missing field `port`"),
        ("unknown runtime", with("runtime: cuda\n"), "runtime: unknown runtime \"cuda\""),
        ("device for tract", with("opencl_device: gpu\n"), "opencl_device: only for runtime: opencl"),
        ("precision for tract", with("opencl_precision: fp16\n"), "opencl_precision: only for runtime: opencl"),
        ("unknown precision", with("runtime: opencl\nopencl_precision: int8\n"), "opencl_precision: unknown precision \"int8\": use fp32 or fp16"),
        ("empty target", "name: web\nmodel: m:1\nendpoint: {port: 1}\n".into(), "target: is empty: name devices"),
        ("bad device id", "name: web\nmodel: m:1\nendpoint: {port: 1}\ntarget: {devices: [\"a b\"]}\n".into(), "target.devices[0]:"),
        ("bad selector", "name: web\nmodel: m:1\nendpoint: {port: 1}\ntarget: {selector: \"site in (a\"}\n".into(), "target.selector:"),
        ("unknown strategy", with("rollout: {strategy: canary}\n"), "rollout.strategy: unknown strategy \"canary\""),
        ("waves not increasing", with("rollout: {waves: [\"10%\", \"50%\", \"40%\"]}\n"), "rollout.waves[2]: must be larger than waves[1] (50%)"),
        ("wave over 100%", with("rollout: {waves: [\"150%\"]}\n"), "rollout.waves[0]: \"150%\" is not a percentage"),
        ("wave of nothing", with("rollout: {waves: [0]}\n"), "rollout.waves[0]: a wave moves at least 1 device"),
        ("wave gibberish", with("rollout: {waves: [\"half\"]}\n"), "rollout.waves[0]: \"half\" is neither"),
        ("waves without the strategy", with("rollout: {strategy: all_at_once, waves: [\"10%\"]}\n"), "rollout.waves: given, but the strategy is all_at_once"),
        ("exponential without a rate", with("rollout: {strategy: exponential}\n"), "rollout.exponential: the exponential strategy needs"),
        ("shrinking rate", with("rollout: {exponential: {base_per_minute: 10, increment_factor: 0.5, max_per_minute: 100}}\n"), "rollout.exponential.increment_factor: 0.5 must be 1 or more"),
        ("cap below base", with("rollout: {exponential: {base_per_minute: 10, increment_factor: 2, max_per_minute: 5}}\n"), "rollout.exponential.max_per_minute: 5 is below base_per_minute (10)"),
        ("no unavailability", with("rollout: {max_unavailable: 0}\n"), "rollout.max_unavailable: must be at least 1"),
        ("error rate as percent", with("rollout: {health_gate: {max_error_rate: 5}}\n"), "rollout.health_gate.max_error_rate: 5 is not a fraction"),
        ("abort at 100%", with("rollout: {abort: {max_failure_percent: 100}}\n"), "rollout.abort.max_failure_percent: 100 is not a percentage"),
        ("unknown abort action", with("rollout: {abort: {max_failure_percent: 10, on_failure: retry}}\n"), "rollout.abort.on_failure: unknown action \"retry\""),
        ("zero timeout", with("rollout: {device_timeout_seconds: 0}\n"), "rollout.device_timeout_seconds: must be at least 1"),
        ("negative timeout", with("rollout: {device_timeout_seconds: -5}\n"), "rollout.device_timeout_seconds: invalid type: integer `-5`, expected u32"),
        ("weights not 100", with("traffic: [{model: m:1, weight: 50}, {model: m:2, weight: 40}]\n"), "traffic: weights add up to 90, not 100"),
        ("split of one", with("traffic: [{model: m:1, weight: 100}]\n"), "traffic: a split needs at least two versions"),
        ("split on latest", with("traffic: [{model: m:latest, weight: 50}, {model: m:2, weight: 50}]\n"), "traffic[0].model: a traffic split names exact versions"),
        ("split twice the same", with("traffic: [{model: m:2, weight: 50}, {model: m:2, weight: 50}]\n"), "traffic[1].model: version 2 is listed twice"),
        ("split across models", with("traffic: [{model: m:1, weight: 50}, {model: other:2, weight: 50}]\n"), "traffic: other:2 is not a version of model m"),
        ("batch of nothing", with("batching: {max_batch_size: 0}\n"), "batching.max_batch_size: must be from 1 (no batching) to 1024"),
        ("batch too large", with("batching: {max_batch_size: 5000}\n"), "batching.max_batch_size: must be from 1 (no batching) to 1024"),
        ("batch wait too long", with("batching: {max_batch_size: 8, max_queue_delay_ms: 60000}\n"), "batching.max_queue_delay_ms: must be at most 10000"),
        ("empty queue", with("batching: {max_batch_size: 8, max_queue_size: 0}\n"), "batching.max_queue_size: must be from 1"),
        ("batching without a size", with("batching: {max_queue_delay_ms: 5}\n"), "batching: missing field `max_batch_size`"),
        ("model and models", with("models: [a:1]\n"), "models: give `model` or `models`, not both"),
        ("a model twice", "name: web\nmodels: [a:1, b:latest, a:2]\nendpoint: {port: 1}\ntarget: {devices: [d1]}\n".into(), "models[2]: model a is listed twice"),
        ("a bad model", "name: web\nmodels: [a:1, \"B C\"]\nendpoint: {port: 1}\ntarget: {devices: [d1]}\n".into(), "models[1]:"),
        ("models and a split", "name: web\nmodels: [a:1, b:1]\nendpoint: {port: 1}\ntarget: {devices: [d1]}\ntraffic: [{model: a:1, weight: 50}, {model: a:2, weight: 50}]\n".into(), "traffic: a split is between versions of one model: it cannot be combined with `models`"),
        ("zero weight", with("traffic: [{model: m:1, weight: 0}, {model: m:2, weight: 100}]\n"), "traffic[0].weight: must be from 1 to 100"),
        ("unknown auth", "name: web\nmodel: m:1\nendpoint: {port: 1, auth: password}\ntarget: {devices: [d1]}\n".into(), "endpoint.auth: unknown endpoint auth \"password\": use none, key or token"),
        ("bad cors origin", "name: web\nmodel: m:1\nendpoint: {port: 1, cors_origins: [example.com]}\ntarget: {devices: [d1]}\n".into(), "endpoint.cors_origins[0]: \"example.com\" is not an origin"),
        ("grpc without v2", "name: web\nmodel: m:1\nendpoint: {port: 1, grpc_port: 2}\ntarget: {devices: [d1]}\n".into(), "endpoint.grpc_port: gRPC serves the v2 protocol: add v2 to endpoint.protocols"),
        ("grpc on the rest port", "name: web\nmodel: m:1\nendpoint: {port: 1, protocols: [v2], grpc_port: 1}\ntarget: {devices: [d1]}\n".into(), "endpoint.grpc_port: 1 is already the REST port"),
        ("grpc port zero", "name: web\nmodel: m:1\nendpoint: {port: 1, protocols: [v2], grpc_port: 0}\ntarget: {devices: [d1]}\n".into(), "endpoint.grpc_port: 0 is not a TCP port"),
        ("unknown protocol", "name: web\nmodel: m:1\nendpoint: {port: 1, protocols: [v3]}\ntarget: {devices: [d1]}\n".into(), "endpoint.protocols[0]: unknown protocol \"v3\""),
        ("not a string", "name: [unclosed".into(), "name: invalid type: sequence, expected a string"),
        ("json type mistake", "{\"name\": \"web\", \"endpoint\": {\"port\": \"80\"}}".into(), "endpoint.port: invalid type"),
    ];
    let mut wrong = Vec::new();
    for (case, text, expected) in table {
        match validate(&text) {
            Ok(_) => wrong.push(format!("{case}: accepted")),
            Err(err) if err.to_string().starts_with(expected) => {}
            Err(err) => wrong.push(format!("{case}: got `{err}`, expected `{expected}…`")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn changes_name_each_field_that_moved() {
    let old = validate("name: web\nmodel: m:1\nendpoint: {port: 8080}\ntarget: {devices: [d1]}\n")
        .expect("valid");
    let new = validate(
        "name: web\nmodel: m:2\nendpoint: {port: 8081}\ntarget: {devices: [d1]}\nrollout: {waves: [\"50%\"]}\n",
    )
    .expect("valid");
    let changes = new.changes_from(&old);
    assert!(
        changes.contains(&"model: m:1 → m:2".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"endpoint.port: 8080 → 8081".to_owned()),
        "{changes:?}"
    );
    assert!(
        changes
            .iter()
            .any(|c| c.starts_with("rollout.strategy: all_at_once → waves")),
        "{changes:?}"
    );
    assert!(new.changes_from(&new).is_empty());
}

#[test]
fn wave_sizes_cover_at_least_one_device_and_at_most_all() {
    let table = [
        (WaveSize::Percent(10.0), 25, 3),
        (WaveSize::Percent(10.0), 3, 1),
        (WaveSize::Percent(100.0), 7, 7),
        (WaveSize::Devices(5), 3, 3),
        (WaveSize::Devices(5), 0, 0),
    ];
    for (size, population, expected) in table {
        assert_eq!(size.devices(population), expected, "{size} of {population}");
    }
}

#[test]
fn several_models_share_an_endpoint_and_write_back_as_models() {
    let spec = validate(
        "name: shop\nmodels: [diabetes:latest, digits:2]\nendpoint: {port: 5001, protocols: [azureml, v2]}\ntarget: {devices: [d1]}\n",
    )
    .expect("valid");
    assert_eq!(spec.model.to_string(), "diabetes:latest");
    assert_eq!(spec.describe_models(), "diabetes:latest, digits:2");
    let manifest = spec.to_manifest();
    assert_eq!(
        (manifest.model.as_deref(), manifest.models.len()),
        (None, 2)
    );
    let json = serde_json::to_string(&manifest).expect("json");
    assert_eq!(validate(&json).expect("valid json"), spec);
    let single =
        validate("name: one\nmodels: [digits:2]\nendpoint: {port: 1}\ntarget: {devices: [d1]}\n")
            .expect("valid");
    assert!(single.extra_models.is_empty());
    assert_eq!(single.to_manifest().model.as_deref(), Some("digits:2"));
}
