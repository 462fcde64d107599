//! `edgeship model …`: registry commands, as a gRPC client of the hub.

use std::path::Path;

use anyhow::Context;
use edgeship_proto::v1 as pb;

use super::view::ModelView;
use super::{ModelCommand, OutputFormat, key_values, names, output};
use crate::client::{connect, download, register, rpc_error};
use crate::registry::{Kind, ModelVersion, NewModel};
use edgeship_domain::trust::{Purpose, SigningKey};

/// A version as `-o json` prints it, or as its details table.
fn print_model(model: pb::Model, format: OutputFormat) {
    output::emit(format, &ModelView::from(model), output::model_details);
}

pub async fn run(hub: &str, command: ModelCommand) -> anyhow::Result<()> {
    // Offline: a signing key is made without the hub.
    if let ModelCommand::Keygen { output } = &command {
        return keygen(output);
    }
    let mut client = connect(hub).await?;
    match command {
        ModelCommand::Register {
            name,
            path,
            tags,
            properties,
            description,
            framework,
            framework_version,
            sample_input,
            sample_output,
            output,
        } => {
            let model = NewModel {
                model_id: name,
                description,
                framework: framework.unwrap_or_default(),
                framework_version,
                tags: key_values("tag", &tags)?,
                properties: key_values("property", &properties)?,
                sample_input: read_sample(sample_input.as_deref()).await?,
                sample_output: read_sample(sample_output.as_deref()).await?,
            };
            let registered = ModelView::from(register(&mut client, model, &path).await?);
            match output {
                OutputFormat::Json => output::print_json(&registered),
                OutputFormat::Table => println!(
                    "registered {}:{} ({}, {})",
                    registered.model_id,
                    registered.version,
                    output::files_count(registered.files.len()),
                    output::size(registered.total_size_bytes),
                ),
            }
        }
        ModelCommand::List {
            name,
            tags,
            properties,
            framework,
            output,
        } => {
            let mut request = pb::ListModelsRequest {
                page_size: 1000,
                model_id: name
                    .as_deref()
                    .map(names::model_id)
                    .transpose()?
                    .unwrap_or_default(),
                tags,
                properties,
                framework: framework.unwrap_or_default(),
                ..Default::default()
            };
            let mut models = Vec::new();
            loop {
                let page = client
                    .list_models(request.clone())
                    .await
                    .map_err(rpc_error)?;
                let page = page.into_inner();
                models.extend(page.models.into_iter().map(ModelView::from));
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            output::emit(output, &models[..], output::model_table);
        }
        ModelCommand::Show { model, output } => {
            let request = pb::GetModelRequest {
                name: names::model_version(&model)?.resource_name(),
            };
            let found = client.get_model(request).await.map_err(rpc_error)?;
            print_model(found.into_inner(), output);
        }
        ModelCommand::Download {
            model,
            dir,
            overwrite,
        } => {
            let reference = names::model_version(&model)?;
            let downloaded = ModelView::from(
                download(&mut client, &reference.resource_name(), &dir, overwrite).await?,
            );
            println!(
                "downloaded {}:{} ({}, {}) to {}",
                downloaded.model_id,
                downloaded.version,
                output::files_count(downloaded.files.len()),
                output::size(downloaded.total_size_bytes),
                dir.display()
            );
        }
        ModelCommand::Update {
            model,
            add_tags,
            remove_tags,
            add_properties,
            remove_properties,
            description,
            output,
        } => {
            let request = pb::UpdateModelRequest {
                name: names::explicit_version(&model)?.resource_name(),
                add_tags: key_values("tag", &add_tags)?.into_iter().collect(),
                remove_tags,
                add_properties: key_values("property", &add_properties)?
                    .into_iter()
                    .collect(),
                remove_properties,
                description,
            };
            let updated = client.update_model(request).await.map_err(rpc_error)?;
            print_model(updated.into_inner(), output);
        }
        ModelCommand::Delete { model } => {
            let name = names::target_name(Kind::Model, &names::model_target(&model)?);
            let deleted = client
                .delete_model(pb::DeleteModelRequest { name })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "{}",
                output::deleted(&deleted.model_id, &deleted.deleted_versions)
            );
        }
        ModelCommand::Profile(args) => super::profile::run(hub, args).await?,
        ModelCommand::Keygen { .. } => unreachable!("handled before connecting"),
        ModelCommand::Sign { model, key } => {
            let name = names::explicit_version(&model)?.resource_name();
            let pkcs8 = std::fs::read(&key)
                .with_context(|| format!("reading the signing key {}", key.display()))?;
            let signer = SigningKey::from_pkcs8(&pkcs8)
                .with_context(|| format!("{} is not a model-signing key", key.display()))?;
            let found = client
                .get_model(pb::GetModelRequest { name: name.clone() })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let version = ModelVersion::try_from(found)?;
            // Signed here, over the files as the hub lists them: the key never leaves.
            let signature = signer.sign(Purpose::Model, &version.statement());
            let signed = client
                .sign_model(pb::SignModelRequest {
                    name: version.resource_name(),
                    public_key: signer.public().to_string(),
                    signature: signature.into(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "signed {}:{} with {} ({} signature(s) now)",
                signed.model_id,
                signed.version,
                signer.public(),
                signed.signatures.len()
            );
        }
    }
    Ok(())
}

/// `model keygen`: a new model-signing key, written where only its owner can read it.
pub fn keygen(output: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = SigningKey::generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(output)
        .with_context(|| format!("creating {} (it must not exist yet)", output.display()))?;
    file.write_all(key.pkcs8())?;
    file.sync_all()?;
    println!("{}", key.public());
    Ok(())
}

async fn read_sample(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text))
}
