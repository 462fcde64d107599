//! The agent's integration tests, in one binary: `cli` runs the real `edgeship-agent`
//! binary; `split` serves real models through traffic splits, in-process.

mod cli;
mod split;
