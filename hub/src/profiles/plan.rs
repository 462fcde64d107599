//! The pure part of a profile's preparation: the request's defaults and bounds, the name,
//! port and manifest of the deployment it makes, and the device class it is stored under.
//! Nothing here reads storage.

use std::collections::BTreeSet;

use bytes::Bytes;
use edgeship_domain::names;

use super::ProfileError;
use crate::fleet::profiles::PROFILE_PREFIX;
use crate::fleet::spec::{Manifest, parse_manifest};
use crate::fleet::{Deployment, Device};
use crate::registry::VersionRef;

/// Connections of each level when the request names none.
pub const DEFAULT_CONCURRENCY: [u32; 4] = [1, 2, 4, 8];
pub const DEFAULT_SECONDS_PER_LEVEL: u32 = 5;
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";
/// The agent's bounds (`agent/src/link.rs`), checked here too so a bad request is refused
/// before anything is deployed.
pub const MAX_LEVELS: usize = 8;
pub const MAX_CONNECTIONS: u32 = 64;
pub const MAX_SECONDS_PER_LEVEL: u32 = 30;
/// The request body travels to the device in one MQTT packet, 1 MiB by default on both
/// sides: the body leaves 64 KiB of it for the rest of the request and the envelopes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024 - 64 * 1024;
const MAX_CONTENT_TYPE_LEN: usize = 255;
/// Where profile endpoints listen: above Linux's ephemeral range (32768–60999), so a port
/// the kernel handed to some connection on the device is not picked.
pub const PROFILE_PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;
/// The label that names a device's class, where the recommendation is stored.
pub const DEVICE_CLASS_LABEL: &str = "device_class";
/// The longest property suffix (`profile/<class>/entry_module`) leaves this much for a class
/// within the 128 characters of a property key.
const MAX_CLASS_LEN: usize = 128 - "profile/".len() - "/entry_module".len();

/// What a caller asks for; the defaults are filled in by [`ProfileRequest::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileRequest {
    pub model: VersionRef,
    pub device: String,
    pub entry_module: Option<VersionRef>,
    pub body: Bytes,
    /// Empty: `application/json`.
    pub content_type: String,
    /// Empty: [`DEFAULT_CONCURRENCY`].
    pub concurrency: Vec<u32>,
    /// 0: [`DEFAULT_SECONDS_PER_LEVEL`].
    pub seconds_per_level: u32,
}

impl ProfileRequest {
    /// Fills in the defaults and checks the bounds; refuses with the field and the rule.
    pub fn validate(mut self) -> Result<Self, ProfileError> {
        let invalid = |message: String| Err(ProfileError::InvalidArgument(message));
        names::device_id(&self.device).map_err(|e| ProfileError::InvalidArgument(e.0))?;
        if self.concurrency.is_empty() {
            self.concurrency = DEFAULT_CONCURRENCY.to_vec();
        }
        if self.concurrency.len() > MAX_LEVELS {
            return invalid(format!(
                "concurrency: {} levels given; a profile has 1 to {MAX_LEVELS}",
                self.concurrency.len()
            ));
        }
        if let Some(bad) = self
            .concurrency
            .iter()
            .find(|&&c| c == 0 || c > MAX_CONNECTIONS)
        {
            return invalid(format!(
                "concurrency: {bad} connections; each level has 1 to {MAX_CONNECTIONS}"
            ));
        }
        if self.seconds_per_level == 0 {
            self.seconds_per_level = DEFAULT_SECONDS_PER_LEVEL;
        }
        if self.seconds_per_level > MAX_SECONDS_PER_LEVEL {
            return invalid(format!(
                "seconds_per_level: {} s; each level runs 1 to {MAX_SECONDS_PER_LEVEL} s",
                self.seconds_per_level
            ));
        }
        if self.body.is_empty() {
            return invalid("body: empty; give the scoring request to send".into());
        }
        if self.body.len() > MAX_BODY_BYTES {
            return invalid(format!(
                "body: {} bytes; the limit is {MAX_BODY_BYTES} (it travels to the device in one MQTT packet)",
                self.body.len()
            ));
        }
        if self.content_type.is_empty() {
            DEFAULT_CONTENT_TYPE.clone_into(&mut self.content_type);
        }
        if self.content_type.len() > MAX_CONTENT_TYPE_LEN
            || self.content_type.chars().any(char::is_control)
        {
            return invalid(format!(
                "content_type: {:?} is not a media type (at most {MAX_CONTENT_TYPE_LEN} characters, none of them control characters)",
                self.content_type
            ));
        }
        // Agents count a 4xx as answered (the client's fault, not the model's): a body the
        // endpoint cannot read would profile its refusals. Not JSON is caught here at least.
        if is_json(&self.content_type)
            && let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(&self.body)
        {
            return invalid(format!(
                "body: not JSON ({err}), but the content type is {}",
                self.content_type
            ));
        }
        Ok(self)
    }

    /// How long the device has to answer once asked: every level, and time to spare for the
    /// connections, the last answers and the broker.
    pub fn answer_deadline(&self) -> std::time::Duration {
        let levels = self.concurrency.len() as u64 * u64::from(self.seconds_per_level);
        std::time::Duration::from_secs(levels + 30)
    }
}

/// `application/json`, `application/vnd.x+json; charset=utf-8`, ….
fn is_json(content_type: &str) -> bool {
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    media_type.eq_ignore_ascii_case(DEFAULT_CONTENT_TYPE)
        || media_type.to_ascii_lowercase().ends_with("+json")
}

/// `profile-diabetes-1`: the deployment a profile of `model_id:version` makes. A model id so
/// long that the name would pass 255 characters is cut, with a digest of the whole id so that
/// two long ids that share a beginning get different names.
pub fn deployment_name(model_id: &str, version: u32) -> String {
    let name = format!("{PROFILE_PREFIX}{model_id}-{version}");
    if name.len() <= names::MAX_ID_LEN {
        return name;
    }
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(model_id.as_bytes())[..4]);
    let room =
        names::MAX_ID_LEN - PROFILE_PREFIX.len() - digest.len() - version.to_string().len() - 2;
    // Model ids are ASCII: any byte index is a character boundary.
    format!("{PROFILE_PREFIX}{}-{digest}-{version}", &model_id[..room])
}

/// The class a device's profile is stored under: its `device_class` label, else
/// `<arch>-<cores>cpu` (`x86_64-2cpu`). A label that cannot be part of a property key is
/// refused, naming it.
pub fn device_class(device: &Device) -> Result<String, ProfileError> {
    if let Some(class) = device.labels().get(DEVICE_CLASS_LABEL) {
        let fits = class.len() <= MAX_CLASS_LEN && class_chars(class);
        if class.is_empty() || !fits {
            return Err(ProfileError::FailedPrecondition(format!(
                "device {}'s label {DEVICE_CLASS_LABEL}={class:?} cannot name model properties: use 1-{MAX_CLASS_LEN} letters, digits, '-', '_', '.' or ':'",
                device.id
            )));
        }
        return Ok(class.clone());
    }
    let capabilities = &device.capabilities;
    let arch = match capabilities.arch.as_str() {
        arch if !arch.is_empty() && class_chars(arch) => arch,
        _ => "unknown",
    };
    let class = format!("{arch}-{}cpu", capabilities.cpu_count);
    Ok(class.chars().take(MAX_CLASS_LEN).collect())
}

/// A class is one level of a property key: the key's characters, without its `/`.
fn class_chars(text: &str) -> bool {
    text.bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// The ports deployments hold on `device`: those that target it, and those it still reports.
pub fn ports_in_use(device: &Device, deployments: &[Deployment]) -> BTreeSet<u16> {
    let labels = device.labels();
    deployments
        .iter()
        .filter(|d| d.spec.target.matches(&device.id, &labels))
        .flat_map(|d| d.spec.endpoint.ports())
        .chain(device.workloads.iter().map(|w| w.port))
        .collect()
}

/// A port of [`PROFILE_PORTS`] not in `used`, looking from `start` on (wrapping around), so
/// that profiles on one device do not all try the same port first.
pub fn pick_port(used: &BTreeSet<u16>, start: u16) -> Option<u16> {
    let (low, high) = (*PROFILE_PORTS.start(), *PROFILE_PORTS.end());
    let count = u32::from(high - low) + 1;
    let first = u32::from(start) % count;
    (0..count)
        .map(|i| low + ((first + i) % count) as u16)
        .find(|port| !used.contains(port))
}

/// The manifest of a profile's deployment, as a user would write it: the model (behind the
/// entry module, if any) on `port` of `device` alone, no auth, the default rollout.
pub fn manifest(
    name: &str,
    model: &str,
    entry_module: Option<&str>,
    port: u16,
    device: &str,
) -> Result<Manifest, ProfileError> {
    let mut text = serde_json::json!({
        "name": name,
        "model": model,
        "endpoint": {"port": port, "auth": "none"},
        "target": {"devices": [device]},
    });
    if let Some(module) = entry_module {
        text["entry_module"] = module.into();
    }
    parse_manifest(&text.to_string())
        .map_err(|err| ProfileError::Internal(format!("the profile's manifest: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::VersionSelector;

    fn request() -> ProfileRequest {
        ProfileRequest {
            model: VersionRef {
                model_id: "diabetes".into(),
                version: VersionSelector::Exact(1),
            },
            device: "edge-1".into(),
            entry_module: None,
            body: Bytes::from_static(b"{\"data\": [[1]]}"),
            content_type: String::new(),
            concurrency: vec![],
            seconds_per_level: 0,
        }
    }

    fn refusal(request: ProfileRequest) -> String {
        request.validate().expect_err("refused").to_string()
    }

    #[test]
    fn a_bare_request_gets_the_documented_defaults() {
        let request = request().validate().expect("valid");
        assert_eq!(request.concurrency, vec![1, 2, 4, 8]);
        assert_eq!(request.seconds_per_level, 5);
        assert_eq!(request.content_type, "application/json");
        assert_eq!(request.answer_deadline().as_secs(), 4 * 5 + 30);
    }

    #[test]
    fn requests_outside_the_bounds_are_refused_naming_the_field() {
        let too_many = ProfileRequest {
            concurrency: vec![1; 9],
            ..request()
        };
        assert!(refusal(too_many).starts_with("concurrency: 9 levels"));
        let zero = ProfileRequest {
            concurrency: vec![1, 0],
            ..request()
        };
        assert!(refusal(zero).starts_with("concurrency: 0 connections"));
        let wide = ProfileRequest {
            concurrency: vec![65],
            ..request()
        };
        assert!(refusal(wide).contains("1 to 64"));
        let long = ProfileRequest {
            seconds_per_level: 31,
            ..request()
        };
        assert!(refusal(long).starts_with("seconds_per_level: 31 s"));
        let big = ProfileRequest {
            body: Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]),
            ..request()
        };
        assert!(refusal(big).starts_with("body: 983041 bytes"));
        let prose = ProfileRequest {
            body: Bytes::from_static(b"# README"),
            ..request()
        };
        assert!(refusal(prose).starts_with("body: not JSON"));
        let bytes = ProfileRequest {
            body: Bytes::from_static(b"\x89PNG"),
            content_type: "application/octet-stream".into(),
            ..request()
        };
        bytes.validate().expect("any bytes of another type");
        let empty = ProfileRequest {
            body: Bytes::new(),
            ..request()
        };
        assert!(refusal(empty).starts_with("body: empty"));
        let split = ProfileRequest {
            content_type: "text/plain\r\nx: y".into(),
            ..request()
        };
        assert!(refusal(split).starts_with("content_type:"));
        let device = ProfileRequest {
            device: "../etc".into(),
            ..request()
        };
        assert!(refusal(device).contains("invalid device id"));
    }

    #[test]
    fn deployment_names_are_valid_and_long_model_ids_are_cut_apart() {
        assert_eq!(deployment_name("diabetes", 3), "profile-diabetes-3");
        let a = format!("{}a", "m".repeat(254));
        let b = format!("{}b", "m".repeat(254));
        let (name_a, name_b) = (deployment_name(&a, 12), deployment_name(&b, 12));
        assert_ne!(name_a, name_b);
        for name in [&name_a, &name_b] {
            assert_eq!(name.len(), names::MAX_ID_LEN);
            names::deployment_id(name).expect("a valid deployment name");
            assert!(name.starts_with(PROFILE_PREFIX) && name.ends_with("-12"));
        }
    }

    #[test]
    fn the_class_is_the_label_else_arch_and_cores() {
        let mut device = Device {
            id: "edge-1".into(),
            ..Device::default()
        };
        device.capabilities.arch = "x86_64".into();
        device.capabilities.cpu_count = 2;
        assert_eq!(device_class(&device).expect("class"), "x86_64-2cpu");
        device
            .reported_labels
            .insert(DEVICE_CLASS_LABEL.into(), "jetson-orin".into());
        assert_eq!(device_class(&device).expect("class"), "jetson-orin");
        // A user's label wins over the reported one, and must fit a property key.
        device
            .user_labels
            .insert(DEVICE_CLASS_LABEL.into(), "pi 5/8gb".into());
        let refused = device_class(&device).expect_err("no key").to_string();
        assert!(refused.contains("device_class=\"pi 5/8gb\""), "{refused}");
    }

    #[test]
    fn a_port_is_picked_from_the_high_range_past_those_in_use() {
        let used: BTreeSet<u16> = [61000, 61001, 65535].into();
        assert_eq!(pick_port(&used, 0), Some(61002));
        // From the top it wraps around to the bottom of the range.
        assert_eq!(pick_port(&used, 4535), Some(61002));
        assert_eq!(pick_port(&BTreeSet::new(), 7), Some(61007));
        let all: BTreeSet<u16> = PROFILE_PORTS.collect();
        assert_eq!(pick_port(&all, 3), None);
    }

    #[test]
    fn the_manifest_is_one_a_user_could_apply() {
        let manifest = manifest(
            "profile-diabetes-1",
            "diabetes:1",
            Some("records:2"),
            61234,
            "edge-1",
        )
        .expect("manifest");
        let spec = manifest.validate().expect("valid");
        assert_eq!(spec.endpoint.port, 61234);
        assert_eq!(spec.target.devices.iter().collect::<Vec<_>>(), ["edge-1"]);
        assert_eq!(
            spec.entry_module.map(|m| m.to_string()).as_deref(),
            Some("records:2")
        );
    }
}
