//! A one-pass JSON reader for the bodies scoring requests usually send (plain keys and
//! strings, numbers, nested arrays of numbers), used before `serde_json` so that a small
//! model's request is not parsed twice (once to find its tensor data, once to read it).
//!
//! It reads numbers to exactly the values `serde_json` gives: for a number whose digits fit in
//! 64 bits as an integer (leading zeros of a fraction too) and whose exponent is at most 308
//! either way, `serde_json` (without its `float_roundtrip` feature, which nothing here
//! enables; the tests would see it) converts the digits to a float and multiplies or divides
//! by the nearest float to the power of ten, and so does this reader. For anything else
//! (escaped strings, numbers with more digits, larger exponents, deep nesting, anything that
//! is not valid JSON) it gives up and the caller goes the general way, which also words the
//! errors.

use std::sync::OnceLock;

use edgeship_runtime::TensorData;

/// Deepest nesting the reader follows; deeper bodies go the general way.
const MAX_DEPTH: usize = 32;

/// The powers of ten serde_json scales by, 1e0 to 1e308, each the float nearest to it (as
/// serde_json's own table of literals holds them).
fn powers_of_ten() -> &'static [f64; 309] {
    static POWERS: OnceLock<[f64; 309]> = OnceLock::new();
    POWERS.get_or_init(|| {
        std::array::from_fn(|exponent| format!("1e{exponent}").parse().unwrap_or(f64::INFINITY))
    })
}

/// One JSON leaf, as serde_json hands it to a visitor (non-negative integers as `U`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Leaf {
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
}

impl Leaf {
    /// As `values_from_json` converts an integer: exactly, or not at all.
    pub fn int<T: TryFrom<i64> + TryFrom<u64>>(self) -> Option<T> {
        match self {
            Leaf::U(u) => T::try_from(u).ok(),
            Leaf::I(i) => T::try_from(i).ok(),
            Leaf::Bool(_) | Leaf::F(_) => None,
        }
    }

    /// As `values_from_json` converts a number to a float: through f64.
    pub fn float(self) -> Option<f64> {
        match self {
            Leaf::U(u) => Some(u as f64),
            Leaf::I(i) => Some(i as f64),
            Leaf::F(x) => Some(x),
            Leaf::Bool(_) => None,
        }
    }

    /// Appends this leaf to `values`; `false` where it is not a value of their type.
    pub fn push_to(self, values: &mut TensorData) -> bool {
        fn put<T>(values: &mut Vec<T>, value: Option<T>) -> bool {
            value.map(|v| values.push(v)).is_some()
        }
        match values {
            TensorData::Bool(v) => put(
                v,
                match self {
                    Leaf::Bool(b) => Some(b),
                    _ => None,
                },
            ),
            TensorData::U8(v) => put(v, self.int()),
            TensorData::U16(v) => put(v, self.int()),
            TensorData::U32(v) => put(v, self.int()),
            TensorData::U64(v) => put(v, self.int()),
            TensorData::I8(v) => put(v, self.int()),
            TensorData::I16(v) => put(v, self.int()),
            TensorData::I32(v) => put(v, self.int()),
            TensorData::I64(v) => put(v, self.int()),
            TensorData::F16(v) => put(v, self.float().map(edgeship_runtime::tensor::f16::from_f64)),
            TensorData::F32(v) => put(v, self.float().map(|x| x as f32)),
            TensorData::F64(v) => put(v, self.float()),
            TensorData::String(_) => false,
        }
    }
}

/// A position in a body. Every method returns `None` where the reader gives up.
#[derive(Debug)]
pub struct Scanner<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Scanner<'b> {
    pub fn new(bytes: &'b [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// The next byte after whitespace, not consumed.
    pub fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `byte` (after whitespace) if it comes next.
    pub fn eat(&mut self, byte: u8) -> bool {
        let next = self.peek() == Some(byte);
        self.at += usize::from(next);
        next
    }

    /// Consumes `byte` (after whitespace), or gives up.
    pub fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// A string without escapes or control characters.
    pub fn string(&mut self) -> Option<&'b str> {
        self.expect(b'"')?;
        let start = self.at;
        let length = self.bytes[start..].iter().position(|&b| b == b'"')?;
        let text = &self.bytes[start..start + length];
        if text.iter().any(|&b| b == b'\\' || b < 0x20) {
            return None;
        }
        self.at = start + length + 1;
        std::str::from_utf8(text).ok()
    }

    /// The key of an object's next member and its colon; `Ok(None)` at the object's end.
    /// `first` is whether no member was read yet.
    fn key(&mut self, first: bool) -> Option<Option<&'b str>> {
        if self.eat(b'}') {
            return Some(None);
        }
        if !first {
            self.expect(b',')?;
        }
        let key = self.string()?;
        self.expect(b':')?;
        Some(Some(key))
    }

    /// Reads an object: `member` is given each key in turn and reads its value.
    pub fn object(
        &mut self,
        member: &mut impl FnMut(&mut Self, &'b str) -> Option<()>,
    ) -> Option<()> {
        self.expect(b'{')?;
        let mut first = true;
        while let Some(key) = self.key(first)? {
            first = false;
            member(self, key)?;
        }
        Some(())
    }

    /// Reads an array: `element` reads each element in turn.
    pub fn array(&mut self, element: &mut impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        let mut first = true;
        while self.next_element(first)? {
            first = false;
            element(self)?;
        }
        Some(())
    }

    /// Whether the array being read has another element: consumes `,` or the closing `]`.
    /// `first` is whether no element was read yet.
    fn next_element(&mut self, first: bool) -> Option<bool> {
        if self.eat(b']') {
            return Some(false);
        }
        if !first {
            self.expect(b',')?;
        }
        Some(true)
    }

    /// `true`, `false` or a number.
    pub fn leaf(&mut self) -> Option<Leaf> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| Leaf::Bool(true)),
            b'f' => self.literal(b"false").map(|()| Leaf::Bool(false)),
            _ => self.number(),
        }
    }

    /// `null` if it comes next.
    pub fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal(b"null").is_some()
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A number, to the value serde_json would give.
    pub fn number(&mut self) -> Option<Leaf> {
        self.peek()?;
        let bytes = self.bytes;
        let digit = |at: usize| {
            bytes
                .get(at)
                .map(|b| b.wrapping_sub(b'0'))
                .filter(|d| *d < 10)
        };
        let mut at = self.at;
        let negative = bytes[at] == b'-';
        at += usize::from(negative);
        // serde_json keeps the digits in a u64 while they fit (a fraction's leading zeros
        // cost nothing) and reads longer ones another way; this reader gives up there.
        let push = |significand: u64, d: u8| significand.checked_mul(10)?.checked_add(u64::from(d));
        let mut significand = u64::from(digit(at)?);
        at += 1;
        if significand == 0 && digit(at).is_some() {
            return None; // a leading zero: not JSON
        }
        while let Some(d) = digit(at) {
            significand = push(significand, d)?;
            at += 1;
        }
        let mut exponent: i32 = 0;
        let mut float = false;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            float = true;
            let start = at;
            while let Some(d) = digit(at) {
                significand = push(significand, d)?;
                at += 1;
            }
            if at == start {
                return None;
            }
            exponent = -i32::try_from(at - start).ok()?;
        }
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            float = true;
            let sign = match bytes.get(at) {
                Some(b'-') => -1,
                Some(b'+') => 1,
                _ => 0,
            };
            at += usize::from(sign != 0);
            let start = at;
            let mut power: i32 = 0;
            while let Some(d) = digit(at) {
                power = power * 10 + i32::from(d);
                if power > 1000 {
                    return None;
                }
                at += 1;
            }
            if at == start {
                return None;
            }
            exponent += if sign < 0 { -power } else { power };
        }
        self.at = at;
        if !float {
            return Some(if !negative {
                Leaf::U(significand)
            } else {
                // As serde_json: `-0` and integers below i64's range become floats.
                let value = (significand as i64).wrapping_neg();
                if value >= 0 {
                    Leaf::F(-(significand as f64))
                } else {
                    Leaf::I(value)
                }
            });
        }
        let power = *powers_of_ten().get(exponent.unsigned_abs() as usize)?;
        let magnitude = if exponent >= 0 {
            significand as f64 * power
        } else {
            significand as f64 / power
        };
        // serde_json refuses what overflows.
        magnitude
            .is_finite()
            .then_some(Leaf::F(if negative { -magnitude } else { magnitude }))
    }

    /// Reads a leaf or nested arrays of leaves (at any depth, ragged or not), handing each
    /// leaf to `take` in row-major order; gives up where `take` refuses one.
    pub fn leaves(&mut self, take: &mut impl FnMut(Leaf) -> bool) -> Option<()> {
        self.leaves_at(0, take)
    }

    fn leaves_at(&mut self, depth: usize, take: &mut impl FnMut(Leaf) -> bool) -> Option<()> {
        if self.peek()? != b'[' {
            return take(self.leaf()?).then_some(());
        }
        if depth == MAX_DEPTH {
            return None;
        }
        self.array(&mut |scanner| scanner.leaves_at(depth + 1, take))
    }

    /// Reads rectangular nested arrays of numbers (no empty array; a lone number has the
    /// empty shape) as floats, handing each to `take` in row-major order; returns the shape.
    pub fn rectangle(&mut self, take: &mut impl FnMut(f64)) -> Option<Vec<usize>> {
        let mut shape = Rectangle {
            dims: Vec::new(),
            leaf_depth: None,
        };
        self.rectangle_at(0, &mut shape, take)?;
        (shape.leaf_depth == Some(shape.dims.len())).then_some(shape.dims)
    }

    fn rectangle_at(
        &mut self,
        depth: usize,
        shape: &mut Rectangle,
        take: &mut impl FnMut(f64),
    ) -> Option<()> {
        if self.peek()? != b'[' {
            // A number: every one must be at the same depth, below every array.
            match shape.leaf_depth {
                None if shape.dims.len() <= depth => shape.leaf_depth = Some(depth),
                Some(at) if at == depth => {}
                _ => return None,
            }
            take(self.number()?.float()?);
            return Some(());
        }
        if depth == MAX_DEPTH || shape.leaf_depth.is_some_and(|at| at <= depth) {
            return None;
        }
        let mut count = 0usize;
        self.array(&mut |scanner| {
            count += 1;
            scanner.rectangle_at(depth + 1, shape, take)
        })?;
        if shape.dims.len() <= depth {
            shape.dims.resize(depth + 1, 0);
        }
        match shape.dims[depth] {
            _ if count == 0 => None,
            0 => {
                shape.dims[depth] = count;
                Some(())
            }
            known => (known == count).then_some(()),
        }
    }

    /// Skips any value made of what the reader takes (strings without escapes, numbers,
    /// literals, arrays and objects of them).
    pub fn skip(&mut self) -> Option<()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Option<()> {
        if depth == MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.null().then_some(()),
            b'[' => self.array(&mut |scanner| scanner.skip_at(depth + 1)),
            b'{' => self.object(&mut |scanner, _| scanner.skip_at(depth + 1)),
            _ => self.leaf().map(drop),
        }
    }
}

/// The shape [`Scanner::rectangle`] has found so far.
struct Rectangle {
    /// The length of the arrays at each depth (0 until one at that depth ends).
    dims: Vec<usize>,
    /// The depth of the numbers (all must be at one).
    leaf_depth: Option<usize>,
}

#[cfg(test)]
mod tests;
