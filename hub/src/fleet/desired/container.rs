//! The container workload a container revision becomes: the image (the artifact's archive and
//! recorded id, or a reference the engine pulls) and the mounted model's files, with the
//! container's settings as the spec holds them.

use edgeship_domain::{ContainerWorkload, MountedModel};

use super::{Resolved, image_of, pinned};
use crate::fleet::model::Revision;
use crate::fleet::spec::ContainerSpec;
use crate::registry::ModelFile;

/// `spec` as devices get it, with the versions `revision` pins.
pub(super) fn workload(
    spec: &ContainerSpec,
    revision: &Revision,
    resolved: &Resolved,
) -> Result<ContainerWorkload, String> {
    let (artifact, model) = revision.container_pins();
    let (image, image_digest, image_artifact, image_files) = match artifact {
        Some(pin) => {
            let artifact = pinned(resolved, pin)?;
            let recorded = image_of(artifact)?;
            // The manifest's reference wins; without one, the archive's own tag.
            let image = match spec.image.is_empty() {
                true => recorded.reference,
                false => spec.image.clone(),
            };
            (
                image,
                recorded.id,
                format!("{}:{}", artifact.model_id, artifact.version),
                artifact.files.iter().map(ModelFile::blob_ref).collect(),
            )
        }
        None => (spec.image.clone(), String::new(), String::new(), Vec::new()),
    };
    let model = match model {
        Some(pin) => {
            let model = pinned(resolved, pin)?;
            Some(MountedModel {
                model_id: model.model_id.clone(),
                version: model.version,
                files: model.files.iter().map(ModelFile::blob_ref).collect(),
            })
        }
        None => None,
    };
    Ok(ContainerWorkload {
        image,
        image_digest,
        image_artifact,
        image_files,
        command: spec.command.clone(),
        env: spec.env.clone(),
        container_port: spec.port,
        cpu_millis: spec.cpu_millis,
        memory_bytes: spec.memory_bytes,
        health_path: spec.health_path.clone(),
        health_port: spec.health_port,
        restart: spec.restart,
        model,
    })
}
