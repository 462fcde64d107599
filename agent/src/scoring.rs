//! The Azure ML scoring convention: `{"data": ...}` in, predictions out. One input takes
//! `data` as nested arrays; several inputs take `data` as an object keyed by input name. One
//! output is returned as nested arrays; several as an object keyed by output name.

use serde_json::{Map, Value};

use crate::runtime::Runnable;
use crate::tensor::{InputError, Tensor, tensor_from_json};

/// Reads a scoring body into the model's inputs, in declaration order.
pub fn request_tensors(model: &dyn Runnable, body: &Value) -> Result<Vec<Tensor>, InputError> {
    let Some(data) = body.as_object().and_then(|o| o.get("data")) else {
        return Err(InputError(
            "the body must be a JSON object with a \"data\" field, e.g. {\"data\": [[...]]}".into(),
        ));
    };
    let inputs = model.inputs();
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
pub fn response_json(model: &dyn Runnable, outputs: &[Tensor]) -> Value {
    if let [only] = outputs {
        return only.to_json();
    }
    let mut object = Map::new();
    for (index, tensor) in outputs.iter().enumerate() {
        let name = model
            .outputs()
            .get(index)
            .map_or_else(|| format!("output_{index}"), |o| o.name.clone());
        object.insert(name, tensor.to_json());
    }
    Value::Object(object)
}
