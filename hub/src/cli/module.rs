//! `edgeship module …`: the entry-module registry, as a gRPC client of the hub. Modules are
//! named, listed and shown as models are (`cli/model.rs`), with their interface and imports
//! in place of a framework and ONNX signatures.

use edgeship_proto::v1 as pb;

use super::view::ModuleView;
use super::{ModuleCommand, OutputFormat, key_values, names, output};
use crate::client::{connect_modules, download_module, register_module, rpc_error};
use crate::registry::{Kind, NewModel};

pub async fn run(hub: &str, command: ModuleCommand) -> anyhow::Result<()> {
    let mut client = connect_modules(hub).await?;
    match command {
        ModuleCommand::Register {
            name,
            path,
            tags,
            description,
            output,
        } => {
            let module = NewModel {
                model_id: name,
                description,
                tags: key_values("tag", &tags)?,
                ..NewModel::default()
            };
            let registered = ModuleView::from(register_module(&mut client, module, &path).await?);
            match output {
                OutputFormat::Json => output::print_json(&registered),
                OutputFormat::Table => println!(
                    "registered module {}:{} ({}, interface {})",
                    registered.module_id,
                    registered.version,
                    output::size(registered.total_size_bytes),
                    registered.interface,
                ),
            }
        }
        ModuleCommand::List { name, tags, output } => {
            let mut request = pb::ListModulesRequest {
                page_size: 1000,
                module_id: name
                    .as_deref()
                    .map(|text| names::id(Kind::Module, text))
                    .transpose()?
                    .unwrap_or_default(),
                tags,
                ..Default::default()
            };
            let mut modules = Vec::new();
            loop {
                let page = client.list_modules(request.clone()).await;
                let page = page.map_err(rpc_error)?.into_inner();
                modules.extend(page.modules.into_iter().map(ModuleView::from));
                if page.next_page_token.is_empty() {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            output::emit(output, &modules[..], output::module_table);
        }
        ModuleCommand::Show { module, output } => {
            let reference = names::version(Kind::Module, &module)?;
            let request = pb::GetModuleRequest {
                name: Kind::Module.resource_name(&reference.model_id, reference.version),
            };
            let found = client.get_module(request).await.map_err(rpc_error)?;
            let found = ModuleView::from(found.into_inner());
            output::emit(output, &found, output::module_details);
        }
        ModuleCommand::Download {
            module,
            file,
            overwrite,
        } => {
            let reference = names::version(Kind::Module, &module)?;
            let name = Kind::Module.resource_name(&reference.model_id, reference.version);
            let downloaded = download_module(&mut client, &name, &file, overwrite).await?;
            let downloaded = ModuleView::from(downloaded);
            println!(
                "downloaded module {}:{} ({}) to {}",
                downloaded.module_id,
                downloaded.version,
                output::size(downloaded.total_size_bytes),
                file.display()
            );
        }
        ModuleCommand::Delete { module } => {
            let name = names::target_name(Kind::Module, &names::target(Kind::Module, &module)?);
            let deleted = client
                .delete_module(pb::DeleteModuleRequest { name })
                .await
                .map_err(rpc_error)?
                .into_inner();
            println!(
                "{}",
                output::deleted(&deleted.module_id, &deleted.deleted_versions)
            );
        }
    }
    Ok(())
}
