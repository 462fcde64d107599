//! The checks a job's input passes before the job exists, and the count of its records: what
//! a user is told up front rather than by a device minutes later. JSON lines must be UTF-8
//! and hold at least one non-blank line (each is a record; a record's own JSON is the
//! device's to judge, per record). An `.npy` array must have a header that parses, exactly
//! the data its header announces, and records (entries of its first axis) whose shape fits
//! the model's only input without its batch axis.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use edgeship_domain::{Dim, InputFormat, TensorSpec};

use super::JobError;
use edgeship_runtime::npy;

/// What the checks found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputCheck {
    pub records: u64,
}

/// Checks the staged input at `path` (`size` bytes) for a model (`model`, its `NAME:VERSION`)
/// with these inputs. Blocking: it reads the whole file for JSON lines.
pub fn check_input(
    path: &Path,
    size: u64,
    format: InputFormat,
    model: &str,
    inputs: &[TensorSpec],
) -> Result<InputCheck, JobError> {
    if inputs.is_empty() {
        return Err(JobError::InvalidArgument(format!(
            "model {model} has no inputs in its ONNX signature; a job needs a model that takes input"
        )));
    }
    let mut file = File::open(path).map_err(JobError::io("reading the staged input"))?;
    let records = match format {
        InputFormat::JsonLines => json_lines(&mut file)?,
        InputFormat::Npy => npy_records(&mut file, size, model, inputs)?,
    };
    Ok(InputCheck { records })
}

fn invalid(message: String) -> JobError {
    JobError::InvalidArgument(message)
}

/// Counts the non-blank lines, checking that the text is UTF-8 as it goes (a character may
/// straddle two reads).
fn json_lines(reader: &mut impl Read) -> Result<u64, JobError> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut carried = 0usize;
    let mut line = 1u64;
    let mut records = 0u64;
    let mut line_has_content = false;
    loop {
        let read = reader
            .read(&mut buffer[carried..])
            .map_err(JobError::io("reading the staged input"))?;
        let end = carried + read;
        if read == 0 {
            if carried > 0 {
                return Err(not_utf8(line));
            }
            break;
        }
        let valid = match std::str::from_utf8(&buffer[..end]) {
            Ok(_) => end,
            // Incomplete at the very end: the rest of the character comes with the next read.
            Err(err) if err.error_len().is_none() => err.valid_up_to(),
            Err(err) => {
                let before = &buffer[..err.valid_up_to()];
                let lines = before.iter().filter(|b| **b == b'\n').count() as u64;
                return Err(not_utf8(line + lines));
            }
        };
        for byte in &buffer[..valid] {
            match byte {
                b'\n' => {
                    records += u64::from(line_has_content);
                    line_has_content = false;
                    line += 1;
                }
                b' ' | b'\t' | b'\r' => {}
                _ => line_has_content = true,
            }
        }
        buffer.copy_within(valid..end, 0);
        carried = end - valid;
    }
    records += u64::from(line_has_content);
    if records == 0 {
        return Err(invalid(
            "the input holds no records: every line is blank (JSON lines need one JSON value per line)".into(),
        ));
    }
    Ok(records)
}

fn not_utf8(line: u64) -> JobError {
    invalid(format!(
        "the input is not valid UTF-8 (line {line}); JSON lines must be UTF-8 text"
    ))
}

fn npy_records(
    file: &mut File,
    size: u64,
    model: &str,
    inputs: &[TensorSpec],
) -> Result<u64, JobError> {
    let mut head = Vec::new();
    file.take((npy::MAX_HEADER_BYTES + 12) as u64)
        .read_to_end(&mut head)
        .map_err(JobError::io("reading the staged input"))?;
    let header =
        npy::parse(&head).map_err(|why| invalid(format!("the .npy input is unusable: {why}")))?;
    let expected = header
        .data_bytes()
        .and_then(|data| data.checked_add(header.data_offset));
    if expected != Some(size) {
        return Err(invalid(format!(
            "the .npy input is {size} bytes, but its header (shape {}, {} bytes per element) calls for {}",
            shape_text(&header.shape),
            header.item_size,
            expected.map_or("more than can exist".to_owned(), |e| format!("{e} bytes")),
        )));
    }
    let Some((&records, record_shape)) = header.shape.split_first() else {
        return Err(invalid(
            "the .npy input is a single value (shape ()); its first axis must list the records"
                .into(),
        ));
    };
    if records == 0 {
        return Err(invalid(format!(
            "the .npy input holds no records (shape {})",
            shape_text(&header.shape)
        )));
    }
    let [input] = inputs else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(invalid(format!(
            "an .npy input feeds a model with one input, but {model} has {} ({}); use JSON lines with an object per record keyed by input name",
            inputs.len(),
            names.join(", ")
        )));
    };
    let Some((_, per_record)) = input.shape.split_first() else {
        return Err(invalid(format!(
            "input {} of {model} is a scalar with no batch axis; an .npy input cannot feed it",
            input.name
        )));
    };
    let fits = per_record.len() == record_shape.len()
        && per_record
            .iter()
            .zip(record_shape)
            .all(|(dim, size)| !matches!(dim, Dim::Fixed(fixed) if fixed != size));
    if !fits {
        let wanted: Vec<String> = per_record.iter().map(Dim::to_string).collect();
        return Err(invalid(format!(
            "each record of the .npy input has shape {}, but input {} of {model} ({}) takes records of shape [{}]",
            shape_text(record_shape),
            input.name,
            input,
            wanted.join(", ")
        )));
    }
    Ok(records)
}

fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_count_non_blank_lines_across_reads() {
        // A reader that hands out three bytes at a time splits a multi-byte character.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let text = "[1, 2]\n\n  \r\n{\"x\": \"héllo\"}\r\n[3]";
        assert_eq!(json_lines(&mut Trickle(text.as_bytes())).expect("valid"), 3);
        let err = json_lines(&mut Trickle(b"[1]\n[2]\n\xff\n")).expect_err("not UTF-8");
        assert!(err.to_string().contains("line 3"), "{err}");
        let err = json_lines(&mut Trickle(b"[1]\n\xc3")).expect_err("cut character");
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        let err = json_lines(&mut Trickle(b"\n \n")).expect_err("blank");
        assert!(err.to_string().contains("no records"), "{err}");
    }
}
