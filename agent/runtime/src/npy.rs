//! The header of a NumPy `.npy` file (format versions 1–3): magic, version, and the Python
//! dict literal that gives the element type, the order and the shape. Only what a batch job's
//! input may be is accepted: little-endian or single-byte numbers and booleans, C order.
//! Errors are messages for the user, naming what is wrong. The hub checks a job's input with
//! it, and the agent reads the records with it.

use edgeship_domain::ElementType;

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy writes headers of a few hundred bytes; anything near this is not an `.npy` file.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    pub element_type: ElementType,
    pub item_size: u64,
    pub shape: Vec<u64>,
    /// Where the array's data starts.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Bytes of data the shape and element type call for.
    pub fn data_bytes(&self) -> Option<u64> {
        self.shape
            .iter()
            .try_fold(self.item_size, |acc, d| acc.checked_mul(*d))
    }
}

/// Parses the header at the start of `bytes` (the file's first bytes; more than the header is
/// fine).
pub fn parse(bytes: &[u8]) -> Result<NpyHeader, String> {
    if !bytes.starts_with(MAGIC) {
        return Err("it does not start with the .npy magic string (\\x93NUMPY)".into());
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[major, minor]) => (major, minor),
        _ => return Err("its header is cut short".into()),
    };
    let (len_bytes, start) = match major {
        1 => (2, 10),
        2 | 3 => (4, 12),
        _ => {
            return Err(format!(
                "format version {major}.{minor} is not supported (1.0 to 3.0 are)"
            ));
        }
    };
    let Some(len_field) = bytes.get(8..8 + len_bytes) else {
        return Err("its header is cut short".into());
    };
    let header_len = len_field
        .iter()
        .rev()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    if header_len > MAX_HEADER_BYTES {
        return Err(format!(
            "its header claims {header_len} bytes, more than an .npy header holds"
        ));
    }
    let Some(text) = bytes.get(start..start + header_len) else {
        return Err(format!(
            "its header is cut short ({header_len} bytes announced)"
        ));
    };
    let text = std::str::from_utf8(text).map_err(|_| "its header is not text".to_owned())?;
    let dict = Parser::new(text).dict()?;
    let descr = match dict.iter().find(|(k, _)| k == "descr") {
        Some((_, Value::Str(descr))) => descr.clone(),
        Some(_) => {
            return Err(
                "structured arrays (a 'descr' that is not a string) are not supported".into(),
            );
        }
        None => return Err("its header has no 'descr'".into()),
    };
    match dict.iter().find(|(k, _)| k == "fortran_order") {
        Some((_, Value::Bool(false))) => {}
        Some((_, Value::Bool(true))) => {
            return Err(
                "it is in Fortran order; save it in C order (numpy.ascontiguousarray)".into(),
            );
        }
        _ => return Err("its header has no 'fortran_order' True or False".into()),
    }
    let shape = match dict.iter().find(|(k, _)| k == "shape") {
        Some((_, Value::Tuple(shape))) => shape.clone(),
        _ => return Err("its header has no 'shape' tuple".into()),
    };
    let (element_type, item_size) = element_type(&descr)?;
    Ok(NpyHeader {
        element_type,
        item_size,
        shape,
        data_offset: (start + header_len) as u64,
    })
}

fn element_type(descr: &str) -> Result<(ElementType, u64), String> {
    let mut chars = descr.chars();
    let order = chars.next();
    let code = chars.as_str();
    let known = match code {
        "b1" => Some((ElementType::Bool, 1)),
        "i1" => Some((ElementType::I8, 1)),
        "i2" => Some((ElementType::I16, 2)),
        "i4" => Some((ElementType::I32, 4)),
        "i8" => Some((ElementType::I64, 8)),
        "u1" => Some((ElementType::U8, 1)),
        "u2" => Some((ElementType::U16, 2)),
        "u4" => Some((ElementType::U32, 4)),
        "u8" => Some((ElementType::U64, 8)),
        "f2" => Some((ElementType::F16, 2)),
        "f4" => Some((ElementType::F32, 4)),
        "f8" => Some((ElementType::F64, 8)),
        _ => None,
    };
    match (order, known) {
        (Some('>'), Some((_, size))) if size > 1 => Err(format!(
            "its element type {descr:?} is big-endian; save it little-endian (array.astype('<{code}'))"
        )),
        (Some('<' | '|' | '=' | '>'), Some(found)) => Ok(found),
        _ => Err(format!(
            "its element type {descr:?} is not supported (booleans, integers and floats are)"
        )),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
}

/// Reads the one Python literal numpy writes: `{'key': value, ...}` with string, boolean and
/// integer-tuple values.
struct Parser<'a> {
    rest: &'a str,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }

    fn skip_blanks(&mut self) {
        self.rest = self.rest.trim_start();
    }

    fn eat(&mut self, token: char) -> bool {
        self.skip_blanks();
        match self.rest.strip_prefix(token) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, token: char) -> Result<(), String> {
        match self.eat(token) {
            true => Ok(()),
            false => Err(format!("its header does not parse (expected {token:?})")),
        }
    }

    fn dict(&mut self) -> Result<Vec<(String, Value)>, String> {
        self.expect('{')?;
        let mut entries = Vec::new();
        loop {
            if self.eat('}') {
                return Ok(entries);
            }
            let key = self.string()?;
            self.expect(':')?;
            let value = self.value()?;
            entries.push((key, value));
            if !self.eat(',') {
                self.expect('}')?;
                return Ok(entries);
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_blanks();
        let quote = match self.rest.chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err("its header does not parse (expected a quoted string)".into()),
        };
        let body = &self.rest[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| "its header does not parse (an unclosed string)".to_owned())?;
        self.rest = &body[end + 1..];
        Ok(body[..end].to_owned())
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_blanks();
        if self.rest.starts_with(['\'', '"']) {
            return self.string().map(Value::Str);
        }
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(rest) = self.rest.strip_prefix(word) {
                self.rest = rest;
                return Ok(Value::Bool(value));
            }
        }
        if self.eat('(') {
            let mut dims = Vec::new();
            loop {
                if self.eat(')') {
                    return Ok(Value::Tuple(dims));
                }
                dims.push(self.integer()?);
                if !self.eat(',') {
                    self.expect(')')?;
                    return Ok(Value::Tuple(dims));
                }
            }
        }
        Err("its header does not parse (a value that is not a string, boolean or tuple)".into())
    }

    fn integer(&mut self) -> Result<u64, String> {
        self.skip_blanks();
        let digits = self.rest.len()
            - self
                .rest
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .len();
        let (number, rest) = self.rest.split_at(digits);
        self.rest = rest.strip_prefix('L').unwrap_or(rest);
        number
            .parse()
            .map_err(|_| "its header does not parse (a shape entry that is not a number)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes
    }

    #[test]
    fn headers_numpy_writes_parse() {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (300, 10), }          \n";
        let parsed = parse(&file(header)).expect("parses");
        assert_eq!(parsed.element_type, ElementType::F32);
        assert_eq!(parsed.shape, vec![300, 10]);
        assert_eq!(parsed.data_offset, 10 + header.len() as u64);
        assert_eq!(parsed.data_bytes(), Some(300 * 10 * 4));
        let single = parse(&file(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (7,), }\n",
        ))
        .expect("parses");
        assert_eq!(single.shape, vec![7]);
        let scalar = parse(&file(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (), }\n",
        ))
        .expect("parses");
        assert!(scalar.shape.is_empty());
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let cases = [
            (b"not numpy".to_vec(), "magic"),
            (
                file("{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }"),
                "big-endian",
            ),
            (
                file("{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }"),
                "Fortran order",
            ),
            (
                file("{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }"),
                "not supported",
            ),
            (
                file("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }"),
                "does not parse",
            ),
            (
                file("{'descr': '<f4', 'fortran_order': False, 'shape': (3, x), }"),
                "does not parse",
            ),
            (
                file("{'descr': '<f4', 'fortran_order': False}"),
                "no 'shape'",
            ),
            (
                MAGIC.iter().copied().chain([1, 0, 200, 0]).collect(),
                "cut short",
            ),
        ];
        for (bytes, expected) in cases {
            let err = parse(&bytes).expect_err(expected);
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
    }
}
