//! System tests: real `edgeship` and `edgeship-agent` processes, a real broker, and faults
//! (kill -9, a stopped broker, a restarted hub, corrupted bytes on the wire).

mod batching;
mod containers;
mod engine;
mod entry;
mod faults;
mod fleet;
mod jobs;
mod oip;
mod opencl;
mod package;
mod proxy;
mod rollouts;
mod rollouts_real;
mod security;
mod standalone;
mod support;
mod trials;
