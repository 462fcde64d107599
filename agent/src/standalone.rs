//! `edgeship-agent serve`: one model folder served with no hub and no broker, by the same
//! endpoint code a deployment gets (Azure ML `/score` and `/swagger.json`, the Open Inference
//! Protocol over REST, `/metrics`, optionally a Bearer key). What a packaged image runs, and a
//! quick way to try a model on a laptop.
//!
//! The folder holds the model as registered: one `.onnx` file (or the one `--entry` names) and,
//! optionally, `sample_input.json`, which the self-test sends and the swagger shows. The model
//! is loaded and self-tested before the port is bound: a model that cannot serve never listens.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use edgeship_domain::{AuthMode, Endpoint as EndpointSpec, Protocol, RuntimeKind, names};
use edgeship_runtime::{ModelBundle, RuntimeError};
use sha2::{Digest, Sha256};

use crate::serve::auth::Auth;
use crate::serve::router::{Backend, Routes, window_length};
use crate::serve::{Endpoint, Scorer, ServingModel};
use crate::stage::self_test_inputs;

/// The file beside the model whose request the self-test sends (as the hub's
/// `--sample-input`).
pub const SAMPLE_INPUT_FILE: &str = "sample_input.json";

/// What `edgeship-agent serve` was asked for.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// The model folder.
    pub model_dir: PathBuf,
    /// The model file inside it; `None`: the folder's only `.onnx` file.
    pub entry: Option<String>,
    /// The model's name on the endpoint (v2 paths, the `x-edgeship-model` header); `None`:
    /// the folder's name.
    pub name: Option<String>,
    pub version: u32,
    pub host: IpAddr,
    pub port: u16,
    /// The Open Inference Protocol over gRPC on this port too.
    pub grpc_port: Option<u16>,
    pub runtime: RuntimeKind,
    /// A Bearer key every scoring request must carry; `None`: no auth.
    pub key: Option<String>,
}

/// A loaded model behind a listening endpoint.
#[derive(Debug)]
pub struct Standalone {
    pub endpoint: Endpoint,
    pub model_ref: String,
}

/// The model file in `dir`: `entry` if given (it must exist inside the folder), else the one
/// `.onnx` file there.
pub fn find_entry(dir: &Path, entry: Option<&str>) -> anyhow::Result<String> {
    if !dir.is_dir() {
        bail!("{} is not a folder", dir.display());
    }
    if let Some(entry) = entry {
        names::relative_path(entry).map_err(|err| anyhow::anyhow!("--entry {entry:?}: {err}"))?;
        if !dir.join(entry).is_file() {
            bail!("--entry {entry:?}: no such file in {}", dir.display());
        }
        return Ok(entry.to_owned());
    }
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.ends_with(".onnx"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("{} holds no .onnx file", dir.display()),
        _ => bail!(
            "{} holds several .onnx files ({}): name one with --entry",
            dir.display(),
            found.join(", ")
        ),
    }
}

/// The model's name: `name`, else the folder's, checked as model names are.
fn model_name(options: &StandaloneOptions) -> anyhow::Result<String> {
    let name = match &options.name {
        Some(name) => name.clone(),
        None => options
            .model_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .unwrap_or_else(|| "model".to_owned()),
    };
    names::model_id(&name)
        .map_err(|err| anyhow::anyhow!("model name {name:?}: {err} (give one with --name)"))?;
    Ok(name)
}

/// Loads, self-tests and serves the model; returns once the endpoint listens.
pub async fn start(options: &StandaloneOptions) -> anyhow::Result<Standalone> {
    let entry = find_entry(&options.model_dir, options.entry.as_deref())?;
    let name = model_name(options)?;
    let model_ref = format!("{name}:{}", options.version);
    let path = options.model_dir.join(&entry);
    let signature = edgeship_runtime::onnx::inspect(&entry, &path)?;
    let sample_path = options.model_dir.join(SAMPLE_INPUT_FILE);
    let sample = match std::fs::read(&sample_path) {
        Ok(bytes) => Some(
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .with_context(|| format!("{} is not JSON", sample_path.display()))?,
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).context(format!("reading {}", sample_path.display())),
    };
    let runtime = edgeship_runtime::by_kind(options.runtime)?;
    let bundle = ModelBundle {
        entry: path,
        inputs: signature.inputs,
        outputs: signature.outputs,
        device: String::new(),
        precision: Default::default(),
    };
    let loading_ref = model_ref.clone();
    let scorer = tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<dyn Scorer>> {
        let started = std::time::Instant::now();
        let runnable = runtime.prepare(&bundle)?;
        let load_seconds = started.elapsed().as_secs_f64();
        let inputs = self_test_inputs(runnable.inputs(), sample.as_ref())?;
        runnable
            .run(inputs)
            .map_err(|err| RuntimeError::Run(format!("self-test failed: {err}")))?;
        Ok(Arc::new(ServingModel {
            model_ref: loading_ref,
            runnable,
            sample_input: sample,
            load_seconds,
            recent_micros: Default::default(),
            batcher: None,
        }))
    })
    .await
    .context("the loading task failed")??;
    let spec = EndpointSpec {
        port: options.port,
        auth: if options.key.is_some() {
            AuthMode::Key
        } else {
            AuthMode::None
        },
        protocols: vec![Protocol::Azureml, Protocol::V2],
        cors_origins: vec![],
        grpc_port: options.grpc_port,
        key_digests: options
            .key
            .iter()
            .map(|key| hex::encode(Sha256::digest(key.as_bytes())))
            .collect(),
        token_keys: vec![],
        tls_hostnames: vec![],
        tls: None,
    };
    let addr = SocketAddr::new(options.host, options.port);
    let grpc_addr = options.grpc_port.map(|p| SocketAddr::new(options.host, p));
    let routes = Routes::single(Backend::new(scorer, window_length(None)));
    let endpoint = Endpoint::start(
        addr,
        grpc_addr,
        &name,
        crate::serve::Surface::Scoring(&spec.protocols),
        &[],
        Auth::from_spec(&name, &spec),
        routes,
    )
    .await
    .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(Standalone {
        endpoint,
        model_ref,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_is_the_folder_s_only_onnx_file_or_the_one_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = find_entry(dir.path(), None).expect_err("empty");
        assert!(err.to_string().contains("holds no .onnx file"), "{err}");
        std::fs::write(dir.path().join("a.onnx"), b"x").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        assert_eq!(find_entry(dir.path(), None).expect("one"), "a.onnx");
        std::fs::write(dir.path().join("b.onnx"), b"x").expect("write");
        let err = find_entry(dir.path(), None).expect_err("two");
        assert!(
            err.to_string()
                .contains("several .onnx files (a.onnx, b.onnx): name one with --entry"),
            "{err}"
        );
        assert_eq!(
            find_entry(dir.path(), Some("b.onnx")).expect("named"),
            "b.onnx"
        );
        let err = find_entry(dir.path(), Some("c.onnx")).expect_err("missing");
        assert!(err.to_string().contains("no such file"), "{err}");
        let err = find_entry(dir.path(), Some("../a.onnx")).expect_err("escaping");
        assert!(err.to_string().contains("--entry"), "{err}");
        let err = find_entry(&dir.path().join("nope"), None).expect_err("no folder");
        assert!(err.to_string().contains("is not a folder"), "{err}");
    }
}
