//! The `/score` body of a model with one float input, read straight into its tensor in one
//! pass (`scan`): the common request of a small model, where building a `serde_json::Value`
//! tree first cost more than the model's run.

use edgeship_domain::{ElementType, TensorSpec};
use edgeship_runtime::{Tensor, TensorData};

use super::check_shape;
use super::scan::Scanner;

/// Reads a `/score` body, `{"data": …}`, for a model with one float input straight into its
/// tensor: no `Value` tree, one vector of values. `None` for anything it does not read
/// exactly as [`super::inputs_from_data`] would (another element type, empty arrays, a ragged array,
/// a value that is not a number, a repeated key, bad JSON); those go the general way, which
/// also words the errors.
pub fn float_input(inputs: &[TensorSpec], body: &[u8]) -> Option<Tensor> {
    let [spec] = inputs else {
        return None;
    };
    let wide = match spec.element_type {
        ElementType::F32 => false,
        ElementType::F64 => true,
        _ => return None,
    };
    let (mut narrow_values, mut wide_values) = (Vec::new(), Vec::new());
    let mut dims = None;
    let mut scanner = Scanner::new(body);
    scanner.object(&mut |scanner, key| {
        if key != "data" {
            return scanner.skip();
        }
        if dims.is_some() {
            return None; // data twice
        }
        dims = Some(if wide {
            scanner.rectangle(&mut |x| wide_values.push(x))?
        } else {
            // As `values_from_json` converts: through f64.
            scanner.rectangle(&mut |x| narrow_values.push(x as f32))?
        });
        Some(())
    })?;
    if !scanner.at_end() {
        return None;
    }
    let dims = dims?;
    let data = if wide {
        TensorData::F64(wide_values)
    } else {
        TensorData::F32(narrow_values)
    };
    if dims.len() != spec.shape.len()
        || check_shape(spec, &dims).is_err()
        || dims.iter().product::<usize>() != data.len()
    {
        return None;
    }
    Some(Tensor { shape: dims, data })
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
