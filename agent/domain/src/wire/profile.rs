//! Profile answers (`profile/resp`) to and from the domain's figures. A device's figures are
//! not trusted: numbers that are not finite, or negative, make the answer invalid.

use edgeship_proto::v1 as pb;

use super::WireError;
use crate::profile::{DeviceProfile, ProfileLevel};

impl From<&ProfileLevel> for pb::ProfileLevel {
    fn from(l: &ProfileLevel) -> Self {
        pb::ProfileLevel {
            concurrency: l.concurrency,
            requests: l.requests,
            errors: l.errors,
            seconds: l.seconds,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            cpu_cores: l.cpu_cores,
            peak_rss_bytes: l.peak_rss_bytes,
        }
    }
}

impl From<pb::ProfileLevel> for ProfileLevel {
    fn from(l: pb::ProfileLevel) -> Self {
        ProfileLevel {
            concurrency: l.concurrency,
            requests: l.requests,
            errors: l.errors,
            seconds: l.seconds,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            cpu_cores: l.cpu_cores,
            peak_rss_bytes: l.peak_rss_bytes,
        }
    }
}

/// The answer to profile request `request_id`: the figures, or why there are none.
pub fn profile_response(
    request_id: &str,
    answer: Result<&DeviceProfile, &str>,
) -> pb::ProfileResponse {
    match answer {
        Ok(profile) => pb::ProfileResponse {
            request_id: request_id.to_owned(),
            levels: profile.levels.iter().map(pb::ProfileLevel::from).collect(),
            load_bytes: profile.load_bytes,
            start_rss_bytes: profile.start_rss_bytes,
            cpu_count: profile.cpu_count,
            error: String::new(),
        },
        Err(why) => pb::ProfileResponse {
            request_id: request_id.to_owned(),
            error: why.to_owned(),
            ..Default::default()
        },
    }
}

/// A device's answer: `Ok(Err(why))` when it says why it has no figures.
pub fn profile_answer(
    response: pb::ProfileResponse,
) -> Result<Result<DeviceProfile, String>, WireError> {
    if !response.error.is_empty() {
        return Ok(Err(response.error));
    }
    let levels: Vec<ProfileLevel> = response
        .levels
        .into_iter()
        .map(ProfileLevel::from)
        .collect();
    let sane = |x: f64| x.is_finite() && x >= 0.0;
    if levels.iter().any(|l| {
        ![l.seconds, l.p50_ms, l.p99_ms, l.cpu_cores]
            .into_iter()
            .all(sane)
    }) {
        return Err(WireError::Invalid(
            "the device's figures are not valid numbers".into(),
        ));
    }
    Ok(Ok(DeviceProfile {
        levels,
        load_bytes: response.load_bytes,
        start_rss_bytes: response.start_rss_bytes,
        cpu_count: response.cpu_count,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_cross_the_wire_and_broken_ones_are_refused() {
        let profile = DeviceProfile {
            levels: vec![ProfileLevel {
                concurrency: 2,
                requests: 100,
                errors: 1,
                seconds: 1.0,
                p50_ms: 0.4,
                p99_ms: 2.0,
                cpu_cores: 0.7,
                peak_rss_bytes: 1 << 24,
            }],
            load_bytes: 1 << 20,
            start_rss_bytes: 1 << 23,
            cpu_count: 2,
        };
        let wire = profile_response("r1", Ok(&profile));
        assert_eq!(profile_answer(wire.clone()), Ok(Ok(profile)));
        let mut broken = wire;
        broken.levels[0].p50_ms = f64::NAN;
        assert!(profile_answer(broken).is_err());
        let refused = profile_response("r2", Err("busy"));
        assert_eq!(profile_answer(refused), Ok(Err("busy".into())));
    }
}
