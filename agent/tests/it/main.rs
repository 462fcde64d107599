//! The agent's integration tests, in one binary: `cli` runs the real `edgeship-agent`
//! binary; `split` serves real models through traffic splits, in-process; `entry` serves them
//! through WASM entry modules built from `edge-modules/`; `profile` checks profiles against wrk.

mod cli;
#[cfg(feature = "wasm")]
mod entry;
mod profile;
mod split;
