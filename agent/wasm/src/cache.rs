//! Compiled modules on the device's disk, so that a restarted agent compiles nothing: one file
//! per module digest and engine key, holding the code's own sha256 before the code. A file
//! whose digest does not match (a torn or corrupted write) is compiled again and replaced,
//! never loaded.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::engine::ModuleEngine;

/// Where compiled modules are kept.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
}

impl CompiledCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, engine: &ModuleEngine, wasm_sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{wasm_sha256}-{}.cwasm", engine.cache_key()))
    }

    /// The component for the module at `wasm` (whose sha256 is `wasm_sha256`, verified by the
    /// caller): from the cache, or compiled and then cached. The flag says whether it came
    /// from the cache.
    pub fn load(
        &self,
        engine: &ModuleEngine,
        wasm: &Path,
        wasm_sha256: &str,
    ) -> Result<(Component, bool), String> {
        let path = self.path(engine, wasm_sha256);
        if let Some(component) = self.read(engine, &path) {
            return Ok((component, true));
        }
        let bytes = std::fs::read(wasm)
            .map_err(|err| format!("cannot read the module {}: {err}", wasm.display()))?;
        let component = engine.compile(&bytes)?;
        if let Err(err) = self.write(&path, &component) {
            // Serving does not need the cache; the next start compiles again.
            tracing::warn!(path = %path.display(), "cannot cache the compiled module: {err}");
        }
        Ok((component, false))
    }

    fn read(&self, engine: &ModuleEngine, path: &Path) -> Option<Component> {
        let bytes = std::fs::read(path).ok()?;
        let (digest, code) = bytes.split_at_checked(32)?;
        if Sha256::digest(code).as_slice() != digest {
            tracing::warn!(path = %path.display(), "a cached module is damaged; compiling again");
            let _ = std::fs::remove_file(path);
            return None;
        }
        deserialize(engine, code, path)
    }

    fn write(&self, path: &Path, component: &Component) -> Result<(), String> {
        let code = component.serialize().map_err(|err| format!("{err:#}"))?;
        std::fs::create_dir_all(&self.dir).map_err(|err| err.to_string())?;
        let mut bytes = Sha256::digest(&code).to_vec();
        bytes.extend_from_slice(&code);
        // Written aside and renamed: a crash leaves the old file or the new one, never half.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, &bytes).map_err(|err| err.to_string())?;
        std::fs::rename(&partial, path).map_err(|err| err.to_string())
    }

    /// Deletes compiled modules of digests not in `live`, those of other engines, and debris
    /// of interrupted writes.
    pub fn retain(&self, engine: &ModuleEngine, live: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let keep: Vec<PathBuf> = live.iter().map(|d| self.path(engine, d)).collect();
        for entry in entries.flatten() {
            if !keep.contains(&entry.path()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Loads code this cache wrote.
#[allow(unsafe_code)]
fn deserialize(engine: &ModuleEngine, code: &[u8], path: &Path) -> Option<Component> {
    // SAFETY: wasmtime requires that the bytes come from its own `serialize`. They do: the
    // file is named by this engine's compatibility key and module digest, lies in the agent's
    // own data folder, was written by `write` above from `Component::serialize`, and its
    // sha256 (checked by the caller) matches what was written. wasmtime itself refuses code
    // from another version or configuration.
    match unsafe { Component::deserialize(engine.engine(), code) } {
        Ok(component) => Some(component),
        Err(err) => {
            tracing::warn!(path = %path.display(), "a cached module cannot be loaded ({err:#}); compiling again");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}
