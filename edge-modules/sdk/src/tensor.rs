//! Typed views of [`Tensor`]s: made from and read as Rust numbers, so that a module never
//! handles the little-endian bytes the interface carries.

use crate::{ElementType, Tensor};

macro_rules! constructors {
    ($($name:ident($ty:ty) = $variant:ident),* $(,)?) => {
        impl Tensor {
            $(
                #[doc = concat!("A tensor of `", stringify!($ty), "` values; `shape` must hold `values.len()` elements.")]
                pub fn $name(name: &str, shape: &[u64], values: &[$ty]) -> Tensor {
                    Tensor {
                        name: name.to_owned(),
                        element_type: ElementType::$variant,
                        shape: shape.to_vec(),
                        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    }
                }
            )*
        }
    };
}

constructors! {
    from_f32(f32) = F32,
    from_f64(f64) = F64,
    from_i32(i32) = I32,
    from_i64(i64) = I64,
    from_u8(u8) = U8,
}

impl Tensor {
    /// Elements in the tensor, by its shape.
    pub fn len(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element as `f64`, whatever the numeric type (booleans are 0 and 1).
    pub fn to_f64(&self) -> Result<Vec<f64>, String> {
        fn read<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f64) -> Vec<f64> {
            data.chunks_exact(N)
                .map(|c| f(c.try_into().unwrap_or([0; N])))
                .collect()
        }
        let data = &self.data;
        Ok(match self.element_type {
            ElementType::Boolean => data.iter().map(|&b| f64::from(u8::from(b != 0))).collect(),
            ElementType::U8 => data.iter().map(|&b| f64::from(b)).collect(),
            ElementType::I8 => data.iter().map(|&b| f64::from(b as i8)).collect(),
            ElementType::U16 => read(data, |b| f64::from(u16::from_le_bytes(b))),
            ElementType::I16 => read(data, |b| f64::from(i16::from_le_bytes(b))),
            ElementType::U32 => read(data, |b| f64::from(u32::from_le_bytes(b))),
            ElementType::I32 => read(data, |b| f64::from(i32::from_le_bytes(b))),
            ElementType::U64 => read(data, |b| u64::from_le_bytes(b) as f64),
            ElementType::I64 => read(data, |b| i64::from_le_bytes(b) as f64),
            ElementType::F16 => read(data, |b| f16_to_f64(u16::from_le_bytes(b))),
            ElementType::F32 => read(data, |b| f64::from(f32::from_le_bytes(b))),
            ElementType::F64 => read(data, f64::from_le_bytes),
            ElementType::Bytes => {
                return Err(format!("{} holds byte strings, not numbers", self.name));
            }
        })
    }

    /// Every element as `f32` (see [`Tensor::to_f64`]).
    pub fn to_f32(&self) -> Result<Vec<f32>, String> {
        Ok(self.to_f64()?.into_iter().map(|v| v as f32).collect())
    }

    /// Every element as `i64`, fractions cut off (see [`Tensor::to_f64`]).
    pub fn to_i64(&self) -> Result<Vec<i64>, String> {
        if let ElementType::I64 = self.element_type {
            return Ok(self
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect());
        }
        Ok(self.to_f64()?.into_iter().map(|v| v as i64).collect())
    }
}

/// IEEE half precision to f64 (no half type in std).
fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let fraction = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * fraction * 2f64.powi(-24),
        31 if fraction == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + fraction / 1024.0) * 2f64.powi(exponent - 15),
    }
}
