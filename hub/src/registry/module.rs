//! Entry modules in the registry: WebAssembly components (Azure ML's entry script, sandboxed)
//! registered and versioned like models, in a namespace of their own. A version is one
//! `.wasm` file, compiled and matched against the entry interface at registration by the
//! agent's own loader (`edgeship_wasm::inspect`), so a module no device could load is refused
//! with the reason before anything is stored.
//!
//! A module version is stored as the registry's one record type, [`ModelVersion`]: framework
//! [`FRAMEWORK`], its file, and what registration learned as reserved properties (interface
//! version, imports, sha256 and size), which users can neither set nor change.

use super::upload::StagedFile;
use super::{Error, Limits, ModelFile, ModelVersion, NewModel};

/// The largest module the hub accepts. Entry modules parse requests and shape responses; the
/// models they call are registered on their own, so a module of more than this is a mistake
/// (a model compiled in, a debug build) rather than a need.
pub const MAX_MODULE_BYTES: u64 = 64 * 1024 * 1024;
/// The framework of every module version.
pub const FRAMEWORK: &str = "wasm-component";
/// The entry interface version the module was built against (`1.0.0`).
pub const INTERFACE_PROPERTY: &str = "module.interface";
/// Every interface the module imports, comma-separated (WASI's and the host's).
pub const IMPORTS_PROPERTY: &str = "module.imports";
pub const SHA256_PROPERTY: &str = "module.sha256";
pub const SIZE_PROPERTY: &str = "module.size_bytes";
/// Properties the hub records itself; users may neither set nor remove them.
pub const RESERVED_PROPERTIES: [&str; 4] = [
    INTERFACE_PROPERTY,
    IMPORTS_PROPERTY,
    SHA256_PROPERTY,
    SIZE_PROPERTY,
];

/// A module registration's limits: one file, [`MAX_MODULE_BYTES`].
pub(super) fn limits() -> Limits {
    Limits {
        max_model_bytes: MAX_MODULE_BYTES,
        max_files: 1,
    }
}

/// Whether a path names a WebAssembly file (case-insensitive `.wasm`).
pub fn is_wasm_path(path: &str) -> bool {
    path.len() > 5 && path[path.len() - 5..].eq_ignore_ascii_case(".wasm")
}

/// What registration learned of a module version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The entry interface version, `1.0.0`.
    pub interface: String,
    pub imports: Vec<String>,
}

impl ModelVersion {
    /// The recorded interface and imports of a module version; `None` for a model.
    pub fn module_info(&self) -> Option<ModuleInfo> {
        if self.framework != FRAMEWORK {
            return None;
        }
        let imports = self
            .properties
            .get(IMPORTS_PROPERTY)
            .map(|list| {
                list.split(',')
                    .filter(|name| !name.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(ModuleInfo {
            interface: self.properties.get(INTERFACE_PROPERTY)?.clone(),
            imports,
        })
    }

    /// The component of a module version, which the agent instantiates.
    pub fn wasm_file(&self) -> Option<&ModelFile> {
        self.files.iter().find(|f| is_wasm_path(&f.path))
    }
}

/// Checks the one staged file of a module registration and records what it is. Blocking: the
/// component is compiled, as a device would compile it.
pub(super) fn classify(
    model: &mut NewModel,
    files: &[StagedFile],
) -> Result<Vec<ModelFile>, Error> {
    let [file] = files else {
        return Err(Error::invalid(format!(
            "a module is one .wasm file; {} files arrived",
            files.len()
        )));
    };
    if !is_wasm_path(&file.path) {
        return Err(Error::invalid(format!(
            "{:?} is not a .wasm file: a module is one WebAssembly component (FILE.wasm)",
            file.path
        )));
    }
    let bytes =
        std::fs::read(&file.location).map_err(Error::io(format!("reading {}", file.path)))?;
    let summary = edgeship_wasm::inspect(&bytes).map_err(|reason| {
        Error::invalid(format!(
            "{} is not a usable entry module: {reason}",
            file.path
        ))
    })?;
    model.framework = FRAMEWORK.to_owned();
    model.framework_version.clone_from(&summary.interface);
    model.sample_input = None;
    model.sample_output = None;
    let recorded = [
        (INTERFACE_PROPERTY, summary.interface),
        (IMPORTS_PROPERTY, summary.imports.join(",")),
        (SHA256_PROPERTY, file.sha256.clone()),
        (SIZE_PROPERTY, file.size_bytes.to_string()),
    ];
    for (key, value) in recorded {
        model.properties.insert(key.to_owned(), value);
    }
    if model.properties.len() > super::validate::MAX_PROPERTIES {
        return Err(Error::invalid(format!(
            "{} properties given; with the {} the hub records, the limit is {}",
            model.properties.len() - RESERVED_PROPERTIES.len(),
            RESERVED_PROPERTIES.len(),
            super::validate::MAX_PROPERTIES
        )));
    }
    Ok(vec![file.record()])
}
