//! The one set of name rules. Names become resource names, MQTT topic levels and folder names
//! on devices, so hub and agent must agree on them exactly.

use std::fmt;

/// A name that breaks its rule; the message names the value and says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidName(pub String);

/// Longest model, module or deployment name.
pub const MAX_ID_LEN: usize = 255;
/// Longest device id (it is one MQTT topic level).
pub const MAX_DEVICE_ID_LEN: usize = 128;

fn allowed(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')
}

/// What a name is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Model,
    Module,
    Deployment,
    Job,
    /// An API token's name.
    Token,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Model => "model",
            NameKind::Module => "module",
            NameKind::Deployment => "deployment",
            NameKind::Job => "job",
            NameKind::Token => "token",
        })
    }
}

/// Model, module, deployment and job names: 1–255 ASCII letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit.
pub fn id(kind: NameKind, id: &str) -> Result<(), InvalidName> {
    if id.is_empty() {
        return Err(InvalidName(format!("{kind} name must not be empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(InvalidName(format!(
            "{kind} name is {} characters long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() || !id.bytes().all(allowed) {
        return Err(InvalidName(format!(
            "invalid {kind} name {id:?}: use letters, digits, '-', '_' and '.', starting with a letter or digit"
        )));
    }
    Ok(())
}

pub fn model_id(model_id: &str) -> Result<(), InvalidName> {
    id(NameKind::Model, model_id)
}

pub fn deployment_id(deployment_id: &str) -> Result<(), InvalidName> {
    id(NameKind::Deployment, deployment_id)
}

/// Device ids: 1–128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-` (no wildcard,
/// separator or hidden-file surprises as a topic level or a folder name).
pub fn device_id(id: &str) -> Result<(), InvalidName> {
    let ok = !id.is_empty()
        && id.len() <= MAX_DEVICE_ID_LEN
        && !id.starts_with(['.', '-'])
        && id.bytes().all(allowed);
    if ok {
        Ok(())
    } else {
        Err(InvalidName(format!(
            "invalid device id {id:?}: use 1-128 letters, digits, '-', '_' or '.', not starting with '.' or '-'"
        )))
    }
}

/// Longest tag, property or label key.
pub const MAX_KEY_LEN: usize = 128;
/// Longest tag, property or label value.
pub const MAX_VALUE_LEN: usize = 1024;

/// Tag, property and label keys (`kind` says which): 1–128 ASCII letters, digits and
/// `-_.:/`. `=` is excluded so that `key=value` filters are unambiguous.
pub fn key(kind: &str, key: &str) -> Result<(), InvalidName> {
    let allowed =
        |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(allowed) {
        return Err(InvalidName(format!(
            "invalid {kind} key {key:?}: use 1-{MAX_KEY_LEN} letters, digits, '-', '_', '.', ':' or '/'"
        )));
    }
    Ok(())
}

/// Tag, property and label values: up to 1024 bytes, no control characters.
pub fn value(kind: &str, key: &str, value: &str) -> Result<(), InvalidName> {
    if value.len() > MAX_VALUE_LEN {
        return Err(InvalidName(format!(
            "{kind} {key:?} has a value of {} bytes; the limit is {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidName(format!(
            "{kind} {key:?} has a value with control characters"
        )));
    }
    Ok(())
}

/// Device labels, as agents announce them and deployments select them.
pub fn label(label_key: &str, label_value: &str) -> Result<(), InvalidName> {
    key("label", label_key)?;
    value("label", label_key, label_value)
}

/// A file path inside a model or module: relative, `/`-separated, no empty, `.` or `..`
/// segment (it is joined under a folder on the device).
pub fn relative_path(path: &str) -> Result<(), InvalidName> {
    let bad = path.is_empty()
        || path.starts_with('/')
        || path.contains('\\')
        || path
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        Err(InvalidName(format!(
            "invalid file path {path:?}: use a relative path without empty, '.' or '..' segments"
        )))
    } else {
        Ok(())
    }
}

/// A lower-case hex sha256.
pub fn sha256(digest: &str) -> Result<(), InvalidName> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(InvalidName(format!(
            "invalid sha256 {digest:?}: expected 64 lower-case hex digits"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_one_rule_whatever_they_name() {
        for good in ["a", "diabetes", "m-1_2.3", &"x".repeat(255)] {
            assert_eq!(model_id(good), Ok(()), "{good}");
            assert_eq!(deployment_id(good), Ok(()), "{good}");
        }
        let cases = [
            ("", "model name must not be empty"),
            ("has space", "invalid model name \"has space\""),
            ("../up", "invalid model name"),
            ("-lead", "invalid model name"),
            (&"x".repeat(256), "the limit is 255"),
        ];
        for (bad, message) in cases {
            let err = model_id(bad).expect_err(bad).0;
            assert!(err.contains(message), "{bad}: {err}");
        }
        assert!(
            deployment_id("a/b")
                .expect_err("slash")
                .0
                .contains("invalid deployment name")
        );
    }

    #[test]
    fn device_ids_are_topic_levels() {
        assert_eq!(device_id("edge-01.site_a"), Ok(()));
        for bad in ["", "a/b", "+", "#", ".hidden", "-x", &"d".repeat(129)] {
            assert!(
                device_id(bad)
                    .expect_err(bad)
                    .0
                    .contains("invalid device id")
            );
        }
    }

    #[test]
    fn labels_follow_the_tag_rules() {
        assert_eq!(label("site", "north"), Ok(()));
        assert_eq!(label("example.com/zone", "a:b"), Ok(()));
        assert!(
            label("a=b", "x")
                .expect_err("=")
                .0
                .contains("invalid label key")
        );
        assert!(label("", "x").is_err());
        assert!(
            label("k", "bad\nvalue")
                .expect_err("control")
                .0
                .contains("control")
        );
        assert!(
            label("k", &"v".repeat(1025))
                .expect_err("long")
                .0
                .contains("limit is 1024")
        );
    }

    #[test]
    fn paths_stay_inside_their_folder() {
        assert_eq!(relative_path("a/b.onnx"), Ok(()));
        for bad in ["", "/etc/passwd", "a/../b", "./a", "a//b", "a\\b"] {
            assert!(relative_path(bad).is_err(), "{bad}");
        }
        assert!(sha256(&"a".repeat(64)).is_ok());
        assert!(sha256(&"A".repeat(64)).is_err());
        assert!(sha256("ab").is_err());
    }
}
