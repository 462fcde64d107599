//! Answers to profile requests (`edgeship model profile`): one profile at a time, run in the
//! background against the deployment's own endpoint, so the driver goes on converging and
//! reporting meanwhile.

use std::sync::Arc;

use super::Agent;
use crate::link::ProfileRequest;

impl Agent {
    pub(super) fn run_profile(&self, request: ProfileRequest) {
        let sender = self.sender.clone();
        let addr = self.stage.addr(&request.deployment);
        let load_bytes = self.stage.load_bytes(&request.deployment).unwrap_or(0);
        let turn = Arc::clone(&self.profiling).try_acquire_owned();
        tokio::spawn(async move {
            let result = match (request.check(), addr, turn) {
                (Err(why), _, _) => Err(why),
                (Ok(()), None, _) => Err(format!(
                    "deployment {} does not serve on this device",
                    request.deployment
                )),
                (Ok(()), Some(_), Err(_)) => {
                    Err("a profile is running on this device already; ask again".into())
                }
                (Ok(()), Some(addr), Ok(_turn)) => {
                    tracing::info!(deployment = %request.deployment, levels = ?request.concurrency, "profiling");
                    crate::profile::run(addr, &request, load_bytes).await
                }
            };
            sender.send_profile(&request.request_id, result).await;
        });
    }
}
