//! Integration tests of the hub: the registry over real gRPC on 127.0.0.1:0 with sled and the
//! blob store in a temporary folder, and the `edgeship` binary against it.

mod bad_input;
mod broker_front;
mod cli;
mod containers;
mod e2e;
mod history;
mod https;
mod jobs;
mod model_signatures;
mod modules;
mod processes;
mod profiles;
mod protocol;
mod registry;
mod scoring;
mod signed_states;
mod support;
