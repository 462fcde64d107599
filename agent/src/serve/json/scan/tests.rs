//! The scanner against serde_json: numbers bit for bit, and what it leaves to the general way.

use proptest::prelude::*;
use serde_json::Value;

use super::*;

/// serde_json's reading of one number, as a visitor sees it.
fn serde_leaf(text: &str) -> Option<Leaf> {
    match serde_json::from_str::<Value>(text).ok()? {
        Value::Number(n) => Some(if let Some(u) = n.as_u64() {
            Leaf::U(u)
        } else if let Some(i) = n.as_i64() {
            Leaf::I(i)
        } else {
            Leaf::F(n.as_f64()?)
        }),
        Value::Bool(b) => Some(Leaf::Bool(b)),
        _ => None,
    }
}

fn scan_leaf(text: &str) -> Option<Leaf> {
    let mut scanner = Scanner::new(text.as_bytes());
    let leaf = scanner.leaf()?;
    scanner.at_end().then_some(leaf)
}

/// Bit for bit, so that -0.0 and 0.0 differ.
fn same(a: Leaf, b: Leaf) -> bool {
    match (a, b) {
        (Leaf::F(x), Leaf::F(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

#[test]
fn numbers_read_as_serde_json_reads_them() {
    for text in [
        "0",
        "-0",
        "0.0",
        "-0.0",
        "1",
        "-1",
        "0.3125",
        "12.5e3",
        "1E+2",
        "1e-5",
        "2e22",
        "18446744073709551615",
        "-9223372036854775808",
        "-9223372036854775809",
        "9007199254740993.0",
        "4.2879840123077884e-8",
        "0.1",
        "123456789012345678",
        "1e0",
        "5e-22",
        "true",
        "false",
    ] {
        let scanned = scan_leaf(text);
        let parsed = serde_leaf(text).expect("valid JSON");
        if let Some(scanned) = scanned {
            assert!(
                same(scanned, parsed),
                "{text}: {scanned:?} against {parsed:?}"
            );
        }
    }
    // The common ones are read, not left to the general way.
    for text in [
        "0",
        "-0",
        "0.3125",
        "1e-5",
        "-12.75",
        "4.2879840123077884e-8",
        "0.038075906433423026",
        "9007199254740993.0",
        // Twenty digits and more, whose significand still fits in 64 bits (the diabetes
        // fixture's inputs have such), and the largest integer.
        "-0.0018820165423676372",
        "0.000000000000000000000012345",
        "18446744073709551615",
        "true",
    ] {
        assert!(scan_leaf(text).is_some(), "{text}");
    }
    for text in [
        "01",
        "-",
        "1.",
        ".5",
        "+1",
        "1e",
        "1e+",
        "--1",
        "0x10",
        "1.5.2",
        "nul",
        "truth",
        "1e999",
        "18446744073709551616",
        "1.8446744073709551616",
        "1e-400",
        "\"1\"",
        "",
    ] {
        assert_eq!(scan_leaf(text), None, "{text}");
    }
    // A significand that fits, scaled past the table of powers of ten.
    let tiny = format!("0.{}1", "0".repeat(320));
    assert_eq!(scan_leaf(&tiny), None, "0.(320 zeros)1");
}

#[test]
fn strings_with_escapes_or_control_characters_are_left_to_the_general_way() {
    assert_eq!(
        Scanner::new("\"plain é\"".as_bytes()).string(),
        Some("plain é")
    );
    for text in [&br#""a\"b""#[..], b"\"a\nb\"", b"\"\xff\"", b"\"open"] {
        assert_eq!(Scanner::new(text).string(), None, "{text:?}");
    }
}

#[test]
fn rectangles_need_equal_rows_and_numbers_at_one_depth() {
    let read = |text: &str| {
        let mut values = Vec::new();
        let mut scanner = Scanner::new(text.as_bytes());
        let shape = scanner.rectangle(&mut |x| values.push(x))?;
        scanner.at_end().then_some((shape, values))
    };
    assert_eq!(
        read("[[1, 2.5], [3, 4]]"),
        Some((vec![2, 2], vec![1.0, 2.5, 3.0, 4.0]))
    );
    assert_eq!(read(" [ [ [7] ] ] "), Some((vec![1, 1, 1], vec![7.0])));
    assert_eq!(read("7"), Some((vec![], vec![7.0])));
    for text in [
        "[[1, 2], [3]]",
        "[[1], 2]",
        "[1, [2]]",
        "[[]]",
        "[]",
        "[[1, true]]",
        "[[1, null]]",
    ] {
        assert_eq!(read(text), None, "{text}");
    }
    let deep = format!(
        "{}1{}",
        "[".repeat(MAX_DEPTH + 1),
        "]".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(read(&deep), None);
}

#[test]
fn skipping_takes_nested_values_and_stops_at_the_depth_limit() {
    let mut scanner = Scanner::new(br#"{"a": [1, "x", null, {"b": false}], "c": {}} ,"#);
    assert_eq!(scanner.skip(), Some(()));
    assert!(scanner.eat(b','));
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert_eq!(Scanner::new(deep.as_bytes()).skip(), None);
}

fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|x| x.to_string()),
        any::<f32>().prop_map(|x| x.to_string()),
        any::<f64>().prop_map(|x| format!("{x:e}")),
        any::<i64>().prop_map(|x| x.to_string()),
        any::<u64>().prop_map(|x| x.to_string()),
        "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
        "-?(0|[1-9][0-9]{0,3})\\.0{0,30}[0-9]{1,20}([eE][+-]?[0-9]{1,3})?",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Every number the reader takes, serde_json reads to the same leaf, bit for bit.
    #[test]
    fn the_reader_agrees_with_serde_json(text in number_text()) {
        if let Some(scanned) = scan_leaf(&text) {
            let parsed = serde_leaf(&text);
            prop_assert!(parsed.is_some_and(|p| same(scanned, p)), "{}: {:?} against {:?}", text, scanned, parsed);
        }
    }
}
