//! Renderings of the CLI's views: aligned tables and fields for people, pretty JSON for
//! scripts (the JSON shape is the views' serde form, documented in `docs/cli-json.md`).

use std::fmt::Write;

use serde::Serialize;

use super::OutputFormat;
use super::view::{DeploymentView, DeviceView, ModelFileView, ModelView, ModuleView, TargetView};
use crate::registry::{image, module};

/// Pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) {
    // The views hold only strings, numbers, maps and lists: serializing them cannot fail.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `value` as `-o json` prints it, or as its table.
pub fn emit<T: Serialize + ?Sized>(format: OutputFormat, value: &T, table: impl Fn(&T) -> String) {
    match format {
        OutputFormat::Json => print_json(value),
        OutputFormat::Table => print!("{}", table(value)),
    }
}

/// Bytes in binary units, the way `ls -h` users read them.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// UTC time as RFC 3339 (the hub stores profile times so too).
pub use crate::rfc3339;

/// `k=v` pairs sorted by key and joined with commas (tags, properties, labels).
pub fn pairs<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut pairs: Vec<String> = map.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Appends `name: value`, the value aligned at `width`, without trailing blanks.
pub fn field(out: &mut String, width: usize, name: &str, value: &str) {
    let line = format!("{:<width$}{value}", format!("{name}:"));
    let _ = writeln!(out, "{}", line.trim_end());
}

/// Aligned columns, the last one unpadded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// `deleted diabetes version 2`, `deleted diabetes versions 1, 2`.
pub fn deleted(id: &str, versions: &[u32]) -> String {
    let numbers: Vec<String> = versions.iter().map(u32::to_string).collect();
    let noun = if numbers.len() == 1 {
        "version"
    } else {
        "versions"
    };
    format!("deleted {id} {noun} {}", numbers.join(", "))
}

/// `1 file` / `4 files`.
pub fn files_count(count: usize) -> String {
    format!("{count} {}", if count == 1 { "file" } else { "files" })
}

/// Aligned columns: NAME VERSION FRAMEWORK FILES SIZE CREATED TAGS.
pub fn model_table(models: &[ModelView]) -> String {
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.model_id.clone(),
                m.version.to_string(),
                m.framework.clone(),
                m.files.len().to_string(),
                size(m.total_size_bytes),
                m.create_time.clone(),
                pairs(&m.tags),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "VERSION",
            "FRAMEWORK",
            "FILES",
            "SIZE",
            "CREATED",
            "TAGS",
        ],
        &rows,
    )
}

/// Everything about one version, including each ONNX file's signature.
pub fn model_details(model: &ModelView) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| field(&mut out, 13, name, value);
    field("model", &format!("{}:{}", model.model_id, model.version));
    field("resource", &model.name);
    field("description", &model.description);
    let framework = format!("{} {}", model.framework, model.framework_version);
    field("framework", framework.trim());
    field("created", &model.create_time);
    field("updated", &model.update_time);
    field("tags", &pairs(&model.tags));
    field("properties", &pairs(&model.properties));
    // An image artifact: what registration read from its archive.
    if let (Some(id), Some(reference)) = (
        model.properties.get(image::ID_PROPERTY),
        model.properties.get(image::REFERENCE_PROPERTY),
    ) {
        field("image", &format!("{reference} ({id})"));
    }
    field("size", &size(model.total_size_bytes));
    let sample = |s: &Option<serde_json::Value>| if s.is_some() { "yes" } else { "no" };
    field("sample in", sample(&model.sample_input));
    field("sample out", sample(&model.sample_output));
    for key in &model.signed_by {
        field("signed by", key);
    }
    let _ = writeln!(out, "files:");
    for file in &model.files {
        file_line(&mut out, file);
        if let Some(onnx) = &file.onnx {
            for input in &onnx.inputs {
                let _ = writeln!(out, "    input   {input}");
            }
            for output in &onnx.outputs {
                let _ = writeln!(out, "    output  {output}");
            }
            let _ = writeln!(out, "    opsets  {}", onnx.opsets.join(", "));
            let tract = match &onnx.tract_incompatibility {
                None => "runs in tract".to_owned(),
                Some(why) => format!("tract cannot run it: {why}"),
            };
            let _ = writeln!(out, "    runtime {tract}");
            for placement in &onnx.placements {
                let _ = writeln!(
                    out,
                    "    {:<7} {}",
                    placement.runtime,
                    placement_text(placement)
                );
            }
        }
    }
    out
}

/// `  model.onnx  284 B  sha256:…`, under `files:`.
fn file_line(out: &mut String, file: &ModelFileView) {
    let _ = writeln!(
        out,
        "  {}  {}  sha256:{}",
        file.path,
        size(file.size_bytes),
        file.sha256
    );
}

/// Aligned columns: NAME VERSION INTERFACE SIZE CREATED TAGS.
pub fn module_table(modules: &[ModuleView]) -> String {
    let rows: Vec<Vec<String>> = modules
        .iter()
        .map(|m| {
            vec![
                m.module_id.clone(),
                m.version.to_string(),
                m.interface.clone(),
                size(m.total_size_bytes),
                m.create_time.clone(),
                pairs(&m.tags),
            ]
        })
        .collect();
    table(
        &["NAME", "VERSION", "INTERFACE", "SIZE", "CREATED", "TAGS"],
        &rows,
    )
}

/// Everything about one module version, with what registration learned of its component
/// (the properties the hub recorded have lines of their own).
pub fn module_details(module: &ModuleView) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| field(&mut out, 13, name, value);
    field(
        "module",
        &format!("{}:{}", module.module_id, module.version),
    );
    field("resource", &module.name);
    field("description", &module.description);
    field("interface", &module.interface);
    field("imports", &module.imports.join(", "));
    field("created", &module.create_time);
    field("updated", &module.update_time);
    field("tags", &pairs(&module.tags));
    let own = module
        .properties
        .iter()
        .filter(|(key, _)| !module::RESERVED_PROPERTIES.contains(&key.as_str()));
    field("properties", &pairs(own));
    field("size", &size(module.total_size_bytes));
    let _ = writeln!(out, "files:");
    for file in &module.files {
        file_line(&mut out, file);
    }
    out
}

/// `on the device: Conv 9, EinSum 23; in tract: Cast 1 (why); 1 copy per run`.
fn placement_text(placement: &edgeship_domain::RuntimePlacement) -> String {
    if let Some(why) = &placement.incompatibility {
        return format!("cannot plan it: {why}");
    }
    let device: Vec<String> = placement
        .operators
        .iter()
        .filter(|o| o.on_device > 0)
        .map(|o| format!("{} {}", o.operator, o.on_device))
        .collect();
    let cpu: Vec<String> = placement
        .operators
        .iter()
        .filter(|o| o.on_cpu > 0)
        .map(|o| format!("{} {} ({})", o.operator, o.on_cpu, o.cpu_reason))
        .collect();
    let mut parts = vec![format!(
        "on the device: {}",
        if device.is_empty() {
            "nothing".to_owned()
        } else {
            device.join(", ")
        }
    )];
    if !cpu.is_empty() {
        parts.push(format!("in tract on the CPU: {}", cpu.join(", ")));
    }
    parts.push(format!(
        "{} cop{} between them per run",
        placement.transfers,
        if placement.transfers == 1 { "y" } else { "ies" }
    ));
    parts.join("; ")
}

/// `devices a,b; labels k=v`: whom a deployment targets.
fn target_text(target: &TargetView) -> String {
    let mut parts = Vec::new();
    if !target.device_ids.is_empty() {
        parts.push(format!("devices {}", target.device_ids.join(",")));
    }
    match &target.selector {
        Some(selector) => parts.push(format!("selector {selector}")),
        None if !target.label_selector.is_empty() => {
            parts.push(format!("labels {}", pairs(&target.label_selector)));
        }
        None => {}
    }
    parts.join("; ")
}

/// A table indented under a `name:` line of a details view.
fn nested_table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    for line in table(header, rows).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

/// One deployment and the state of each device it targets.
pub fn deployment_details(d: &DeploymentView) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| field(&mut out, 12, name, &value);
    field("deployment", d.deployment_id.clone());
    if d.runtime == "container" {
        // Its pinned versions are in the rollout's revision; an image may pin none.
        field("container", d.model.clone());
    } else {
        let resolved = match d.resolved_version {
            None => "model missing".to_owned(),
            Some(version) => format!("resolves to version {version}"),
        };
        field("model", format!("{} ({resolved})", d.model));
        if let Some(entry) = &d.entry_module {
            let resolved = match d.resolved_entry_module_version {
                None => "module missing".to_owned(),
                Some(version) => format!("resolves to version {version}"),
            };
            field("module", format!("{entry} ({resolved})"));
        }
        field("runtime", d.runtime.clone());
    }
    field(
        "endpoint",
        match d.endpoint.grpc_port {
            0 => format!("port {}, auth {}", d.endpoint.port, d.endpoint.auth),
            grpc => format!(
                "port {} (gRPC {grpc}), auth {}, {}",
                d.endpoint.port,
                d.endpoint.auth,
                d.endpoint.protocols.join(" + ")
            ),
        },
    );
    field("target", target_text(&d.target));
    if d.priority != 0 {
        field("priority", d.priority.to_string());
    }
    field("state", d.state.to_owned());
    if let Some(rollout) = &d.rollout {
        field(
            "rollout",
            format!(
                "revision {} {}: {} of {} moved, {} healthy, {} failed",
                rollout.revision,
                rollout.phase,
                rollout.moved,
                rollout.devices,
                rollout.healthy,
                rollout.failed
            ),
        );
    }
    field("created", d.create_time.clone());
    out.push_str("devices:\n");
    let rows: Vec<Vec<String>> = d
        .devices
        .iter()
        .map(|w| {
            vec![
                w.device_id.clone(),
                if w.online { "yes" } else { "no" }.into(),
                w.state.into(),
                w.serving_model.clone().unwrap_or_default(),
                w.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    nested_table(
        &mut out,
        &["DEVICE", "ONLINE", "STATE", "SERVING", "ERROR"],
        &rows,
    );
    out
}

/// Aligned columns: NAME MODEL PORT STATE HEALTHY TARGET.
pub fn deployment_table(deployments: &[DeploymentView]) -> String {
    let rows: Vec<Vec<String>> = deployments
        .iter()
        .map(|d| {
            let healthy = d.devices.iter().filter(|w| w.state == "Healthy").count();
            vec![
                d.deployment_id.clone(),
                d.model.clone(),
                d.endpoint.port.to_string(),
                d.state.into(),
                format!("{healthy}/{}", d.devices.len()),
                target_text(&d.target),
            ]
        })
        .collect();
    table(
        &["NAME", "MODEL", "PORT", "STATE", "HEALTHY", "TARGET"],
        &rows,
    )
}

/// One device: what it is, and what it runs.
pub fn device_details(d: &DeviceView) -> String {
    let caps = &d.capabilities;
    let mut out = String::new();
    let mut field = |name: &str, value: String| field(&mut out, 12, name, &value);
    field("device", d.device_id.clone());
    field("online", d.online_text().into());
    field(
        "last seen",
        d.last_seen.clone().unwrap_or_else(|| "never".into()),
    );
    field("labels", pairs(&d.labels));
    field("agent", d.agent_version.clone());
    field(
        "hardware",
        format!(
            "{} {}, {} CPUs, {} MiB",
            caps.os,
            caps.arch,
            caps.cpu_count,
            caps.memory_bytes >> 20
        ),
    );
    field("runtimes", caps.runtimes.join(","));
    if let Some(engine) = &caps.container_engine {
        field("containers", engine.clone());
    }
    for (n, cl) in caps.opencl_devices.iter().enumerate() {
        field(
            &format!("opencl {n}"),
            format!(
                "{} ({}, {}): {}, {} compute units, {} MiB, {}{}, driver {}",
                cl.name,
                cl.kind,
                cl.vendor,
                cl.platform,
                cl.compute_units,
                cl.global_memory_bytes >> 20,
                cl.opencl_c_version,
                if cl.fp16 { ", fp16" } else { "" },
                cl.driver_version
            ),
        );
    }
    field(
        "generation",
        format!(
            "desired {}, applied {}",
            d.desired_generation, d.applied_generation
        ),
    );
    out.push_str("workloads:\n");
    let rows: Vec<Vec<String>> = d
        .workloads
        .iter()
        .map(|w| {
            vec![
                w.deployment.clone(),
                w.state.into(),
                w.serving_model.clone().unwrap_or_default(),
                w.port.to_string(),
                w.requests.to_string(),
                w.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    nested_table(
        &mut out,
        &[
            "DEPLOYMENT",
            "STATE",
            "SERVING",
            "PORT",
            "REQUESTS",
            "ERROR",
        ],
        &rows,
    );
    out
}

/// Aligned columns: DEVICE ONLINE WORKLOADS GENERATION LABELS.
pub fn device_table(devices: &[DeviceView]) -> String {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.device_id.clone(),
                d.online_text().into(),
                d.workloads.len().to_string(),
                format!("{}/{}", d.applied_generation, d.desired_generation),
                pairs(&d.labels),
            ]
        })
        .collect();
    table(
        &["DEVICE", "ONLINE", "WORKLOADS", "GENERATION", "LABELS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_636_800_123), "2026-11-25T20:00:00Z");
    }

    #[test]
    fn container_details_show_the_image_the_engine_and_the_container() {
        use edgeship_proto::v1 as pb;
        let model = ModelView::from(pb::Model {
            model_id: "scorer-image".into(),
            version: 1,
            framework: "oci-image".into(),
            properties: [
                ("image.id".to_owned(), "sha256:ab".to_owned()),
                ("image.reference".to_owned(), "scorer:1".to_owned()),
            ]
            .into(),
            ..Default::default()
        });
        let details = model_details(&model);
        assert!(
            details.contains("\nimage:       scorer:1 (sha256:ab)\n"),
            "{details}"
        );
        let device = DeviceView::from(pb::Device {
            device_id: "edge".into(),
            capabilities: Some(pb::Capabilities {
                container_engine: "docker 28.2.2".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(device_details(&device).contains("\ncontainers: docker 28.2.2\n"));
        let deployment = DeploymentView::from(pb::Deployment {
            deployment_id: "scorer".into(),
            model: "scorer-image:latest, diabetes:1".into(),
            runtime: "container".into(),
            ..Default::default()
        });
        let details = deployment_details(&deployment);
        assert!(
            details.contains("\ncontainer:  scorer-image:latest, diabetes:1\n"),
            "{details}"
        );
        assert!(!details.contains("model missing"), "{details}");
    }

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(284), "284 B");
        assert_eq!(size(10_697), "10.4 KiB");
        assert_eq!(size(100 * 1024 * 1024), "100.0 MiB");
    }
}
