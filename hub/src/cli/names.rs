//! The names commands accept: the short forms people type (`diabetes:2`, `web`, `edge-2`) and
//! the resource names the API and `-o json` return (`models/diabetes/versions/2`,
//! `deployments/web`, `devices/edge-2`), so a name read from output can be pasted back.
//!
//! A `/` tells the two apart: no model, module, deployment or device name may contain one.
//! Entry modules are named as models are, in their own collection (`records:2`,
//! `modules/records/versions/2`).

use anyhow::bail;
use edgeship_domain::names;

use crate::registry::{DeleteTarget, Kind, VersionRef, VersionSelector, validate};

/// A model, or one version of it: `NAME` and `models/NAME` (every version), `NAME:VERSION`
/// and `models/NAME/versions/VERSION` (one version, or `latest`).
pub fn model_target(text: &str) -> anyhow::Result<DeleteTarget> {
    target(Kind::Model, text)
}

/// [`model_target`] of a model or a module.
pub fn target(kind: Kind, text: &str) -> anyhow::Result<DeleteTarget> {
    if text.contains('/') {
        return Ok(validate::delete_target_in(kind, text)?);
    }
    if text.contains(':') {
        return Ok(DeleteTarget::Version(validate::short_ref_in(kind, text)?));
    }
    validate::id_of(kind, text)?;
    Ok(DeleteTarget::AllVersions(text.to_owned()))
}

/// The resource name of a target: `models/x` or `models/x/versions/3` (`modules/...`).
pub fn target_name(kind: Kind, target: &DeleteTarget) -> String {
    match target {
        DeleteTarget::Version(reference) => {
            kind.resource_name(&reference.model_id, reference.version)
        }
        DeleteTarget::AllVersions(id) => format!("{}/{id}", kind.collection()),
    }
}

/// One version; a model named without a version means its latest.
pub fn model_version(text: &str) -> anyhow::Result<VersionRef> {
    version(Kind::Model, text)
}

/// [`model_version`] of a model or a module.
pub fn version(kind: Kind, text: &str) -> anyhow::Result<VersionRef> {
    Ok(match target(kind, text)? {
        DeleteTarget::Version(reference) => reference,
        DeleteTarget::AllVersions(model_id) => VersionRef {
            model_id,
            version: VersionSelector::Latest,
        },
    })
}

/// One version named explicitly (a number or `latest`), for commands that change a version.
pub fn explicit_version(text: &str) -> anyhow::Result<VersionRef> {
    match model_target(text)? {
        DeleteTarget::Version(reference) => Ok(reference),
        DeleteTarget::AllVersions(_) if text.contains('/') => {
            bail!("name the version to update, as {text}/versions/VERSION")
        }
        DeleteTarget::AllVersions(_) => bail!("name the version to update, as {text}:VERSION"),
    }
}

/// A model as a whole: `NAME` or `models/NAME`.
pub fn model_id(text: &str) -> anyhow::Result<String> {
    id(Kind::Model, text)
}

/// [`model_id`] of a model or a module.
pub fn id(kind: Kind, text: &str) -> anyhow::Result<String> {
    match target(kind, text)? {
        DeleteTarget::AllVersions(id) => Ok(id),
        DeleteTarget::Version(reference) => bail!(
            "{text:?} names a version; give the {} alone, as {} or {}/{}",
            kind.noun(),
            reference.model_id,
            kind.collection(),
            reference.model_id
        ),
    }
}

/// The `model` of a deployment as the API takes it, `NAME:VERSION` or `NAME:latest`. The short
/// form is passed on as typed, so the hub's own message reports a bad one.
pub fn deployment_model(text: &str) -> anyhow::Result<String> {
    if text.contains('/') {
        Ok(model_version(text)?.to_string())
    } else {
        Ok(text.to_owned())
    }
}

/// A deployment: `NAME` or `deployments/NAME`.
pub fn deployment_id(text: &str) -> anyhow::Result<String> {
    resource_id(text, "deployments", ("deployment name", "NAME"), |id| {
        names::deployment_id(id).map_err(|err| err.0)
    })
}

/// A device: `ID` or `devices/ID`.
pub fn device_id(text: &str) -> anyhow::Result<String> {
    resource_id(text, "devices", ("device id", "ID"), |id| {
        names::device_id(id).map_err(|err| err.0)
    })
}

/// Strips `collection/` from a resource name, checking what is left. A plain id is returned
/// unchanged: the hub checks it and reports a bad one itself.
fn resource_id(
    text: &str,
    collection: &str,
    (what, placeholder): (&str, &str),
    check: impl Fn(&str) -> Result<(), String>,
) -> anyhow::Result<String> {
    if !text.contains('/') {
        return Ok(text.to_owned());
    }
    match text
        .strip_prefix(collection)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        Some(id) if !id.contains('/') => {
            check(id).map_err(anyhow::Error::msg)?;
            Ok(id.to_owned())
        }
        _ => bail!("invalid {what} {text:?}: expected {placeholder} or {collection}/{placeholder}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(model_id: &str, version: u32) -> VersionRef {
        VersionRef {
            model_id: model_id.into(),
            version: VersionSelector::Exact(version),
        }
    }

    fn latest(model_id: &str) -> VersionRef {
        VersionRef {
            model_id: model_id.into(),
            version: VersionSelector::Latest,
        }
    }

    #[test]
    fn short_forms_and_resource_names_mean_the_same_version() {
        for (short, resource, want) in [
            (
                "diabetes:2",
                "models/diabetes/versions/2",
                exact("diabetes", 2),
            ),
            (
                "diabetes:latest",
                "models/diabetes/versions/latest",
                latest("diabetes"),
            ),
            ("diabetes", "models/diabetes", latest("diabetes")),
        ] {
            assert_eq!(model_version(short).expect(short), want, "{short}");
            assert_eq!(model_version(resource).expect(resource), want, "{resource}");
        }
    }

    #[test]
    fn a_model_without_a_version_means_every_version_to_delete() {
        for text in ["diabetes", "models/diabetes"] {
            assert_eq!(
                model_target(text).expect(text),
                DeleteTarget::AllVersions("diabetes".into())
            );
            assert_eq!(model_id(text).expect(text), "diabetes");
        }
        assert_eq!(
            model_target("models/diabetes/versions/3").expect("valid"),
            DeleteTarget::Version(exact("diabetes", 3))
        );
    }

    #[test]
    fn changing_a_version_needs_the_version_in_either_form() {
        assert_eq!(
            explicit_version("models/m/versions/1").expect("valid"),
            exact("m", 1)
        );
        let err = explicit_version("models/m").expect_err("no version");
        assert_eq!(
            err.to_string(),
            "name the version to update, as models/m/versions/VERSION"
        );
        let err = explicit_version("m").expect_err("no version");
        assert_eq!(err.to_string(), "name the version to update, as m:VERSION");
    }

    #[test]
    fn deployments_take_the_model_in_the_api_short_form() {
        assert_eq!(
            deployment_model("models/diabetes/versions/latest").expect("valid"),
            "diabetes:latest"
        );
        assert_eq!(
            deployment_model("models/diabetes").expect("valid"),
            "diabetes:latest"
        );
        assert_eq!(
            deployment_model("models/diabetes/versions/2").expect("valid"),
            "diabetes:2"
        );
        assert_eq!(deployment_model("diabetes:2").expect("valid"), "diabetes:2");
    }

    #[test]
    fn deployments_and_devices_take_their_resource_names() {
        assert_eq!(
            deployment_id("deployments/digits").expect("valid"),
            "digits"
        );
        assert_eq!(deployment_id("digits").expect("valid"), "digits");
        assert_eq!(device_id("devices/edge-2").expect("valid"), "edge-2");
        assert_eq!(device_id("edge-2").expect("valid"), "edge-2");
    }

    #[test]
    fn malformed_resource_names_are_refused_naming_the_problem() {
        for (text, why) in [
            (
                "models/diabetes/versions/x",
                "invalid version \"x\" of model \"diabetes\"",
            ),
            (
                "models/diabetes/versions",
                "expected models/{name} or models/{name}/versions/{version}",
            ),
            ("models/", "model name must not be empty"),
            ("deployments/web", "expected models/{name}"),
        ] {
            let err = model_version(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        for (text, why) in [
            (
                "devices/web",
                "invalid deployment name \"devices/web\": expected NAME or deployments/NAME",
            ),
            ("deployments/a/b", "expected NAME or deployments/NAME"),
            ("deployments/", "deployment name must not be empty"),
        ] {
            let err = deployment_id(text).expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        let err = device_id("devices/a/b").expect_err("bad id").to_string();
        assert!(err.contains("expected ID or devices/ID"), "{err}");
        let err = device_id("devices/-x").expect_err("bad id").to_string();
        assert!(err.contains("invalid device id \"-x\""), "{err}");
        let err = model_id("models/m/versions/2")
            .expect_err("a version")
            .to_string();
        assert!(err.contains("names a version"), "{err}");
    }
}
