//! What must hold after every trial, whatever the fault: the device serves exactly the
//! registered bytes, nothing half-written is left behind, and every write the hub
//! acknowledged is still there.

use std::collections::BTreeMap;
use std::path::Path;

use edgeship_proto::v1 as pb;
use sha2::Digest as _;

use super::world::World;

/// Files of a model version: relative path → sha256.
pub type Files = BTreeMap<String, String>;

/// The sha256 of every file under `folder`, by relative path.
pub fn digests(folder: &Path) -> Files {
    let mut files = Files::new();
    for path in walk(folder) {
        if let Ok(relative) = path.strip_prefix(folder) {
            let relative = relative.to_string_lossy().replace('\\', "/");
            files.insert(relative, sha256_of(&path));
        }
    }
    files
}

fn sha256_of(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| hex::encode(sha2::Sha256::digest(bytes)))
        .unwrap_or_else(|err| format!("unreadable: {err}"))
}

/// Every file under `dir`, at any depth.
pub(super) fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => found.push(path),
                _ => {}
            }
        }
    }
    found
}

/// Bytes in the files under `dir`, at any depth.
pub fn bytes_under(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// The device's side: the version it serves is staged byte for byte as registered, every
/// file in its verified cache matches its name, and no download or temporary file is left.
pub fn agent_files(agent_dir: &Path, model_id: &str, version: u32, want: &Files) -> Vec<String> {
    let mut failures = Vec::new();
    let staged = agent_dir
        .join("models")
        .join(model_id)
        .join(version.to_string());
    let got = digests(&staged);
    if &got != want {
        failures.push(format!(
            "{model_id}:{version} as staged on the device differs from the registry: {got:?}"
        ));
    }
    for path in walk(&agent_dir.join("blobs/sha256")) {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let actual = sha256_of(&path);
        if actual != name {
            failures.push(format!(
                "cached blob {name} holds bytes with sha256 {actual}"
            ));
        }
    }
    let partial = walk(&agent_dir.join("blobs/partial"));
    if !partial.is_empty() {
        failures.push(format!("downloads left behind: {partial:?}"));
    }
    failures.extend(temporary_files(agent_dir));
    failures
}

/// Files named as temporary (`*.tmp`) anywhere under `dir`: a write that was never finished
/// or never cleaned up.
pub fn temporary_files(dir: &Path) -> Vec<String> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .map(|p| format!("temporary file left behind: {}", p.display()))
        .collect()
}

/// What the hub acknowledged before and during the trial, all of it still there: both
/// versions with their files, the deployment on the new version, its rollout history, and
/// the label written just before any hub kill.
pub async fn hub_state(
    world: &World,
    model_id: &str,
    versions: &[(u32, &Files)],
    deployment: &str,
    model: &str,
    label: Option<(&str, &str)>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let hub = world.hub_url();
    let Ok(mut registry) =
        pb::model_registry_client::ModelRegistryClient::connect(hub.clone()).await
    else {
        return vec!["the hub does not answer".into()];
    };
    for (version, want) in versions {
        let name = format!("models/{model_id}/versions/{version}");
        match registry.get_model(pb::GetModelRequest { name }).await {
            Ok(found) => {
                let got: Files = found
                    .into_inner()
                    .files
                    .into_iter()
                    .map(|f| (f.path, f.sha256))
                    .collect();
                if &&got != want {
                    failures.push(format!("{model_id}:{version} lists other files: {got:?}"));
                }
            }
            Err(status) => failures.push(format!(
                "{model_id}:{version}, registered before the trial, is gone: {}",
                status.message()
            )),
        }
    }
    match world.deployment(deployment).await {
        Some(found) if found.model == model => {}
        Some(found) => failures.push(format!(
            "deployment {deployment} is on {}, the last apply said {model}",
            found.model
        )),
        None => failures.push(format!("deployment {deployment} is gone")),
    }
    if let Ok(mut fleet) = pb::fleet_client::FleetClient::connect(hub.clone()).await {
        let device = fleet
            .get_device(pb::GetDeviceRequest {
                name: format!("devices/{}", world.device),
            })
            .await
            .map(tonic::Response::into_inner);
        if let Some((key, value)) = label {
            match device {
                Ok(device) if device.labels.get(key).map(String::as_str) == Some(value) => {}
                Ok(device) => failures.push(format!(
                    "the label {key}={value}, acknowledged before the hub was killed, is lost: {:?}",
                    device.labels
                )),
                Err(status) => failures.push(format!("the device is gone: {}", status.message())),
            }
        }
    }
    if let Ok(mut deployments) = pb::deployments_client::DeploymentsClient::connect(hub).await {
        let history = deployments
            .list_rollout_history(pb::ListRolloutHistoryRequest {
                name: format!("deployments/{deployment}"),
            })
            .await
            .map(|h| h.into_inner().rollouts);
        match history {
            Ok(rollouts) if rollouts.iter().filter(|r| !r.note).count() >= 2 => {}
            Ok(rollouts) => failures.push(format!(
                "rollout history holds {} rollouts, 2 were started: {:?}",
                rollouts.len(),
                rollouts.iter().map(|r| &r.models).collect::<Vec<_>>()
            )),
            Err(status) => failures.push(format!("no rollout history: {}", status.message())),
        }
    }
    failures
}
