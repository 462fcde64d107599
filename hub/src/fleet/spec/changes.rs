//! The change list `deploy apply` prints: the manifests of the old and the new spec compared
//! field by field, one line per changed field (`endpoint.port: 8080 → 8081`).

use std::collections::BTreeSet;

use super::DeploymentSpec;

impl DeploymentSpec {
    /// What applying `self` over `old` changes, one line per field: `path: old → new`.
    pub fn changes_from(&self, old: &DeploymentSpec) -> Vec<String> {
        let old = serde_json::to_value(old.to_manifest()).unwrap_or_default();
        let new = serde_json::to_value(self.to_manifest()).unwrap_or_default();
        let mut changes = Vec::new();
        diff_values("", &old, &new, &mut changes);
        changes
    }
}

fn diff_values(
    path: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                diff_values(
                    &child,
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {} → {}", compact(a), compact(b))),
        _ => {}
    }
}

fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "(none)".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
