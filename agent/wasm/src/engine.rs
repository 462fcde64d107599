//! The process's wasmtime engine: compiles components, checks them against the entry world,
//! and ticks the epoch that per-request deadlines count in.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use crate::bindings::{Entry, EntryPre};
use crate::sandbox::Sandbox;

/// The version of the WIT package this host implements (`edgeship:entry@…`).
pub const INTERFACE_VERSION: &str = "1.0.0";

/// How often the epoch advances: the granularity of deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine, the linker every instance is made with, and the cache key of what it compiles.
pub struct ModuleEngine {
    engine: Engine,
    linker: Linker<Sandbox>,
    cache_key: String,
}

impl std::fmt::Debug for ModuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleEngine")
            .field("cache_key", &self.cache_key)
            .finish_non_exhaustive()
    }
}

/// What registration learns of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSummary {
    /// The entry interface version the module was built against (`1.0.0`).
    pub interface: String,
    /// Every interface the module imports, by name (WASI's and the host's).
    pub imports: Vec<String>,
}

impl ModuleEngine {
    /// The process's engine, made on first use; its epoch ticker runs for the process's life.
    pub fn shared() -> Result<&'static ModuleEngine, String> {
        static SHARED: OnceLock<Result<ModuleEngine, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                let engine = ModuleEngine::new()?;
                let ticker = engine.engine.clone();
                std::thread::Builder::new()
                    .name("wasm-epoch".into())
                    .spawn(move || {
                        loop {
                            std::thread::sleep(EPOCH_TICK);
                            ticker.increment_epoch();
                        }
                    })
                    .map_err(|err| format!("cannot start the deadline ticker: {err}"))?;
                Ok(engine)
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    fn new() -> Result<Self, String> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine =
            Engine::new(&config).map_err(|err| format!("cannot set up WebAssembly: {err:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|err| format!("cannot offer WASI to modules: {err:#}"))?;
        Entry::add_to_linker::<_, HasSelf<_>>(&mut linker, |sandbox| sandbox)
            .map_err(|err| format!("cannot offer the entry interface: {err:#}"))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let cache_key = format!("{:016x}", hasher.finish());
        Ok(Self {
            engine,
            linker,
            cache_key,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Names compiled code: code compiled by an engine with another key (another wasmtime, or
    /// other settings) cannot be loaded by this one.
    pub fn cache_key(&self) -> &str {
        &self.cache_key
    }

    /// Compiles `wasm`, refusing what is not a component with the reason.
    pub fn compile(&self, wasm: &[u8]) -> Result<Component, String> {
        check_header(wasm)?;
        Component::from_binary(&self.engine, wasm)
            .map_err(|err| format!("the component does not compile: {err:#}"))
    }

    /// Checks that the host offers everything `component` imports and that it exports the
    /// entry world's functions with their types; what instances are made from.
    pub fn prepare(&self, component: &Component) -> Result<EntryPre<Sandbox>, String> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|err| format!("it imports what an entry module cannot have: {err:#}"))?;
        EntryPre::new(pre).map_err(|err| {
            format!(
                "its exports do not match the edgeship:entry@{INTERFACE_VERSION} world (init: func() -> result<_, string>, run: func(request) -> response): {err:#}"
            )
        })
    }

    /// What `component` imports, by interface name.
    pub fn imports(&self, component: &Component) -> Vec<String> {
        component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

/// The first bytes of a component (as opposed to a core module or anything else).
fn check_header(wasm: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
    if !wasm.starts_with(MAGIC) {
        return Err("not a WebAssembly file (it does not start with \\0asm)".into());
    }
    if wasm.get(4..8) == Some(CORE_VERSION) {
        return Err(
            "a core WebAssembly module, not a component: build it for wasm32-wasip2 against the edgeship-module SDK (edge-modules/sdk)"
                .into(),
        );
    }
    Ok(())
}

/// Compiles and checks a module as an agent would load it: the hub's registration check.
pub fn inspect(wasm: &[u8]) -> Result<ModuleSummary, String> {
    let engine = ModuleEngine::shared()?;
    let component = engine.compile(wasm)?;
    engine.prepare(&component)?;
    let imports = engine.imports(&component);
    let prefix = "edgeship:entry/host@";
    let interface = imports
        .iter()
        .find_map(|name| name.strip_prefix(prefix))
        .unwrap_or(INTERFACE_VERSION)
        .to_owned();
    Ok(ModuleSummary { interface, imports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_component_is_named() {
        let err = inspect(b"hello").expect_err("text");
        assert!(err.contains("not a WebAssembly file"), "{err}");
        let core = b"\0asm\x01\0\0\0";
        let err = inspect(core).expect_err("core module");
        assert!(
            err.contains("core WebAssembly module, not a component"),
            "{err}"
        );
        let broken = b"\0asm\x0d\0\x01\0\xff\xff";
        let err = inspect(broken).expect_err("broken component");
        assert!(err.contains("does not compile"), "{err}");
    }
}
