//! Runtime-neutral tensors: what scoring adapters hand to runtimes and get back.

use edgeship_domain::{Dim, ElementType, TensorSpec};

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::F64(v) => v.len(),
            TensorData::I32(v) => v.len(),
            TensorData::I64(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense, row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// Zeros of the declared shape, open dimensions set to 1: the self-test input of a model
    /// registered without a sample. `None` for element types runtimes cannot take.
    pub fn zeros(spec: &TensorSpec) -> Option<Tensor> {
        let shape: Vec<usize> = spec
            .shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => usize::try_from(*n).unwrap_or(usize::MAX),
                Dim::Symbol(_) | Dim::Unknown => 1,
            })
            .collect();
        let n = shape.iter().product();
        let data = match spec.element_type {
            ElementType::F32 => TensorData::F32(vec![0.0; n]),
            ElementType::F64 => TensorData::F64(vec![0.0; n]),
            ElementType::I32 => TensorData::I32(vec![0; n]),
            ElementType::I64 => TensorData::I64(vec![0; n]),
            ElementType::Bool => TensorData::Bool(vec![false; n]),
            ElementType::Other(_) => return None,
        };
        Some(Tensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_fill_open_dimensions_with_one() {
        let spec = TensorSpec {
            name: "x".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Unknown, Dim::Fixed(4)],
        };
        let zeros = Tensor::zeros(&spec).expect("supported");
        assert_eq!(zeros.shape, [1, 4]);
        assert_eq!(zeros.data, TensorData::F32(vec![0.0; 4]));
        let text = TensorSpec {
            element_type: ElementType::Other("string".into()),
            ..spec
        };
        assert_eq!(Tensor::zeros(&text), None);
    }
}
