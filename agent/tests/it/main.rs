//! The agent's integration tests, in one binary: `cli` runs the real `edgeship-agent`
//! binary; `split` serves real models through traffic splits, in-process; `entry` serves them
//! through WASM entry modules built from `edge-modules/`; `profile` checks profiles against wrk;
//! `jobs` runs batch jobs through a whole agent, stopped and resumed.

mod cli;
#[cfg(feature = "wasm")]
mod entry;
mod jobs;
mod profile;
mod split;
