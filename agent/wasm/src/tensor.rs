//! Tensors across the module boundary: the WIT `tensor` (element type, shape, little-endian
//! bytes) to and from the runtimes' [`Tensor`], checked, since a module's tensors are
//! untrusted.

use edgeship_domain::{Dim, ElementType, TensorSpec};
use edgeship_runtime::{Tensor, TensorData};

use crate::bindings::edgeship::entry::types::{
    ElementType as Wit, ModelInfo, Tensor as WitTensor, TensorInfo,
};

fn wit_type(element_type: &ElementType) -> Option<Wit> {
    Some(match element_type {
        ElementType::Bool => Wit::Boolean,
        ElementType::U8 => Wit::U8,
        ElementType::U16 => Wit::U16,
        ElementType::U32 => Wit::U32,
        ElementType::U64 => Wit::U64,
        ElementType::I8 => Wit::I8,
        ElementType::I16 => Wit::I16,
        ElementType::I32 => Wit::I32,
        ElementType::I64 => Wit::I64,
        ElementType::F16 => Wit::F16,
        ElementType::F32 => Wit::F32,
        ElementType::F64 => Wit::F64,
        ElementType::String => Wit::Bytes,
        ElementType::Other(_) => return None,
    })
}

fn domain_type(element_type: Wit) -> ElementType {
    match element_type {
        Wit::Boolean => ElementType::Bool,
        Wit::U8 => ElementType::U8,
        Wit::U16 => ElementType::U16,
        Wit::U32 => ElementType::U32,
        Wit::U64 => ElementType::U64,
        Wit::I8 => ElementType::I8,
        Wit::I16 => ElementType::I16,
        Wit::I32 => ElementType::I32,
        Wit::I64 => ElementType::I64,
        Wit::F16 => ElementType::F16,
        Wit::F32 => ElementType::F32,
        Wit::F64 => ElementType::F64,
        Wit::Bytes => ElementType::String,
    }
}

/// A module's tensor for a runtime; the element count must match the shape.
pub fn from_wit(tensor: WitTensor) -> Result<Tensor, String> {
    let element_type = domain_type(tensor.element_type);
    let data = TensorData::from_raw(&element_type, &tensor.data)
        .map_err(|why| format!("input {:?}: {why}", tensor.name))?;
    let shape = tensor
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("input {:?}: a dimension is too large", tensor.name))?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("input {:?}: the shape overflows", tensor.name))?;
    if count != data.len() {
        return Err(format!(
            "input {:?}: shape {:?} holds {count} elements but the data has {}",
            tensor.name,
            tensor.shape,
            data.len()
        ));
    }
    Ok(Tensor { shape, data })
}

/// A runtime's output for a module.
pub fn to_wit(name: &str, tensor: &Tensor) -> WitTensor {
    WitTensor {
        name: name.to_owned(),
        element_type: wit_type(&tensor.data.element_type()).unwrap_or(Wit::U8),
        shape: tensor.shape.iter().map(|&d| d as u64).collect(),
        data: tensor.data.to_le_bytes(),
    }
}

fn info(spec: &TensorSpec) -> TensorInfo {
    TensorInfo {
        name: spec.name.clone(),
        // A type no runtime computes with cannot reach a module; bytes is the nearest.
        element_type: wit_type(&spec.element_type).unwrap_or(Wit::Bytes),
        shape: spec
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
                Dim::Symbol(_) | Dim::Unknown => -1,
            })
            .collect(),
    }
}

/// What `models()` tells a module of one model.
pub fn model_info(
    name: &str,
    version: u32,
    inputs: &[TensorSpec],
    outputs: &[TensorSpec],
) -> ModelInfo {
    ModelInfo {
        name: name.to_owned(),
        version,
        inputs: inputs.iter().map(info).collect(),
        outputs: outputs.iter().map(info).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_cross_both_ways_and_a_wrong_count_is_named() {
        let tensor = Tensor {
            shape: vec![2, 2],
            data: TensorData::F32(vec![1.0, 2.0, 3.0, 4.0]),
        };
        let wit = to_wit("x", &tensor);
        assert_eq!(wit.data.len(), 16);
        assert_eq!(from_wit(wit.clone()).expect("back"), tensor);
        let short = WitTensor {
            shape: vec![3, 2],
            ..wit
        };
        let err = from_wit(short).expect_err("6 elements declared, 4 sent");
        assert!(err.contains("holds 6 elements but the data has 4"), "{err}");
        let ragged = WitTensor {
            name: "y".into(),
            element_type: Wit::F32,
            shape: vec![1],
            data: vec![0; 3],
        };
        assert!(from_wit(ragged).is_err());
        let strings = Tensor {
            shape: vec![2],
            data: TensorData::String(vec!["a".into(), "bc".into()]),
        };
        assert_eq!(from_wit(to_wit("s", &strings)).expect("strings"), strings);
    }
}
