//! Property tests of manifest parsing: any text, and the documented manifest damaged
//! anywhere, give a spec or an error that names where it is wrong, never a panic.

use super::tests::{FULL, validate};

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 384, ..Default::default() })]

    /// Any text, YAML or not, is a manifest or an error naming where it is wrong.
    #[test]
    fn any_text_is_a_manifest_or_a_named_error(text in "\\PC{0,300}") {
        if let Err(err) = validate(&text) {
            proptest::prop_assert!(!err.to_string().is_empty());
        }
    }

    /// The documented manifest with characters replaced anywhere still parses or fails
    /// cleanly, and what validates also writes back and reads again to the same spec.
    #[test]
    fn a_damaged_manifest_fails_cleanly_or_round_trips(
        edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<char>()), 1..4),
    ) {
        let mut chars: Vec<char> = FULL.chars().collect();
        for (position, replacement) in edits {
            let at = position % chars.len();
            chars[at] = replacement;
        }
        let text: String = chars.into_iter().collect();
        if let Ok(spec) = validate(&text) {
            let again = spec.to_manifest().validate().expect("a spec's manifest validates");
            proptest::prop_assert_eq!(again, spec);
        }
    }
}
