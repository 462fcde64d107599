//! Tensors as JSON, the way the Azure ML convention and the registry's sample inputs write
//! them: nested arrays checked against the model's declared inputs, nested arrays out.

use edgeship_domain::{Dim, ElementType, TensorSpec};
use edgeship_runtime::{Tensor, TensorData};
use serde_json::{Map, Value};

mod floats;
pub mod scan;
pub use floats::float_input;

/// Nested JSON arrays in the tensor's shape (a scalar for rank 0). Non-finite floats, which
/// JSON cannot carry, become `null`.
pub fn tensor_to_json(tensor: &Tensor) -> Value {
    nest(&values_to_json(&tensor.data), &tensor.shape)
}

/// The values as flat JSON scalars, in row-major order.
pub fn values_to_json(data: &TensorData) -> Vec<Value> {
    fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Value) -> Vec<Value> {
        v.iter().map(|x| f(*x)).collect()
    }
    match data {
        TensorData::Bool(v) => all(v, Value::from),
        TensorData::U8(v) => all(v, Value::from),
        TensorData::U16(v) => all(v, Value::from),
        TensorData::U32(v) => all(v, Value::from),
        TensorData::U64(v) => all(v, Value::from),
        TensorData::I8(v) => all(v, Value::from),
        TensorData::I16(v) => all(v, Value::from),
        TensorData::I32(v) => all(v, Value::from),
        TensorData::I64(v) => all(v, Value::from),
        TensorData::F16(v) => all(v, |x| float_json(f64::from(x))),
        TensorData::F32(v) => all(v, |x| float_json(f64::from(x))),
        TensorData::F64(v) => all(v, float_json),
        TensorData::String(v) => v.iter().map(|x| Value::from(x.as_str())).collect(),
    }
}

/// Reads flat JSON scalars as values of `element_type`. On a value that does not fit, the
/// error names its index, what it is and what was expected.
pub fn values_from_json(element_type: &ElementType, flat: &[&Value]) -> Result<TensorData, String> {
    fn all<T>(
        flat: &[&Value],
        what: &str,
        read: impl Fn(&Value) -> Option<T>,
    ) -> Result<Vec<T>, String> {
        flat.iter()
            .enumerate()
            .map(|(i, v)| {
                read(v).ok_or_else(|| format!("element {i} is {}, expected {what}", describe(v)))
            })
            .collect()
    }
    fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Option<T> {
        match v.as_i64() {
            Some(x) => T::try_from(x).ok(),
            None => v.as_u64().and_then(|x| T::try_from(x).ok()),
        }
    }
    let number = "a number";
    Ok(match element_type {
        ElementType::Bool => TensorData::Bool(all(flat, "true or false", Value::as_bool)?),
        ElementType::U8 => TensorData::U8(all(flat, "an integer in 0..=255", int)?),
        ElementType::U16 => TensorData::U16(all(flat, "an integer in 0..=65535", int)?),
        ElementType::U32 => TensorData::U32(all(flat, "a 32-bit unsigned integer", int)?),
        ElementType::U64 => TensorData::U64(all(flat, "a 64-bit unsigned integer", int)?),
        ElementType::I8 => TensorData::I8(all(flat, "an integer in -128..=127", int)?),
        ElementType::I16 => TensorData::I16(all(flat, "a 16-bit integer", int)?),
        ElementType::I32 => TensorData::I32(all(flat, "a 32-bit integer", int)?),
        ElementType::I64 => TensorData::I64(all(flat, "an integer", int)?),
        ElementType::F16 => TensorData::F16(all(flat, number, |v| {
            v.as_f64().map(edgeship_runtime::tensor::f16::from_f64)
        })?),
        ElementType::F32 => TensorData::F32(all(flat, number, |v| v.as_f64().map(|x| x as f32))?),
        ElementType::F64 => TensorData::F64(all(flat, number, Value::as_f64)?),
        ElementType::String => {
            TensorData::String(all(flat, "a string", |v| v.as_str().map(str::to_owned))?)
        }
        ElementType::Other(name) => {
            return Err(format!("element type {name} cannot be sent as JSON"));
        }
    })
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

/// Writes `tensor` as JSON text, as [`tensor_to_json`] renders it, without building a `Value`
/// tree first: every scoring response goes through here.
pub fn write_tensor(tensor: &Tensor, out: &mut Vec<u8>) {
    write_nested(&tensor.data, &tensor.shape, 0, out);
}

/// The values as one flat JSON array, as [`values_to_json`] renders them.
pub fn write_values(data: &TensorData, out: &mut Vec<u8>) {
    out.push(b'[');
    write_row(data, 0, data.len(), out);
    out.push(b']');
}

/// Writes outputs as [`outputs_to_json`] renders them: one as nested arrays, several as an
/// object keyed by name (in the model's order).
pub fn write_outputs(outputs: &[TensorSpec], tensors: &[Tensor], out: &mut Vec<u8>) {
    if let [only] = tensors {
        return write_tensor(only, out);
    }
    out.push(b'{');
    for (index, tensor) in tensors.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        match outputs.get(index) {
            Some(spec) => super::reply::write_json_str(&spec.name, out),
            None => super::reply::write_json_str(&format!("output_{index}"), out),
        }
        out.push(b':');
        write_tensor(tensor, out);
    }
    out.push(b'}');
}

/// The sub-array at `offset` of `shape`; rank 0 is the scalar itself.
fn write_nested(data: &TensorData, shape: &[usize], offset: usize, out: &mut Vec<u8>) {
    match shape {
        [] if offset < data.len() => write_row(data, offset, offset + 1, out),
        [] => out.extend_from_slice(b"null"),
        [len] => {
            out.push(b'[');
            write_row(
                data,
                offset,
                offset.saturating_add(*len).min(data.len()),
                out,
            );
            out.push(b']');
        }
        [len, rest @ ..] => {
            let stride: usize = rest.iter().product();
            out.push(b'[');
            for i in 0..*len {
                if i > 0 {
                    out.push(b',');
                }
                write_nested(data, rest, offset + i * stride, out);
            }
            out.push(b']');
        }
    }
}

/// Values `start..end`, comma-separated; a rank-0 tensor's one value bare. Numbers are
/// written as serde_json writes them (itoa, and zmij for floats; non-finite floats as `null`).
fn write_row(data: &TensorData, start: usize, end: usize, out: &mut Vec<u8>) {
    fn ints<T: itoa::Integer + Copy>(v: &[T], out: &mut Vec<u8>) {
        let mut buffer = itoa::Buffer::new();
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(buffer.format(*x).as_bytes());
        }
    }
    fn floats<T: Copy>(v: &[T], wide: impl Fn(T) -> f64, out: &mut Vec<u8>) {
        let mut buffer = zmij::Buffer::new();
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let x = wide(*x);
            if x.is_finite() {
                out.extend_from_slice(buffer.format_finite(x).as_bytes());
            } else {
                out.extend_from_slice(b"null");
            }
        }
    }
    let range = start..end.max(start);
    match data {
        TensorData::Bool(v) => {
            for (i, x) in v.get(range).unwrap_or_default().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(if *x { b"true" } else { b"false" });
            }
        }
        TensorData::U8(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::U16(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::U32(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::U64(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::I8(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::I16(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::I32(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::I64(v) => ints(v.get(range).unwrap_or_default(), out),
        TensorData::F16(v) => floats(v.get(range).unwrap_or_default(), f64::from, out),
        TensorData::F32(v) => floats(v.get(range).unwrap_or_default(), f64::from, out),
        TensorData::F64(v) => floats(v.get(range).unwrap_or_default(), |x| x, out),
        TensorData::String(v) => {
            for (i, x) in v.get(range).unwrap_or_default().iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                super::reply::write_json_str(x, out);
            }
        }
    }
}

/// Why a request body does not fit the model's inputs; the message goes to the caller as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Checks a tensor's shape against the declared one: the rank, and every fixed dimension.
pub fn check_shape(spec: &TensorSpec, shape: &[usize]) -> Result<(), InputError> {
    let fail = |why: String| InputError(format!("input {:?} ({spec}): {why}", spec.name));
    if shape.len() != spec.shape.len() {
        return Err(fail(format!(
            "expected {} dimensions, got shape {shape:?}",
            spec.shape.len()
        )));
    }
    for (axis, (got, declared)) in shape.iter().zip(&spec.shape).enumerate() {
        if let Dim::Fixed(want) = declared
            && *got as u64 != *want
        {
            return Err(fail(format!("dimension {axis} must be {want}, got {got}")));
        }
    }
    Ok(())
}

/// Reads one input from nested JSON arrays, checking rank, fixed dimensions and element type.
pub fn tensor_from_json(info: &TensorSpec, value: &Value) -> Result<Tensor, InputError> {
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
    check_shape(info, &shape)?;
    let mut flat = Vec::with_capacity(shape.iter().product());
    flatten(value, &shape, &mut flat).map_err(|path| {
        fail(format!(
            "the array at data{path} is not rectangular; every row must have the same length"
        ))
    })?;
    let data = values_from_json(&info.element_type, &flat).map_err(fail)?;
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

/// Reads a body in the Azure ML convention (also the registry's sample inputs), `{"data": …}`,
/// into the model's inputs in declaration order: nested arrays for a model with one input, an
/// object keyed by input name for several.
pub fn inputs_from_data(inputs: &[TensorSpec], body: &Value) -> Result<Vec<Tensor>, InputError> {
    let Some(data) = body.as_object().and_then(|o| o.get("data")) else {
        return Err(InputError(
            "the body must be a JSON object with a \"data\" field, e.g. {\"data\": [[...]]}".into(),
        ));
    };
    if let [only] = inputs {
        return Ok(vec![tensor_from_json(only, data)?]);
    }
    let Some(by_name) = data.as_object() else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(InputError(format!(
            "this model has {} inputs; send \"data\" as an object keyed by input name: {}",
            inputs.len(),
            names.join(", ")
        )));
    };
    if let Some(unknown) = by_name
        .keys()
        .find(|k| !inputs.iter().any(|i| &i.name == *k))
    {
        return Err(InputError(format!(
            "the model has no input named {unknown:?}"
        )));
    }
    inputs
        .iter()
        .map(|info| match by_name.get(&info.name) {
            Some(value) => tensor_from_json(info, value),
            None => Err(InputError(format!("input {:?} is missing", info.name))),
        })
        .collect()
}

/// Renders outputs: one output as nested arrays, several as an object keyed by name.
pub fn outputs_to_json(outputs: &[TensorSpec], tensors: &[Tensor]) -> Value {
    if let [only] = tensors {
        return tensor_to_json(only);
    }
    let mut object = Map::new();
    for (index, tensor) in tensors.iter().enumerate() {
        let name = outputs
            .get(index)
            .map_or_else(|| format!("output_{index}"), |o| o.name.clone());
        object.insert(name, tensor_to_json(tensor));
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn features(n: u64) -> TensorSpec {
        TensorSpec {
            name: "data".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Unknown, Dim::Fixed(n)],
        }
    }

    #[test]
    fn a_batch_of_rows_becomes_a_2d_tensor_and_back() {
        let tensor =
            tensor_from_json(&features(3), &json!([[1, 2, 3.5], [4, 5, 6]])).expect("valid");
        assert_eq!(tensor.shape, [2, 3]);
        assert_eq!(
            tensor_to_json(&tensor),
            json!([[1.0, 2.0, 3.5], [4.0, 5.0, 6.0]])
        );
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

    fn tensors() -> impl proptest::strategy::Strategy<Value = Tensor> {
        use proptest::prelude::*;
        let shapes = proptest::collection::vec(0usize..4, 0..4);
        shapes.prop_flat_map(|shape| {
            let n: usize = shape.iter().product();
            let values = prop_oneof![
                proptest::collection::vec(any::<f32>(), n).prop_map(TensorData::F32),
                proptest::collection::vec(any::<f64>(), n).prop_map(TensorData::F64),
                proptest::collection::vec(any::<i64>(), n).prop_map(TensorData::I64),
                proptest::collection::vec(any::<u8>(), n).prop_map(TensorData::U8),
                proptest::collection::vec(any::<bool>(), n).prop_map(TensorData::Bool),
                proptest::collection::vec("[a-z\"\\\n\u{e9}]{0,3}", n).prop_map(TensorData::String),
                proptest::collection::vec(any::<u16>(), n).prop_map(|v| TensorData::F16(
                    v.into_iter()
                        .map(edgeship_runtime::tensor::f16::from_bits)
                        .collect()
                )),
            ];
            (Just(shape), values).prop_map(|(shape, data)| Tensor { shape, data })
        })
    }

    proptest::proptest! {
        /// The direct writer writes what serde_json writes for the `Value` tree, byte for
        /// byte (non-finite floats as null included).
        #[test]
        fn tensors_are_written_as_serde_json_writes_them(tensor in tensors()) {
            let mut direct = Vec::new();
            write_tensor(&tensor, &mut direct);
            let general = serde_json::to_vec(&tensor_to_json(&tensor)).expect("encodes");
            proptest::prop_assert_eq!(String::from_utf8(direct).expect("UTF-8"), String::from_utf8(general).expect("UTF-8"));
            let mut flat = Vec::new();
            write_values(&tensor.data, &mut flat);
            let general = serde_json::to_vec(&values_to_json(&tensor.data)).expect("encodes");
            proptest::prop_assert_eq!(flat, general);
        }
    }

    #[test]
    fn several_outputs_are_an_object_by_name() {
        let specs = [
            features(1),
            TensorSpec {
                name: "p\"q".into(),
                ..features(1)
            },
        ];
        let tensors = [
            Tensor {
                shape: vec![1],
                data: TensorData::F32(vec![0.5]),
            },
            Tensor {
                shape: vec![2],
                data: TensorData::I64(vec![1, -2]),
            },
            Tensor {
                shape: vec![],
                data: TensorData::Bool(vec![true]),
            },
        ];
        let mut out = Vec::new();
        write_outputs(&specs, &tensors, &mut out);
        let written: Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(written, outputs_to_json(&specs, &tensors));
        assert_eq!(
            written,
            json!({"data": [0.5], "p\"q": [1, -2], "output_2": true})
        );
    }

    #[test]
    fn integers_are_checked_for_integrality() {
        let info = TensorSpec {
            name: "ids".into(),
            element_type: ElementType::I64,
            shape: vec![Dim::Unknown],
        };
        assert!(tensor_from_json(&info, &json!([1, 2])).is_ok());
        let err = tensor_from_json(&info, &json!([1.5]))
            .expect_err("fractional")
            .0;
        assert!(err.contains("expected an integer"), "{err}");
    }
}
