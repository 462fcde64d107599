//! Runtime-neutral tensors and the JSON conversions of the scoring API: nested JSON arrays in
//! (checked against the model's declared inputs), nested JSON arrays out.

use std::fmt;

use serde_json::Value;

/// A declared dimension of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// Any size (a named symbol like `batch`, or unnamed).
    Any(Option<String>),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(size) => write!(f, "{size}"),
            Dim::Any(Some(symbol)) => f.write_str(symbol),
            Dim::Any(None) => f.write_str("?"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F32,
    F64,
    I32,
    I64,
    Bool,
}

impl ElementType {
    /// Parses the ONNX-style names the registry records (`float32`, `int64`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "float32" => ElementType::F32,
            "float64" => ElementType::F64,
            "int32" => ElementType::I32,
            "int64" => ElementType::I64,
            "bool" => ElementType::Bool,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ElementType::F32 => "float32",
            ElementType::F64 => "float64",
            ElementType::I32 => "int32",
            ElementType::I64 => "int64",
            ElementType::Bool => "bool",
        }
    }
}

/// Name, element type and shape of a model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub element_type: ElementType,
    pub shape: Vec<Dim>,
}

impl fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        write!(
            f,
            "{}: {}[{}]",
            self.name,
            self.element_type.name(),
            dims.join(", ")
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// A dense, row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// A tensor of zeros for an input, with `Any` dimensions set to 1 (the self-test input of
    /// a model registered without a sample).
    pub fn zeros(info: &TensorInfo) -> Tensor {
        let shape: Vec<usize> = info
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(size) => *size,
                Dim::Any(_) => 1,
            })
            .collect();
        let len = shape.iter().product();
        let data = match info.element_type {
            ElementType::F32 => TensorData::F32(vec![0.0; len]),
            ElementType::F64 => TensorData::F64(vec![0.0; len]),
            ElementType::I32 => TensorData::I32(vec![0; len]),
            ElementType::I64 => TensorData::I64(vec![0; len]),
            ElementType::Bool => TensorData::Bool(vec![false; len]),
        };
        Tensor { shape, data }
    }

    /// Nested JSON arrays in the tensor's shape (a scalar for rank 0). Non-finite floats,
    /// which JSON cannot carry, become `null`.
    pub fn to_json(&self) -> Value {
        let flat: Vec<Value> = match &self.data {
            TensorData::F32(v) => v.iter().map(|x| float_json(f64::from(*x))).collect(),
            TensorData::F64(v) => v.iter().map(|x| float_json(*x)).collect(),
            TensorData::I32(v) => v.iter().map(|x| Value::from(*x)).collect(),
            TensorData::I64(v) => v.iter().map(|x| Value::from(*x)).collect(),
            TensorData::Bool(v) => v.iter().map(|x| Value::from(*x)).collect(),
        };
        nest(&flat, &self.shape)
    }
}

fn float_json(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn nest(flat: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => flat.first().cloned().unwrap_or(Value::Null),
        Some((&len, rest)) => {
            let stride: usize = rest.iter().product();
            Value::Array(
                (0..len)
                    .map(|i| nest(&flat[i * stride..(i + 1) * stride], rest))
                    .collect(),
            )
        }
    }
}

/// Why a request body does not fit the model's inputs; the message goes to the caller as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Reads one input from nested JSON arrays, checking rank, fixed dimensions and element type.
pub fn tensor_from_json(info: &TensorInfo, value: &Value) -> Result<Tensor, InputError> {
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let fail = |why: String| InputError(format!("input {:?} ({info}): {why}", info.name));
    if shape.len() != info.shape.len() {
        return Err(fail(format!(
            "expected {} nested array levels, got {}",
            info.shape.len(),
            shape.len()
        )));
    }
    for (axis, (got, declared)) in shape.iter().zip(&info.shape).enumerate() {
        if let Dim::Fixed(want) = declared
            && got != want
        {
            return Err(fail(format!("dimension {axis} must be {want}, got {got}")));
        }
    }
    let mut flat = Vec::with_capacity(shape.iter().product());
    flatten(value, &shape, &mut flat).map_err(|path| {
        fail(format!(
            "the array at data{path} is not rectangular; every row must have the same length"
        ))
    })?;
    let bad = |index: usize, what: &str| {
        fail(format!(
            "element {index} is {}, expected {what}",
            describe(flat[index])
        ))
    };
    let data = match info.element_type {
        ElementType::F32 | ElementType::F64 => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                out.push(v.as_f64().ok_or_else(|| bad(i, "a number"))?);
            }
            if info.element_type == ElementType::F32 {
                TensorData::F32(out.into_iter().map(|x| x as f32).collect())
            } else {
                TensorData::F64(out)
            }
        }
        ElementType::I32 => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                let x = v
                    .as_i64()
                    .and_then(|x| i32::try_from(x).ok())
                    .ok_or_else(|| bad(i, "a 32-bit integer"))?;
                out.push(x);
            }
            TensorData::I32(out)
        }
        ElementType::I64 => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                out.push(v.as_i64().ok_or_else(|| bad(i, "an integer"))?);
            }
            TensorData::I64(out)
        }
        ElementType::Bool => {
            let mut out = Vec::with_capacity(flat.len());
            for (i, v) in flat.iter().enumerate() {
                out.push(v.as_bool().ok_or_else(|| bad(i, "true or false"))?);
            }
            TensorData::Bool(out)
        }
    };
    Ok(Tensor { shape, data })
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Collects leaves in row-major order; on a ragged array returns the index path of the
/// culprit, e.g. `[1]` for the second row.
fn flatten<'a>(value: &'a Value, shape: &[usize], out: &mut Vec<&'a Value>) -> Result<(), String> {
    match (shape.split_first(), value) {
        (None, Value::Array(_)) => Err(String::new()),
        (None, leaf) => {
            out.push(leaf);
            Ok(())
        }
        (Some((&len, rest)), Value::Array(items)) if items.len() == len => {
            for (i, item) in items.iter().enumerate() {
                flatten(item, rest, out).map_err(|path| format!("[{i}]{path}"))?;
            }
            Ok(())
        }
        (Some(_), _) => Err(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn features(n: usize) -> TensorInfo {
        TensorInfo {
            name: "data".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Any(None), Dim::Fixed(n)],
        }
    }

    #[test]
    fn a_batch_of_rows_becomes_a_2d_tensor_and_back() {
        let tensor =
            tensor_from_json(&features(3), &json!([[1, 2, 3.5], [4, 5, 6]])).expect("valid");
        assert_eq!(tensor.shape, [2, 3]);
        assert_eq!(tensor.to_json(), json!([[1.0, 2.0, 3.5], [4.0, 5.0, 6.0]]));
    }

    #[test]
    fn wrong_shapes_and_types_name_the_problem() {
        let err = |v: Value| tensor_from_json(&features(3), &v).expect_err("invalid").0;
        assert!(err(json!([[1, 2]])).contains("dimension 1 must be 3, got 2"));
        assert!(err(json!([1, 2, 3])).contains("expected 2 nested array levels, got 1"));
        assert!(err(json!([[1, 2, 3], [1, 2]])).contains("not rectangular"));
        assert!(
            err(json!([[1, "x", 3]])).contains("element 1 is the string \"x\", expected a number")
        );
        assert!(err(json!([[1, null, 3]])).contains("element 1 is null"));
    }

    #[test]
    fn integers_are_checked_for_integrality() {
        let info = TensorInfo {
            name: "ids".into(),
            element_type: ElementType::I64,
            shape: vec![Dim::Any(None)],
        };
        assert!(tensor_from_json(&info, &json!([1, 2])).is_ok());
        let err = tensor_from_json(&info, &json!([1.5]))
            .expect_err("fractional")
            .0;
        assert!(err.contains("expected an integer"), "{err}");
    }

    #[test]
    fn zeros_fill_unknown_dimensions_with_one() {
        let zeros = Tensor::zeros(&features(4));
        assert_eq!(zeros.shape, [1, 4]);
        assert_eq!(zeros.data, TensorData::F32(vec![0.0; 4]));
    }
}
