//! A module whose `init` panics, for the test that a version with a broken module fails and
//! the previous version keeps serving.

use edgeship_module::{EntryModule, Error, Request, Response};

#[derive(Debug)]
struct InitPanics;

impl EntryModule for InitPanics {
    fn init() -> Result<Self, String> {
        panic!("init cannot find its labels")
    }

    fn run(&mut self, _: &Request) -> Result<Response, Error> {
        Ok(Response::text(200, "unreachable"))
    }
}

edgeship_module::entry_module!(InitPanics);
