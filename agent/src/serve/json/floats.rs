//! The `/score` body of a model with one float input, read straight into its tensor: the
//! common request of a small model, where building a `serde_json::Value` tree first cost
//! more than the model's run.

use edgeship_domain::{ElementType, TensorSpec};
use edgeship_runtime::{Tensor, TensorData};

use super::check_shape;

/// Reads a `/score` body, `{"data": …}`, for a model with one float input straight into its
/// tensor: no `Value` tree, one vector of values. `None` for anything it does not read
/// exactly as [`super::inputs_from_data`] would (another element type, empty arrays, a ragged array,
/// a value that is not a number, a repeated key, bad JSON); those go the general way, which
/// also words the errors.
pub fn float_input(inputs: &[TensorSpec], body: &[u8]) -> Option<Tensor> {
    let [spec] = inputs else {
        return None;
    };
    let values = match spec.element_type {
        ElementType::F32 => Floats::F32(Vec::new()),
        ElementType::F64 => Floats::F64(Vec::new()),
        _ => return None,
    };
    let mut reader = FloatReader {
        values,
        dims: Vec::new(),
        leaf_depth: None,
        found: false,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(DataBody(&mut reader), &mut deserializer).ok()?;
    deserializer.end().ok()?;
    let FloatReader {
        values,
        dims,
        leaf_depth,
        found,
    } = reader;
    if !found || leaf_depth != Some(dims.len()) || dims.contains(&0) {
        return None;
    }
    let data = match values {
        Floats::F32(v) => TensorData::F32(v),
        Floats::F64(v) => TensorData::F64(v),
    };
    if dims.len() != spec.shape.len()
        || check_shape(spec, &dims).is_err()
        || dims.iter().product::<usize>() != data.len()
    {
        return None;
    }
    Some(Tensor { shape: dims, data })
}

enum Floats {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// What [`float_input`] has read so far.
struct FloatReader {
    values: Floats,
    /// The length of the arrays at each depth (0 until one at that depth ends).
    dims: Vec<usize>,
    /// The depth of the numbers (all must be at one).
    leaf_depth: Option<usize>,
    /// Whether `data` was seen.
    found: bool,
}

impl FloatReader {
    fn number(&mut self, depth: usize, value: f64) -> bool {
        match self.leaf_depth {
            None if self.dims.len() <= depth => self.leaf_depth = Some(depth),
            Some(at) if at == depth => {}
            _ => return false,
        }
        match &mut self.values {
            // As `values_from_json` converts: through f64.
            Floats::F32(v) => v.push(value as f32),
            Floats::F64(v) => v.push(value),
        }
        true
    }
}

/// The body object: `data` is read, other keys skipped.
struct DataBody<'r>(&'r mut FloatReader);

impl<'de> serde::de::DeserializeSeed<'de> for DataBody<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for DataBody<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with data")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        while let Some(is_data) = map.next_key_seed(IsData)? {
            if !is_data {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            }
            if self.0.found {
                return Err(A::Error::custom("data twice"));
            }
            self.0.found = true;
            map.next_value_seed(Level {
                reader: &mut *self.0,
                depth: 0,
            })?;
        }
        Ok(())
    }
}

/// A key of the body object: whether it is `data` (compared, not kept).
struct IsData;

impl<'de> serde::de::DeserializeSeed<'de> for IsData {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for IsData {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == "data")
    }
}

/// A value at `depth` of `data`: an array of the next depth, or a number.
struct Level<'r> {
    reader: &'r mut FloatReader,
    depth: usize,
}

impl Level<'_> {
    fn number<E: serde::de::Error>(self, value: f64) -> Result<(), E> {
        if self.reader.number(self.depth, value) {
            Ok(())
        } else {
            Err(E::custom("not rectangular"))
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Level<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Level<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("nested arrays of numbers")
    }
    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<(), E> {
        self.number(value as f64)
    }
    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<(), E> {
        self.number(value as f64)
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<(), E> {
        self.number(value)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error as _;
        let Level { reader, depth } = self;
        if reader.leaf_depth.is_some_and(|at| at <= depth) {
            return Err(A::Error::custom("not rectangular"));
        }
        let mut count = 0usize;
        while seq
            .next_element_seed(Level {
                reader: &mut *reader,
                depth: depth + 1,
            })?
            .is_some()
        {
            count += 1;
        }
        if reader.dims.len() <= depth {
            reader.dims.resize(depth + 1, 0);
        }
        match reader.dims[depth] {
            _ if count == 0 => Err(A::Error::custom("empty")),
            0 => {
                reader.dims[depth] = count;
                Ok(())
            }
            known if known == count => Ok(()),
            _ => Err(A::Error::custom("not rectangular")),
        }
    }
}

#[cfg(test)]
mod tests {
    use edgeship_domain::Dim;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::serve::json::inputs_from_data;

    fn spec(element_type: ElementType, shape: Vec<Dim>) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            element_type,
            shape,
        }
    }

    #[test]
    fn rectangular_numbers_are_read_and_everything_else_is_left_to_the_general_way() {
        let rows = spec(ElementType::F32, vec![Dim::Unknown, Dim::Fixed(2)]);
        let body = br#"{"other": {"a": [1, "x"]}, "data": [[1, 2.5], [-3, 4e-3]]}"#;
        let tensor = float_input(std::slice::from_ref(&rows), body).expect("read");
        assert_eq!(tensor.shape, [2, 2]);
        assert_eq!(tensor.data, TensorData::F32(vec![1.0, 2.5, -3.0, 4e-3]));
        for body in [
            &br#"{"data": [[1, 2], [3]]}"#[..],
            br#"{"data": [[1, 2], 3]}"#,
            br#"{"data": [1, [2, 3]]}"#,
            br#"{"data": [[1, "2"]]}"#,
            br#"{"data": [[1, null]]}"#,
            br#"{"data": [[]]}"#,
            br#"{"data": [[1, 2, 3]]}"#,
            br#"{"data": [1, 2]}"#,
            br#"{"data": [[1, 2]], "data": [[3, 4]]}"#,
            br#"{"rows": [[1, 2]]}"#,
            br#"[[1, 2]]"#,
            br#"{"data": [[1, 2]]} trailing"#,
            br#"{"data": [[1, 2e999]]}"#,
        ] {
            assert!(
                float_input(std::slice::from_ref(&rows), body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let ints = spec(ElementType::I64, vec![Dim::Unknown]);
        assert!(float_input(&[ints], br#"{"data": [1, 2]}"#).is_none());
        let two = [rows.clone(), rows];
        assert!(float_input(&two, br#"{"data": [[1, 2]]}"#).is_none());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            any::<f64>()
                .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            "[a-z]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                4 => proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                1 => proptest::collection::btree_map("[a-z]{1,2}", inner, 0..2)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Rectangular float arrays of rank 1 to 3.
    fn rows() -> impl Strategy<Value = (Vec<usize>, Value)> {
        (proptest::collection::vec(1usize..4, 1..4), any::<u64>()).prop_map(|(shape, seed)| {
            fn build(shape: &[usize], next: &mut u64) -> Value {
                match shape.split_first() {
                    None => {
                        *next = next
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let x = (*next >> 11) as f64 / (1u64 << 53) as f64 * 200.0 - 100.0;
                        if next.is_multiple_of(3) {
                            json!((x as i64))
                        } else {
                            json!(x)
                        }
                    }
                    Some((&n, rest)) => Value::Array((0..n).map(|_| build(rest, next)).collect()),
                }
            }
            let mut next = seed;
            let value = build(&shape, &mut next);
            (shape, value)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the direct reader takes, the general reader reads to the same tensor.
        #[test]
        fn the_direct_reader_agrees_with_the_general_one(data in value(), rank in 0usize..4, wide in any::<bool>()) {
            let element_type = if wide { ElementType::F64 } else { ElementType::F32 };
            let spec = spec(element_type, vec![Dim::Unknown; rank]);
            let body = serde_json::to_vec(&json!({ "data": data })).expect("encodes");
            if let Some(direct) = float_input(std::slice::from_ref(&spec), &body) {
                let general = inputs_from_data(std::slice::from_ref(&spec), &serde_json::from_slice(&body).expect("JSON"));
                prop_assert_eq!(general, Ok(vec![direct]));
            }
        }

        /// Every rectangular float array the model's rank allows is read directly.
        #[test]
        fn rectangular_arrays_are_read_directly((shape, data) in rows()) {
            let spec = spec(ElementType::F32, vec![Dim::Unknown; shape.len()]);
            let body = serde_json::to_vec(&json!({ "data": data })).expect("encodes");
            let direct = float_input(std::slice::from_ref(&spec), &body);
            let general = inputs_from_data(std::slice::from_ref(&spec), &serde_json::from_slice(&body).expect("JSON"));
            prop_assert_eq!(general, Ok(vec![direct.expect("read directly")]));
        }
    }
}
