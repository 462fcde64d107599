//! A registered model's per-runtime operator placement (registry messages), both ways: the
//! hub's API writes it, the CLI reads it back.

use edgeship_proto::v1 as pb;

use crate::signature::{OperatorPlacement, RuntimePlacement};

impl From<&RuntimePlacement> for pb::RuntimePlacement {
    fn from(p: &RuntimePlacement) -> Self {
        pb::RuntimePlacement {
            runtime: p.runtime.clone(),
            operators: p
                .operators
                .iter()
                .map(|o| pb::OperatorPlacement {
                    operator: o.operator.clone(),
                    on_device: o.on_device,
                    on_cpu: o.on_cpu,
                    cpu_reason: o.cpu_reason.clone(),
                })
                .collect(),
            transfers: p.transfers,
            incompatibility: p.incompatibility.clone().unwrap_or_default(),
        }
    }
}

impl From<pb::RuntimePlacement> for RuntimePlacement {
    fn from(p: pb::RuntimePlacement) -> Self {
        RuntimePlacement {
            runtime: p.runtime,
            operators: p
                .operators
                .into_iter()
                .map(|o| OperatorPlacement {
                    operator: o.operator,
                    on_device: o.on_device,
                    on_cpu: o.on_cpu,
                    cpu_reason: o.cpu_reason,
                })
                .collect(),
            transfers: p.transfers,
            incompatibility: (!p.incompatibility.is_empty()).then_some(p.incompatibility),
        }
    }
}
