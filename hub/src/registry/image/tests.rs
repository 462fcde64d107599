//! Image archives built the way `docker save` lays them out, whole and broken.

use super::*;

/// Builds archives the way `docker save` lays them out, with parts left out or changed.
struct Archive {
    members: Vec<(String, Vec<u8>)>,
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Archive {
    /// A valid one-image archive tagged `tag`, in the OCI layout (`blobs/sha256/…`).
    fn docker_save(tag: &str) -> (Self, String) {
        let layer = {
            let mut builder = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_ustar();
            header.set_size(5);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, "app/hello.txt", b"hello".as_slice())
                .expect("layer entry");
            builder.into_inner().expect("layer")
        };
        let layer_digest = sha(&layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/app/serve"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        }))
        .expect("config");
        let config_digest = sha(&config);
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": format!("blobs/sha256/{config_digest}"),
            "RepoTags": [tag],
            "Layers": [format!("blobs/sha256/{layer_digest}")],
        }]))
        .expect("manifest");
        let archive = Archive {
            members: vec![
                (format!("blobs/sha256/{config_digest}"), config),
                (format!("blobs/sha256/{layer_digest}"), layer),
                ("manifest.json".into(), manifest),
                (
                    "oci-layout".into(),
                    br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
                ),
            ],
        };
        (archive, config_digest)
    }

    fn set(mut self, path: &str, bytes: Vec<u8>) -> Self {
        match self.members.iter_mut().find(|(p, _)| p == path) {
            Some(member) => member.1 = bytes,
            None => self.members.push((path.to_owned(), bytes)),
        }
        self
    }

    fn without(mut self, path: &str) -> Self {
        self.members.retain(|(p, _)| p != path);
        self
    }

    fn manifest(&self) -> serde_json::Value {
        let (_, bytes) = self
            .members
            .iter()
            .find(|(p, _)| p == "manifest.json")
            .expect("manifest.json");
        serde_json::from_slice(bytes).expect("json")
    }

    fn with_manifest(self, manifest: &serde_json::Value) -> Self {
        self.set("manifest.json", serde_json::to_vec(manifest).expect("json"))
    }

    fn write(&self, dir: &Path) -> std::path::PathBuf {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in &self.members {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, bytes.as_slice())
                .expect("entry");
        }
        let path = dir.join("image.tar");
        std::fs::write(&path, builder.into_inner().expect("archive")).expect("write");
        path
    }
}

#[test]
fn a_docker_save_archive_gives_its_image_id_and_first_tag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, digest) = Archive::docker_save("diabetes-scorer:1");
    let info = inspect(&archive.write(dir.path())).expect("valid");
    assert_eq!(
        info,
        ImageInfo {
            id: format!("sha256:{digest}"),
            reference: "diabetes-scorer:1".into(),
        }
    );
}

#[test]
fn the_older_docker_layout_names_its_config_hex_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, digest) = Archive::docker_save("scorer:2");
    let config_path = format!("blobs/sha256/{digest}");
    let config = archive
        .members
        .iter()
        .find(|(p, _)| *p == config_path)
        .expect("config")
        .1
        .clone();
    let mut manifest = archive.manifest();
    manifest[0]["Config"] = format!("{digest}.json").into();
    let archive = archive
        .without(&config_path)
        .set(&format!("{digest}.json"), config)
        .with_manifest(&manifest);
    let info = inspect(&archive.write(dir.path())).expect("valid");
    assert_eq!(info.id, format!("sha256:{digest}"));
}

#[test]
fn an_archive_written_by_edgeship_package_is_an_image() {
    // The layout `cli::package::image::write_image` writes: directories, an OCI index and
    // Docker's manifest.json before the blobs.
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, digest) = Archive::docker_save("edgeship/diabetes:1");
    let mut members = vec![("index.json".to_owned(), b"{}".to_vec())];
    let manifest_json = archive
        .members
        .iter()
        .find(|(p, _)| p == "manifest.json")
        .cloned()
        .expect("manifest");
    members.push(manifest_json);
    members.extend(
        archive
            .members
            .into_iter()
            .filter(|(p, _)| p != "manifest.json"),
    );
    let info = inspect(&Archive { members }.write(dir.path())).expect("valid");
    assert_eq!(info.id, format!("sha256:{digest}"));
    assert_eq!(info.reference, "edgeship/diabetes:1");
}

#[test]
fn each_malformed_archive_is_refused_naming_the_problem() {
    let (valid, digest) = Archive::docker_save("scorer:1");
    let manifest = valid.manifest();
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut manifest = manifest.clone();
        edit(&mut manifest);
        Archive::docker_save("scorer:1").0.with_manifest(&manifest)
    };
    let config_path = format!("blobs/sha256/{digest}");
    let layer_path = manifest[0]["Layers"][0].as_str().expect("layer").to_owned();
    let cases: Vec<(&str, Archive, &str)> = vec![
        (
            "no manifest.json",
            Archive::docker_save("scorer:1").0.without("manifest.json"),
            "no manifest.json",
        ),
        (
            "manifest.json is not JSON",
            Archive::docker_save("scorer:1")
                .0
                .set("manifest.json", b"not json".to_vec()),
            "is not Docker's image index",
        ),
        (
            "no image",
            edited(&|m| *m = serde_json::json!([])),
            "lists no image",
        ),
        (
            "two images",
            edited(&|m| {
                let first = m[0].clone();
                m.as_array_mut().expect("list").push(first);
            }),
            "holds 2 images",
        ),
        (
            "no config",
            edited(&|m| m[0]["Config"] = "".into()),
            "names no Config",
        ),
        (
            "a config without its digest",
            edited(&|m| m[0]["Config"] = "config.json".into()),
            "does not carry its sha256 in its name",
        ),
        (
            "a missing config",
            Archive::docker_save("scorer:1").0.without(&config_path),
            "is not in the archive",
        ),
        (
            "a config that does not match its digest",
            Archive::docker_save("scorer:1")
                .0
                .set(&config_path, b"{\"os\":\"linux\"}".to_vec()),
            "does not match the digest in its name",
        ),
        (
            "no tag",
            edited(&|m| m[0]["RepoTags"] = serde_json::Value::Null),
            "has no tag",
        ),
        (
            "an empty tag list",
            edited(&|m| m[0]["RepoTags"] = serde_json::json!([])),
            "has no tag",
        ),
        (
            "a missing layer",
            Archive::docker_save("scorer:1").0.without(&layer_path),
            "its layer",
        ),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (case, archive, expected) in cases {
        let err = inspect(&archive.write(dir.path())).expect_err(case);
        assert!(err.to_string().contains(expected), "{case}: {err}");
    }
}

#[test]
fn files_that_are_no_image_archive_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = dir.path().join("notes.tar");
    std::fs::write(
        &text,
        b"these are not the bytes of a tar archive at all".repeat(20),
    )
    .expect("write");
    assert!(
        matches!(inspect(&text), Err(ImageError::NotAnImage(why)) if why.contains("not a tar archive")),
        "{:?}",
        inspect(&text)
    );
    let gzip = dir.path().join("image.tar");
    std::fs::write(&gzip, [0x1f, 0x8b, 8, 0, 0, 0]).expect("write");
    assert!(
        matches!(inspect(&gzip), Err(ImageError::NotAnImage(why)) if why.contains("gzip")),
        "{:?}",
        inspect(&gzip)
    );
}

fn staged(path: &str, location: std::path::PathBuf) -> StagedFile {
    StagedFile {
        path: path.into(),
        size_bytes: 0,
        sha256: String::new(),
        location,
    }
}

#[test]
fn the_framework_is_detected_from_a_single_tar_and_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, digest) = Archive::docker_save("scorer:1");
    let image = archive.write(dir.path());
    let mut model = NewModel::default();
    classify(&mut model, &[staged("image.tar", image.clone())]).expect("image");
    assert_eq!(model.framework, FRAMEWORK);
    assert_eq!(model.properties[ID_PROPERTY], format!("sha256:{digest}"));
    assert_eq!(model.properties[REFERENCE_PROPERTY], "scorer:1");

    // A plain tar without a framework stays what it was (custom, decided at commit).
    let plain = dir.path().join("data.tar");
    std::fs::write(&plain, vec![0u8; 1024]).expect("an empty tar");
    let mut model = NewModel::default();
    classify(&mut model, &[staged("data.tar", plain.clone())]).expect("no image");
    assert_eq!(model.framework, "");
    assert!(model.properties.is_empty());

    // Declared as an image, it must be one.
    let mut declared = NewModel {
        framework: FRAMEWORK.into(),
        ..NewModel::default()
    };
    let err = classify(&mut declared, &[staged("data.tar", plain)]).expect_err("no manifest");
    assert!(
        err.to_string()
            .starts_with("data.tar is not a valid image archive: it has no manifest.json"),
        "{err}"
    );
    let err = classify(
        &mut declared,
        &[staged("a.tar", image.clone()), staged("b.tar", image)],
    )
    .expect_err("two files");
    assert!(err.to_string().contains("is one file"), "{err}");
}
