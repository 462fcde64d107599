//! Runtime-neutral tensors: what scoring adapters hand to runtimes and get back, with the raw
//! little-endian encoding that binary protocols (OIP's binary extension, its gRPC raw contents,
//! `application/octet-stream` bodies) carry.

use edgeship_domain::{Dim, ElementType, TensorSpec};
pub use half::f16;

/// Declares [`TensorData`] once per fixed-size element type, with what every use needs:
/// the element type, the length, zeros, and raw little-endian conversions.
macro_rules! tensor_data {
    ($($variant:ident($ty:ty) = $zero:expr),* $(,)?) => {
        /// Row-major element values, one variant per element type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum TensorData {
            $($variant(Vec<$ty>),)*
            /// ONNX strings (OIP `BYTES`): UTF-8 text, one per element.
            String(Vec<String>),
        }

        impl TensorData {
            pub fn len(&self) -> usize {
                match self {
                    $(TensorData::$variant(v) => v.len(),)*
                    TensorData::String(v) => v.len(),
                }
            }

            pub fn element_type(&self) -> ElementType {
                match self {
                    $(TensorData::$variant(_) => ElementType::$variant,)*
                    TensorData::String(_) => ElementType::String,
                }
            }

            /// `n` zeros (false, empty strings) of `element_type`; `None` for types no
            /// runtime computes with.
            pub fn zeros(element_type: &ElementType, n: usize) -> Option<TensorData> {
                Some(match element_type {
                    $(ElementType::$variant => TensorData::$variant(vec![$zero; n]),)*
                    ElementType::String => TensorData::String(vec![String::new(); n]),
                    ElementType::Other(_) => return None,
                })
            }

            /// Reads `bytes` as little-endian values of a fixed-size `element_type`; strings
            /// use [`TensorData::from_length_prefixed`].
            pub fn from_le_bytes(element_type: &ElementType, bytes: &[u8]) -> Result<TensorData, String> {
                let size = element_type.byte_size().ok_or_else(|| {
                    format!("{element_type} has no fixed-size raw encoding")
                })?;
                if bytes.len() % size != 0 {
                    return Err(format!(
                        "{} bytes is not a whole number of {element_type} elements ({size} bytes each)",
                        bytes.len()
                    ));
                }
                let chunks = bytes.chunks_exact(size);
                Ok(match element_type {
                    $(ElementType::$variant => TensorData::$variant(
                        chunks.map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or_default())).collect()
                    ),)*
                    ElementType::String | ElementType::Other(_) => unreachable_encoding(element_type)?,
                })
            }

            /// Appends `other`'s values; `false` (and nothing appended) when the element types
            /// differ.
            pub fn append(&mut self, other: TensorData) -> bool {
                match (self, other) {
                    $((TensorData::$variant(a), TensorData::$variant(mut b)) => a.append(&mut b),)*
                    (TensorData::String(a), TensorData::String(mut b)) => a.append(&mut b),
                    _ => return false,
                }
                true
            }

            /// Splits off the values from index `at` on (all when `at` is beyond the end).
            pub fn split_off(&mut self, at: usize) -> TensorData {
                match self {
                    $(TensorData::$variant(v) => TensorData::$variant(v.split_off(at.min(v.len()))),)*
                    TensorData::String(v) => TensorData::String(v.split_off(at.min(v.len()))),
                }
            }

            /// The raw little-endian bytes of the values; strings are length-prefixed
            /// (a 4-byte little-endian length before each), as OIP encodes `BYTES`.
            pub fn to_le_bytes(&self) -> Vec<u8> {
                match self {
                    $(TensorData::$variant(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),)*
                    TensorData::String(v) => {
                        let mut out = Vec::with_capacity(v.iter().map(|s| s.len() + 4).sum());
                        for s in v {
                            // Element sizes beyond 4 GiB cannot arrive: bodies are capped far lower.
                            out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
                            out.extend_from_slice(s.as_bytes());
                        }
                        out
                    }
                }
            }
        }
    };
}

/// `bool` has no `from_le_bytes` of its own: one byte, any non-zero value is true (as numpy
/// and ONNX write booleans).
trait FromLeBytes: Sized {
    fn from_le_bytes(bytes: [u8; 1]) -> Self;
    fn to_le_bytes(self) -> [u8; 1];
}

impl FromLeBytes for bool {
    fn from_le_bytes(bytes: [u8; 1]) -> Self {
        bytes[0] != 0
    }

    fn to_le_bytes(self) -> [u8; 1] {
        [u8::from(self)]
    }
}

fn unreachable_encoding(element_type: &ElementType) -> Result<TensorData, String> {
    Err(format!("{element_type} has no fixed-size raw encoding"))
}

tensor_data! {
    Bool(bool) = false,
    U8(u8) = 0,
    U16(u16) = 0,
    U32(u32) = 0,
    U64(u64) = 0,
    I8(i8) = 0,
    I16(i16) = 0,
    I32(i32) = 0,
    I64(i64) = 0,
    F16(f16) = f16::ZERO,
    F32(f32) = 0.0,
    F64(f64) = 0.0,
}

impl TensorData {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads OIP's `BYTES` encoding: each element a 4-byte little-endian length, then that
    /// many bytes. Every length is checked against what is left, so a forged length cannot
    /// make the reader allocate or read beyond the buffer.
    pub fn from_length_prefixed(mut bytes: &[u8]) -> Result<TensorData, String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (head, rest) = bytes
                .split_first_chunk::<4>()
                .ok_or_else(|| format!("{} trailing bytes cannot hold a length", bytes.len()))?;
            let len = u32::from_le_bytes(*head) as usize;
            if len > rest.len() {
                return Err(format!(
                    "element {} declares {len} bytes but only {} remain",
                    out.len(),
                    rest.len()
                ));
            }
            let (text, rest) = rest.split_at(len);
            let text = std::str::from_utf8(text)
                .map_err(|err| format!("element {} is not UTF-8 text: {err}", out.len()))?;
            out.push(text.to_owned());
            bytes = rest;
        }
        Ok(TensorData::String(out))
    }

    /// Raw bytes of any element type: fixed-size little-endian values, or length-prefixed
    /// strings.
    pub fn from_raw(element_type: &ElementType, bytes: &[u8]) -> Result<TensorData, String> {
        match element_type {
            ElementType::String => Self::from_length_prefixed(bytes),
            other => Self::from_le_bytes(other, bytes),
        }
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
        let data = TensorData::zeros(&spec.element_type, n)?;
        Some(Tensor { shape, data })
    }
}

impl Tensor {
    /// Stacks tensors along the first axis: the same element type and the same shape beyond
    /// the first axis in all of them. `None` when they differ (or there are none).
    pub fn concat_rows(parts: Vec<Tensor>) -> Option<Tensor> {
        let mut parts = parts.into_iter();
        let mut stacked = parts.next()?;
        if stacked.shape.is_empty() {
            return None;
        }
        for part in parts {
            if part.shape.get(1..) != stacked.shape.get(1..) || !stacked.data.append(part.data) {
                return None;
            }
            stacked.shape[0] += part.shape[0];
        }
        Some(stacked)
    }

    /// Splits off the rows from `at` on (the first axis), leaving the first `at` rows here.
    /// `None` when the tensor has no first axis or fewer rows.
    pub fn split_rows(&mut self, at: usize) -> Option<Tensor> {
        let rows = *self.shape.first()?;
        if at > rows {
            return None;
        }
        let row_len: usize = self.shape[1..].iter().product();
        let data = self.data.split_off(at * row_len);
        let mut shape = self.shape.clone();
        shape[0] = rows - at;
        self.shape[0] = at;
        Some(Tensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stack_and_split_back_to_the_parts() {
        let a = Tensor {
            shape: vec![1, 2],
            data: TensorData::F32(vec![1.0, 2.0]),
        };
        let b = Tensor {
            shape: vec![2, 2],
            data: TensorData::F32(vec![3.0, 4.0, 5.0, 6.0]),
        };
        let mut stacked = Tensor::concat_rows(vec![a.clone(), b.clone()]).expect("same rows");
        assert_eq!(stacked.shape, [3, 2]);
        let tail = stacked.split_rows(1).expect("3 rows");
        assert_eq!((stacked, tail), (a.clone(), b));
        let wider = Tensor {
            shape: vec![1, 3],
            data: TensorData::F32(vec![0.0; 3]),
        };
        assert_eq!(Tensor::concat_rows(vec![a.clone(), wider]), None);
        let ints = Tensor {
            shape: vec![1, 2],
            data: TensorData::I64(vec![1, 2]),
        };
        assert_eq!(Tensor::concat_rows(vec![a.clone(), ints]), None);
        let mut a = a;
        assert_eq!(a.split_rows(2), None, "only one row");
    }

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
        let unknown = TensorSpec {
            element_type: ElementType::Other("complex64".into()),
            ..spec
        };
        assert_eq!(Tensor::zeros(&unknown), None);
    }

    #[test]
    fn raw_bytes_round_trip_for_every_type() {
        for t in ElementType::SUPPORTED {
            let data = TensorData::zeros(&t, 3).expect("supported");
            let bytes = data.to_le_bytes();
            assert_eq!(TensorData::from_raw(&t, &bytes), Ok(data), "{t}");
        }
        let values = TensorData::I16(vec![-2, 300]);
        assert_eq!(values.to_le_bytes(), [0xfe, 0xff, 0x2c, 0x01]);
        let text = TensorData::String(vec!["ab".into(), String::new()]);
        assert_eq!(text.to_le_bytes(), [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    }

    #[test]
    fn malformed_raw_bytes_are_refused_with_the_reason() {
        let err = TensorData::from_raw(&ElementType::F32, &[0; 6]).expect_err("ragged");
        assert!(
            err.contains("6 bytes is not a whole number of float32"),
            "{err}"
        );
        let err = TensorData::from_raw(&ElementType::String, &[255, 255, 255, 255, b'x'])
            .expect_err("forged length");
        assert!(
            err.contains("declares 4294967295 bytes but only 1 remain"),
            "{err}"
        );
        let err =
            TensorData::from_raw(&ElementType::String, &[1, 0, 0, 0, 0xff]).expect_err("utf8");
        assert!(err.contains("not UTF-8"), "{err}");
        let err = TensorData::from_raw(&ElementType::String, &[1, 0]).expect_err("short");
        assert!(err.contains("cannot hold a length"), "{err}");
    }
}
