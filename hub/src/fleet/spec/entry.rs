//! A manifest's entry module: `entry_module: NAME:VERSION` (or `NAME:latest`, which follows
//! new registrations as a model's `latest` does) in front of a model workload's models, and
//! the `sandbox:` bounds of its instances, checked with the field's path in every error into
//! an [`EntryModuleSpec`], and written back for `to_manifest`.

use std::fmt;

use edgeship_domain::SandboxSpec;
use edgeship_domain::names::NameKind;
use serde::{Deserialize, Serialize};

use super::manifest::Manifest;
use super::{SpecError, err, parse_versioned};
use crate::registry::VersionSelector;

/// The `sandbox:` section as written; an absent field takes the agent's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxManifest {
    /// Longest one request may run in the module, models included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u32>,
    /// Largest memory one instance may grow to, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Instances kept ready on each device, each serving one request at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

/// A deployment's entry module as its spec keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryModuleSpec {
    pub module_id: String,
    pub version: VersionSelector,
    /// 0 in a field: the agent's default.
    #[serde(default)]
    pub sandbox: SandboxSpec,
}

impl fmt::Display for EntryModuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.module_id, self.version)
    }
}

/// The module version a revision pins, with its sandbox bounds: a change to either is a new
/// revision, rolled out like a new model version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulePin {
    pub module_id: String,
    pub version: u32,
    #[serde(default)]
    pub sandbox: SandboxSpec,
}

impl fmt::Display for ModulePin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.module_id, self.version)
    }
}

impl Manifest {
    /// `entry_module` with its `sandbox`, for a model workload.
    pub(super) fn entry_module(&self) -> Result<Option<EntryModuleSpec>, SpecError> {
        let Some(text) = &self.entry_module else {
            if self.sandbox.is_some() {
                return Err(err(
                    "sandbox",
                    "bounds an entry module's instances: give `entry_module` too",
                ));
            }
            return Ok(None);
        };
        let (module_id, version) =
            parse_versioned(NameKind::Module, text).map_err(|e| err("entry_module", e))?;
        let sandbox = match &self.sandbox {
            Some(sandbox) => sandbox.validate()?,
            None => SandboxSpec::default(),
        };
        Ok(Some(EntryModuleSpec {
            module_id,
            version,
            sandbox,
        }))
    }

    /// A container workload has no entry module: the image serves requests itself.
    pub(super) fn no_entry_module(&self) -> Result<(), SpecError> {
        if self.entry_module.is_some() {
            return Err(err(
                "entry_module",
                "not with `container`: an entry module runs in front of a model workload's models; a container handles its requests itself",
            ));
        }
        if self.sandbox.is_some() {
            return Err(err(
                "sandbox",
                "not with `container`: it bounds an entry module, which container workloads have none of (use container.resources)",
            ));
        }
        Ok(())
    }
}

impl SandboxManifest {
    fn validate(&self) -> Result<SandboxSpec, SpecError> {
        let bounded = |field: &str, value: Option<u32>, max: u32, default: &str| match value {
            None => Ok(0),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(err(
                format!("sandbox.{field}"),
                format!("{n} is not from 1 to {max} (leave it out for the default, {default})"),
            )),
        };
        Ok(SandboxSpec {
            deadline_ms: bounded(
                "deadline_ms",
                self.deadline_ms,
                SandboxSpec::MAX_DEADLINE_MS,
                &format!("{} ms", SandboxSpec::DEFAULT_DEADLINE_MS),
            )?,
            memory_mb: bounded(
                "memory_mb",
                self.memory_mb,
                SandboxSpec::MAX_MEMORY_MB,
                &format!("{} MiB", SandboxSpec::DEFAULT_MEMORY_MB),
            )?,
            instances: bounded(
                "instances",
                self.instances,
                SandboxSpec::MAX_INSTANCES,
                "one per core",
            )?,
        })
    }
}

impl EntryModuleSpec {
    /// `entry_module` and `sandbox` as a manifest writes them: only the bounds that were set,
    /// so that applying the written manifest again changes nothing.
    pub(super) fn to_manifest(&self) -> (String, Option<SandboxManifest>) {
        let set = |n: u32| (n != 0).then_some(n);
        let sandbox = SandboxManifest {
            deadline_ms: set(self.sandbox.deadline_ms),
            memory_mb: set(self.sandbox.memory_mb),
            instances: set(self.sandbox.instances),
        };
        let sandbox = (sandbox != SandboxManifest::default()).then_some(sandbox);
        (self.to_string(), sandbox)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_manifest;
    use super::*;

    const BASE: &str =
        "name: web\nmodel: diabetes:2\nendpoint: {port: 5001}\ntarget: {devices: [d1]}\n";

    fn validate(extra: &str) -> Result<super::super::DeploymentSpec, String> {
        parse_manifest(&format!("{BASE}{extra}"))
            .and_then(|m| m.validate())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn an_entry_module_and_its_sandbox_are_read_and_written_back() {
        let spec = validate(
            "entry_module: records:3\nsandbox: {deadline_ms: 250, memory_mb: 32, instances: 4}\n",
        )
        .expect("valid");
        let module = spec.entry_module.clone().expect("entry module");
        assert_eq!(module.module_id, "records");
        assert_eq!(module.version, VersionSelector::Exact(3));
        assert_eq!(
            module.sandbox,
            SandboxSpec {
                deadline_ms: 250,
                memory_mb: 32,
                instances: 4
            }
        );
        let manifest = spec.to_manifest();
        assert_eq!(manifest.entry_module.as_deref(), Some("records:3"));
        assert_eq!(manifest.validate().expect("round trip"), spec);

        let latest = validate("entry_module: records\n").expect("valid");
        let module = latest.entry_module.clone().expect("entry module");
        assert_eq!(module.version, VersionSelector::Latest);
        assert_eq!(module.sandbox, SandboxSpec::default(), "defaults stay 0");
        let written = latest.to_manifest();
        assert_eq!(written.entry_module.as_deref(), Some("records:latest"));
        assert_eq!(written.sandbox, None, "unset bounds are not written out");
    }

    #[test]
    fn entry_module_mistakes_name_the_field() {
        for (extra, expected) in [
            (
                "entry_module: records:0\n",
                "entry_module: \"records:0\": the version must be a number from 1 or `latest`",
            ),
            (
                "entry_module: \"-bad:1\"\n",
                "entry_module: invalid module name \"-bad\"",
            ),
            (
                "sandbox: {deadline_ms: 100}\n",
                "sandbox: bounds an entry module's instances: give `entry_module` too",
            ),
            (
                "entry_module: r:1\nsandbox: {deadline_ms: 0}\n",
                "sandbox.deadline_ms: 0 is not from 1 to 60000 (leave it out for the default, 1000 ms)",
            ),
            (
                "entry_module: r:1\nsandbox: {memory_mb: 5000}\n",
                "sandbox.memory_mb: 5000 is not from 1 to 4096 (leave it out for the default, 64 MiB)",
            ),
            (
                "entry_module: r:1\nsandbox: {instances: 65}\n",
                "sandbox.instances: 65 is not from 1 to 64 (leave it out for the default, one per core)",
            ),
            (
                "entry_module: r:1\nsandbox: {fuel: 3}\n",
                "sandbox.fuel: unknown field `fuel`",
            ),
            (
                "entry_module: r:1\nsandbox: {memory_mb: -1}\n",
                "sandbox.memory_mb: invalid type: integer `-1`, expected u32",
            ),
        ] {
            let error = validate(extra).expect_err(extra);
            assert!(error.starts_with(expected), "{extra}: {error}");
        }
    }

    #[test]
    fn a_container_refuses_an_entry_module() {
        let container = "name: web\ncontainer: {image: 'nginx:1', ports: [80]}\nendpoint: {port: 8080}\ntarget: {devices: [d1]}\n";
        for (extra, field) in [
            (
                "entry_module: records:1\n",
                "entry_module: not with `container`",
            ),
            ("sandbox: {instances: 2}\n", "sandbox: not with `container`"),
        ] {
            let error = parse_manifest(&format!("{container}{extra}"))
                .and_then(|m| m.validate())
                .expect_err(extra)
                .to_string();
            assert!(error.starts_with(field), "{extra}: {error}");
        }
    }
}
