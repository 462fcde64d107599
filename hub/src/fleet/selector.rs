//! Label selectors in the `kubectl get -l` syntax, which target deployments at devices by their
//! labels: parsing with precise errors, matching, and the canonical text they are stored as.
//!
//! Design: one extension to the Kubernetes syntax, double-quoted values (`"a b"`, with `\"` and
//! `\\`). Label values may hold spaces, commas and parentheses (the name rules only forbid
//! control characters), and every selector, including one converted from an equality map, must
//! survive `Display` → `parse` unchanged, because the canonical text is what gets stored.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use edgeship_domain::names;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Requirements on a device's labels, all of which must hold. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

/// One requirement on a device's labels. The negative ones (`NotEquals`, `NotIn`,
/// `NotExists`) also hold when the key is absent, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A selector that cannot be parsed: what is wrong, and where (1-based character column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (at column {column} of `{text}`)")]
pub struct SelectorError {
    pub text: String,
    pub column: usize,
    pub reason: String,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        Parser { text, pos: 0 }.selector()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|term| term.matches(labels))
    }

    /// The terms in the order they were written.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }
}

/// The selector equivalent to a deployment's older equality map (every label must be equal);
/// `None` for an empty map, which selects by nothing. The entries were checked against the
/// label rules when they were stored, so they are taken as they are.
pub fn from_equalities(map: &BTreeMap<String, String>) -> Option<Selector> {
    if map.is_empty() {
        return None;
    }
    let terms = map
        .iter()
        .map(|(key, value)| Term::Equals(key.clone(), value.clone()))
        .collect();
    Some(Selector { terms })
}

impl Term {
    pub fn key(&self) -> &str {
        match self {
            Term::Equals(key, _)
            | Term::NotEquals(key, _)
            | Term::In(key, _)
            | Term::NotIn(key, _)
            | Term::Exists(key)
            | Term::NotExists(key) => key,
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(self.key());
        match self {
            Term::Equals(_, wanted) => value == Some(wanted),
            Term::NotEquals(_, unwanted) => value != Some(unwanted),
            Term::In(_, set) => value.is_some_and(|v| set.contains(v)),
            Term::NotIn(_, set) => !value.is_some_and(|v| set.contains(v)),
            Term::Exists(_) => value.is_some(),
            Term::NotExists(_) => value.is_none(),
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, term) in self.terms.iter().enumerate() {
            write!(f, "{}{term}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, set) = match self {
            Term::Equals(key, value) => return write!(f, "{key}={}", Quoted(value)),
            Term::NotEquals(key, value) => return write!(f, "{key}!={}", Quoted(value)),
            Term::Exists(key) => return f.write_str(key),
            Term::NotExists(key) => return write!(f, "!{key}"),
            Term::In(key, set) => (format!("{key} in"), set),
            Term::NotIn(key, set) => (format!("{key} notin"), set),
        };
        write!(f, "{key} (")?;
        for (i, value) in set.iter().enumerate() {
            write!(f, "{}{}", if i == 0 { "" } else { "," }, Quoted(value))?;
        }
        f.write_str(")")
    }
}

/// A value as the parser reads it back: bare when it can be, else quoted.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Empty is quoted too: `k=""` says what it means, where `k=` looks like a typo.
        if !self.0.is_empty() && !self.0.chars().any(ends_word) {
            return f.write_str(self.0);
        }
        f.write_str("\"")?;
        for c in self.0.chars() {
            let escape = if matches!(c, '"' | '\\') { "\\" } else { "" };
            write!(f, "{escape}{c}")?;
        }
        f.write_str("\"")
    }
}

// Stored as the canonical text, so JSON records and YAML manifests hold what a person types.
impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Characters that end a bare key, operator or value. Keys never contain them (the name rules
/// forbid them); values that do are written quoted.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '(' | ')' | '"' | '\\') || is_operator(c)
}

/// Characters of symbolic operators. A run of them is read whole, so that `=~` or `<` is
/// reported as an unknown operator rather than as a strange value.
fn is_operator(c: char) -> bool {
    matches!(c, '=' | '!' | '~' | '<' | '>')
}

/// A recursive-descent reader; `pos` is a byte offset, reported as a character column.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn fail<T>(&self, at: usize, reason: impl Into<String>) -> Result<T, SelectorError> {
        Err(SelectorError {
            text: self.text.to_owned(),
            column: self.text[..at].chars().count() + 1,
            reason: reason.into(),
        })
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn next_char(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn eat(&mut self, wanted: char) -> bool {
        let found = self.peek() == Some(wanted);
        self.pos += if found { wanted.len_utf8() } else { 0 };
        found
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> (usize, &'a str) {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|&c| keep(c)) {
            self.pos += c.len_utf8();
        }
        (start, &self.text[start..self.pos])
    }

    fn skip_whitespace(&mut self) {
        self.take_while(char::is_whitespace);
    }

    fn word(&mut self) -> (usize, &'a str) {
        self.take_while(|c| !ends_word(c))
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        self.skip_whitespace();
        if self.peek().is_none() {
            return self.fail(self.pos, "empty selector");
        }
        let mut terms = Vec::new();
        loop {
            terms.push(self.term()?);
            self.skip_whitespace();
            match self.next_char() {
                None => return Ok(Selector { terms }),
                Some(',') => {}
                Some(c) => {
                    let key = terms.last().map_or("", Term::key);
                    let reason = format!("expected ',' after the term for {key:?}, found {c:?}");
                    return self.fail(self.pos - c.len_utf8(), reason);
                }
            }
        }
    }

    fn term(&mut self) -> Result<Term, SelectorError> {
        self.skip_whitespace();
        let negated = self.eat('!');
        self.skip_whitespace();
        let (at, key) = self.word();
        match self.peek() {
            _ if !key.is_empty() => {}
            None | Some(',') if negated => return self.fail(at, "expected a label key after '!'"),
            None | Some(',') => return self.fail(at, "empty term"),
            Some(c) => return self.fail(at, format!("expected a label key, found {c:?}")),
        }
        names::key("label", key).or_else(|err| self.fail(at, err.0))?;
        let key = key.to_owned();
        self.skip_whitespace();
        let at_end = matches!(self.peek(), None | Some(','));
        if negated && !at_end {
            let reason = format!("`!{key}` tests absence and takes no operator or value");
            return self.fail(self.pos, reason);
        }
        if at_end {
            return Ok(if negated {
                Term::NotExists(key)
            } else {
                Term::Exists(key)
            });
        }
        let (at, operator) = match self.peek() {
            Some(c) if is_operator(c) => self.take_while(is_operator),
            _ => self.word(),
        };
        Ok(match operator {
            "=" | "==" => Term::Equals(key.clone(), self.value(&key, operator)?),
            "!=" => Term::NotEquals(key.clone(), self.value(&key, operator)?),
            "in" => Term::In(key.clone(), self.list(&key)?),
            "notin" => Term::NotIn(key.clone(), self.list(&key)?),
            "" => return self.fail(at, format!("expected an operator after {key:?}")),
            other => {
                let reason =
                    format!("unknown operator {other:?} after {key:?}: use =, !=, in or notin");
                return self.fail(at, reason);
            }
        })
    }

    /// A quoted or bare value that the label rules accept; `None` where none starts.
    fn item(&mut self, key: &str) -> Result<Option<String>, SelectorError> {
        let at = self.pos;
        let value = match self.peek() {
            Some('"') => self.quoted()?,
            Some(c) if !ends_word(c) => self.word().1.to_owned(),
            _ => return Ok(None),
        };
        names::label(key, &value).or_else(|err| self.fail(at, err.0))?;
        Ok(Some(value))
    }

    /// The value after `=`, `==` or `!=`. It may be empty, as in Kubernetes (`k=`), but only
    /// where the term visibly ends.
    fn value(&mut self, key: &str, operator: &str) -> Result<String, SelectorError> {
        self.skip_whitespace();
        match (self.item(key)?, self.peek()) {
            (Some(value), _) => Ok(value),
            (None, None | Some(',')) => Ok(String::new()),
            (None, Some(c)) => {
                let reason =
                    format!("expected a value after {operator:?} for {key:?}, found {c:?}");
                self.fail(self.pos, reason)
            }
        }
    }

    fn list(&mut self, key: &str) -> Result<BTreeSet<String>, SelectorError> {
        self.skip_whitespace();
        if !self.eat('(') {
            return self.fail(
                self.pos,
                format!("expected '(' to open the value list of {key:?}"),
            );
        }
        let mut values = BTreeSet::new();
        loop {
            self.skip_whitespace();
            let at = self.pos;
            match (self.item(key)?, self.peek()) {
                (Some(value), _) => values.insert(value),
                (None, None) => break,
                (None, Some(')')) if values.is_empty() => {
                    return self.fail(at, format!("empty value list for {key:?}"));
                }
                // Almost surely a typo (`(a,,b)`, `(a,)`); `""` asks for an empty value on purpose.
                (None, Some(',' | ')')) => {
                    return self.fail(at, format!("empty value in the value list of {key:?}"));
                }
                (None, Some(c)) => {
                    return self.fail(at, format!("unexpected {c:?} in the value list of {key:?}"));
                }
            };
            self.skip_whitespace();
            match self.next_char() {
                Some(',') => {}
                Some(')') => return Ok(values),
                None => break,
                Some(c) => {
                    let reason =
                        format!("expected ',' or ')' in the value list of {key:?}, found {c:?}");
                    return self.fail(self.pos - c.len_utf8(), reason);
                }
            }
        }
        self.fail(
            self.pos,
            format!("expected ')' to close the value list of {key:?}"),
        )
    }

    fn quoted(&mut self) -> Result<String, SelectorError> {
        let open = self.pos;
        self.pos += 1;
        let mut value = String::new();
        loop {
            let at = self.pos;
            match self.next_char() {
                None => return self.fail(open, "unterminated quoted value"),
                Some('"') => return Ok(value),
                Some('\\') => match self.next_char() {
                    Some(c @ ('"' | '\\')) => value.push(c),
                    _ => return self.fail(at, r#"unknown escape: only \" and \\ are escapes"#),
                },
                Some(c) => value.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn parse(text: &str) -> Selector {
        Selector::parse(text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
    }

    #[test]
    fn every_operator_parses_with_or_without_whitespace() {
        let eq = |v: &str| Term::Equals("s".into(), v.into());
        let ne = Term::NotEquals("s".into(), "b".into());
        let is_in = Term::In("s".into(), set(&["b", "p"]));
        let not_in = Term::NotIn("s".into(), set(&["b", "p"]));
        #[rustfmt::skip] // one case a line reads as a table
        let cases = [
            ("s=b", eq("b")),
            ("s==b", eq("b")),
            ("  s = b  ", eq("b")),
            ("s\t==\tb", eq("b")),
            ("s=", eq("")),
            (r#"s="""#, eq("")),
            (r#"s="a b, (c)""#, eq("a b, (c)")),
            ("s!=b", ne.clone()),
            (" s != b ", ne),
            ("s in (b,p)", is_in.clone()),
            ("s in(p, b)", is_in.clone()),
            (" s  in ( b , p , b ) ", is_in),
            ("s notin (b,p)", not_in.clone()),
            ("s notin(p,b)", not_in),
            (r#"s in ("x\"y", "\\")"#, Term::In("s".into(), set(&["x\"y", "\\"]))),
            ("  s  ", Term::Exists("s".into())),
            ("! s", Term::NotExists("s".into())),
            ("in in (in)", Term::In("in".into(), set(&["in"]))),
            ("notin", Term::Exists("notin".into())),
            ("example.com/zone=eu:1", Term::Equals("example.com/zone".into(), "eu:1".into())),
        ];
        for (text, term) in cases {
            assert_eq!(parse(text).terms(), [term], "{text:?}");
        }
        let example = parse("site in (berlin,paris),accelerator=opencl,!canary");
        let expected = [
            Term::In("site".into(), set(&["berlin", "paris"])),
            Term::Equals("accelerator".into(), "opencl".into()),
            Term::NotExists("canary".into()),
        ];
        assert_eq!(example.terms(), expected);
    }

    #[test]
    fn display_is_canonical_and_parses_back_to_the_same_selector() {
        let cases = [
            ("site==berlin", "site=berlin"),
            (" site != berlin ", "site!=berlin"),
            ("site in ( paris , berlin )", "site in (berlin,paris)"),
            ("site notin(b,a,b)", "site notin (a,b)"),
            ("gpu , ! canary", "gpu,!canary"),
            ("k=", r#"k="""#),
            (r#"k = "two words""#, r#"k="two words""#),
            (r#"k in ("a,b", c)"#, r#"k in ("a,b",c)"#),
            (r#"k!="=x""#, r#"k!="=x""#),
            (r#"k="q\"\\""#, r#"k="q\"\\""#),
            ("k=zürich", "k=zürich"),
            ("b=2,a=1", "b=2,a=1"),
        ];
        for (text, canonical) in cases {
            let selector = parse(text);
            assert_eq!(selector.to_string(), canonical, "{text:?}");
            assert_eq!(canonical.parse::<Selector>(), Ok(selector), "{canonical:?}");
        }
    }

    #[test]
    fn each_operator_matches_as_kubernetes_does_with_the_key_present_or_absent() {
        let berlin = labels(&[("site", "berlin")]);
        let rome = labels(&[("site", "rome")]);
        let absent = labels(&[("gpu", "yes")]);
        // (selector, matches berlin, matches rome, matches absent key)
        let table = [
            ("site=berlin", true, false, false),
            ("site!=berlin", false, true, true),
            ("site in (berlin,paris)", true, false, false),
            ("site notin (berlin,paris)", false, true, true),
            ("site", true, true, false),
            ("!site", false, false, true),
            ("site,site!=rome", true, false, false),
            ("site in (berlin),gpu", false, false, false),
            ("site=", false, false, false),
        ];
        for (text, on_berlin, on_rome, on_absent) in table {
            let selector = parse(text);
            assert_eq!(selector.matches(&berlin), on_berlin, "{text:?} on berlin");
            assert_eq!(selector.matches(&rome), on_rome, "{text:?} on rome");
            assert_eq!(selector.matches(&absent), on_absent, "{text:?} on absent");
        }
        assert!(parse("site=").matches(&labels(&[("site", "")])));
        assert!(parse("site,gpu=yes").matches(&labels(&[("site", "x"), ("gpu", "yes")])));
    }

    #[test]
    fn malformed_selectors_say_what_is_wrong_and_where() {
        let long = format!("k={}", "v".repeat(1025));
        // (selector, part of the reason, column)
        #[rustfmt::skip]
        let cases: &[(&str, &str, usize)] = &[
            ("", "empty selector", 1),
            ("   ", "empty selector", 4),
            ("a,,b", "empty term", 3),
            ("a,", "empty term", 3),
            (",a", "empty term", 1),
            ("a, ,b", "empty term", 4),
            ("!", "expected a label key after '!'", 2),
            ("=x", "expected a label key, found '='", 1),
            ("k=ü,=x", "expected a label key, found '='", 5),
            ("s in (b", r#"expected ')' to close the value list of "s""#, 8),
            ("s in (", "expected ')' to close", 7),
            ("s in ()", r#"empty value list for "s""#, 7),
            ("s notin ( )", r#"empty value list for "s""#, 11),
            ("s in (a,,b)", r#"empty value in the value list of "s""#, 9),
            ("s in (a,)", "empty value in the value list", 9),
            ("s in (a b)", r#"expected ',' or ')' in the value list of "s", found 'b'"#, 9),
            ("s in (a=b)", "expected ',' or ')'", 8),
            ("s in ((a))", r#"unexpected '(' in the value list of "s""#, 7),
            ("s in a", r#"expected '(' to open the value list of "s""#, 6),
            ("s=~b", r#"unknown operator "=~" after "s""#, 2),
            ("s<3", r#"unknown operator "<""#, 2),
            ("s === x", r#"unknown operator "===""#, 3),
            ("s inn (a)", r#"unknown operator "inn""#, 3),
            ("s (a)", r#"expected an operator after "s""#, 3),
            ("s=(a)", r#"expected a value after "=" for "s", found '('"#, 3),
            ("s = = x", r#"expected a value after "=""#, 5),
            ("s=a b", r#"expected ',' after the term for "s", found 'b'"#, 5),
            ("s=a=b", r#"expected ',' after the term for "s", found '='"#, 4),
            ("s in (a) x", "expected ',' after the term", 10),
            ("!canary=yes", "`!canary` tests absence and takes no operator or value", 8),
            (r#"k="open"#, "unterminated quoted value", 3),
            (r#"k="a\nb""#, "unknown escape", 5),
            ("si$te=x", r#"invalid label key "si$te""#, 1),
            ("zürich=x", "invalid label key", 1),
            ("a=1, b$", r#"invalid label key "b$""#, 6),
            ("k=\"bad\u{7}\"", r#"label "k" has a value with control characters"#, 3),
            ("k in (ok, \"\u{7}\")", "control characters", 11),
            (&long, "the limit is 1024", 3),
        ];
        for &(text, reason, column) in cases {
            let err = Selector::parse(text).expect_err(text);
            assert!(err.reason.contains(reason), "{text:?}: {err}");
            assert_eq!((err.column, err.text.as_str()), (column, text), "{err}");
        }
        let message = Selector::parse("site in ()")
            .expect_err("empty list")
            .to_string();
        assert_eq!(
            message,
            r#"empty value list for "site" (at column 10 of `site in ()`)"#
        );
    }

    #[test]
    fn equality_maps_convert_to_selectors_that_select_the_same_devices() {
        assert_eq!(from_equalities(&BTreeMap::new()), None);
        let map = labels(&[("site", "north pole, (b)"), ("gpu", "")]);
        let selector = from_equalities(&map).expect("non-empty map");
        assert_eq!(parse(&selector.to_string()), selector);
        let mut more = map.clone();
        more.insert("x".into(), "y".into());
        assert!(selector.matches(&map) && selector.matches(&more));
        assert!(!selector.matches(&labels(&[("site", "north pole, (b)")])));
    }

    #[test]
    fn selectors_are_stored_as_their_canonical_text() {
        let selector = parse("site in (paris, berlin), !canary");
        let json = serde_json::to_string(&selector).expect("serialize");
        assert_eq!(json, r#""site in (berlin,paris),!canary""#);
        let back: Selector = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, selector);
        let err = serde_json::from_str::<Selector>(r#""site in ()""#).expect_err("invalid");
        assert!(
            err.to_string().contains(r#"empty value list for "site""#),
            "{err}"
        );
        assert!(serde_json::from_str::<Selector>("3").is_err());
    }
}
