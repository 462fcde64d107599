//! Table-driven tests of the module above.

use super::*;
use edgeship_domain::Protocol;

pub(super) const FULL: &str = r#"
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

pub(super) fn validate(text: &str) -> Result<DeploymentSpec, SpecError> {
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
    assert_eq!(
        spec.model.map(|m| m.version),
        Some(VersionSelector::Exact(2))
    );
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
        ("tls without names", "name: web\nmodel: m:1\nendpoint: {port: 1, tls: {hostnames: []}}\ntarget: {devices: [d1]}\n".into(), "endpoint.tls.hostnames: name at least one host"),
        ("bad tls name", "name: web\nmodel: m:1\nendpoint: {port: 1, tls: {hostnames: [ok.example, \"a b\"]}}\ntarget: {devices: [d1]}\n".into(), "endpoint.tls.hostnames[1]: \"a b\" is not a host name"),
        ("bad model signer", with("model_signers: [\"ed25519:AAAA\", \"rsa:x\"]\n"), "model_signers[0]: a public key is written `ed25519:`"),
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
    assert_eq!(
        spec.model.as_ref().map(ToString::to_string).as_deref(),
        Some("diabetes:latest")
    );
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

const CONTAINER: &str = r#"
name: scorer
container:
  image: diabetes-scorer:1
  image_artifact: scorer-image:1
  command: ["/edgeship-agent", "serve", "--model", "/models/x"]
  env: {LOG_LEVEL: debug, _UNDER: 1}
  ports: [5001]
  resources: {cpus: 0.5, memory: 256Mi}
  health: {path: /healthz, port: 5002}
  restart: on_failure
  max_restarts: 5
  model: diabetes:latest
endpoint: {port: 8080, auth: key, cors_origins: ["*"]}
target: {devices: [edge-1]}
"#;

#[test]
fn the_documented_container_manifest_is_accepted_and_goes_round_trip() {
    let spec = validate(CONTAINER).expect("valid");
    let container = spec.container.clone().expect("a container");
    assert_eq!(spec.model, None);
    assert_eq!(container.image, "diabetes-scorer:1");
    assert_eq!(
        container.image_artifact.as_ref().map(ToString::to_string),
        Some("scorer-image:1".into())
    );
    assert_eq!(container.command.len(), 4);
    assert_eq!(container.env["LOG_LEVEL"], "debug");
    assert_eq!(
        container.env["_UNDER"], "1",
        "a YAML number is read as text"
    );
    assert_eq!(
        (container.port, container.cpu_millis, container.memory_bytes),
        (5001, 500, 256 << 20)
    );
    assert_eq!(
        (container.health_path.as_str(), container.health_port),
        ("/healthz", 5002)
    );
    assert_eq!(
        container.restart,
        edgeship_domain::RestartPolicy::OnFailure { max_restarts: 5 }
    );
    assert_eq!(spec.endpoint.protocols, vec![Protocol::Azureml]);
    // The image artifact, then the mounted model: the order revisions pin them in.
    let pinned: Vec<(String, PinRole)> = spec
        .pinned()
        .map(|(m, role)| (m.to_string(), role))
        .collect();
    assert_eq!(
        pinned,
        [
            ("scorer-image:1".to_owned(), PinRole::ImageArtifact),
            ("diabetes:latest".to_owned(), PinRole::MountedModel)
        ]
    );
    assert_eq!(spec.describe_models(), "scorer-image:1, diabetes:latest");

    let manifest = spec.to_manifest();
    assert_eq!(
        (
            manifest.runtime.as_deref(),
            manifest.endpoint.protocols.len()
        ),
        (None, 0)
    );
    let yaml = serde_yaml_ng::to_string(&manifest).expect("yaml");
    assert!(yaml.contains("memory: 256Mi"), "{yaml}");
    assert_eq!(validate(&yaml).expect("valid yaml"), spec);
    let json = serde_json::to_string(&manifest).expect("json");
    assert_eq!(validate(&json).expect("valid json"), spec);
}

#[test]
fn a_container_that_the_engine_pulls_gets_the_defaults() {
    let spec = validate(
        "name: web\ncontainer: {image: \"registry.example.com:5000/team/web:2.1\", ports: [80]}\nendpoint: {port: 8080}\ntarget: {devices: [d1]}\n",
    )
    .expect("valid");
    let container = spec.container.clone().expect("a container");
    assert_eq!(container.health_path, "/");
    assert_eq!(container.health_port, 80, "the probe defaults to the port");
    assert_eq!(container.restart, edgeship_domain::RestartPolicy::default());
    assert_eq!((container.cpu_millis, container.memory_bytes), (0, 0));
    assert_eq!(spec.all_models().count(), 0);
    assert_eq!(
        spec.describe_models(),
        "registry.example.com:5000/team/web:2.1"
    );
    let yaml = serde_yaml_ng::to_string(&spec.to_manifest()).expect("yaml");
    assert_eq!(validate(&yaml).expect("valid yaml"), spec);

    // The artifact alone: the image is the archive's own tag, found at apply.
    let artifact = validate(
        "name: web\ncontainer: {image_artifact: scorer-image, ports: [80], restart: always, resources: {cpus: 0.0001, memory: 1000000000}}\nendpoint: {port: 8080}\ntarget: {devices: [d1]}\n",
    )
    .expect("valid");
    let container = artifact.container.clone().expect("a container");
    assert_eq!(container.image, "");
    assert_eq!(container.restart, edgeship_domain::RestartPolicy::Always);
    assert_eq!(container.cpu_millis, 1, "a limit never rounds down to none");
    assert_eq!(container.memory_bytes, 1_000_000_000);
    assert_eq!(artifact.describe_models(), "scorer-image:latest");
    let json = serde_json::to_string(&artifact.to_manifest()).expect("json");
    assert_eq!(validate(&json).expect("valid json"), artifact);
}

#[test]
fn each_container_mistake_names_the_field_and_the_reason() {
    let manifest = |container: &str, extra: &str| {
        format!(
            "name: web\ncontainer: {container}\nendpoint: {{port: 8080}}\ntarget: {{devices: [d1]}}\n{extra}"
        )
    };
    let ok = "{image: web:1, ports: [80]}";
    let table: Vec<(&str, String, &str)> = vec![
        (
            "neither image nor artifact",
            manifest("{ports: [80]}", ""),
            "container: give `image`",
        ),
        (
            "unknown key",
            manifest("{image: web:1, ports: [80], volumes: [x]}", ""),
            "container.volumes: unknown field `volumes`",
        ),
        (
            "upper-case image",
            manifest("{image: Web:1, ports: [80]}", ""),
            "container.image: \"Web:1\" is not an image reference: its name is lower-case",
        ),
        (
            "bad tag",
            manifest("{image: \"web:-1\", ports: [80]}", ""),
            "container.image: \"web:-1\" is not an image reference: a tag",
        ),
        (
            "bad digest",
            manifest("{image: \"web@sha256:12\", ports: [80]}", ""),
            "container.image: \"web@sha256:12\" is not an image reference: a digest",
        ),
        (
            "bad artifact",
            manifest("{image_artifact: \"a:b\", ports: [80]}", ""),
            "container.image_artifact: \"a:b\": the version must be",
        ),
        (
            "no port",
            manifest("{image: web:1}", ""),
            "container.ports: required",
        ),
        (
            "two ports",
            manifest("{image: web:1, ports: [80, 81]}", ""),
            "container.ports: give exactly one port: the endpoint fronts one container port",
        ),
        (
            "port zero",
            manifest("{image: web:1, ports: [0]}", ""),
            "container.ports[0]: 0 is not a TCP port",
        ),
        (
            "empty program",
            manifest("{image: web:1, ports: [80], command: [\"\"]}", ""),
            "container.command[0]: is empty",
        ),
        (
            "NUL in an argument",
            manifest("{image: web:1, ports: [80], command: [a, \"b\\0\"]}", ""),
            "container.command[1]: contains a NUL",
        ),
        (
            "bad variable name",
            manifest("{image: web:1, ports: [80], env: {1ST: x}}", ""),
            "container.env.1ST: not a variable name",
        ),
        (
            "dash in a name",
            manifest("{image: web:1, ports: [80], env: {A-B: x}}", ""),
            "container.env.A-B: not a variable name",
        ),
        (
            "reserved variable",
            manifest(
                "{image: web:1, ports: [80], env: {AZUREML_MODEL_DIR: /x}}",
                "",
            ),
            "container.env.AZUREML_MODEL_DIR: reserved: the agent sets it",
        ),
        (
            "reserved variable too",
            manifest(
                "{image: web:1, ports: [80], env: {EDGESHIP_MODEL_DIR: /x}}",
                "",
            ),
            "container.env.EDGESHIP_MODEL_DIR: reserved",
        ),
        (
            "negative cpus",
            manifest("{image: web:1, ports: [80], resources: {cpus: -1}}", ""),
            "container.resources.cpus: -1 is not a CPU count",
        ),
        (
            "memory unit",
            manifest(
                "{image: web:1, ports: [80], resources: {memory: 256MB}}",
                "",
            ),
            "container.resources.memory: \"256MB\" is not a size",
        ),
        (
            "tiny memory",
            manifest("{image: web:1, ports: [80], resources: {memory: 1Mi}}", ""),
            "container.resources.memory: 1048576 bytes is below 6Mi",
        ),
        (
            "health path",
            manifest("{image: web:1, ports: [80], health: {path: healthz}}", ""),
            "container.health.path: \"healthz\" is not an HTTP path",
        ),
        (
            "health port",
            manifest("{image: web:1, ports: [80], health: {port: 70000}}", ""),
            "container.health.port: 70000 is not a TCP port",
        ),
        (
            "unknown restart",
            manifest("{image: web:1, ports: [80], restart: sometimes}", ""),
            "container.restart: unknown restart policy \"sometimes\"",
        ),
        (
            "max_restarts with always",
            manifest(
                "{image: web:1, ports: [80], restart: always, max_restarts: 2}",
                "",
            ),
            "container.max_restarts: max_restarts applies to on_failure only",
        ),
        (
            "no restarts as a count",
            manifest("{image: web:1, ports: [80], max_restarts: 0}", ""),
            "container.max_restarts: must be at least 1 (for no restarts, use restart: no)",
        ),
        (
            "a health path the probe cannot send",
            manifest("{image: web:1, ports: [80], health: {path: /santé}}", ""),
            "container.health.path: \"/santé\" is not an HTTP path",
        ),
        (
            "bad model",
            manifest("{image: web:1, ports: [80], model: \"B C\"}", ""),
            "container.model:",
        ),
        (
            "the artifact mounted",
            manifest("{image_artifact: web, ports: [80], model: web:2}", ""),
            "container.model: web is the image artifact itself",
        ),
        (
            "a top-level model",
            manifest(ok, "model: m:1\n"),
            "model: not with `container`: a container workload runs its image; give the model it mounts as container.model",
        ),
        (
            "models",
            manifest(ok, "models: [a:1]\n"),
            "models: not with `container`",
        ),
        (
            "a split",
            manifest(
                ok,
                "traffic: [{model: m:1, weight: 50}, {model: m:2, weight: 50}]\n",
            ),
            "traffic: not with `container`",
        ),
        (
            "a runtime",
            manifest(ok, "runtime: tract\n"),
            "runtime: not with `container`: the image brings its own runtime",
        ),
        (
            "an OpenCL device",
            manifest(ok, "opencl_device: gpu\n"),
            "opencl_device: not with `container`",
        ),
        (
            "a precision",
            manifest(ok, "opencl_precision: fp16\n"),
            "opencl_precision: not with `container`",
        ),
        (
            "batching",
            manifest(ok, "batching: {max_batch_size: 8}\n"),
            "batching: not with `container`",
        ),
        (
            "a gRPC port",
            format!(
                "name: web\ncontainer: {ok}\nendpoint: {{port: 8080, protocols: [v2], grpc_port: 8081}}\ntarget: {{devices: [d1]}}\n"
            ),
            "endpoint.grpc_port: not with `container`",
        ),
        (
            "the v2 protocol",
            format!(
                "name: web\ncontainer: {ok}\nendpoint: {{port: 8080, protocols: [azureml, v2]}}\ntarget: {{devices: [d1]}}\n"
            ),
            "endpoint.protocols[1]: not with `container`",
        ),
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
fn image_references_follow_docker() {
    for ok in [
        "web",
        "web:1",
        "team/web:1.2-rc_3",
        "localhost/web",
        "registry.example.com:5000/a/b/c:tag",
        "ghcr.io/org/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "my.registry:5000/app:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        assert_eq!(image_reference(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "Web",
        "web:",
        "-web",
        "web/",
        "a//b",
        "web:1 2",
        "web@md5:00",
    ] {
        assert!(image_reference(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn records_stored_before_containers_still_decode() {
    let spec = validate(FULL).expect("valid");
    let stored = serde_json::to_value(&spec).expect("json");
    assert!(stored.get("container").is_none());
    assert!(stored["model"].is_object(), "the shape older hubs wrote");
    assert_eq!(
        serde_json::from_value::<DeploymentSpec>(stored).expect("decodes"),
        spec
    );
}
