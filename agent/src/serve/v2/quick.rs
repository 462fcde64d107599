//! The common infer request read in one pass: a JSON body whose inputs give `name`, `shape`
//! and `datatype` before `data`, with plain strings. The general way (`rest::decode_request`)
//! parses the body with serde, keeps each input's `data` as raw text (its datatype may come
//! after it) and then reads that text again; on a small model that double reading cost more
//! than the model's run.
//!
//! The quick reader gives up (`None`) on anything it does not read exactly as the general way
//! would: another key order, escaped strings, the binary extension, a datatype it does not
//! know, data that is not numbers (or booleans), more values than the shape holds, repeated
//! keys, JSON it does not take (`json::scan`). The general way then reads the body and words
//! any error. What it does read goes through the same checks, in the same order, as the
//! general way's.

use edgeship_domain::ElementType;
use edgeship_runtime::TensorData;

use super::infer;
use super::rest::{DecodedRequest, check_count};
use crate::serve::Scorer;
use crate::serve::json::scan::{Leaf, Scanner};

/// One input as the body gives it.
struct Input<'b> {
    name: &'b str,
    shape: Vec<i64>,
    datatype: &'b str,
    data: TensorData,
}

/// Decodes `body` (JSON only: no binary extension), or `None` for the general way.
pub fn decode(scorer: &dyn Scorer, body: &[u8]) -> Option<Result<DecodedRequest, infer::V2Error>> {
    let mut scanner = Scanner::new(body);
    let (mut id, mut inputs, mut outputs) = (None, None, Vec::new());
    let mut binary_default = Flag::default();
    let mut seen = Seen::default();
    scanner.object(&mut |scanner, key| match key {
        "id" => {
            seen.once(ID)?;
            id = if scanner.null() {
                None
            } else {
                Some(scanner.string()?.to_owned())
            };
            Some(())
        }
        "parameters" => {
            seen.once(PARAMETERS)?;
            scanner.object(&mut |scanner, key| match key {
                "binary_data_output" => binary_default.set(scanner),
                _ => scanner.skip(),
            })
        }
        "inputs" => {
            seen.once(INPUTS)?;
            let mut read = Vec::new();
            scanner.array(&mut |scanner| {
                read.push(read_input(scanner)?);
                Some(())
            })?;
            inputs = Some(read);
            Some(())
        }
        "outputs" => {
            seen.once(OUTPUTS)?;
            scanner.array(&mut |scanner| {
                outputs.push(read_output(scanner)?);
                Some(())
            })
        }
        _ => scanner.skip(),
    })?;
    if !scanner.at_end() {
        return None;
    }
    let inputs = inputs?;
    Some(check(scorer, id, inputs, outputs, binary_default))
}

/// The general way's checks, in its order, on what was read.
fn check(
    scorer: &dyn Scorer,
    id: Option<String>,
    inputs: Vec<Input>,
    outputs: Vec<(String, Flag)>,
    binary_default: Flag,
) -> Result<DecodedRequest, infer::V2Error> {
    let mut named = Vec::with_capacity(inputs.len());
    for input in inputs {
        let spec = scorer.inputs().iter().find(|s| s.name == input.name);
        infer::input_type(spec, input.name, input.datatype)?;
        let (shape, count) = infer::element_count(input.name, &input.shape)?;
        check_count(input.name, &input.shape, count, &input.data)?;
        named.push(infer::NamedInput {
            name: input.name.to_owned(),
            shape,
            data: input.data,
        });
    }
    let binary_default = binary_default.or(false);
    Ok(DecodedRequest {
        id,
        inputs: named,
        outputs: outputs
            .into_iter()
            .map(|(name, flag)| (name, flag.or(binary_default)))
            .collect(),
        binary_default,
    })
}

fn read_input<'b>(scanner: &mut Scanner<'b>) -> Option<Input<'b>> {
    let (mut name, mut shape, mut datatype, mut data) = (None, None, None, None);
    let mut seen = Seen::default();
    scanner.object(&mut |scanner, key| {
        match key {
            "name" => {
                seen.once(NAME)?;
                name = Some(scanner.string()?);
            }
            "shape" => {
                seen.once(SHAPE)?;
                let mut dims = Vec::new();
                scanner.array(&mut |scanner| {
                    dims.push(scanner.number()?.int()?);
                    Some(())
                })?;
                shape = Some(dims);
            }
            "datatype" => {
                seen.once(DATATYPE)?;
                datatype = Some(scanner.string()?);
            }
            "parameters" => {
                seen.once(PARAMETERS)?;
                // The binary extension's inputs go the general way.
                scanner.object(&mut |scanner, key| match key {
                    "binary_data_size" => None,
                    _ => scanner.skip(),
                })?;
            }
            "data" => {
                seen.once(DATA)?;
                // The general way reads data once it knows the input: a body that names it
                // later goes there.
                let (Some(name), Some(shape), Some(datatype)) = (name, shape.as_ref(), datatype)
                else {
                    return None;
                };
                let (_, count) = infer::element_count(name, shape).ok()?;
                let element_type = ElementType::from_oip_name(datatype)?;
                data = Some(read_data(scanner, &element_type, count)?);
            }
            _ => scanner.skip()?,
        }
        Some(())
    })?;
    Some(Input {
        name: name?,
        shape: shape?,
        datatype: datatype?,
        data: data?,
    })
}

/// `data` as `count` values of `element_type` at most (fewer are returned for the count
/// check to word). Nothing is reserved beyond what the rest of the body could hold.
fn read_data(
    scanner: &mut Scanner,
    element_type: &ElementType,
    count: usize,
) -> Option<TensorData> {
    let room = count.min(scanner.remaining() / 2 + 1);
    match element_type {
        ElementType::F32 => {
            let mut values = Vec::with_capacity(room);
            scanner.leaves(&mut |leaf| {
                values.len() < count && leaf.float().map(|x| values.push(x as f32)).is_some()
            })?;
            Some(TensorData::F32(values))
        }
        ElementType::F64 => {
            let mut values = Vec::with_capacity(room);
            scanner.leaves(&mut |leaf| {
                values.len() < count && leaf.float().map(|x| values.push(x)).is_some()
            })?;
            Some(TensorData::F64(values))
        }
        ElementType::String | ElementType::Other(_) => None,
        _ => {
            let mut values = TensorData::zeros(element_type, 0)?;
            scanner.leaves(&mut |leaf: Leaf| values.len() < count && leaf.push_to(&mut values))?;
            Some(values)
        }
    }
}

fn read_output(scanner: &mut Scanner) -> Option<(String, Flag)> {
    let (mut name, mut binary) = (None, Flag::default());
    let mut seen = Seen::default();
    scanner.object(&mut |scanner, key| match key {
        "name" => {
            seen.once(NAME)?;
            name = Some(scanner.string()?.to_owned());
            Some(())
        }
        "parameters" => {
            seen.once(PARAMETERS)?;
            scanner.object(&mut |scanner, key| match key {
                "binary_data" => binary.set(scanner),
                _ => scanner.skip(),
            })
        }
        _ => scanner.skip(),
    })?;
    Some((name?, binary))
}

/// A boolean parameter: absent, or given once as `true` or `false` (a repeated one, whose
/// last value a JSON map keeps, and any other value go the general way).
#[derive(Default, Clone, Copy)]
struct Flag(Option<bool>);

impl Flag {
    fn set(&mut self, scanner: &mut Scanner) -> Option<()> {
        if self.0.is_some() {
            return None;
        }
        match scanner.leaf()? {
            Leaf::Bool(value) => {
                self.0 = Some(value);
                Some(())
            }
            _ => None,
        }
    }

    fn or(self, default: bool) -> bool {
        self.0.unwrap_or(default)
    }
}

/// The keys of one object read so far, one bit each (serde refuses a repeated field).
#[derive(Default)]
struct Seen(u8);

impl Seen {
    /// Marks `key` (a bit of its own within its object) as read; `None` if it was already.
    fn once(&mut self, key: u8) -> Option<()> {
        if self.0 & key != 0 {
            return None;
        }
        self.0 |= key;
        Some(())
    }
}

/// The keys [`Seen`] tracks; one object uses each bit for one key at most.
const ID: u8 = 1;
const NAME: u8 = 1 << 1;
const SHAPE: u8 = 1 << 2;
const DATATYPE: u8 = 1 << 3;
const PARAMETERS: u8 = 1 << 4;
const DATA: u8 = 1 << 5;
const INPUTS: u8 = 1 << 6;
const OUTPUTS: u8 = 1 << 7;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::serve::fake;
    use crate::serve::v2::rest::decode_general;

    fn quick(body: &str) -> Option<Result<DecodedRequest, infer::V2Error>> {
        decode(fake::scorer("m:1", false).as_ref(), body.as_bytes())
    }

    #[test]
    fn the_bodies_clients_send_are_read_in_one_pass() {
        let scorer = fake::scorer("m:1", false);
        for body in [
            // What the benchmark and most hand-written clients send.
            r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[0.5,-1,2e-3]}]}"#,
            // tritonclient's JSON form: parameters, requested outputs, an id, whitespace.
            r#"{"id": "7", "inputs": [{"name": "x", "shape": [3], "datatype": "FP32",
                "parameters": {}, "data": [[0.5], [-1], [2e-3]]}],
                "outputs": [{"name": "x", "parameters": {"binary_data": false}}],
                "parameters": {"binary_data_output": false, "sequence_id": 0}}"#,
        ] {
            let read = quick(body).expect("read in one pass").expect("valid");
            assert_eq!(read.inputs[0].data, TensorData::F32(vec![0.5, -1.0, 2e-3]));
            assert_eq!(
                Ok(read),
                decode_general(scorer.as_ref(), body.as_bytes(), None)
            );
        }
        // Numbers as numpy writes float64 values (the diabetes fixture's), twenty digits with
        // a fraction's leading zeros: read in one pass too, to serde_json's values.
        let long = r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[-0.0018820165423676372,0.038075906433423026,0.00000000000000000000012345]}]}"#;
        let read = quick(long).expect("read in one pass").expect("valid");
        assert_eq!(
            Ok(read),
            decode_general(scorer.as_ref(), long.as_bytes(), None)
        );
    }

    #[test]
    fn what_the_general_way_words_goes_there() {
        for body in [
            // data before the datatype, shape or name
            r#"{"inputs":[{"data":[1],"name":"x","shape":[1],"datatype":"FP32"}]}"#,
            r#"{"inputs":[{"name":"x","data":[1],"shape":[1],"datatype":"FP32"}]}"#,
            // escapes, repeated keys, the binary extension, unknown datatypes, strings
            r#"{"inputs":[{"name":"\u0078","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP33","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["1"]}]}"#,
            // more values than the shape holds, a negative dimension, bad JSON, no inputs
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]} x"#,
            r#"{"outputs":[]}"#,
            r#"{"inputs":[],"parameters":{"binary_data_output":1}}"#,
        ] {
            assert!(quick(body).is_none(), "{body}");
        }
        // Errors found after a whole body is read are the general way's, word for word.
        let scorer = fake::scorer("m:1", false);
        for body in [
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[1]}]}"#,
        ] {
            let error = quick(body).expect("read").expect_err("refused");
            assert_eq!(
                Err(error),
                decode_general(scorer.as_ref(), body.as_bytes(), None)
            );
        }
    }

    /// JSON text for one value, in forms the quick reader takes and forms it does not.
    fn value_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            any::<f32>().prop_map(|x| format!("{x}")),
            any::<i64>().prop_map(|x| x.to_string()),
            (-300i32..300).prop_map(|x| x.to_string()),
            "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,2})?",
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("\"s\"".to_owned()),
            Just("\"\\u0041\"".to_owned()),
            Just("{}".to_owned()),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            proptest::collection::vec(inner, 0..4)
                .prop_map(|items| format!("[{}]", items.join(",")))
        })
    }

    /// An input object's members, in any order, some left out, some repeated or unknown.
    fn input_text() -> impl Strategy<Value = String> {
        let members = (
            prop_oneof![Just("\"x\""), Just("\"y\""), Just("\"\\u0078\"")],
            prop_oneof![
                Just("[3]"),
                Just("[1,3]"),
                Just("[2]"),
                Just("[-1]"),
                Just("[3.0]"),
                Just("[]")
            ],
            prop_oneof![
                Just("\"FP32\""),
                Just("\"FP64\""),
                Just("\"INT32\""),
                Just("\"BOOL\""),
                Just("\"FP99\""),
                Just("3")
            ],
            prop_oneof![
                Just("{}"),
                Just("{\"binary_data_size\":12}"),
                Just("{\"k\":[1,{\"a\":null}]}"),
                Just("null")
            ],
            value_text(),
        );
        (members, proptest::collection::vec(0usize..7, 0..7)).prop_map(
            |((name, shape, datatype, parameters, data), order)| {
                let member = |i: usize| match i {
                    0 => format!("\"name\":{name}"),
                    1 => format!("\"shape\":{shape}"),
                    2 => format!("\"datatype\":{datatype}"),
                    3 => format!("\"parameters\":{parameters}"),
                    4 | 5 => format!("\"data\":{data}"),
                    _ => "\"other\":[1]".to_owned(),
                };
                // Usually the order clients use, otherwise a random one.
                let keys: Vec<usize> = if order.len() < 3 {
                    vec![0, 1, 2, 4]
                } else {
                    order
                };
                format!(
                    "{{{}}}",
                    keys.into_iter().map(member).collect::<Vec<_>>().join(",")
                )
            },
        )
    }

    fn body_text() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(input_text(), 0..3),
            prop_oneof![
                Just(""),
                Just(",\"id\":\"r1\""),
                Just(",\"id\":null"),
                Just(",\"id\":5")
            ],
            prop_oneof![
                Just(""),
                Just(",\"outputs\":[{\"name\":\"x\"}]"),
                Just(",\"outputs\":[{\"name\":\"x\",\"parameters\":{\"binary_data\":true}}]"),
                Just(",\"outputs\":[{\"parameters\":{}}]"),
            ],
            prop_oneof![
                Just(""),
                Just(",\"parameters\":{\"binary_data_output\":true}"),
                Just(",\"parameters\":{\"binary_data_output\":\"yes\"}"),
            ],
        )
            .prop_map(|(inputs, id, outputs, parameters)| {
                format!(
                    "{{\"inputs\":[{}]{id}{outputs}{parameters}}}",
                    inputs.join(",")
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Whatever the quick reader decides, the general way decides the same, to the value
        /// and to the word.
        #[test]
        fn the_quick_reader_agrees_with_the_general_way(body in body_text()) {
            let scorer = fake::scorer("m:1", false);
            if let Some(quick) = decode(scorer.as_ref(), body.as_bytes()) {
                prop_assert_eq!(quick, decode_general(scorer.as_ref(), body.as_bytes(), None), "{}", body);
            }
        }
    }
}
