//! `edgeship token …`: the hub's API tokens (admin only). A token is printed once, when it
//! is created; client commands send it from `EDGESHIP_TOKEN`.

use clap::{Subcommand, ValueEnum};
use edgeship_proto::v1 as pb;
use edgeship_proto::v1::access_client::AccessClient;
use serde::Serialize;

use super::{OutputFormat, output};
use crate::client::{channel, rpc_error};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (it is stored hashed and never shown again).
    Create {
        /// A name to list and delete the token by.
        #[arg(value_name = "NAME")]
        name: String,
        /// What the token may do: reader (reads), deployer (also changes models,
        /// deployments and jobs), admin (also tokens and device identities).
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List tokens: names, roles and creation times (never the tokens).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Delete a token: calls with it are refused from now on.
    Delete {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Reader,
    Deployer,
    Admin,
}

impl From<RoleArg> for pb::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Reader => pb::Role::Reader,
            RoleArg::Deployer => pb::Role::Deployer,
            RoleArg::Admin => pb::Role::Admin,
        }
    }
}

#[derive(Debug, Serialize)]
struct TokenView {
    name: String,
    role: String,
    created: String,
}

impl From<pb::ApiToken> for TokenView {
    fn from(token: pb::ApiToken) -> Self {
        let role = pb::Role::try_from(token.role)
            .map(|r| {
                r.as_str_name()
                    .trim_start_matches("ROLE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|_| format!("unknown ({})", token.role));
        TokenView {
            name: token.name,
            role,
            created: crate::rfc3339(token.created_at_ms),
        }
    }
}

pub async fn run(hub: &str, command: TokenCommand) -> anyhow::Result<()> {
    let mut client = AccessClient::new(channel(hub).await?);
    match command {
        TokenCommand::Create { name, role } => {
            let created = client
                .create_token(pb::CreateTokenRequest {
                    name,
                    role: pb::Role::from(role).into(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            // Only the token on stdout, so that `$(edgeship token create …)` captures it.
            println!("{}", created.secret);
            if let Some(token) = created.token {
                let view = TokenView::from(token);
                eprintln!(
                    "created {} token {:?}; it is not shown again",
                    view.role, view.name
                );
            }
        }
        TokenCommand::List { output: format } => {
            let tokens: Vec<TokenView> = client
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner()
                .tokens
                .into_iter()
                .map(TokenView::from)
                .collect();
            output::emit(format, &tokens, |tokens| {
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| vec![t.name.clone(), t.role.clone(), t.created.clone()])
                    .collect();
                output::table(&["NAME", "ROLE", "CREATED"], &rows)
            });
        }
        TokenCommand::Delete { name } => {
            client
                .delete_token(pb::DeleteTokenRequest { name: name.clone() })
                .await
                .map_err(rpc_error)?;
            println!("deleted token {name}");
        }
    }
    Ok(())
}
