//! `edgeship.v1.Access` (API tokens, device enrollment tokens and revocation) and
//! `edgeship.v1.Enrollment` (a device trading its bootstrap token for a certificate).

use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::access_server::Access;
use tonic::{Request, Response, Status};

use crate::access::{AccessError, Role, TokenRecord, Tokens};
use crate::broker::mosquitto;
use crate::fleet::Fleet;
use crate::trust::enrollment::{DEFAULT_TOKEN_TTL, EnrollError, Enrollments};

#[derive(Debug, Clone)]
pub struct AccessService {
    tokens: Arc<Tokens>,
    enrollments: Arc<Enrollments>,
    fleet: Arc<Fleet>,
}

impl AccessService {
    pub fn new(tokens: Arc<Tokens>, enrollments: Arc<Enrollments>, fleet: Arc<Fleet>) -> Self {
        AccessService {
            tokens,
            enrollments,
            fleet,
        }
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

impl From<EnrollError> for Status {
    fn from(err: EnrollError) -> Self {
        let message = err.to_string();
        match err {
            EnrollError::InvalidName(_)
            | EnrollError::MalformedToken
            | EnrollError::Certificate(crate::trust::pki::PkiError::BadRequest(_)) => {
                Status::invalid_argument(message)
            }
            EnrollError::UnknownToken | EnrollError::Expired(_) => {
                Status::permission_denied(message)
            }
            EnrollError::Certificate(_) | EnrollError::Storage(_) => {
                tracing::error!(error = %message, "enrollment failure");
                Status::internal(message)
            }
        }
    }
}

/// Runs blocking enrollment work off the async workers.
async fn enrollment_task<T: Send + 'static>(
    enrollments: &Arc<Enrollments>,
    work: impl FnOnce(&Enrollments) -> Result<T, EnrollError> + Send + 'static,
) -> Result<T, Status> {
    let enrollments = Arc::clone(enrollments);
    tokio::task::spawn_blocking(move || work(&enrollments))
        .await
        .map_err(|err| Status::internal(format!("enrollment task failed: {err}")))?
        .map_err(Status::from)
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

    async fn create_enrollment(
        &self,
        request: Request<pb::CreateEnrollmentRequest>,
    ) -> Result<Response<pb::CreatedEnrollment>, Status> {
        let request = request.into_inner();
        let ttl = match request.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            seconds => std::time::Duration::from_secs(seconds),
        };
        let device = request.device_id.clone();
        let (token, expires_at_ms) = enrollment_task(&self.enrollments, move |enrollments| {
            enrollments.create_token(&request.device_id, ttl)
        })
        .await?;
        tracing::info!(%device, "bootstrap token created");
        Ok(Response::new(pb::CreatedEnrollment {
            token,
            expires_at_ms,
        }))
    }

    async fn revoke_device(
        &self,
        request: Request<pb::RevokeDeviceRequest>,
    ) -> Result<Response<pb::RevokeDeviceResponse>, Status> {
        let device = request.into_inner().device_id;
        let revoked = device.clone();
        let was_enrolled = enrollment_task(&self.enrollments, move |e| e.revoke(&revoked)).await?;
        tracing::warn!(%device, "device revoked");
        // The link clears a revoked device's retained desired state as it republishes.
        let fleet = Arc::clone(&self.fleet);
        tokio::task::spawn_blocking(move || fleet.republish_all())
            .await
            .map_err(|err| Status::internal(format!("republishing failed: {err}")))?
            .map_err(Status::from)?;
        Ok(Response::new(pb::RevokeDeviceResponse { was_enrolled }))
    }

    async fn get_broker_config(
        &self,
        request: Request<pb::GetBrokerConfigRequest>,
    ) -> Result<Response<pb::BrokerConfig>, Status> {
        let request = request.into_inner();
        if request.directory.is_empty() || request.directory.contains('\n') {
            return Err(Status::invalid_argument(
                "directory must name the folder the files will live in",
            ));
        }
        let port = u16::try_from(request.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Status::invalid_argument("port must be 1-65535"))?;
        let mut names = request.hostnames;
        names.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
        let enrollments = Arc::clone(&self.enrollments);
        let files = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<pb::BrokerFile>> {
            let authority = enrollments.authority();
            let server = authority.server_identity(&names)?;
            let crl = authority.revocation_list(&enrollments.revoked_serials()?)?;
            let file = |name: &str, content: String, private: bool| pb::BrokerFile {
                name: name.to_owned(),
                content: content.into_bytes().into(),
                private,
            };
            Ok(vec![
                file(
                    "mosquitto.conf",
                    mosquitto::mosquitto_conf(&request.directory, port),
                    false,
                ),
                file("acl", mosquitto::acl(), false),
                file("ca.crt", authority.ca_pem().to_owned(), false),
                file("server.crt", server.cert_pem, false),
                file("server.key", server.key_pem, true),
                file("crl.pem", crl, false),
            ])
        })
        .await
        .map_err(|err| Status::internal(err.to_string()))?
        .map_err(|err| Status::invalid_argument(format!("{err:#}")))?;
        Ok(Response::new(pb::BrokerConfig { files }))
    }
}

/// `edgeship.v1.Enrollment`: what a device calls with its bootstrap token.
#[derive(Debug, Clone)]
pub struct EnrollmentService {
    enrollments: Arc<Enrollments>,
    director_key: String,
    mqtt_url: String,
}

impl EnrollmentService {
    pub fn new(enrollments: Arc<Enrollments>, director_key: String, mqtt_url: String) -> Self {
        EnrollmentService {
            enrollments,
            director_key,
            mqtt_url,
        }
    }
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let request = request.into_inner();
        let enrolled = enrollment_task(&self.enrollments, move |enrollments| {
            enrollments.enroll(&request.token, &request.csr_pem)
        })
        .await?;
        tracing::info!(device = %enrolled.identity.device_id, serial = %enrolled.identity.serial, "device enrolled");
        Ok(Response::new(pb::EnrollResponse {
            device_id: enrolled.identity.device_id,
            certificate_pem: enrolled.cert_pem,
            ca_pem: self.enrollments.authority().ca_pem().to_owned(),
            director_key: self.director_key.clone(),
            mqtt_url: self.mqtt_url.clone(),
        }))
    }
}
