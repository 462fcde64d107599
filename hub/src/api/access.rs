//! `edgeship.v1.Access` service implementation: API tokens.

use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::access_server::Access;
use tonic::{Request, Response, Status};

use crate::access::{AccessError, Role, TokenRecord, Tokens};

#[derive(Debug, Clone)]
pub struct AccessService {
    tokens: Arc<Tokens>,
}

impl AccessService {
    pub fn new(tokens: Arc<Tokens>) -> Self {
        AccessService { tokens }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Tokens) -> Result<T, AccessError> + Send + 'static,
    ) -> Result<T, Status> {
        let tokens = Arc::clone(&self.tokens);
        tokio::task::spawn_blocking(move || work(&tokens))
            .await
            .map_err(|err| Status::internal(format!("token task failed: {err}")))?
            .map_err(Status::from)
    }
}

impl From<AccessError> for Status {
    fn from(err: AccessError) -> Self {
        let message = err.to_string();
        match err {
            AccessError::InvalidName(_) => Status::invalid_argument(message),
            AccessError::Exists(_) => Status::already_exists(message),
            AccessError::NotFound(_) => Status::not_found(message),
            AccessError::LastAdmin(_) => Status::failed_precondition(message),
            AccessError::Storage(_) => {
                tracing::error!(error = %message, "token storage failure");
                Status::internal(message)
            }
        }
    }
}

pub fn role_from_wire(role: i32) -> Result<Role, Status> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Reader) => Ok(Role::Reader),
        Ok(pb::Role::Deployer) => Ok(Role::Deployer),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Unspecified) | Err(_) => Err(Status::invalid_argument(
            "role must be reader, deployer or admin",
        )),
    }
}

fn role_to_wire(role: Role) -> pb::Role {
    match role {
        Role::Reader => pb::Role::Reader,
        Role::Deployer => pb::Role::Deployer,
        Role::Admin => pb::Role::Admin,
    }
}

fn token_to_wire(record: TokenRecord) -> pb::ApiToken {
    pb::ApiToken {
        name: record.name,
        role: role_to_wire(record.role).into(),
        created_at_ms: record.created_at_ms,
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let request = request.into_inner();
        let role = role_from_wire(request.role)?;
        let (record, secret) = self
            .blocking(move |tokens| tokens.create(&request.name, role))
            .await?;
        tracing::info!(name = %record.name, %role, "API token created");
        Ok(Response::new(pb::CreatedToken {
            token: Some(token_to_wire(record)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.blocking(|tokens| tokens.list()).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_to_wire).collect(),
        }))
    }

    async fn delete_token(
        &self,
        request: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        let name = request.into_inner().name;
        self.blocking(move |tokens| tokens.delete(&name)).await?;
        Ok(Response::new(pb::DeleteTokenResponse {}))
    }
}
