//! An infer input's JSON `data` read straight into its tensor's values: the request's
//! datatype may come after its data, so the data is first kept as raw JSON text and read
//! here once the datatype is known, without building a `serde_json::Value` per element
//! (which cost more than a small model's run).

use edgeship_domain::ElementType;
use edgeship_runtime::TensorData;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::serve::json::scan::Leaf;

/// Reads `data` (a number, or flat or nested arrays of numbers; booleans for BOOL) as
/// `element_type` values in row-major order. `None` for anything it does not read exactly as
/// the general way (`rest::values_of`) would: strings, nulls, objects, a value out of the
/// type's range, an integer type given a fraction, more than `expected` values; those go the
/// general way, which also words the errors. Fewer values than `expected` are returned as
/// read: the caller's count check words that error.
pub fn read(element_type: &ElementType, data: &RawValue, expected: usize) -> Option<TensorData> {
    if matches!(element_type, ElementType::String | ElementType::Other(_)) {
        return None;
    }
    let mut values = TensorData::zeros(element_type, 0)?;
    let mut deserializer = serde_json::Deserializer::from_str(data.get());
    Leaves {
        values: &mut values,
        expected,
    }
    .deserialize(&mut deserializer)
    .ok()?;
    deserializer.end().ok()?;
    Some(values)
}

/// A value of `data` at any depth: an array (its elements are read in turn) or a leaf.
struct Leaves<'v> {
    values: &'v mut TensorData,
    expected: usize,
}

impl Leaves<'_> {
    fn leaf<E: serde::de::Error>(self, leaf: Leaf) -> Result<(), E> {
        if self.values.len() == self.expected {
            return Err(E::custom("more values than the shape holds"));
        }
        if leaf.push_to(self.values) {
            Ok(())
        } else {
            Err(E::custom("not a value of the input's type"))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Leaves<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Leaves<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("arrays of numbers")
    }
    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<(), E> {
        self.leaf(Leaf::Bool(value))
    }
    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<(), E> {
        self.leaf(Leaf::U(value))
    }
    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<(), E> {
        self.leaf(Leaf::I(value))
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<(), E> {
        self.leaf(Leaf::F(value))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Leaves { values, expected } = self;
        while seq
            .next_element_seed(Leaves {
                values: &mut *values,
                expected,
            })?
            .is_some()
        {}
        Ok(())
    }
    // Strings, nulls and objects: serde's defaults refuse them, leaving them to the general
    // way.
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::serve::v2::rest::values_of;

    fn raw(value: &Value) -> Box<RawValue> {
        RawValue::from_string(value.to_string()).expect("raw")
    }

    #[test]
    fn numbers_at_any_depth_are_read_in_row_major_order() {
        let data = json!([[1, 2.5], [[-3]], 4e-3]);
        assert_eq!(
            read(&ElementType::F32, &raw(&data), 4),
            Some(TensorData::F32(vec![1.0, 2.5, -3.0, 4e-3]))
        );
        assert_eq!(
            read(&ElementType::I64, &raw(&json!([[1, -2], [3, 4]])), 4),
            Some(TensorData::I64(vec![1, -2, 3, 4]))
        );
        assert_eq!(
            read(&ElementType::Bool, &raw(&json!([true, false])), 2),
            Some(TensorData::Bool(vec![true, false]))
        );
        // Fewer than the shape holds: returned, for the caller's count check to word.
        assert_eq!(
            read(&ElementType::F64, &raw(&json!([1])), 3),
            Some(TensorData::F64(vec![1.0]))
        );
        for (element_type, data, expected) in [
            (ElementType::F32, json!([1, 2, 3]), 2),
            (ElementType::F32, json!([1, "2"]), 2),
            (ElementType::F32, json!([1, null]), 2),
            (ElementType::F32, json!([{"a": 1}]), 1),
            (ElementType::F32, json!([true]), 1),
            (ElementType::U8, json!([256]), 1),
            (ElementType::U8, json!([-1]), 1),
            (ElementType::I32, json!([1.5]), 1),
            (ElementType::Bool, json!([1]), 1),
            (ElementType::String, json!(["a"]), 1),
        ] {
            assert_eq!(read(&element_type, &raw(&data), expected), None, "{data}");
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-300i64..300).prop_map(Value::from),
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        /// Whatever the direct reader takes, the general way reads to the same values, and
        /// whatever the general way reads in full, the direct reader takes too.
        #[test]
        fn the_direct_reader_agrees_with_the_general_way(data in value(), type_index in 0usize..12, expected in 0usize..12) {
            // Every supported type but the last, BYTES, which is left to the general way.
            let element_type = &ElementType::SUPPORTED[type_index];
            let text = raw(&data);
            let direct = read(element_type, &text, expected);
            // Both from the text, as a request is read (serde_json parses a float's shortest
            // text to a neighbour of the value that printed it).
            let parsed: Value = serde_json::from_str(text.get()).expect("JSON");
            let general = values_of(element_type, &parsed, expected);
            match (direct, general) {
                (Some(direct), Ok(general)) => prop_assert_eq!(direct, general),
                (Some(direct), Err(err)) => prop_assert!(false, "direct read {direct:?}, general refused: {err}"),
                (None, Ok(general)) => prop_assert!(false, "general read {general:?}, direct did not"),
                (None, Err(_)) => {}
            }
        }
    }
}
