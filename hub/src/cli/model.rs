//! `edgeship model …`: registry commands, as a gRPC client of the hub.

use std::path::Path;

use anyhow::Context;
use edgeship_proto::v1 as pb;

use super::view::ModelView;
use super::{ModelCommand, OutputFormat, key_values, names, output};
use crate::client::{connect, download, register, rpc_error};
use crate::registry::{Kind, NewModel};

/// A version as `-o json` prints it, or as its details table.
fn print_model(model: pb::Model, format: OutputFormat) {
    output::emit(format, &ModelView::from(model), output::model_details);
}

pub async fn run(hub: &str, command: ModelCommand) -> anyhow::Result<()> {
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
    }
    Ok(())
}

async fn read_sample(path: Option<&Path>) -> anyhow::Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(text))
}
