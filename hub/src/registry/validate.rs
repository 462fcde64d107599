//! Validation rules for everything a user can send to the registry, and parsers for the
//! textual forms of references (`models/x/versions/3`, `x:3`, `key=value`).
//!
//! Every rejection names the offending field and value and says what is allowed, because
//! these messages reach users verbatim (CLI stderr, gRPC status messages).

use std::collections::{BTreeMap, HashSet};

use super::model::{
    DeleteTarget, KeyMatch, Kind, ModelUpdate, NewModel, VersionRef, VersionSelector,
};
use super::{Error, image, module};

pub use edgeship_domain::names::{MAX_KEY_LEN, MAX_VALUE_LEN};
pub const MAX_TAGS: usize = 64;
pub const MAX_PROPERTIES: usize = 64;
pub const MAX_DESCRIPTION_LEN: usize = 4096;
pub const MAX_PATH_LEN: usize = 1024;
pub const MAX_SAMPLE_LEN: usize = 1024 * 1024;
pub const MAX_FRAMEWORK_LEN: usize = 64;

/// Model ids: 1–255 characters, ASCII letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit (the Azure ML rule, so names carry over unchanged).
pub fn model_id(id: &str) -> Result<(), Error> {
    edgeship_domain::names::model_id(id).map_err(|err| Error::invalid(err.0))
}

/// Tag and property keys: 1–128 characters of ASCII letters, digits and `-_.:/`.
/// `=` is excluded so that `key=value` filters are unambiguous.
pub fn key(kind: &str, key: &str) -> Result<(), Error> {
    edgeship_domain::names::key(kind, key).map_err(|err| Error::invalid(err.0))
}

/// Tag and property values: up to 1024 characters, no control characters.
pub fn value(kind: &str, key: &str, value: &str) -> Result<(), Error> {
    edgeship_domain::names::value(kind, key, value).map_err(|err| Error::invalid(err.0))
}

fn key_values(kind: &str, map: &BTreeMap<String, String>, max: usize) -> Result<(), Error> {
    if map.len() > max {
        return Err(Error::invalid(format!(
            "{} {kind}s given; the limit is {max}",
            map.len()
        )));
    }
    for (k, v) in map {
        key(kind, k)?;
        value(kind, k, v)?;
    }
    Ok(())
}

fn json_document(field: &str, text: &str) -> Result<(), Error> {
    if text.len() > MAX_SAMPLE_LEN {
        return Err(Error::invalid(format!(
            "{field} is {} bytes; the limit is {MAX_SAMPLE_LEN}",
            text.len()
        )));
    }
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| ())
        .map_err(|err| Error::invalid(format!("{field} is not valid JSON: {err}")))
}

/// Checks the metadata of a registration and normalizes the framework to lower case.
pub fn new_model(model: &mut NewModel) -> Result<(), Error> {
    new_version(Kind::Model, model)
}

/// [`new_model`] for a registration in the registry of `kind`.
pub fn new_version(kind: Kind, model: &mut NewModel) -> Result<(), Error> {
    id_of(kind, &model.model_id)?;
    if model.description.len() > MAX_DESCRIPTION_LEN {
        return Err(Error::invalid(format!(
            "description is {} bytes; the limit is {MAX_DESCRIPTION_LEN}",
            model.description.len()
        )));
    }
    // An empty framework is decided at commit, from the files (onnx when a .onnx is present).
    model.framework = model.framework.trim().to_ascii_lowercase();
    let framework_ok = model.framework.len() <= MAX_FRAMEWORK_LEN
        && model
            .framework
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if !framework_ok {
        return Err(Error::invalid(format!(
            "invalid framework {:?}: use up to {MAX_FRAMEWORK_LEN} letters, digits, '-', '_' or '.' (e.g. onnx, custom)",
            model.framework
        )));
    }
    value(
        "framework version",
        &model.framework,
        &model.framework_version,
    )?;
    key_values("tag", &model.tags, MAX_TAGS)?;
    key_values("property", &model.properties, MAX_PROPERTIES)?;
    not_reserved(kind, model.properties.keys())?;
    if let Some(sample) = &model.sample_input {
        json_document("sample input", sample)?;
    }
    if let Some(sample) = &model.sample_output {
        json_document("sample output", sample)?;
    }
    Ok(())
}

/// File paths inside a model: relative, `/`-separated, no empty, `.` or `..` segments, no
/// backslashes or control characters, at most 1024 bytes. They become paths on devices, so
/// anything that could escape the model's folder is refused.
pub fn file_path(path: &str) -> Result<(), Error> {
    let reject = |why: &str| Err(Error::invalid(format!("invalid file path {path:?}: {why}")));
    if path.is_empty() {
        return reject("it is empty");
    }
    if path.len() > MAX_PATH_LEN {
        return reject("it is longer than 1024 bytes");
    }
    let bytes = path.as_bytes();
    let drive_letter = bytes[0].is_ascii_alphabetic()
        && bytes.get(1) == Some(&b':')
        && matches!(bytes.get(2), None | Some(b'/'));
    if path.starts_with('/') || drive_letter {
        return reject("absolute paths are not allowed; use a path relative to the model folder");
    }
    if path.contains('\\') {
        return reject("use '/' as the separator, not '\\'");
    }
    if path.chars().any(char::is_control) {
        return reject("it contains control characters");
    }
    for segment in path.split('/') {
        match segment {
            "" => return reject("it has an empty segment ('//' or a trailing '/')"),
            "." | ".." => return reject("'.' and '..' segments are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a list of file paths for validity and duplicates (including a file that is also
/// used as a folder, like `a` and `a/b`).
pub fn file_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
    let mut seen = HashSet::new();
    let mut folders = HashSet::new();
    for path in paths {
        file_path(path)?;
        if !seen.insert(path) {
            return Err(Error::invalid(format!("file path {path:?} is given twice")));
        }
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            folders.insert(&path[..end + pos]);
            end += pos + 1;
        }
    }
    if let Some(clash) = seen.iter().find(|path| folders.contains(*path)) {
        return Err(Error::invalid(format!(
            "file path {clash:?} is used both as a file and as a folder"
        )));
    }
    Ok(())
}

/// The properties the hub records itself (an image artifact's id and reference, a module's
/// interface and imports) stay as registration found them: desired states hand them to
/// devices, and `show` reports them as facts about the file.
fn not_reserved<'a>(kind: Kind, keys: impl IntoIterator<Item = &'a String>) -> Result<(), Error> {
    let (reserved, source): (&[&str], &str) = match kind {
        Kind::Model => (&image::RESERVED_PROPERTIES, "an image artifact's archive"),
        Kind::Module => (&module::RESERVED_PROPERTIES, "the module's component"),
    };
    match keys.into_iter().find(|k| reserved.contains(&k.as_str())) {
        Some(key) => Err(Error::invalid(format!(
            "property {key:?} is reserved: the hub records it from {source}"
        ))),
        None => Ok(()),
    }
}

pub fn update(update: &ModelUpdate) -> Result<(), Error> {
    key_values("tag", &update.add_tags, MAX_TAGS)?;
    key_values("property", &update.add_properties, MAX_PROPERTIES)?;
    not_reserved(
        Kind::Model,
        update
            .add_properties
            .keys()
            .chain(&update.remove_properties),
    )?;
    for (kind, added, removed) in [
        ("tag", &update.add_tags, &update.remove_tags),
        (
            "property",
            &update.add_properties,
            &update.remove_properties,
        ),
    ] {
        for k in removed {
            key(kind, k)?;
            if added.contains_key(k) {
                return Err(Error::invalid(format!(
                    "{kind} {k:?} is both added and removed in the same update"
                )));
            }
        }
    }
    if let Some(description) = &update.description
        && description.len() > MAX_DESCRIPTION_LEN
    {
        return Err(Error::invalid(format!(
            "description is {} bytes; the limit is {MAX_DESCRIPTION_LEN}",
            description.len()
        )));
    }
    Ok(())
}

fn version_selector(kind: Kind, id: &str, text: &str) -> Result<VersionSelector, Error> {
    if text == "latest" {
        return Ok(VersionSelector::Latest);
    }
    match text.parse::<u32>() {
        Ok(version) if version > 0 && !text.starts_with('+') => Ok(VersionSelector::Exact(version)),
        _ => Err(Error::invalid(format!(
            "invalid version {text:?} of {} {id:?}: use a positive integer or 'latest'",
            kind.noun()
        ))),
    }
}

/// Whether a file is an ONNX model by its name (case-insensitive `.onnx`).
pub fn is_onnx_path(path: &str) -> bool {
    path.len() > 5 && path[path.len() - 5..].eq_ignore_ascii_case(".onnx")
}

/// A model's or module's name, by the one rule both follow (messages name which it is).
pub fn id_of(kind: Kind, id: &str) -> Result<(), Error> {
    edgeship_domain::names::id(kind.name_kind(), id).map_err(|err| Error::invalid(err.0))
}

/// Parses `models/{id}/versions/{version|latest}`.
pub fn version_name(name: &str) -> Result<VersionRef, Error> {
    version_name_in(Kind::Model, name)
}

/// Parses `{collection}/{id}/versions/{version|latest}` of `kind` (`modules/...`).
pub fn version_name_in(kind: Kind, name: &str) -> Result<VersionRef, Error> {
    let collection = kind.collection();
    match name.split('/').collect::<Vec<_>>().as_slice() {
        [c, id, "versions", version] if *c == collection => {
            id_of(kind, id)?;
            Ok(VersionRef {
                model_id: (*id).to_owned(),
                version: version_selector(kind, id, version)?,
            })
        }
        _ => Err(Error::invalid(format!(
            "invalid resource name {name:?}: expected {collection}/{{name}}/versions/{{version}}"
        ))),
    }
}

/// Parses `models/{id}` (every version) or `models/{id}/versions/{version}`.
pub fn delete_target(name: &str) -> Result<DeleteTarget, Error> {
    delete_target_in(Kind::Model, name)
}

/// [`delete_target`] in the collection of `kind`.
pub fn delete_target_in(kind: Kind, name: &str) -> Result<DeleteTarget, Error> {
    let collection = kind.collection();
    match name.split('/').collect::<Vec<_>>().as_slice() {
        [c, id] if *c == collection => {
            id_of(kind, id)?;
            Ok(DeleteTarget::AllVersions((*id).to_owned()))
        }
        [c, _, "versions", _] if *c == collection => {
            version_name_in(kind, name).map(DeleteTarget::Version)
        }
        _ => Err(Error::invalid(format!(
            "invalid resource name {name:?}: expected {collection}/{{name}} or {collection}/{{name}}/versions/{{version}}"
        ))),
    }
}

/// Parses the CLI's short form `NAME[:VERSION]`; without a version it means `latest`.
pub fn short_ref(text: &str) -> Result<VersionRef, Error> {
    short_ref_in(Kind::Model, text)
}

/// [`short_ref`] of a model or a module.
pub fn short_ref_in(kind: Kind, text: &str) -> Result<VersionRef, Error> {
    let (id, version) = match text.split_once(':') {
        Some((id, version)) => (id, version_selector(kind, id, version)?),
        None => (text, VersionSelector::Latest),
    };
    id_of(kind, id)?;
    Ok(VersionRef {
        model_id: id.to_owned(),
        version,
    })
}

/// Parses a filter entry: `key=value` (exact) or `key` (present).
pub fn key_match(kind: &str, text: &str) -> Result<KeyMatch, Error> {
    let (k, v) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (text, None),
    };
    key(kind, k)?;
    Ok(KeyMatch {
        key: k.to_owned(),
        value: v,
    })
}

/// Parses `key=value` as given to `--tag` / `--property` when setting a value.
pub fn key_value(kind: &str, text: &str) -> Result<(String, String), Error> {
    let Some((k, v)) = text.split_once('=') else {
        return Err(Error::invalid(format!(
            "invalid {kind} {text:?}: expected key=value"
        )));
    };
    key(kind, k)?;
    value(kind, k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids_follow_the_documented_pattern() {
        for ok in ["diabetes", "a", "Model_2.onnx-v1", &"x".repeat(255)] {
            assert!(model_id(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "",
            "-lead",
            ".hidden",
            "has space",
            "slash/y",
            "ünï",
            &"x".repeat(256),
        ] {
            assert!(model_id(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn file_paths_cannot_escape_the_model_folder() {
        for ok in ["model.onnx", "nested/dir/weights.bin", "a..b/c", "a:b.txt"] {
            assert!(file_path(ok).is_ok(), "{ok} should be accepted");
        }
        for (bad, why) in [
            ("../etc/passwd", "'..'"),
            ("a/../../b", "'..'"),
            ("/etc/passwd", "absolute"),
            ("C:/x", "absolute"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("./a", "'.'"),
            ("a\\b", "separator"),
            ("", "empty"),
        ] {
            let err = file_path(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn duplicate_and_file_folder_clashes_are_rejected() {
        assert!(file_paths(["a", "b/c", "b/d"]).is_ok());
        let dup = file_paths(["a", "a"]).expect_err("duplicate").to_string();
        assert!(dup.contains("given twice"), "{dup}");
        let clash = file_paths(["b", "b/c"]).expect_err("clash").to_string();
        assert!(clash.contains("both as a file and as a folder"), "{clash}");
    }

    #[test]
    fn resource_names_parse_versions_and_latest() {
        let exact = version_name("models/diabetes/versions/3").expect("valid");
        assert_eq!(exact.version, VersionSelector::Exact(3));
        let latest = version_name("models/diabetes/versions/latest").expect("valid");
        assert_eq!(latest.version, VersionSelector::Latest);
        for bad in [
            "models/diabetes/versions/0",
            "models/diabetes/versions/-1",
            "models/diabetes/versions/+1",
            "models/diabetes",
            "diabetes:1",
            "models//versions/1",
        ] {
            assert!(version_name(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(
            delete_target("models/x").expect("valid"),
            DeleteTarget::AllVersions("x".into())
        );
    }

    #[test]
    fn short_refs_default_to_latest() {
        assert_eq!(
            short_ref("m").expect("valid").version,
            VersionSelector::Latest
        );
        assert_eq!(
            short_ref("m:7").expect("valid").version,
            VersionSelector::Exact(7)
        );
        assert!(short_ref("m:seven").is_err());
        assert!(short_ref(":1").is_err());
    }

    #[test]
    fn key_matches_parse_presence_and_equality() {
        let present = key_match("tag", "stage").expect("valid");
        assert_eq!(present.value, None);
        let equal = key_match("tag", "stage=prod").expect("valid");
        assert_eq!(equal.value.as_deref(), Some("prod"));
        assert!(key_match("tag", "=x").is_err());
        assert!(key_value("tag", "novalue").is_err());
        assert_eq!(
            key_value("tag", "k=v=w").expect("valid"),
            ("k".into(), "v=w".into())
        );
    }

    #[test]
    fn metadata_is_normalized_and_checked() {
        let mut model = NewModel {
            model_id: "m".into(),
            framework: " ONNX ".into(),
            ..NewModel::default()
        };
        new_model(&mut model).expect("valid");
        assert_eq!(model.framework, "onnx");
        model
            .properties
            .insert("image.id".into(), "sha256:00".into());
        let err = new_model(&mut model).expect_err("reserved").to_string();
        assert!(err.contains("property \"image.id\" is reserved"), "{err}");
        model.properties.clear();
        let update_err = update(&ModelUpdate {
            remove_properties: vec!["image.reference".into()],
            ..ModelUpdate::default()
        })
        .expect_err("reserved");
        assert!(
            update_err.to_string().contains("is reserved"),
            "{update_err}"
        );
        model.sample_input = Some("{not json".into());
        let err = new_model(&mut model).expect_err("bad json").to_string();
        assert!(err.contains("sample input is not valid JSON"), "{err}");
    }
}
