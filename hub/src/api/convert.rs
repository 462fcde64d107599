//! Conversions between protobuf wire types and registry domain types. Wire → domain
//! conversions validate and reject with precise messages; domain → wire cannot fail.

use std::collections::BTreeMap;

use edgeship_domain::RuntimePlacement;
use edgeship_proto::v1 as pb;

use crate::registry::{
    Error, Kind, ListQuery, ModelFile, ModelUpdate, ModelVersion, NewModel, OnnxSignature,
    TensorSpec, VersionRef, VersionSignature, validate,
};
use edgeship_domain::trust::ModelSignature;

pub(crate) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn millis(ts: Option<prost_types::Timestamp>) -> i64 {
    ts.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
        .unwrap_or_default()
}

pub(crate) fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

impl From<&ModelVersion> for pb::Model {
    fn from(model: &ModelVersion) -> Self {
        pb::Model {
            name: model.resource_name(),
            model_id: model.model_id.clone(),
            version: model.version,
            description: model.description.clone(),
            framework: model.framework.clone(),
            framework_version: model.framework_version.clone(),
            tags: model.tags.clone().into_iter().collect(),
            properties: model.properties.clone().into_iter().collect(),
            files: model.files.iter().map(pb::ModelFile::from).collect(),
            sample_input: model.sample_input.clone().unwrap_or_default(),
            sample_output: model.sample_output.clone().unwrap_or_default(),
            create_time: Some(timestamp(model.create_time_ms)),
            update_time: Some(timestamp(model.update_time_ms)),
            total_size_bytes: model.total_size_bytes(),
            signatures: model
                .signatures
                .iter()
                .map(|s| pb::ModelSignature {
                    public_key: s.signed.key.to_string(),
                    signature: s.signed.signature.clone().into(),
                    sign_time: Some(timestamp(s.sign_time_ms)),
                })
                .collect(),
        }
    }
}

impl From<&ModelFile> for pb::ModelFile {
    fn from(file: &ModelFile) -> Self {
        pb::ModelFile {
            path: file.path.clone(),
            size_bytes: file.size_bytes,
            sha256: file.sha256.clone(),
            onnx: file.onnx.as_ref().map(|s| pb::OnnxSignature {
                inputs: s.inputs.iter().map(pb::TensorSpec::from).collect(),
                outputs: s.outputs.iter().map(pb::TensorSpec::from).collect(),
                ir_version: s.ir_version,
                opsets: s.opsets.clone(),
                producer: s.producer.clone(),
                tract_incompatibility: s.tract_incompatibility.clone().unwrap_or_default(),
                placements: s
                    .placements
                    .iter()
                    .map(pb::RuntimePlacement::from)
                    .collect(),
            }),
        }
    }
}

/// Read back by clients (the CLI); the hub is trusted to have validated what it returns,
/// so only the model id is checked (it becomes part of paths and names on the client).
impl TryFrom<pb::Model> for ModelVersion {
    type Error = Error;

    fn try_from(model: pb::Model) -> Result<Self, Error> {
        validate::model_id(&model.model_id)?;
        Ok(ModelVersion {
            model_id: model.model_id,
            version: model.version,
            description: model.description,
            framework: model.framework,
            framework_version: model.framework_version,
            tags: model.tags.into_iter().collect(),
            properties: model.properties.into_iter().collect(),
            files: model
                .files
                .into_iter()
                .map(|file| ModelFile {
                    path: file.path,
                    size_bytes: file.size_bytes,
                    sha256: file.sha256,
                    onnx: file.onnx.map(|s| OnnxSignature {
                        inputs: s.inputs.into_iter().map(TensorSpec::from).collect(),
                        outputs: s.outputs.into_iter().map(TensorSpec::from).collect(),
                        ir_version: s.ir_version,
                        opsets: s.opsets,
                        producer: s.producer,
                        tract_incompatibility: non_empty(s.tract_incompatibility),
                        placements: s
                            .placements
                            .into_iter()
                            .map(RuntimePlacement::from)
                            .collect(),
                    }),
                })
                .collect(),
            sample_input: non_empty(model.sample_input),
            sample_output: non_empty(model.sample_output),
            create_time_ms: millis(model.create_time),
            update_time_ms: millis(model.update_time),
            signatures: model
                .signatures
                .into_iter()
                .filter_map(|s| {
                    Some(VersionSignature {
                        signed: ModelSignature {
                            key: s.public_key.parse().ok()?,
                            signature: s.signature.to_vec(),
                        },
                        sign_time_ms: millis(s.sign_time),
                    })
                })
                .collect(),
        })
    }
}

impl From<pb::ModelMetadata> for NewModel {
    fn from(meta: pb::ModelMetadata) -> Self {
        NewModel {
            model_id: meta.model_id,
            description: meta.description,
            framework: meta.framework,
            framework_version: meta.framework_version,
            tags: meta.tags.into_iter().collect(),
            properties: meta.properties.into_iter().collect(),
            sample_input: non_empty(meta.sample_input),
            sample_output: non_empty(meta.sample_output),
        }
    }
}

impl From<NewModel> for pb::ModelMetadata {
    fn from(model: NewModel) -> Self {
        pb::ModelMetadata {
            model_id: model.model_id,
            description: model.description,
            framework: model.framework,
            framework_version: model.framework_version,
            tags: model.tags.into_iter().collect(),
            properties: model.properties.into_iter().collect(),
            sample_input: model.sample_input.unwrap_or_default(),
            sample_output: model.sample_output.unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::ListModelsRequest> for ListQuery {
    type Error = Error;

    fn try_from(request: pb::ListModelsRequest) -> Result<Self, Error> {
        let mut query = list_query(
            Kind::Model,
            request.page_size,
            request.page_token,
            request.model_id,
            request.tags,
        )?;
        query.properties = request
            .properties
            .iter()
            .map(|entry| validate::key_match("property", entry))
            .collect::<Result<_, _>>()?;
        query.framework = non_empty(request.framework.trim().to_ascii_lowercase());
        Ok(query)
    }
}

impl TryFrom<pb::ListModulesRequest> for ListQuery {
    type Error = Error;

    fn try_from(request: pb::ListModulesRequest) -> Result<Self, Error> {
        list_query(
            Kind::Module,
            request.page_size,
            request.page_token,
            request.module_id,
            request.tags,
        )
    }
}

/// The page and the filters both list requests have.
fn list_query(
    kind: Kind,
    page_size: i32,
    page_token: String,
    id: String,
    tags: Vec<String>,
) -> Result<ListQuery, Error> {
    let page_size = usize::try_from(page_size).map_err(|_| {
        Error::invalid(format!(
            "page_size must not be negative (got {page_size}); use 0 for the default"
        ))
    })?;
    let model_id = non_empty(id);
    if let Some(id) = &model_id {
        validate::id_of(kind, id)?;
    }
    Ok(ListQuery {
        model_id,
        tags: tags
            .iter()
            .map(|entry| validate::key_match("tag", entry))
            .collect::<Result<_, _>>()?,
        page_size,
        page_token: non_empty(page_token),
        ..ListQuery::default()
    })
}

impl From<&ModelVersion> for pb::Module {
    fn from(module: &ModelVersion) -> Self {
        let info = module.module_info();
        pb::Module {
            name: Kind::Module.resource_name(&module.model_id, module.version),
            module_id: module.model_id.clone(),
            version: module.version,
            description: module.description.clone(),
            tags: module.tags.clone().into_iter().collect(),
            properties: module.properties.clone().into_iter().collect(),
            files: module.files.iter().map(pb::ModelFile::from).collect(),
            interface_version: info
                .as_ref()
                .map(|i| i.interface.clone())
                .unwrap_or_default(),
            imports: info.map(|i| i.imports).unwrap_or_default(),
            create_time: Some(timestamp(module.create_time_ms)),
            update_time: Some(timestamp(module.update_time_ms)),
            total_size_bytes: module.total_size_bytes(),
        }
    }
}

impl From<pb::ModuleMetadata> for NewModel {
    fn from(meta: pb::ModuleMetadata) -> Self {
        NewModel {
            model_id: meta.module_id,
            description: meta.description,
            tags: meta.tags.into_iter().collect(),
            properties: meta.properties.into_iter().collect(),
            ..NewModel::default()
        }
    }
}

impl From<NewModel> for pb::ModuleMetadata {
    fn from(module: NewModel) -> Self {
        pb::ModuleMetadata {
            module_id: module.model_id,
            description: module.description,
            tags: module.tags.into_iter().collect(),
            properties: module.properties.into_iter().collect(),
        }
    }
}

/// Splits an update request into the version it targets and the change.
pub fn update_request(request: pb::UpdateModelRequest) -> Result<(VersionRef, ModelUpdate), Error> {
    let reference = validate::version_name(&request.name)?;
    let update = ModelUpdate {
        add_tags: request.add_tags.into_iter().collect::<BTreeMap<_, _>>(),
        remove_tags: request.remove_tags,
        add_properties: request.add_properties.into_iter().collect(),
        remove_properties: request.remove_properties,
        description: request.description,
    };
    Ok((reference, update))
}
