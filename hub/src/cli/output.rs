//! Human (table) and machine (JSON) renderings of registry objects for the CLI.

use std::fmt::Write;

use crate::registry::ModelVersion;

pub fn print_json(value: &serde_json::Value) {
    // Serializing a `Value` cannot fail.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// JSON view of a version: the stored record plus its resource name, size and RFC 3339 times.
pub fn model_json(model: &ModelVersion) -> serde_json::Value {
    let mut value = serde_json::to_value(model).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.remove("create_time_ms");
        object.remove("update_time_ms");
        object.insert("name".into(), model.resource_name().into());
        object.insert("total_size_bytes".into(), model.total_size_bytes().into());
        object.insert("create_time".into(), rfc3339(model.create_time_ms).into());
        object.insert("update_time".into(), rfc3339(model.update_time_ms).into());
        // Samples were checked to be JSON at registration: show them as JSON, not strings.
        for key in ["sample_input", "sample_output"] {
            if let Some(serde_json::Value::String(text)) = object.get(key)
                && let Ok(parsed) = serde_json::from_str::<serde_json::Value>(text)
            {
                object.insert(key.into(), parsed);
            }
        }
    }
    value
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

/// UTC time as RFC 3339 with second precision, e.g. `2026-11-25T20:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

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

/// Aligned columns: NAME VERSION FRAMEWORK FILES SIZE CREATED TAGS.
pub fn model_table(models: &[ModelVersion]) -> String {
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                m.model_id.clone(),
                m.version.to_string(),
                m.framework.clone(),
                m.files.len().to_string(),
                size(m.total_size_bytes()),
                rfc3339(m.create_time_ms),
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
pub fn model_details(model: &ModelVersion) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| field(&mut out, 13, name, value);
    field("model", &format!("{}:{}", model.model_id, model.version));
    field("resource", &model.resource_name());
    field("description", &model.description);
    let framework = format!("{} {}", model.framework, model.framework_version);
    field("framework", framework.trim());
    field("created", &rfc3339(model.create_time_ms));
    field("updated", &rfc3339(model.update_time_ms));
    field("tags", &pairs(&model.tags));
    field("properties", &pairs(&model.properties));
    field("size", &size(model.total_size_bytes()));
    let sample = |s: &Option<String>| if s.is_some() { "yes" } else { "no" };
    field("sample in", sample(&model.sample_input));
    field("sample out", sample(&model.sample_output));
    let _ = writeln!(out, "files:");
    for file in &model.files {
        let _ = writeln!(
            out,
            "  {}  {}  sha256:{}",
            file.path,
            size(file.size_bytes),
            file.sha256
        );
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
        }
    }
    out
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
    fn sizes_use_binary_units() {
        assert_eq!(size(284), "284 B");
        assert_eq!(size(10_697), "10.4 KiB");
        assert_eq!(size(100 * 1024 * 1024), "100.0 MiB");
    }
}
