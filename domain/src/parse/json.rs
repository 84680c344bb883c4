//! JSON responses and the JSON pointers that find a detector's value in them.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{KeyError, MAX_KEY_LEN, ParseError, ValueProblem, finite, utf8_text};

/// An RFC 6901 JSON Pointer to a detector's value, such as `/temperature` or
/// `/detectors/0/value`.
///
/// Always valid: it is not empty (the empty pointer, meaning the whole document, is refused),
/// starts with `/`, has every `~` followed by `0` (for `~`) or `1` (for `/`), has no control
/// characters and is at most [`MAX_KEY_LEN`] bytes long.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JsonPointer(String);

impl JsonPointer {
    /// The pointer written as `text`, or the rule that `text` breaks.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if text.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { max: MAX_KEY_LEN });
        }
        if !text.starts_with('/') {
            return Err(KeyError::MissingLeadingSlash);
        }
        if text.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacter);
        }
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(KeyError::InvalidTilde);
            }
        }
        Ok(Self(text.to_owned()))
    }

    /// The pointer as written, e.g. `/detectors/0/value`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for JsonPointer {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for JsonPointer {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::parse(text)
    }
}

impl TryFrom<String> for JsonPointer {
    type Error = KeyError;

    fn try_from(text: String) -> Result<Self, KeyError> {
        Self::parse(&text)
    }
}

impl From<JsonPointer> for String {
    fn from(pointer: JsonPointer) -> Self {
        pointer.0
    }
}

/// A chamber's JSON response, parsed.
///
/// Parsed with `serde_json`, whose recursion limit (128 levels) protects the stack from deeply
/// nested bodies. A UTF-8 byte order mark is skipped. As a leniency for chambers that serialise
/// with Python's `json` module, the bare literals `NaN`, `Infinity` and `-Infinity` (outside
/// strings) are read as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`, so the detectors
/// they belong to get [`ValueProblem::NonFinite`] while the rest of the document stays usable.
///
/// A key that appears twice in one object (`{"t": 1, "t": 999}`) is remembered as ambiguous
/// rather than resolved to either value: a detector whose pointer passes through it gets
/// [`ValueProblem::Ambiguous`], and the other detectors of the body are unaffected.
///
/// Keys and strings without escapes borrow from the body: a body of eight detectors allocates
/// its objects, not each key.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonDocument<'a> {
    root: Node<'a>,
}

/// A JSON value as the lookups need it, with duplicated object keys kept as [`Node::Ambiguous`].
#[derive(Debug, Clone, PartialEq)]
enum Node<'a> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(BTreeMap<Cow<'a, str>, Node<'a>>),
    /// What an object holds under a key it has more than once.
    Ambiguous,
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(value))
    }

    #[allow(clippy::cast_precision_loss, reason = "JSON numbers are read as f64")]
    fn visit_i64<E>(self, value: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(value as f64))
    }

    #[allow(clippy::cast_precision_loss, reason = "JSON numbers are read as f64")]
    fn visit_u64<E>(self, value: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(value as f64))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Node<'de>, E> {
        Ok(Node::Number(value))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(value)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut entries = BTreeMap::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let value: Node<'de> = map.next_value()?;
            match entries.entry(key) {
                Entry::Vacant(vacant) => {
                    vacant.insert(value);
                }
                Entry::Occupied(mut taken) => {
                    taken.insert(Node::Ambiguous);
                }
            }
        }
        Ok(Node::Object(entries))
    }
}

/// An object's key, borrowed from the body unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(value))
    }
}

impl Node<'_> {
    /// The same value, owning its keys and strings.
    fn into_owned(self) -> Node<'static> {
        match self {
            Node::Null => Node::Null,
            Node::Bool(b) => Node::Bool(b),
            Node::Number(n) => Node::Number(n),
            Node::String(text) => Node::String(Cow::Owned(text.into_owned())),
            Node::Array(items) => Node::Array(items.into_iter().map(Node::into_owned).collect()),
            Node::Object(entries) => Node::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (Cow::Owned(key.into_owned()), value.into_owned()))
                    .collect(),
            ),
            Node::Ambiguous => Node::Ambiguous,
        }
    }

    /// What `pointer` (RFC 6901, as `serde_json::Value::pointer` reads it) reaches: `None` when
    /// nothing is there, [`Node::Ambiguous`] as soon as the path crosses a duplicated key.
    fn at(&self, pointer: &str) -> Option<&Self> {
        let mut here = self;
        for token in pointer.split('/').skip(1) {
            let token = unescape(token);
            here = match here {
                Node::Ambiguous => return Some(here),
                Node::Object(entries) => entries.get(token.as_ref())?,
                Node::Array(items) => items.get(array_index(&token)?)?,
                _ => return None,
            };
        }
        Some(here)
    }
}

/// A pointer token with `~1` read as `/` and `~0` as `~`.
fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        token.replace("~1", "/").replace("~0", "~").into()
    } else {
        token.into()
    }
}

/// An array index as RFC 6901 writes it: digits, no sign, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() > 1) {
        return None;
    }
    token.parse().ok()
}

impl<'a> JsonDocument<'a> {
    /// Parses a response body.
    ///
    /// Fails with [`ParseError::NotUtf8`] if `body` is not UTF-8, and with
    /// [`ParseError::Malformed`] (serde_json's message, with line and column) if it is not a
    /// JSON document.
    pub fn parse(body: &'a [u8]) -> Result<Self, ParseError> {
        let text = utf8_text(body)?;
        match serde_json::from_str(text) {
            Ok(root) => Ok(Self { root }),
            Err(error) => quote_non_finite_literals(text)
                .and_then(|quoted| {
                    serde_json::from_str::<Node<'_>>(&quoted)
                        .ok()
                        .map(Node::into_owned)
                })
                .map(|root| Self { root })
                .ok_or_else(|| ParseError::malformed(error)),
        }
    }

    /// The number at `pointer`.
    ///
    /// - a number is read as `f64`;
    /// - a string holding a number, ignoring surrounding whitespace (`"23.5"`, `" 1e3 "`), is
    ///   that number;
    /// - `true` is `1.0` and `false` is `0.0`;
    /// - `null`, or nothing at `pointer`, is [`ValueProblem::Missing`];
    /// - an array, an object or any other string is [`ValueProblem::Unparsable`];
    /// - NaN or an infinity (`"NaN"`, `"inf"`, `"-Infinity"`, `"1e999"`, ...) is
    ///   [`ValueProblem::NonFinite`];
    /// - a path through a key that its object has more than once is
    ///   [`ValueProblem::Ambiguous`].
    pub fn value(&self, pointer: &JsonPointer) -> Result<f64, ValueProblem> {
        match self.root.at(pointer.as_str()) {
            None | Some(Node::Null) => Err(ValueProblem::Missing),
            Some(Node::Ambiguous) => Err(ValueProblem::Ambiguous),
            Some(Node::Bool(true)) => Ok(1.0),
            Some(Node::Bool(false)) => Ok(0.0),
            Some(Node::Number(number)) => finite(*number),
            Some(Node::String(text)) => number_in_string(text),
            Some(Node::Array(_) | Node::Object(_)) => Err(ValueProblem::Unparsable),
        }
    }
}

/// The number that `text` holds, ignoring surrounding whitespace.
fn number_in_string(text: &str) -> Result<f64, ValueProblem> {
    text.trim()
        .parse::<f64>()
        .map_err(|_| ValueProblem::Unparsable)
        .and_then(finite)
}

/// `text` with the bare literals `NaN`, `Infinity` and `-Infinity` outside strings turned into
/// strings, or `None` if it has none.
fn quote_non_finite_literals(text: &str) -> Option<String> {
    const LITERALS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let is_word = |byte: &u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.');
    let bytes = text.as_bytes();
    let mut quoted: Option<String> = None;
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        if in_string {
            match byte {
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
            continue;
        }
        if byte == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let after_word = i
            .checked_sub(1)
            .and_then(|before| bytes.get(before))
            .is_some_and(is_word);
        let literal = LITERALS.iter().find(|literal| {
            bytes
                .get(i..)
                .is_some_and(|rest| rest.starts_with(literal.as_bytes()))
        });
        if let Some(literal) = literal
            && !after_word
            && !bytes.get(i + literal.len()).is_some_and(is_word)
        {
            let out = quoted.get_or_insert_with(|| String::with_capacity(text.len() + 16));
            out.push_str(text.get(copied..i)?);
            out.push('"');
            out.push_str(literal);
            out.push('"');
            i += literal.len();
            copied = i;
            continue;
        }
        i += 1;
    }
    let mut out = quoted?;
    out.push_str(text.get(copied..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn pointer(text: &str) -> JsonPointer {
        match JsonPointer::parse(text) {
            Ok(pointer) => pointer,
            Err(error) => panic!("{text:?}: {error}"),
        }
    }

    fn document(body: &str) -> JsonDocument<'_> {
        match JsonDocument::parse(body.as_bytes()) {
            Ok(document) => document,
            Err(error) => panic!("{body:?}: {error}"),
        }
    }

    fn value(body: &str, at: &str) -> Result<f64, ValueProblem> {
        document(body).value(&pointer(at))
    }

    // --- JsonPointer ---

    #[test]
    fn pointer_accepts_valid_pointers() {
        for text in [
            "/temperature",
            "/detectors/0/value",
            "/",
            "//",
            "/a~0b",
            "/a~1b",
            "/~01",
            "/ünïcødé/ key with spaces /%",
            "/a/-",
        ] {
            let parsed = pointer(text);
            assert_eq!(parsed.as_str(), text);
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parsed.as_ref(), text);
            assert_eq!(text.parse::<JsonPointer>(), Ok(parsed.clone()));
            assert_eq!(JsonPointer::try_from(text.to_owned()), Ok(parsed.clone()));
            assert_eq!(String::from(parsed), text);
        }
    }

    #[test]
    fn pointer_refuses_empty() {
        assert_eq!(JsonPointer::parse(""), Err(KeyError::Empty));
    }

    #[test]
    fn pointer_must_start_with_slash() {
        for text in ["temperature", " /a", "~0", "#/a"] {
            assert_eq!(
                JsonPointer::parse(text),
                Err(KeyError::MissingLeadingSlash),
                "{text:?}"
            );
        }
    }

    #[test]
    fn pointer_tilde_must_be_followed_by_0_or_1() {
        for text in ["/a~", "/a~2", "/~~0", "/a~/b", "/~é"] {
            assert_eq!(
                JsonPointer::parse(text),
                Err(KeyError::InvalidTilde),
                "{text:?}"
            );
        }
    }

    #[test]
    fn pointer_refuses_control_characters() {
        for text in ["/a\nb", "/a\tb", "/\0", "/a\u{7f}", "/a\u{85}"] {
            assert_eq!(
                JsonPointer::parse(text),
                Err(KeyError::ControlCharacter),
                "{text:?}"
            );
        }
    }

    #[test]
    fn pointer_is_at_most_512_bytes() {
        let longest = format!("/{}", "a".repeat(MAX_KEY_LEN - 1));
        assert_eq!(pointer(&longest).as_str().len(), MAX_KEY_LEN);
        let too_long = format!("/{}", "a".repeat(MAX_KEY_LEN));
        assert_eq!(
            JsonPointer::parse(&too_long),
            Err(KeyError::TooLong { max: MAX_KEY_LEN })
        );
        // Bytes, not characters.
        let multibyte = format!("/{}", "é".repeat(256));
        assert_eq!(
            JsonPointer::parse(&multibyte),
            Err(KeyError::TooLong { max: MAX_KEY_LEN })
        );
    }

    #[test]
    fn pointer_serde_validates() {
        let parsed: Result<JsonPointer, _> = serde_json::from_str(r#""/a/0""#);
        assert_eq!(parsed.ok(), Some(pointer("/a/0")));
        let refused: Result<JsonPointer, _> = serde_json::from_str(r#""a""#);
        assert!(refused.is_err());
        assert_eq!(
            serde_json::to_string(&pointer("/a~1b")).ok().as_deref(),
            Some(r#""/a~1b""#)
        );
    }

    // --- Repeated keys ---

    #[test]
    fn a_key_given_twice_is_ambiguous_whichever_value_comes_last() {
        assert_eq!(
            value(r#"{"t": 1, "t": 999}"#, "/t"),
            Err(ValueProblem::Ambiguous)
        );
        assert_eq!(
            value(r#"{"t": 999, "t": 1}"#, "/t"),
            Err(ValueProblem::Ambiguous)
        );
        // Even the same value twice: the chamber said the key twice.
        assert_eq!(
            value(r#"{"t": 1, "t": 1}"#, "/t"),
            Err(ValueProblem::Ambiguous)
        );
        // Three times, or once null and once a number.
        assert_eq!(
            value(r#"{"t": 1, "t": 2, "t": 3}"#, "/t"),
            Err(ValueProblem::Ambiguous)
        );
        assert_eq!(
            value(r#"{"t": null, "t": 2}"#, "/t"),
            Err(ValueProblem::Ambiguous)
        );
    }

    #[test]
    fn a_path_through_a_repeated_key_is_ambiguous_and_other_keys_are_not() {
        let body = r#"{"a": {"x": 1}, "a": {"x": 2}, "b": 3, "c": [{"v": 4, "v": 5}, {"v": 6}]}"#;
        assert_eq!(value(body, "/a/x"), Err(ValueProblem::Ambiguous));
        assert_eq!(value(body, "/a"), Err(ValueProblem::Ambiguous));
        assert_eq!(
            value(body, "/a/nothing/deeper"),
            Err(ValueProblem::Ambiguous)
        );
        assert_eq!(value(body, "/b"), Ok(3.0));
        assert_eq!(value(body, "/c/0/v"), Err(ValueProblem::Ambiguous));
        assert_eq!(value(body, "/c/1/v"), Ok(6.0));
        // The same key in two different objects is not a repeat.
        assert_eq!(value(r#"{"p": {"t": 1}, "q": {"t": 2}}"#, "/q/t"), Ok(2.0));
    }

    #[test]
    fn repeated_keys_are_compared_after_unescaping() {
        // "\u0074" is "t": the same key spelled two ways.
        assert_eq!(
            value(r#"{"t": 1, "\u0074": 2}"#, "/t"),
            Err(ValueProblem::Ambiguous)
        );
        assert_eq!(
            value(r#"{"a/b": 1, "a/b": 2}"#, "/a~1b"),
            Err(ValueProblem::Ambiguous)
        );
    }

    // --- JsonDocument::parse ---

    #[test]
    fn parse_refuses_non_utf8() {
        assert_eq!(
            JsonDocument::parse(b"{\"a\": \"\xff\"}"),
            Err(ParseError::NotUtf8)
        );
    }

    #[test]
    fn parse_refuses_malformed_with_position() {
        for body in [
            "",
            "{",
            "{\"a\": }",
            "[1, 2",
            "{} {}",
            "nope",
            "{\"a\": 1,}",
        ] {
            match JsonDocument::parse(body.as_bytes()) {
                Err(ParseError::Malformed { reason }) => {
                    assert!(reason.contains("line"), "{body:?}: {reason}");
                    assert!(reason.len() <= super::super::MAX_REASON_LEN);
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn parse_skips_byte_order_mark() {
        let parsed = JsonDocument::parse(b"\xef\xbb\xbf{\"a\": 1}");
        assert_eq!(parsed.map(|d| d.value(&pointer("/a"))), Ok(Ok(1.0)));
    }

    #[test]
    fn parse_keeps_the_recursion_limit() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            JsonDocument::parse(deep.as_bytes()),
            Err(ParseError::Malformed { .. })
        ));
        let shallow = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        let path = "/0".repeat(100);
        assert_eq!(value(&shallow, &path), Ok(1.0));
    }

    #[test]
    fn parse_reads_python_non_finite_literals_as_non_finite_values() {
        let body = r#"{"a": NaN, "b": Infinity, "c": -Infinity, "d": [NaN], "e": 2, "f": "NaN x"}"#;
        let parsed = document(body);
        for at in ["/a", "/b", "/c", "/d/0"] {
            assert_eq!(
                parsed.value(&pointer(at)),
                Err(ValueProblem::NonFinite),
                "{at}"
            );
        }
        assert_eq!(parsed.value(&pointer("/e")), Ok(2.0));
        assert_eq!(parsed.value(&pointer("/f")), Err(ValueProblem::Unparsable));
    }

    #[test]
    fn quoting_non_finite_literals_leaves_strings_and_words_alone() {
        assert_eq!(quote_non_finite_literals(r#"{"a": 1}"#), None);
        assert_eq!(quote_non_finite_literals(r#"{"NaN": "Infinity"}"#), None);
        assert_eq!(quote_non_finite_literals(r#"["\"NaN"]"#), None);
        assert_eq!(quote_non_finite_literals("[NaNa, xNaN, 1.NaN]"), None);
        assert_eq!(
            quote_non_finite_literals("[NaN,-Infinity,Infinity]").as_deref(),
            Some(r#"["NaN","-Infinity","Infinity"]"#)
        );
        assert_eq!(
            quote_non_finite_literals(r#"{"\\": NaN}"#).as_deref(),
            Some(r#"{"\\": "NaN"}"#)
        );
        // Still malformed after quoting: the original error is reported.
        match JsonDocument::parse(b"[NaN, oops]") {
            Err(ParseError::Malformed { reason }) => assert!(reason.contains("line 1")),
            other => panic!("{other:?}"),
        }
    }

    // --- JsonDocument::value ---

    #[test]
    fn value_reads_numbers() {
        let body =
            r#"{"int": 23, "neg": -4, "float": 23.5, "exp": 1e3, "big": 18446744073709551615}"#;
        assert_eq!(value(body, "/int"), Ok(23.0));
        assert_eq!(value(body, "/neg"), Ok(-4.0));
        assert_eq!(value(body, "/float"), Ok(23.5));
        assert_eq!(value(body, "/exp"), Ok(1000.0));
        assert_eq!(value(body, "/big"), Ok(18_446_744_073_709_551_615.0));
    }

    #[test]
    fn value_follows_nested_pointers_with_array_indexes() {
        let body = r#"{"detectors": [{"value": 1.5}, {"value": 2.5, "extra": [7, 8]}]}"#;
        assert_eq!(value(body, "/detectors/0/value"), Ok(1.5));
        assert_eq!(value(body, "/detectors/1/value"), Ok(2.5));
        assert_eq!(value(body, "/detectors/1/extra/1"), Ok(8.0));
        assert_eq!(
            value(body, "/detectors/2/value"),
            Err(ValueProblem::Missing)
        );
        assert_eq!(
            value(body, "/detectors/-/value"),
            Err(ValueProblem::Missing)
        );
        assert_eq!(
            value(body, "/detectors/01/value"),
            Err(ValueProblem::Missing)
        );
        assert_eq!(value(body, "/detectors/x"), Err(ValueProblem::Missing));
        assert_eq!(value("[10, 20]", "/1"), Ok(20.0));
    }

    #[test]
    fn keys_and_strings_with_escapes_are_read_unescaped() {
        // Escaped keys and strings are the ones not borrowed from the body; the second body
        // goes through the NaN leniency, whose document owns everything.
        for body in [
            r#"{"a\"b": 1, "c\/d": "2.5", "\u00e9t\u00e9": {"v": "\u0033"}, "plain": 4}"#,
            r#"{"a\"b": 1, "c\/d": "2.5", "\u00e9t\u00e9": {"v": "\u0033"}, "plain": 4, "n": NaN}"#,
        ] {
            assert_eq!(value(body, "/a\"b"), Ok(1.0), "{body}");
            assert_eq!(value(body, "/c~1d"), Ok(2.5), "{body}");
            assert_eq!(value(body, "/été/v"), Ok(3.0), "{body}");
            assert_eq!(value(body, "/plain"), Ok(4.0), "{body}");
            assert_eq!(value(body, "/a\\\"b"), Err(ValueProblem::Missing), "{body}");
        }
    }

    #[test]
    fn value_unescapes_tilde_escapes() {
        let body = r#"{"a/b": 1, "m~n": 2, "~1": 3, "": 4, "x": {"": 5}, "a": {"b": 6}}"#;
        assert_eq!(value(body, "/a~1b"), Ok(1.0));
        assert_eq!(value(body, "/m~0n"), Ok(2.0));
        assert_eq!(value(body, "/~01"), Ok(3.0));
        assert_eq!(value(body, "/"), Ok(4.0));
        assert_eq!(value(body, "/x/"), Ok(5.0));
        assert_eq!(value(body, "/a/b"), Ok(6.0));
    }

    #[test]
    fn value_reads_numbers_in_strings() {
        let body = r#"{"a": "23.5", "b": " 1e3 ", "c": "-7", "d": "+.5", "e": "\t42\n"}"#;
        assert_eq!(value(body, "/a"), Ok(23.5));
        assert_eq!(value(body, "/b"), Ok(1000.0));
        assert_eq!(value(body, "/c"), Ok(-7.0));
        assert_eq!(value(body, "/d"), Ok(0.5));
        assert_eq!(value(body, "/e"), Ok(42.0));
    }

    #[test]
    fn value_non_finite_strings_are_non_finite() {
        for text in [
            "NaN",
            "nan",
            "inf",
            "+Inf",
            "-inf",
            "Infinity",
            "-Infinity",
            "1e999",
        ] {
            let body = format!(r#"{{"a": "{text}"}}"#);
            assert_eq!(value(&body, "/a"), Err(ValueProblem::NonFinite), "{text}");
        }
    }

    #[test]
    fn value_other_strings_are_unparsable() {
        for text in ["", " ", "abc", "23.5 °C", "0x10", "1,5", "1_000", "true"] {
            let body = format!(r#"{{"a": "{text}"}}"#);
            assert_eq!(value(&body, "/a"), Err(ValueProblem::Unparsable), "{text}");
        }
    }

    #[test]
    fn value_reads_booleans() {
        let body = r#"{"on": true, "off": false}"#;
        assert_eq!(value(body, "/on"), Ok(1.0));
        assert_eq!(value(body, "/off"), Ok(0.0));
    }

    #[test]
    fn value_null_and_absent_are_missing() {
        let body = r#"{"a": null, "b": {"c": 1}}"#;
        assert_eq!(value(body, "/a"), Err(ValueProblem::Missing));
        assert_eq!(value(body, "/z"), Err(ValueProblem::Missing));
        assert_eq!(value(body, "/a/b"), Err(ValueProblem::Missing));
        assert_eq!(value(body, "/b/c/d"), Err(ValueProblem::Missing));
        assert_eq!(value("42", "/a"), Err(ValueProblem::Missing));
        assert_eq!(value("null", "/a"), Err(ValueProblem::Missing));
    }

    #[test]
    fn value_arrays_and_objects_are_unparsable() {
        let body = r#"{"a": [1], "b": {"c": 1}, "e": [], "f": {}}"#;
        for at in ["/a", "/b", "/e", "/f"] {
            assert_eq!(value(body, at), Err(ValueProblem::Unparsable), "{at}");
        }
    }

    // --- Properties ---

    /// Text that looks like JSON more often than arbitrary text does.
    fn jsonish() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            r#"[\[\]{}":,0-9.eE+\- a-z\\ntfulNaIy]{0,200}"#,
        ]
    }

    fn valid_pointer() -> impl Strategy<Value = JsonPointer> {
        prop_oneof![
            "(/([a-z0-9]|~0|~1){0,4}){1,5}",
            any::<String>().prop_map(|s| format!("/{s}")),
        ]
        .prop_filter_map("invalid pointer", |text| JsonPointer::parse(&text).ok())
    }

    /// Any `f64`, NaN and infinities included (`any::<f64>()` has neither).
    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => any::<f64>(),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
        ]
    }

    /// A JSON value built from generated parts, rendered as text.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>()
                .prop_map(|n| serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[0-9a-z .+\\-]{0,8}".prop_map(Value::String),
            prop_oneof![
                Just("NaN"),
                Just("-inf"),
                Just(" 1e3 "),
                Just("1e999"),
                Just("0.5"),
                Just("")
            ]
            .prop_map(|text| Value::String(text.into())),
            prop_oneof![
                Just("NaN"),
                Just("-inf"),
                Just(" 1e3 "),
                Just("1e999"),
                Just("0.5"),
                Just("")
            ]
            .prop_map(|text| Value::String(text.into())),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z0-9~/]{0,3}", inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Every value below `at` (not `at` itself), with the pointer to it from `prefix`.
    fn collect_paths<'v>(at: &'v Value, prefix: String, paths: &mut Vec<(String, &'v Value)>) {
        let children: Vec<(String, &Value)> = match at {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(index, item)| (index.to_string(), item))
                .collect(),
            Value::Object(map) => map
                .iter()
                .map(|(key, item)| (key.replace('~', "~0").replace('/', "~1"), item))
                .collect(),
            _ => Vec::new(),
        };
        for (token, item) in children {
            let path = format!("{prefix}/{token}");
            paths.push((path.clone(), item));
            collect_paths(item, path, paths);
        }
    }

    proptest! {
        #[test]
        fn prop_pointer_parse_never_panics(text in any::<String>()) {
            let _ = JsonPointer::parse(&text);
        }

        #[test]
        fn prop_pointer_parse_keeps_valid_text(text in "(/([a-z0-9]|~0|~1){0,4}){1,5}") {
            prop_assert_eq!(JsonPointer::parse(&text).map(|p| p.to_string()), Ok(text));
        }

        #[test]
        fn prop_parse_never_panics_on_bytes(
            body in prop::collection::vec(any::<u8>(), 0..512),
            at in valid_pointer(),
        ) {
            if let Ok(parsed) = JsonDocument::parse(&body) {
                let _ = parsed.value(&at);
            }
        }

        #[test]
        fn prop_parse_never_panics_on_text(body in jsonish(), at in valid_pointer()) {
            if let Ok(parsed) = JsonDocument::parse(body.as_bytes()) {
                let _ = parsed.value(&at);
            }
        }

        #[test]
        fn prop_lookups_never_panic_on_valid_documents(
            root in json_value(),
            at in valid_pointer(),
        ) {
            let body = root.to_string();
            let parsed = JsonDocument::parse(body.as_bytes());
            prop_assert!(parsed.is_ok());
            if let Ok(parsed) = parsed {
                match parsed.value(&at) {
                    Ok(number) => prop_assert!(number.is_finite()),
                    Err(ValueProblem::Ambiguous) => {
                        prop_assert!(false, "a document without repeated keys is never ambiguous");
                    }
                    Err(_) => {}
                }
            }
        }

        #[test]
        fn prop_a_repeated_key_makes_its_paths_ambiguous_and_no_other(
            first in json_value(),
            second in json_value(),
            other in -1e6f64..1e6,
        ) {
            let body = format!(r#"{{"k": {first}, "other": {other}, "k": {second}}}"#);
            let parsed = document(&body);
            prop_assert_eq!(parsed.value(&pointer("/k")), Err(ValueProblem::Ambiguous));
            prop_assert_eq!(parsed.value(&pointer("/k/0")), Err(ValueProblem::Ambiguous));
            let expected: f64 = serde_json::from_str(&other.to_string())
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(parsed.value(&pointer("/other")), Ok(expected));
        }

        #[test]
        fn prop_every_path_of_a_document_gives_its_value(root in json_value()) {
            let body = root.to_string();
            let parsed = document(&body);
            // serde_json (without its `float_roundtrip` feature) may read a float 1 ulp off
            // what it wrote, so the expected values come from its reading of the body.
            let root: Value = serde_json::from_str(&body)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            let mut paths = Vec::new();
            collect_paths(&root, String::new(), &mut paths);
            for (path, at) in paths {
                let expected = match at {
                    Value::Null => Err(ValueProblem::Missing),
                    Value::Bool(on) => Ok(if *on { 1.0 } else { 0.0 }),
                    Value::Number(number) => number.as_f64().ok_or(ValueProblem::Unparsable),
                    Value::String(text) => match text.trim().parse::<f64>() {
                        Ok(number) if number.is_finite() => Ok(number),
                        Ok(_) => Err(ValueProblem::NonFinite),
                        Err(_) => Err(ValueProblem::Unparsable),
                    },
                    Value::Array(_) | Value::Object(_) => Err(ValueProblem::Unparsable),
                };
                prop_assert_eq!(parsed.value(&pointer(&path)), expected, "{}", path);
            }
        }

        #[test]
        fn prop_values_come_back(values in prop::collection::vec(any_f64(), 1..20)) {
            let body = serde_json::to_string(&serde_json::json!({ "detectors": values
                .iter()
                .map(|v| serde_json::json!({ "value": v.to_string() }))
                .collect::<Vec<_>>() }));
            let body = body.map_err(|error| TestCaseError::fail(error.to_string()))?;
            let parsed = document(&body);
            for (index, expected) in values.iter().enumerate() {
                let got = parsed.value(&pointer(&format!("/detectors/{index}/value")));
                if expected.is_finite() {
                    prop_assert_eq!(got, Ok(*expected));
                } else {
                    prop_assert_eq!(got, Err(ValueProblem::NonFinite));
                }
            }
        }
    }
}
