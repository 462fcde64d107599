//! `edgeship.v1.Profiles`: `ProfileModel` over gRPC. The profile itself is `profiles/`; this
//! adapter converts the request and the outcome, and decides the error codes.

use std::sync::Arc;

use edgeship_proto::v1 as pb;
use edgeship_proto::v1::profiles_server::Profiles;
use tonic::{Request, Response, Status};

use crate::profiles::{Outcome, ProfileError, ProfileRequest, Profiler};
use crate::registry::{Kind, validate};

#[derive(Debug, Clone)]
pub struct ProfilesService {
    profiler: Arc<Profiler>,
}

impl ProfilesService {
    pub fn new(profiler: Arc<Profiler>) -> Self {
        Self { profiler }
    }
}

#[tonic::async_trait]
impl Profiles for ProfilesService {
    async fn profile_model(
        &self,
        request: Request<pb::ProfileModelRequest>,
    ) -> Result<Response<pb::ModelProfile>, Status> {
        let request = request_of(request.into_inner())?;
        let outcome = self.profiler.profile(request).await?;
        Ok(Response::new(profile_message(outcome)))
    }
}

fn request_of(wire: pb::ProfileModelRequest) -> Result<ProfileRequest, Status> {
    let entry_module = match wire.entry_module.as_str() {
        "" => None,
        text => Some(validate::short_ref_in(Kind::Module, text)?),
    };
    Ok(ProfileRequest {
        model: validate::version_name(&wire.name)?,
        device: wire.device,
        entry_module,
        body: wire.body,
        content_type: wire.content_type,
        concurrency: wire.concurrency,
        seconds_per_level: wire.seconds_per_level,
    })
}

fn profile_message(outcome: Outcome) -> pb::ModelProfile {
    let Outcome {
        model_id,
        version,
        device,
        device_class,
        entry_module,
        profile,
        recommendation,
        properties,
    } = outcome;
    let best_concurrency = profile
        .levels
        .get(recommendation.level)
        .map_or(0, |l| l.concurrency);
    pb::ModelProfile {
        name: format!("models/{model_id}/versions/{version}"),
        device,
        device_class,
        entry_module: entry_module.unwrap_or_default(),
        levels: profile
            .levels
            .into_iter()
            .map(|l| pb::ProfileLevel::from(&l))
            .collect(),
        load_bytes: profile.load_bytes,
        recommended_cpu: recommendation.cpu,
        recommended_memory_bytes: recommendation.memory_bytes,
        properties: properties.into_iter().collect(),
        best_concurrency,
        cpu_count: profile.cpu_count,
    }
}

impl From<ProfileError> for Status {
    fn from(err: ProfileError) -> Self {
        let message = err.to_string();
        match err {
            ProfileError::InvalidArgument(_) => Status::invalid_argument(message),
            ProfileError::NotFound(_) => Status::not_found(message),
            ProfileError::FailedPrecondition(_) => Status::failed_precondition(message),
            ProfileError::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            ProfileError::Unavailable(_) => Status::unavailable(message),
            ProfileError::Internal(_) => {
                tracing::error!(error = %message, "profile failed");
                Status::internal(message)
            }
            ProfileError::Fleet(err) => Status::from(err),
            ProfileError::Registry(err) => Status::from(err),
        }
    }
}
