//! Desired-state computation: a pure function of the deployments (with their rollouts), one
//! device and the model versions their revisions pin. No storage, no clock: `Fleet` stores
//! and publishes what this returns, and the table-driven tests below pin the rules.
//!
//! Rules: a device runs every deployment that targets it (by id or label selector), at the
//! revision the deployment's rollout gives it (none yet: not there yet); when two meet on one
//! port the higher priority keeps it, and at equal priority the older; a deployment whose
//! model version is gone or has no runnable ONNX file, or which needs something the device's
//! agent does not offer (read from its birth), is `Unschedulable` there with the reason and is
//! not sent, so nothing is downloaded for it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use edgeship_domain::{
    AuthMode, DeployedModel, DesiredState, HealthThresholds, ModelWorkload, Workload, WorkloadKind,
};

use super::keys::EndpointKeys;
use super::model::{Deployment, Device, Revision};
use super::rollout::Rollout;
use crate::registry::{ModelFile, ModelVersion, OnnxSignature};

/// What one device should run, and which targeting deployments it cannot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceDesired {
    pub workloads: Vec<Workload>,
    /// Deployment id → why it cannot run on this device.
    pub unschedulable: BTreeMap<String, String>,
}

/// A deployment with its current rollout (none: every device runs the newest revision).
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub deployment: &'a Deployment,
    pub rollout: Option<&'a Rollout>,
}

impl<'a> Placement<'a> {
    /// The revision `device` runs, if the deployment is on it yet.
    pub fn revision_for(&self, device: &str) -> Option<&'a Revision> {
        let number = match self.rollout {
            Some(rollout) => rollout.revision_for(device)?,
            None => self.deployment.current()?.number,
        };
        self.deployment.revision(number)
    }
}

/// The registry's record of every pinned model version (`None`: the version is gone).
pub type Resolved = HashMap<(String, u32), Option<ModelVersion>>;

/// Computes `device`'s workloads from every deployment. `previous` is what the device was last
/// asked to run: a deployment that can no longer run there keeps its previous workload, so
/// the device goes on serving the last version that could (a capability the device stopped
/// announcing, say), while the deployment reports the device `Unschedulable` with the reason.
pub fn for_device(
    device: &Device,
    placements: &[Placement<'_>],
    resolved: &Resolved,
    previous: Option<&DesiredState>,
) -> DeviceDesired {
    let labels = device.labels();
    let mut targeting: Vec<(&Placement<'_>, &Revision)> = placements
        .iter()
        .filter(|p| p.deployment.spec.target.matches(&device.id, &labels))
        .filter_map(|p| Some((p, p.revision_for(&device.id)?)))
        .collect();
    // A contested port goes to the higher priority, then to the older deployment (a label
    // change can create overlap).
    targeting.sort_by_key(|(p, _)| {
        let d = p.deployment;
        (Reverse(d.spec.priority), d.create_time_ms, d.id.clone())
    });
    let mut desired = DeviceDesired::default();
    let mut ports: HashMap<u16, &Deployment> = HashMap::new();
    for (placement, revision) in targeting {
        let deployment = placement.deployment;
        if let Some((port, holder)) = revision
            .endpoint
            .ports()
            .find_map(|port| Some((port, *ports.get(&port)?)))
        {
            let why = if holder.spec.priority > deployment.spec.priority {
                format!("priority {} is higher", holder.spec.priority)
            } else {
                "same priority, created earlier".to_owned()
            };
            desired.unschedulable.insert(
                deployment.id.clone(),
                format!(
                    "port {port} on this device is taken by deployment {} ({why})",
                    holder.id
                ),
            );
            continue;
        }
        // Capabilities are known once the device has announced itself; before that it gets
        // the workload and its agent judges.
        let workload = workload(deployment, revision, resolved).and_then(|w| {
            match device.ever_seen() && !device.agent_version.is_empty() {
                true => device.capabilities.check(&w).map(|()| w),
                false => Ok(w),
            }
        });
        match workload {
            Ok(workload) => {
                for port in revision.endpoint.ports() {
                    ports.insert(port, deployment);
                }
                desired.workloads.push(workload);
            }
            Err(reason) => {
                let kept = previous
                    .and_then(|p| p.workloads.iter().find(|w| w.deployment == deployment.id))
                    .filter(|w| w.endpoint.ports().all(|p| !ports.contains_key(&p)));
                if let Some(kept) = kept {
                    for port in kept.endpoint.ports() {
                        ports.insert(port, deployment);
                    }
                    desired.workloads.push(kept.clone());
                }
                desired.unschedulable.insert(deployment.id.clone(), reason);
            }
        }
    }
    desired
}

/// The workload `revision` of `deployment` becomes, with the registry's records of its
/// model versions.
pub fn workload(
    deployment: &Deployment,
    revision: &Revision,
    resolved: &Resolved,
) -> Result<Workload, String> {
    let mut models = Vec::with_capacity(revision.models.len());
    for pinned in &revision.models {
        let model = resolved
            .get(&(pinned.model_id.clone(), pinned.version))
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                format!(
                    "model {}:{} does not exist",
                    pinned.model_id, pinned.version
                )
            })?;
        let (entry, signature) = entry_file(model)?;
        models.push(DeployedModel {
            model_id: model.model_id.clone(),
            version: model.version,
            files: model.files.iter().map(ModelFile::blob_ref).collect(),
            entry_file: entry.path.clone(),
            inputs: signature.inputs.clone(),
            outputs: signature.outputs.clone(),
            sample_input: model.sample_input.clone(),
            weight: pinned.weight,
        });
    }
    let gate = &deployment.spec.rollout.health_gate;
    let health =
        (gate.max_error_rate.is_some() || gate.max_p99_ms.is_some()).then_some(HealthThresholds {
            max_error_rate: gate.max_error_rate,
            max_p99_ms: gate.max_p99_ms,
            window_seconds: HealthThresholds::DEFAULT_WINDOW_SECONDS,
            min_requests: HealthThresholds::DEFAULT_MIN_REQUESTS,
        });
    let mut endpoint = revision.endpoint.clone();
    if endpoint.auth == AuthMode::Key {
        // Digests only: the keys themselves never leave the hub.
        endpoint.key_digests = deployment
            .keys
            .as_ref()
            .map(EndpointKeys::digests)
            .unwrap_or_default();
    }
    if endpoint.auth == AuthMode::Token {
        // The public half only: the signing key never leaves the hub.
        endpoint.token_keys = match &deployment.token_signer {
            Some(signer) => vec![signer.public_key().map_err(|e| e.to_string())?],
            None => Vec::new(),
        };
    }
    Ok(Workload {
        deployment: deployment.id.clone(),
        endpoint,
        kind: WorkloadKind::Model(ModelWorkload {
            runtime: revision.runtime,
            models,
            options: revision.options.clone(),
            entry_module: None,
        }),
        health,
    })
}

/// The file a runtime loads, the model's first ONNX file, with its signature.
pub fn entry_file(model: &ModelVersion) -> Result<(&ModelFile, &OnnxSignature), String> {
    model
        .files
        .iter()
        .find_map(|f| f.onnx.as_ref().map(|signature| (f, signature)))
        .ok_or_else(|| {
            let files: Vec<&str> = model.files.iter().map(|f| f.path.as_str()).collect();
            format!(
                "model {}:{} has no ONNX file (files: {}, framework {}); register a version whose model file ends in .onnx",
                model.model_id,
                model.version,
                files.join(", "),
                model.framework
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::model::Target;
    use crate::fleet::selector::Selector;
    use crate::fleet::spec::{DeploymentSpec, ModelRef, RolloutPolicy, TrafficWeight};
    use crate::registry::VersionSelector;
    use edgeship_domain::{Dim, ElementType, Endpoint, RuntimeKind, TensorSpec};
    use std::collections::BTreeSet;

    fn model(id: &str, version: u32) -> ModelVersion {
        let spec = TensorSpec {
            name: "x".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Unknown, Dim::Fixed(2)],
        };
        ModelVersion {
            model_id: id.into(),
            version,
            description: String::new(),
            framework: "onnx".into(),
            framework_version: String::new(),
            tags: BTreeMap::new(),
            properties: BTreeMap::new(),
            files: vec![ModelFile {
                path: "model.onnx".into(),
                size_bytes: 10,
                sha256: format!("{version:064x}"),
                onnx: Some(OnnxSignature {
                    inputs: vec![spec.clone()],
                    outputs: vec![spec],
                    ir_version: 8,
                    opsets: vec![],
                    producer: String::new(),
                    tract_incompatibility: None,
                    placements: vec![],
                }),
            }],
            sample_input: None,
            sample_output: None,
            create_time_ms: 0,
            update_time_ms: 0,
        }
    }

    /// A deployment of `m` whose one revision pins `m:1`.
    fn deployment(id: &str, port: u16, created: i64, target: Target) -> Deployment {
        let spec = DeploymentSpec {
            name: id.into(),
            model: ModelRef {
                model_id: "m".into(),
                version: VersionSelector::Latest,
            },
            runtime: RuntimeKind::Tract,
            endpoint: Endpoint::azureml(port),
            target,
            priority: 0,
            rollout: RolloutPolicy::default(),
            traffic: vec![],
            options: Default::default(),
            extra_models: vec![],
        };
        Deployment {
            id: id.into(),
            revisions: vec![Revision {
                number: 1,
                models: vec![TrafficWeight {
                    model_id: "m".into(),
                    version: 1,
                    weight: 0,
                }],
                runtime: RuntimeKind::Tract,
                endpoint: Endpoint::azureml(port),
                options: Default::default(),
                create_time_ms: created,
            }],
            spec,
            create_time_ms: created,
            update_time_ms: created,
            keys: None,
            token_signer: None,
        }
    }

    /// `deployment` at `m:version`, through a second revision.
    fn at_version(mut deployment: Deployment, version: u32) -> Deployment {
        let mut revision = deployment.revisions[0].clone();
        revision.number = 2;
        revision.models[0].version = version;
        deployment.revisions.push(revision);
        deployment
    }

    fn prioritized(mut deployment: Deployment, priority: i32) -> Deployment {
        deployment.spec.priority = priority;
        deployment
    }

    fn by_id(id: &str) -> Target {
        Target {
            devices: BTreeSet::from([id.to_owned()]),
            selector: None,
        }
    }

    fn by_label(key: &str, value: &str) -> Target {
        Target {
            devices: BTreeSet::new(),
            selector: Some(Selector::parse(&format!("{key}={value}")).expect("selector")),
        }
    }

    fn device(id: &str, labels: &[(&str, &str)]) -> Device {
        Device {
            id: id.into(),
            reported_labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            agent_version: "0.1.0".into(),
            last_seen_ms: 1,
            capabilities: edgeship_domain::fixtures::tract_agent(),
            ..Device::default()
        }
    }

    /// The registry's answer for `m:version` of each pair.
    fn resolved(pairs: &[(u32, Option<ModelVersion>)]) -> Resolved {
        pairs
            .iter()
            .map(|(v, m)| (("m".to_owned(), *v), m.clone()))
            .collect()
    }

    fn placed(deployments: &[Deployment]) -> Vec<Placement<'_>> {
        deployments
            .iter()
            .map(|deployment| Placement {
                deployment,
                rollout: None,
            })
            .collect()
    }

    /// One row: what the case is, the device, the deployments, what they resolve to, and
    /// the expected summary.
    type Case = (
        &'static str,
        Device,
        Vec<Deployment>,
        Resolved,
        Vec<&'static str>,
    );

    /// `deployment=model:version` for each workload, `deployment!reason` for the others.
    fn summary(desired: &DeviceDesired) -> Vec<String> {
        desired
            .workloads
            .iter()
            .map(|w| format!("{}={}", w.deployment, w.describe()))
            .chain(
                desired
                    .unschedulable
                    .iter()
                    .map(|(d, why)| format!("{d}!{why}")),
            )
            .collect()
    }

    #[test]
    fn the_desired_state_for_each_situation() {
        let north = device("d1", &[("site", "north")]);
        let south = device("d1", &[("site", "south")]);
        // An agent that runs containers only (announces no `kind/model`).
        let mut containers_only = north.clone();
        containers_only.capabilities.features = [
            "kind/container".to_owned(),
            "protocol/azureml".into(),
            "auth/none".into(),
        ]
        .into();
        let never_seen = Device {
            id: "d1".into(),
            ..Device::default()
        };
        let mut no_opencl = deployment("gpu", 5003, 3, by_id("d1"));
        no_opencl.revisions[0].runtime = RuntimeKind::Opencl;
        let mut no_onnx = model("m", 4);
        no_onnx.files[0].onnx = None;
        no_onnx.files[0].path = "weights.bin".into();
        no_onnx.framework = "custom".into();
        let table: Vec<Case> = vec![
            (
                "a new deployment targeting the device by id",
                north.clone(),
                vec![deployment("web", 5001, 1, by_id("d1"))],
                resolved(&[(1, Some(model("m", 1)))]),
                vec!["web=m:1"],
            ),
            (
                "a new revision changes the version",
                north.clone(),
                vec![at_version(deployment("web", 5001, 1, by_id("d1")), 2)],
                resolved(&[(2, Some(model("m", 2)))]),
                vec!["web=m:2"],
            ),
            (
                "a removed deployment is no longer desired",
                north.clone(),
                vec![],
                resolved(&[]),
                vec![],
            ),
            (
                "a device in the selector runs the deployment",
                north.clone(),
                vec![deployment("web", 5001, 1, by_label("site", "north"))],
                resolved(&[(1, Some(model("m", 1)))]),
                vec!["web=m:1"],
            ),
            (
                "a device leaving the selector does not",
                south.clone(),
                vec![deployment("web", 5001, 1, by_label("site", "north"))],
                resolved(&[(1, Some(model("m", 1)))]),
                vec![],
            ),
            (
                "the older deployment keeps a contested port",
                north.clone(),
                vec![
                    deployment("new", 5001, 2, by_label("site", "north")),
                    deployment("old", 5001, 1, by_id("d1")),
                ],
                resolved(&[(1, Some(model("m", 1)))]),
                vec![
                    "old=m:1",
                    "new!port 5001 on this device is taken by deployment old (same priority, created earlier)",
                ],
            ),
            (
                "a higher priority takes a contested port from an older deployment",
                north.clone(),
                vec![
                    prioritized(deployment("new", 5001, 2, by_label("site", "north")), 5),
                    deployment("old", 5001, 1, by_id("d1")),
                ],
                resolved(&[(1, Some(model("m", 1)))]),
                vec![
                    "new=m:1",
                    "old!port 5001 on this device is taken by deployment new (priority 5 is higher)",
                ],
            ),
            (
                "a runtime the device lacks is unschedulable before any download",
                north.clone(),
                vec![no_opencl.clone()],
                resolved(&[(1, Some(model("m", 1)))]),
                vec!["gpu!runtime opencl is not available on this device (available: tract)"],
            ),
            (
                "a workload kind the device's agent does not run is unschedulable",
                containers_only,
                vec![deployment("web", 5001, 1, by_id("d1"))],
                resolved(&[(1, Some(model("m", 1)))]),
                vec!["web!this device's agent does not support model workloads"],
            ),
            (
                "a device never seen gets the workload; its agent judges",
                never_seen,
                vec![no_opencl],
                resolved(&[(1, Some(model("m", 1)))]),
                vec!["gpu=m:1"],
            ),
            (
                "a model that is gone is unschedulable",
                north.clone(),
                vec![deployment("web", 5001, 1, by_id("d1"))],
                resolved(&[(1, None)]),
                vec!["web!model m:1 does not exist"],
            ),
            (
                "a model without an ONNX file is unschedulable with advice",
                north,
                vec![at_version(deployment("web", 5001, 1, by_id("d1")), 4)],
                resolved(&[(4, Some(no_onnx))]),
                vec![
                    "web!model m:4 has no ONNX file (files: weights.bin, framework custom); register a version whose model file ends in .onnx",
                ],
            ),
        ];
        for (case, device, deployments, resolved, expected) in table {
            let desired = for_device(&device, &placed(&deployments), &resolved, None);
            assert_eq!(summary(&desired), expected, "{case}");
        }
    }

    #[test]
    fn a_deployment_that_can_no_longer_run_keeps_its_previous_workload() {
        let device = device("d1", &[]);
        let web = deployment("web", 5001, 1, by_id("d1"));
        let serving = for_device(
            &device,
            &placed(std::slice::from_ref(&web)),
            &resolved(&[(1, Some(model("m", 1)))]),
            None,
        );
        let previous = DesiredState {
            device_id: "d1".into(),
            generation: 1,
            workloads: serving.workloads.clone(),
            rejected: vec![],
            issued_at_ms: 0,
        };
        let mut no_onnx = model("m", 2);
        no_onnx.files[0].onnx = None;
        let next = for_device(
            &device,
            &placed(&[at_version(web, 2)]),
            &resolved(&[(2, Some(no_onnx))]),
            Some(&previous),
        );
        assert_eq!(next.workloads, serving.workloads, "m:1 keeps serving");
        assert!(next.unschedulable["web"].contains("m:2 has no ONNX file"));
    }

    #[test]
    fn the_workload_carries_files_signature_and_endpoint() {
        let deployment = at_version(deployment("web", 5001, 1, by_id("d1")), 3);
        let workload = workload(
            &deployment,
            &deployment.revisions[1],
            &resolved(&[(3, Some(model("m", 3)))]),
        )
        .expect("runnable");
        assert_eq!(workload.endpoint, Endpoint::azureml(5001));
        let model = workload.as_model().expect("model workload");
        assert_eq!(model.models[0].entry_file, "model.onnx");
        assert_eq!(model.models[0].files[0].sha256, format!("{:064x}", 3));
        assert_eq!(model.models[0].inputs[0].to_string(), "x: float32[?, 2]");
    }
}
