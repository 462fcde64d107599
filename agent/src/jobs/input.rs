//! Reading a job's input one record at a time: JSON lines (one record per non-empty line) or a
//! NumPy `.npy` array (one record per entry of its first axis). A source can be positioned at
//! any record it reported before, so a job resumes where its last saved mini-batch ended.
//!
//! A record that does not fit the model is that record's error; a file that cannot be read
//! as its format at all fails the job.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use edgeship_domain::{Dim, ElementType, InputFormat, TensorSpec};
use edgeship_runtime::npy;
use edgeship_runtime::tensor::{Tensor, TensorData};
use serde_json::Value;

use crate::serve::json::tensor_from_json;

/// One record: its index in the input, and its inputs (each with a leading axis of 1), or why
/// it cannot be scored.
pub type Record = (u64, Result<Vec<Tensor>, String>);

/// Where a source stands: the next record's index and its byte offset in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub record: u64,
    pub byte: u64,
}

/// A job's input, read forward from a position.
#[derive(Debug)]
pub enum Source {
    JsonLines(JsonLines),
    Npy(Npy),
}

impl Source {
    /// Opens `path` as `format` for a model with these inputs, at `from` (the start: default).
    pub fn open(
        path: &Path,
        format: InputFormat,
        inputs: &[TensorSpec],
        from: Position,
    ) -> Result<Source, String> {
        let rows = inputs.iter().map(row_spec).collect::<Result<Vec<_>, _>>()?;
        let file = File::open(path).map_err(|e| format!("opening the input: {e}"))?;
        match format {
            InputFormat::JsonLines => JsonLines::open(file, rows, from).map(Source::JsonLines),
            InputFormat::Npy => Npy::open(file, rows, from).map(Source::Npy),
        }
    }

    /// Records in the whole input.
    pub fn total(&self) -> u64 {
        match self {
            Source::JsonLines(s) => s.total,
            Source::Npy(s) => s.count,
        }
    }

    /// The position after the last record read.
    pub fn position(&self) -> Position {
        match self {
            Source::JsonLines(s) => s.position,
            Source::Npy(s) => Position {
                record: s.next,
                byte: s.data_start + s.next * s.row_bytes,
            },
        }
    }

    /// Up to `n` more records; empty at the end.
    pub fn next_records(&mut self, n: usize) -> Result<Vec<Record>, String> {
        match self {
            Source::JsonLines(s) => s.next_records(n),
            Source::Npy(s) => s.next_records(n),
        }
    }
}

/// An input's spec without its batch axis: what one record holds. A model whose first axis is
/// fixed at more than one cannot take records one by one.
fn row_spec(spec: &TensorSpec) -> Result<TensorSpec, String> {
    match spec.shape.first() {
        None => Err(format!(
            "input {:?} is a scalar: it has no batch axis to run records along",
            spec.name
        )),
        Some(Dim::Fixed(n)) if *n != 1 => Err(format!(
            "input {:?} ({spec}) has a fixed first axis of {n}: records need a batch axis of 1 or any size",
            spec.name
        )),
        Some(_) => Ok(TensorSpec {
            shape: spec.shape[1..].to_vec(),
            ..spec.clone()
        }),
    }
}

fn with_batch_axis(mut tensor: Tensor) -> Tensor {
    tensor.shape.insert(0, 1);
    tensor
}

#[derive(Debug)]
pub struct JsonLines {
    reader: BufReader<File>,
    rows: Vec<TensorSpec>,
    position: Position,
    total: u64,
    line: String,
}

impl JsonLines {
    fn open(file: File, rows: Vec<TensorSpec>, from: Position) -> Result<JsonLines, String> {
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let total = count_records(&mut reader)?;
        reader
            .seek(SeekFrom::Start(from.byte))
            .map_err(|e| format!("reading the input: {e}"))?;
        Ok(JsonLines {
            reader,
            rows,
            position: from,
            total,
            line: String::new(),
        })
    }

    fn next_records(&mut self, n: usize) -> Result<Vec<Record>, String> {
        let mut records = Vec::with_capacity(n);
        while records.len() < n {
            self.line.clear();
            let read = self.reader.read_line(&mut self.line).map_err(|e| {
                format!(
                    "reading the input near record {}: {e}",
                    self.position.record
                )
            })?;
            if read == 0 {
                break;
            }
            self.position.byte += read as u64;
            if !is_record(self.line.as_bytes()) {
                continue;
            }
            let index = self.position.record;
            self.position.record += 1;
            records.push((index, parse_record(&self.rows, &self.line)));
        }
        Ok(records)
    }
}

/// Whether a line holds a record: anything but spaces, tabs and line ends (the hub counts
/// records the same way).
fn is_record(line: &[u8]) -> bool {
    line.iter()
        .any(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Non-empty lines: the records a JSON-lines input holds (what the hub counted too).
fn count_records(reader: &mut BufReader<File>) -> Result<u64, String> {
    let mut count = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the input: {e}"))?;
        if read == 0 {
            return Ok(count);
        }
        if is_record(&line) {
            count += 1;
        }
    }
}

/// One JSON line: nested arrays for a model with one input (an object holding just that
/// input's name is taken too), an object keyed by input name for several.
fn parse_record(rows: &[TensorSpec], line: &str) -> Result<Vec<Tensor>, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("the line is not JSON: {e}"))?;
    if let [only] = rows {
        let value = match &value {
            Value::Object(map) if map.len() == 1 && map.contains_key(&only.name) => {
                &map[&only.name]
            }
            other => other,
        };
        let tensor = tensor_from_json(only, value).map_err(|e| e.0)?;
        return Ok(vec![with_batch_axis(tensor)]);
    }
    let Value::Object(by_name) = &value else {
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        return Err(format!(
            "this model has {} inputs; each line must be an object keyed by input name: {}",
            rows.len(),
            names.join(", ")
        ));
    };
    if let Some(unknown) = by_name.keys().find(|k| !rows.iter().any(|r| &r.name == *k)) {
        return Err(format!("the model has no input named {unknown:?}"));
    }
    rows.iter()
        .map(|row| match by_name.get(&row.name) {
            Some(value) => tensor_from_json(row, value)
                .map(with_batch_axis)
                .map_err(|e| e.0),
            None => Err(format!("input {:?} is missing", row.name)),
        })
        .collect()
}

#[derive(Debug)]
pub struct Npy {
    file: BufReader<File>,
    row: TensorSpec,
    row_shape: Vec<usize>,
    stored: ElementType,
    row_bytes: u64,
    data_start: u64,
    count: u64,
    next: u64,
}

impl Npy {
    fn open(file: File, rows: Vec<TensorSpec>, from: Position) -> Result<Npy, String> {
        let [row] = <[TensorSpec; 1]>::try_from(rows).map_err(|rows| {
            format!(
                "a .npy input holds one array, and this model has {} inputs: use JSON lines",
                rows.len()
            )
        })?;
        let length = file
            .metadata()
            .map_err(|e| format!("reading the input: {e}"))?
            .len();
        let mut file = BufReader::with_capacity(1 << 16, file);
        let mut head = Vec::new();
        (&mut file)
            .take((npy::MAX_HEADER_BYTES + 12) as u64)
            .read_to_end(&mut head)
            .map_err(|e| format!("reading the input: {e}"))?;
        let header =
            npy::parse(&head).map_err(|why| format!("the .npy input is unusable: {why}"))?;
        let (&count, row_shape) = header
            .shape
            .split_first()
            .ok_or("the .npy array is a scalar: its first axis must enumerate the records")?;
        let row_shape: Vec<usize> = row_shape.iter().map(|&d| d as usize).collect();
        crate::serve::json::check_shape(&row, &row_shape).map_err(|e| {
            format!("each record of the .npy array ({row_shape:?}) does not fit: {e}")
        })?;
        if header.element_type != row.element_type && cast_kind(&row.element_type).is_none() {
            return Err(format!(
                "the .npy array holds {} and input {:?} takes {}, which no cast reaches",
                header.element_type, row.name, row.element_type
            ));
        }
        let row_bytes = row_shape.iter().product::<usize>() as u64 * header.item_size;
        let data_start = header.data_offset;
        let needed = row_bytes
            .checked_mul(count)
            .and_then(|data| data.checked_add(data_start));
        if needed.is_none_or(|needed| needed > length) {
            return Err(format!(
                "the .npy file is truncated: its header promises {count} records of {row_bytes} bytes, and it holds {} bytes of data",
                length.saturating_sub(data_start)
            ));
        }
        let next = from.record.min(count);
        file.seek(SeekFrom::Start(data_start + next * row_bytes))
            .map_err(|e| format!("reading the input: {e}"))?;
        Ok(Npy {
            file,
            row,
            row_shape,
            stored: header.element_type,
            row_bytes,
            data_start,
            count,
            next,
        })
    }

    fn next_records(&mut self, n: usize) -> Result<Vec<Record>, String> {
        let take = (self.count - self.next).min(n as u64);
        let mut records = Vec::with_capacity(take as usize);
        let mut bytes = vec![0; self.row_bytes as usize];
        for _ in 0..take {
            self.file
                .read_exact(&mut bytes)
                .map_err(|e| format!("reading record {} of the input: {e}", self.next))?;
            let record = TensorData::from_le_bytes(&self.stored, &bytes)
                .and_then(|data| cast(data, &self.row.element_type))
                .map(|data| {
                    vec![with_batch_axis(Tensor {
                        shape: self.row_shape.clone(),
                        data,
                    })]
                });
            records.push((self.next, record));
            self.next += 1;
        }
        Ok(records)
    }
}

/// The numeric types a record can be cast to (NumPy's default float64 into a float32 model,
/// say); `None` for the rest.
fn cast_kind(to: &ElementType) -> Option<()> {
    matches!(
        to,
        ElementType::F16
            | ElementType::F32
            | ElementType::F64
            | ElementType::I32
            | ElementType::I64
    )
    .then_some(())
}

/// Converts a record's values to the model's type: floats by rounding to the nearest, integers
/// only from values that are whole and in range.
fn cast(data: TensorData, to: &ElementType) -> Result<TensorData, String> {
    if data.element_type() == *to {
        return Ok(data);
    }
    let values: Vec<f64> = match data {
        TensorData::Bool(v) => v.into_iter().map(|b| f64::from(u8::from(b))).collect(),
        TensorData::U8(v) => v.into_iter().map(f64::from).collect(),
        TensorData::U16(v) => v.into_iter().map(f64::from).collect(),
        TensorData::U32(v) => v.into_iter().map(f64::from).collect(),
        TensorData::U64(v) => v.into_iter().map(|x| x as f64).collect(),
        TensorData::I8(v) => v.into_iter().map(f64::from).collect(),
        TensorData::I16(v) => v.into_iter().map(f64::from).collect(),
        TensorData::I32(v) => v.into_iter().map(f64::from).collect(),
        TensorData::I64(v) => v.into_iter().map(|x| x as f64).collect(),
        TensorData::F16(v) => v.into_iter().map(f64::from).collect(),
        TensorData::F32(v) => v.into_iter().map(f64::from).collect(),
        TensorData::F64(v) => v,
        TensorData::String(_) => return Err("strings cannot be cast to numbers".into()),
    };
    let whole = |x: f64, max: f64| -> Result<f64, String> {
        if x.fract() != 0.0 || x.abs() > max || !x.is_finite() {
            Err(format!("{x} does not fit {to}"))
        } else {
            Ok(x)
        }
    };
    Ok(match to {
        ElementType::F16 => TensorData::F16(
            values
                .into_iter()
                .map(edgeship_runtime::tensor::f16::from_f64)
                .collect(),
        ),
        ElementType::F32 => TensorData::F32(values.into_iter().map(|x| x as f32).collect()),
        ElementType::F64 => TensorData::F64(values),
        ElementType::I32 => TensorData::I32(
            values
                .into_iter()
                .map(|x| whole(x, f64::from(i32::MAX)).map(|x| x as i32))
                .collect::<Result<_, _>>()?,
        ),
        ElementType::I64 => TensorData::I64(
            values
                .into_iter()
                .map(|x| whole(x, 9.007_199_254_740_992e15).map(|x| x as i64))
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(format!("records cannot be cast to {other}")),
    })
}

#[cfg(test)]
mod tests;
