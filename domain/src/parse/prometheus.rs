//! Prometheus text exposition format 0.0.4 responses, and the metric selectors that find a
//! detector's value in them.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{KeyError, MAX_KEY_LEN, ParseError, ValueProblem, finite, utf8_text};

/// A Prometheus metric name with optional label matchers, such as
/// `chamber_temperature_celsius` or `chamber_temperature_celsius{sensor="top",zone="a"}`.
///
/// Always valid: the metric name matches `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names match
/// `[a-zA-Z_][a-zA-Z0-9_]*` and are unique, label values are double-quoted with the escapes
/// `\\`, `\"` and `\n`, there are no control characters and the text is at most
/// [`MAX_KEY_LEN`] bytes long. Spaces are allowed between the name and `{` and around the
/// tokens inside `{}`, and so is a trailing comma; the text must not start or end with
/// whitespace.
///
/// It selects the samples with the same metric name whose labels include all of its labels.
/// As in Prometheus, a label with an empty value is the same as no label: `sensor=""` selects
/// samples without a `sensor` label.
///
/// `Display` writes a canonical form, labels sorted by name and no blanks, that parses back to
/// an equal selector. Equal selectors have the same name and labels, however they were written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MetricSelector {
    name: String,
    labels: Vec<(String, String)>,
}

impl MetricSelector {
    /// The selector written as `text`, or the rule that `text` breaks.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        if text.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { max: MAX_KEY_LEN });
        }
        if text.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacter);
        }
        if text.trim() != text {
            return Err(KeyError::SurroundingWhitespace);
        }
        let mut cursor = Cursor::new(text);
        let name = cursor.metric_name().ok_or(KeyError::InvalidMetricName)?;
        cursor.skip_blanks();
        let labels = if cursor.is_at_end() {
            Vec::new()
        } else if cursor.eat('{') {
            let labels = cursor.label_set(Escapes::Strict)?;
            if !cursor.is_at_end() {
                return Err(KeyError::TrailingCharacters);
            }
            labels
        } else {
            return Err(KeyError::InvalidMetricName);
        };
        let labels = sorted_unique(labels).map_err(|name| KeyError::DuplicateLabel { name })?;
        Ok(Self {
            name: name.to_owned(),
            labels,
        })
    }

    /// The metric name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The label matchers as `(name, value)` pairs, sorted by name, values unescaped.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }
}

impl fmt::Display for MetricSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        f.write_char('{')?;
        for (index, (name, value)) in self.labels.iter().enumerate() {
            if index > 0 {
                f.write_char(',')?;
            }
            write!(f, "{name}=\"")?;
            for c in value.chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '"' => f.write_str("\\\"")?,
                    '\n' => f.write_str("\\n")?,
                    c => f.write_char(c)?,
                }
            }
            f.write_char('"')?;
        }
        f.write_char('}')
    }
}

impl FromStr for MetricSelector {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        Self::parse(text)
    }
}

impl TryFrom<String> for MetricSelector {
    type Error = KeyError;

    fn try_from(text: String) -> Result<Self, KeyError> {
        Self::parse(&text)
    }
}

impl From<MetricSelector> for String {
    fn from(selector: MetricSelector) -> Self {
        selector.to_string()
    }
}

/// A chamber's response in the Prometheus text exposition format 0.0.4, parsed.
///
/// Blank lines and `#` lines (`HELP`, `TYPE` and other comments) are skipped. A sample line is
/// `name{label="value",...} value [timestamp]`: blanks may surround the tokens inside `{}`,
/// the label set may end with a comma, label values use the escapes `\\`, `\"` and `\n` (any
/// other escape is kept as written), the value is a float (`NaN`, `+Inf`, `-Inf` and `Inf`
/// included) and the timestamp an integer. Lines may end with `\r\n`.
///
/// Parsing is lenient: a sample line that cannot be parsed (bad value, broken label set,
/// duplicate label, garbage after the timestamp, ...) is not an error; if it starts with a
/// metric name, that name is remembered so that lookups of it give
/// [`ValueProblem::Unparsable`] instead of [`ValueProblem::Missing`]. As in Prometheus,
/// labels with an empty value are dropped.
///
/// Samples are indexed by metric name in a `HashMap` (SipHash, so a hostile chamber cannot
/// force collisions); a lookup scans the samples of its metric name only. Parsing is linear in
/// the size of the body and so is the memory used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrometheusDocument {
    samples: HashMap<Box<str>, Vec<Sample>>,
    invalid: HashSet<Box<str>>,
    sample_count: usize,
}

/// One sample of a [`PrometheusDocument`]: its labels, sorted by name and without empty
/// values, and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    labels: Box<[(Box<str>, Box<str>)]>,
    value: f64,
}

impl Sample {
    /// Whether the sample has every label in `wanted` (sorted by name), an empty value in
    /// `wanted` meaning the label must be absent.
    fn matches(&self, wanted: &[(String, String)]) -> bool {
        let mut have = self.labels.iter().peekable();
        wanted.iter().all(|(name, value)| {
            while have
                .next_if(|(have_name, _)| **have_name < **name)
                .is_some()
            {}
            match have.peek() {
                Some((have_name, have_value)) if **have_name == **name => **have_value == **value,
                _ => value.is_empty(),
            }
        })
    }
}

impl PrometheusDocument {
    /// Parses a response body.
    ///
    /// Fails only if `body` is not UTF-8 ([`ParseError::NotUtf8`]); a UTF-8 byte order mark
    /// is skipped.
    pub fn parse(body: &[u8]) -> Result<Self, ParseError> {
        let text = utf8_text(body)?;
        let mut document = Self::default();
        for line in text.split('\n') {
            let line = line.trim_matches([' ', '\t', '\r']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_sample(line) {
                Ok((name, sample)) => document.add(name, sample),
                Err(Some(name)) => {
                    if !document.invalid.contains(name) {
                        document.invalid.insert(name.into());
                    }
                }
                Err(None) => {}
            }
        }
        Ok(document)
    }

    /// The value of the one sample that `selector` selects: the sample with the same metric
    /// name whose labels include all of the selector's labels.
    ///
    /// - exactly one such sample: its value, or [`ValueProblem::NonFinite`] for NaN and
    ///   infinities;
    /// - more than one: [`ValueProblem::Ambiguous`];
    /// - none, but a line with that metric name could not be parsed:
    ///   [`ValueProblem::Unparsable`];
    /// - none: [`ValueProblem::Missing`].
    pub fn value(&self, selector: &MetricSelector) -> Result<f64, ValueProblem> {
        let mut found = None;
        let samples = self
            .samples
            .get(selector.name())
            .map_or(&[][..], Vec::as_slice);
        for sample in samples {
            if sample.matches(selector.labels()) {
                if found.is_some() {
                    return Err(ValueProblem::Ambiguous);
                }
                found = Some(sample.value);
            }
        }
        match found {
            Some(value) => finite(value),
            None if self.invalid.contains(selector.name()) => Err(ValueProblem::Unparsable),
            None => Err(ValueProblem::Missing),
        }
    }

    /// How many sample lines were parsed.
    pub fn sample_count(&self) -> usize {
        self.sample_count
    }

    fn add(&mut self, name: &str, sample: Sample) {
        match self.samples.get_mut(name) {
            Some(samples) => samples.push(sample),
            None => {
                self.samples.insert(name.into(), vec![sample]);
            }
        }
        self.sample_count += 1;
    }
}

/// The metric name and sample of a sample line, or the metric name (if the line starts with
/// one) of a line that cannot be parsed.
fn parse_sample(line: &str) -> Result<(&str, Sample), Option<&str>> {
    let mut cursor = Cursor::new(line);
    let name = cursor.metric_name().ok_or(None)?;
    let invalid = Some(name);
    let blank = cursor.skip_blanks();
    let labels = if cursor.eat('{') {
        let labels = cursor.label_set(Escapes::Lenient).map_err(|_| invalid)?;
        cursor.skip_blanks();
        labels
    } else if blank {
        Vec::new()
    } else {
        return Err(invalid);
    };
    let value = cursor.token().parse::<f64>().map_err(|_| invalid)?;
    cursor.skip_blanks();
    let timestamp = cursor.token();
    if !timestamp.is_empty() {
        timestamp.parse::<i64>().map_err(|_| invalid)?;
        cursor.skip_blanks();
    }
    if !cursor.is_at_end() {
        return Err(invalid);
    }
    let labels = sorted_unique(labels)
        .map_err(|_| invalid)?
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| (name.into_boxed_str(), value.into_boxed_str()))
        .collect();
    Ok((name, Sample { labels, value }))
}

/// `labels` sorted by name, or the first name (in sorted order) that appears twice.
fn sorted_unique(mut labels: Vec<(String, String)>) -> Result<Vec<(String, String)>, String> {
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    let duplicate = labels.windows(2).find_map(|pair| match pair {
        [a, b] if a.0 == b.0 => Some(a.0.clone()),
        _ => None,
    });
    match duplicate {
        Some(name) => Err(name),
        None => Ok(labels),
    }
}

/// How unknown escapes (`\` followed by something other than `\`, `"` or `n`) in label values
/// are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escapes {
    /// Refused, with [`KeyError::InvalidLabelEscape`].
    Strict,
    /// Kept as written, backslash included.
    Lenient,
}

/// Reads metric names, label sets and tokens from the front of a text.
#[derive(Debug)]
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }

    fn is_at_end(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn next_char(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let c = chars.next()?;
        self.rest = chars.as_str();
        Some(c)
    }

    /// Skips `c` if it is next.
    fn eat(&mut self, c: char) -> bool {
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// The longest prefix whose characters all satisfy `keep`, consumed.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let end = self.rest.find(|c| !keep(c)).unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at_checked(end).unwrap_or((self.rest, ""));
        self.rest = rest;
        taken
    }

    /// Skips spaces and tabs; whether there were any.
    fn skip_blanks(&mut self) -> bool {
        !self.take_while(|c| c == ' ' || c == '\t').is_empty()
    }

    /// Everything up to the next blank, consumed.
    fn token(&mut self) -> &'a str {
        self.take_while(|c| c != ' ' && c != '\t')
    }

    /// A metric name, `[a-zA-Z_:][a-zA-Z0-9_:]*`, consumed.
    fn metric_name(&mut self) -> Option<&'a str> {
        let first = self.peek()?;
        if !(first.is_ascii_alphabetic() || first == '_' || first == ':') {
            return None;
        }
        Some(self.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'))
    }

    /// A label name, `[a-zA-Z_][a-zA-Z0-9_]*`, consumed.
    fn label_name(&mut self) -> Option<&'a str> {
        let first = self.peek()?;
        if !(first.is_ascii_alphabetic() || first == '_') {
            return None;
        }
        Some(self.take_while(|c| c.is_ascii_alphanumeric() || c == '_'))
    }

    /// The labels of a label set whose `{` has been consumed, up to and including its `}`.
    /// Label names are not checked for duplicates.
    fn label_set(&mut self, escapes: Escapes) -> Result<Vec<(String, String)>, KeyError> {
        let mut labels = Vec::new();
        loop {
            self.skip_blanks();
            match self.peek() {
                None => return Err(KeyError::MissingClosingBrace),
                Some('}') => {
                    self.next_char();
                    return Ok(labels);
                }
                Some(_) => {}
            }
            let name = self.label_name().ok_or(KeyError::InvalidLabelName)?;
            let label = || name.to_owned();
            self.skip_blanks();
            match self.next_char() {
                Some('=') if self.peek() != Some('~') => {}
                Some('=' | '!') => return Err(KeyError::UnsupportedMatcher { label: label() }),
                _ => return Err(KeyError::ExpectedEquals { label: label() }),
            }
            self.skip_blanks();
            if !self.eat('"') {
                return Err(KeyError::UnquotedLabelValue { label: label() });
            }
            let value = self.label_value(escapes, label)?;
            labels.push((name.to_owned(), value));
            self.skip_blanks();
            match self.peek() {
                Some(',') => {
                    self.next_char();
                }
                Some('}') => {}
                None => return Err(KeyError::MissingClosingBrace),
                Some(_) => return Err(KeyError::ExpectedCommaOrBrace { label: label() }),
            }
        }
    }

    /// A label value whose opening `"` has been consumed, unescaped, up to and including its
    /// closing `"`.
    fn label_value(
        &mut self,
        escapes: Escapes,
        label: impl Fn() -> String,
    ) -> Result<String, KeyError> {
        let mut value = String::new();
        loop {
            let plain = self.take_while(|c| c != '"' && c != '\\');
            value.push_str(plain);
            match self.next_char() {
                Some('"') => return Ok(value),
                Some('\\') => match (self.next_char(), escapes) {
                    (Some('\\'), _) => value.push('\\'),
                    (Some('"'), _) => value.push('"'),
                    (Some('n'), _) => value.push('\n'),
                    (Some(other), Escapes::Lenient) => {
                        value.push('\\');
                        value.push(other);
                    }
                    (Some(_), Escapes::Strict) => {
                        return Err(KeyError::InvalidLabelEscape { label: label() });
                    }
                    (None, _) => return Err(KeyError::UnterminatedLabelValue { label: label() }),
                },
                _ => return Err(KeyError::UnterminatedLabelValue { label: label() }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn selector(text: &str) -> MetricSelector {
        match MetricSelector::parse(text) {
            Ok(selector) => selector,
            Err(error) => panic!("{text:?}: {error}"),
        }
    }

    fn document(body: &str) -> PrometheusDocument {
        match PrometheusDocument::parse(body.as_bytes()) {
            Ok(document) => document,
            Err(error) => panic!("{body:?}: {error}"),
        }
    }

    fn value(body: &str, key: &str) -> Result<f64, ValueProblem> {
        document(body).value(&selector(key))
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn refused(text: &str) -> KeyError {
        match MetricSelector::parse(text) {
            Ok(selector) => panic!("{text:?} accepted as {selector:?}"),
            Err(error) => error,
        }
    }

    // --- MetricSelector ---

    #[test]
    fn selector_without_labels() {
        for text in [
            "chamber_temperature_celsius",
            "a",
            "_",
            ":",
            "a:b_c:9",
            "Z0",
        ] {
            let parsed = selector(text);
            assert_eq!(parsed.name(), text);
            assert!(parsed.labels().is_empty());
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn selector_with_labels_sorted_by_name() {
        let parsed = selector(r#"chamber_temperature_celsius{zone="a",sensor="top"}"#);
        assert_eq!(parsed.name(), "chamber_temperature_celsius");
        assert_eq!(parsed.labels(), labels(&[("sensor", "top"), ("zone", "a")]));
        assert_eq!(
            parsed.to_string(),
            r#"chamber_temperature_celsius{sensor="top",zone="a"}"#
        );
    }

    #[test]
    fn selector_allows_blanks_inside_braces_trailing_comma_and_empty_set() {
        let canonical = selector(r#"m{a="1",b="2"}"#);
        for text in [
            r#"m {a="1",b="2"}"#,
            "m{ a = \"1\" ,  b=\"2\" , }",
            r#"m{b="2",a="1",}"#,
        ] {
            assert_eq!(selector(text), canonical, "{text:?}");
        }
        assert_eq!(selector("m{}"), selector("m"));
        assert_eq!(selector("m{ }").to_string(), "m");
    }

    #[test]
    fn selector_unescapes_and_reescapes_label_values() {
        let parsed = selector(r#"m{a="back\\slash",b="quo\"te",c="new\nline",d="",e="é {},="}"#);
        assert_eq!(
            parsed.labels(),
            labels(&[
                ("a", "back\\slash"),
                ("b", "quo\"te"),
                ("c", "new\nline"),
                ("d", ""),
                ("e", "é {},="),
            ])
        );
        assert_eq!(
            parsed.to_string(),
            r#"m{a="back\\slash",b="quo\"te",c="new\nline",d="",e="é {},="}"#
        );
        assert_eq!(selector(&parsed.to_string()), parsed);
    }

    #[test]
    fn selector_refuses_invalid_metric_names() {
        for text in [
            "0abc",
            "chamber-temp",
            "a.b",
            "é",
            "{a=\"b\"}",
            "a b",
            "a\"b\"",
        ] {
            assert_eq!(refused(text), KeyError::InvalidMetricName, "{text:?}");
        }
    }

    #[test]
    fn selector_refuses_invalid_label_names() {
        for text in [
            r#"m{0a="b"}"#,
            r#"m{a:b="c"}"#,
            r#"m{é="c"}"#,
            "m{,}",
            r#"m{a="b",,}"#,
        ] {
            assert!(
                matches!(
                    refused(text),
                    KeyError::InvalidLabelName | KeyError::ExpectedEquals { .. }
                ),
                "{text:?}"
            );
        }
        assert_eq!(refused(r#"m{0a="b"}"#), KeyError::InvalidLabelName);
        assert_eq!(
            refused(r#"m{a:b="c"}"#),
            KeyError::ExpectedEquals { label: "a".into() }
        );
    }

    #[test]
    fn selector_refuses_duplicate_labels() {
        assert_eq!(
            refused(r#"m{x="1",y="2",x="3"}"#),
            KeyError::DuplicateLabel { name: "x".into() }
        );
        assert_eq!(
            refused(r#"m{x="1",y="2",x="3"}"#).to_string(),
            "duplicate label 'x'"
        );
    }

    #[test]
    fn selector_refuses_malformed_label_sets() {
        let label = || "a".to_owned();
        assert_eq!(refused("m{a}"), KeyError::ExpectedEquals { label: label() });
        assert_eq!(
            refused("m{a b}"),
            KeyError::ExpectedEquals { label: label() }
        );
        assert_eq!(
            refused(r#"m{a!="b"}"#),
            KeyError::UnsupportedMatcher { label: label() }
        );
        assert_eq!(
            refused(r#"m{a=~"b"}"#),
            KeyError::UnsupportedMatcher { label: label() }
        );
        assert_eq!(
            refused(r#"m{a!~"b"}"#),
            KeyError::UnsupportedMatcher { label: label() }
        );
        assert_eq!(
            refused("m{a=b}"),
            KeyError::UnquotedLabelValue { label: label() }
        );
        assert_eq!(
            refused("m{a='b'}"),
            KeyError::UnquotedLabelValue { label: label() }
        );
        assert_eq!(
            refused(r#"m{a="b}"#),
            KeyError::UnterminatedLabelValue { label: label() }
        );
        assert_eq!(
            refused(r#"m{a="b\"#),
            KeyError::UnterminatedLabelValue { label: label() }
        );
        assert_eq!(
            refused(r#"m{a="b"c="d"}"#),
            KeyError::ExpectedCommaOrBrace { label: label() }
        );
        assert_eq!(refused(r#"m{a="b""#), KeyError::MissingClosingBrace);
        assert_eq!(refused(r#"m{a="b","#), KeyError::MissingClosingBrace);
        assert_eq!(refused("m{"), KeyError::MissingClosingBrace);
        assert_eq!(refused(r#"m{a="b"}x"#), KeyError::TrailingCharacters);
        assert_eq!(refused(r#"m{a="b"} {}"#), KeyError::TrailingCharacters);
    }

    #[test]
    fn selector_refuses_unknown_escapes() {
        for text in [
            r#"m{a="\t"}"#,
            r#"m{a="\x41"}"#,
            r#"m{a="\'"}"#,
            r#"m{a="\N"}"#,
        ] {
            assert_eq!(
                refused(text),
                KeyError::InvalidLabelEscape { label: "a".into() },
                "{text:?}"
            );
        }
    }

    #[test]
    fn selector_refuses_empty_whitespace_and_control_characters() {
        assert_eq!(refused(""), KeyError::Empty);
        assert_eq!(refused(" m"), KeyError::SurroundingWhitespace);
        assert_eq!(refused("m "), KeyError::SurroundingWhitespace);
        assert_eq!(refused(" "), KeyError::SurroundingWhitespace);
        assert_eq!(refused("m\n"), KeyError::ControlCharacter);
        assert_eq!(refused("m{a=\"\n\"}"), KeyError::ControlCharacter);
        assert_eq!(refused("m{a=\"\0\"}"), KeyError::ControlCharacter);
        assert_eq!(refused("m{\ta=\"b\"}"), KeyError::ControlCharacter);
    }

    #[test]
    fn selector_is_at_most_512_bytes() {
        let longest = "m".repeat(MAX_KEY_LEN);
        assert_eq!(selector(&longest).name().len(), MAX_KEY_LEN);
        assert_eq!(
            refused(&"m".repeat(MAX_KEY_LEN + 1)),
            KeyError::TooLong { max: MAX_KEY_LEN }
        );
        let multibyte = format!("m{{a=\"{}\"}}", "é".repeat(254));
        assert_eq!(refused(&multibyte), KeyError::TooLong { max: MAX_KEY_LEN });
    }

    #[test]
    fn selector_conversions_and_serde() {
        let text = r#"m{b="2",a="1"}"#;
        let parsed = selector(text);
        assert_eq!(text.parse::<MetricSelector>(), Ok(parsed.clone()));
        assert_eq!(
            MetricSelector::try_from(text.to_owned()),
            Ok(parsed.clone())
        );
        assert_eq!(String::from(parsed.clone()), r#"m{a="1",b="2"}"#);
        assert_eq!(
            serde_json::to_string(&parsed).ok().as_deref(),
            Some(r#""m{a=\"1\",b=\"2\"}""#)
        );
        let back: Result<MetricSelector, _> = serde_json::from_str(r#""m{b=\"2\",a=\"1\"}""#);
        assert_eq!(back.ok(), Some(parsed));
        let bad: Result<MetricSelector, _> = serde_json::from_str(r#""1m""#);
        assert!(bad.is_err());
    }

    // --- PrometheusDocument ---

    const EXPOSITION: &str = r#"# HELP chamber_temperature_celsius Temperature in the chamber.
# TYPE chamber_temperature_celsius gauge
chamber_temperature_celsius{sensor="top",zone="a"} 23.5
chamber_temperature_celsius{sensor="bottom",zone="a"} 21.25 1712345678000
chamber_temperature_celsius{sensor="top",zone="b"} -4e-1

# HELP chamber_humidity_ratio Relative humidity.
# TYPE chamber_humidity_ratio gauge
chamber_humidity_ratio 0.45
chamber_door_open{door="front",} 1
chamber_pressure_pascal{sensor="a"} NaN
chamber_pressure_pascal{sensor="b"} +Inf
chamber_pressure_pascal{sensor="c"} -Inf
chamber_pressure_pascal{sensor="d"} Inf
chamber_escaped{path="C:\\dir\\file",quote="say \"hi\"",multi="one\ntwo"} 7
chamber_broken{sensor="top"} not-a-number
chamber_broken{sensor="bottom"} 3
"#;

    #[test]
    fn document_exact_label_match() {
        let parsed = document(EXPOSITION);
        let at = |key: &str| parsed.value(&selector(key));
        assert_eq!(
            at(r#"chamber_temperature_celsius{sensor="top",zone="a"}"#),
            Ok(23.5)
        );
        assert_eq!(
            at(r#"chamber_temperature_celsius{zone="a",sensor="bottom"}"#),
            Ok(21.25)
        );
        assert_eq!(
            at(r#"chamber_temperature_celsius{sensor="top",zone="b"}"#),
            Ok(-0.4)
        );
        assert_eq!(at("chamber_humidity_ratio"), Ok(0.45));
        assert_eq!(at(r#"chamber_door_open{door="front"}"#), Ok(1.0));
        assert_eq!(parsed.sample_count(), 11);
    }

    #[test]
    fn document_label_subset_match() {
        let parsed = document(EXPOSITION);
        let at = |key: &str| parsed.value(&selector(key));
        assert_eq!(at(r#"chamber_temperature_celsius{zone="b"}"#), Ok(-0.4));
        assert_eq!(
            at(r#"chamber_temperature_celsius{sensor="bottom"}"#),
            Ok(21.25)
        );
        assert_eq!(at("chamber_door_open"), Ok(1.0));
        assert_eq!(at(r#"chamber_escaped{quote="say \"hi\""}"#), Ok(7.0));
    }

    #[test]
    fn document_ambiguous_match() {
        let parsed = document(EXPOSITION);
        let at = |key: &str| parsed.value(&selector(key));
        assert_eq!(
            at("chamber_temperature_celsius"),
            Err(ValueProblem::Ambiguous)
        );
        assert_eq!(
            at(r#"chamber_temperature_celsius{sensor="top"}"#),
            Err(ValueProblem::Ambiguous)
        );
        assert_eq!(
            at(r#"chamber_temperature_celsius{zone="a"}"#),
            Err(ValueProblem::Ambiguous)
        );
        // The same series twice is ambiguous too.
        assert_eq!(value("m 1\nm 2\n", "m"), Err(ValueProblem::Ambiguous));
    }

    #[test]
    fn document_missing() {
        let parsed = document(EXPOSITION);
        let at = |key: &str| parsed.value(&selector(key));
        assert_eq!(at("chamber_unknown"), Err(ValueProblem::Missing));
        assert_eq!(
            at(r#"chamber_temperature_celsius{sensor="middle"}"#),
            Err(ValueProblem::Missing)
        );
        assert_eq!(
            at(r#"chamber_humidity_ratio{sensor="top"}"#),
            Err(ValueProblem::Missing)
        );
        // Names are matched exactly; HELP and TYPE lines are not samples.
        assert_eq!(at("chamber_temperature"), Err(ValueProblem::Missing));
        assert_eq!(at("HELP"), Err(ValueProblem::Missing));
        assert_eq!(value("", "m"), Err(ValueProblem::Missing));
    }

    #[test]
    fn document_non_finite() {
        let parsed = document(EXPOSITION);
        for sensor in ["a", "b", "c", "d"] {
            let key = format!(r#"chamber_pressure_pascal{{sensor="{sensor}"}}"#);
            assert_eq!(
                parsed.value(&selector(&key)),
                Err(ValueProblem::NonFinite),
                "{key}"
            );
        }
        for text in ["nan", "inf", "+inf", "-Infinity", "1e999"] {
            assert_eq!(
                value(&format!("m {text}"), "m"),
                Err(ValueProblem::NonFinite),
                "{text}"
            );
        }
    }

    #[test]
    fn document_unparsable_line_with_the_metric_name() {
        let parsed = document(EXPOSITION);
        let at = |key: &str| parsed.value(&selector(key));
        assert_eq!(
            at(r#"chamber_broken{sensor="top"}"#),
            Err(ValueProblem::Unparsable)
        );
        assert_eq!(at(r#"chamber_broken{sensor="bottom"}"#), Ok(3.0));
        assert_eq!(at("chamber_broken"), Ok(3.0));
        for line in [
            "m",
            "m ",
            "m abc",
            "m 1 2 3",
            "m 1 1.5",
            "m 0x10",
            "m{a=\"1\" 2",
            "m{a=1} 2",
            "m{a=\"1\",a=\"2\"} 3",
            "m{a=\"1\"}} 2",
            "m{0a=\"1\"} 2",
            "m{a=\"1\"} 2 # exemplar",
            "m-1 2",
            "m{a=\"unterminated} 2",
        ] {
            assert_eq!(value(line, "m"), Err(ValueProblem::Unparsable), "{line:?}");
            assert_eq!(value(line, "other"), Err(ValueProblem::Missing), "{line:?}");
        }
        // A line that does not start with a metric name is skipped.
        assert_eq!(value("1m 2\n{a=\"b\"} 1\nm 4", "m"), Ok(4.0));
    }

    #[test]
    fn document_escapes_in_label_values() {
        let parsed = document(EXPOSITION);
        let key = r#"chamber_escaped{path="C:\\dir\\file",quote="say \"hi\"",multi="one\ntwo"}"#;
        assert_eq!(parsed.value(&selector(key)), Ok(7.0));
        assert_eq!(
            parsed.value(&selector(r#"chamber_escaped{multi="one\ntwo"}"#)),
            Ok(7.0)
        );
        assert_eq!(
            parsed.value(&selector(r#"chamber_escaped{multi="one\\ntwo"}"#)),
            Err(ValueProblem::Missing)
        );
        // Unknown escapes in a document are kept as written.
        assert_eq!(value(r#"m{a="x\ty"} 1"#, r#"m{a="x\\ty"}"#), Ok(1.0));
    }

    #[test]
    fn document_empty_label_values_mean_no_label() {
        let body = "m{a=\"\",b=\"1\"} 1\nm{b=\"2\",c=\"3\"} 2\n";
        assert_eq!(value(body, r#"m{a="",b="1"}"#), Ok(1.0));
        assert_eq!(value(body, r#"m{c=""}"#), Ok(1.0));
        assert_eq!(value(body, r#"m{a=""}"#), Err(ValueProblem::Ambiguous));
        assert_eq!(value(body, r#"m{c="",b="2"}"#), Err(ValueProblem::Missing));
    }

    #[test]
    fn document_whitespace_crlf_timestamps_and_trailing_commas() {
        let body = "  # comment\r\n\r\n\t m1 1\r\nm2{a=\"x\",} 2 -5\r\nm3 { a = \"x\" , b=\"y\" ,\t} \t 3 \t 17 \r\nm4{a=\"x\"}4\n";
        assert_eq!(value(body, "m1"), Ok(1.0));
        assert_eq!(value(body, r#"m2{a="x"}"#), Ok(2.0));
        assert_eq!(value(body, r#"m3{b="y",a="x"}"#), Ok(3.0));
        assert_eq!(value(body, "m4"), Ok(4.0));
        assert_eq!(document(body).sample_count(), 4);
    }

    #[test]
    fn document_go_float_values() {
        for (text, expected) in [
            ("1", 1.0),
            ("-1", -1.0),
            ("+1.5", 1.5),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            (".5", 0.5),
            ("5.", 5.0),
            ("-0", 0.0),
            ("1.7976931348623157e308", f64::MAX),
        ] {
            assert_eq!(value(&format!("m {text}"), "m"), Ok(expected), "{text}");
        }
    }

    #[test]
    fn document_parse_fails_only_on_non_utf8() {
        assert_eq!(
            PrometheusDocument::parse(b"m 1\nn{a=\"\xff\"} 2\n"),
            Err(ParseError::NotUtf8)
        );
        for body in ["", "\n", "garbage", "{{{", "# only comments", "\u{feff}m 1"] {
            assert!(
                PrometheusDocument::parse(body.as_bytes()).is_ok(),
                "{body:?}"
            );
        }
        assert_eq!(value("\u{feff}m 1", "m"), Ok(1.0));
    }

    #[test]
    fn document_parses_a_large_body() {
        let mut body = String::new();
        for index in 0..20_000 {
            body.push_str(&format!(
                "# HELP chamber_metric_{m} Help text.\nchamber_metric_{m}{{sensor=\"s{index}\",zone=\"zone-{z}\"}} {index}.5 1712345678000\n",
                m = index % 50,
                z = index % 7,
            ));
        }
        assert!(body.len() > 1_000_000, "{}", body.len());
        let parsed = document(&body);
        assert_eq!(parsed.sample_count(), 20_000);
        assert_eq!(
            parsed.value(&selector(r#"chamber_metric_7{sensor="s19957"}"#)),
            Ok(19_957.5)
        );
        for index in (0..20_000).step_by(100) {
            let key = format!(r#"chamber_metric_{}{{sensor="s{index}"}}"#, index % 50);
            assert_eq!(parsed.value(&selector(&key)), Ok(f64::from(index) + 0.5));
        }
    }

    #[test]
    fn document_with_a_huge_line() {
        let labels: String = (0..50_000).map(|i| format!("l{i}=\"v\",")).collect();
        let body = format!("m{{{labels}}} 1\nm{{{labels}l0=\"w\"}} 2\n");
        let parsed = document(&body);
        assert_eq!(parsed.value(&selector(r#"m{l49999="v"}"#)), Ok(1.0));
    }

    // --- Properties ---

    /// Text that looks like an exposition more often than arbitrary text does.
    fn exposition_ish() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            r#"[a-c_:{}="\\,# \t\r\n0-9.eE+\-NaInf]{0,300}"#,
            prop::collection::vec(
                r#"[a-c]{1,2}(\{([a-c]{1,2}="([a-c]|\\.){0,3}",?){0,3}\}?)? ?[0-9.eE+\-NaInf]{0,4}( [0-9]{0,3})?"#,
                0..10
            )
            .prop_map(|lines| lines.join("\n")),
        ]
    }

    fn metric_name() -> impl Strategy<Value = String> {
        "[a-zA-Z_:][a-zA-Z0-9_:]{0,15}"
    }

    fn label_name() -> impl Strategy<Value = String> {
        "[a-zA-Z_][a-zA-Z0-9_]{0,8}"
    }

    /// A label value that a selector can hold: no control characters but `\n`.
    fn label_value() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                4 => any::<char>().prop_filter("control", |c| !c.is_control()),
                1 => Just('\n'),
                1 => Just('"'),
                1 => Just('\\'),
                1 => Just(','),
                1 => Just('}'),
            ],
            0..8,
        )
        .prop_map(String::from_iter)
    }

    fn valid_selector() -> impl Strategy<Value = MetricSelector> {
        prop_oneof![
            r#"[a-c]{1,2}(\{([a-c]{1,2}="[a-c\\"]{0,3}",?){0,3}\})?"#,
            (
                metric_name(),
                prop::collection::btree_map(label_name(), label_value(), 0..4)
            )
                .prop_map(|(name, labels)| write_selector(&name, &labels, false)),
        ]
        .prop_filter_map("invalid selector", |text| MetricSelector::parse(&text).ok())
    }

    fn escape(value: &str) -> String {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    }

    /// A selector or sample's name and labels, written with blanks and a trailing comma if
    /// `loose`, labels in reverse order.
    fn write_selector(name: &str, labels: &BTreeMap<String, String>, loose: bool) -> String {
        let gap = if loose { " " } else { "" };
        let end = if loose && !labels.is_empty() {
            ", "
        } else {
            ""
        };
        let labels: Vec<String> = labels
            .iter()
            .rev()
            .map(|(name, value)| format!("{gap}{name}{gap}={gap}\"{}\"", escape(value)))
            .collect();
        if labels.is_empty() && !loose {
            name.to_owned()
        } else {
            format!("{name}{gap}{{{}{end}}}", labels.join(","))
        }
    }

    /// How a generated sample's value is written.
    fn write_value(value: f64, scientific: bool, plus_inf: bool) -> String {
        if value.is_nan() {
            "NaN".into()
        } else if value == f64::INFINITY {
            if plus_inf { "+Inf" } else { "Inf" }.into()
        } else if value == f64::NEG_INFINITY {
            "-Inf".into()
        } else if scientific {
            format!("{value:e}")
        } else {
            format!("{value}")
        }
    }

    #[derive(Debug, Clone)]
    struct Series {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
        scientific: bool,
        loose: bool,
        timestamp: Option<i64>,
        comment: Option<String>,
    }

    fn series() -> impl Strategy<Value = Series> {
        (
            "[ab]_m|c",
            prop::collection::btree_map(
                "[a-c]",
                prop_oneof![Just(String::new()), "[xy]", label_value()],
                0..4,
            ),
            prop_oneof![
                8 => any::<f64>(),
                2 => (-1000_i32..1000).prop_map(f64::from),
                1 => Just(f64::NAN),
                1 => Just(f64::INFINITY),
                1 => Just(f64::NEG_INFINITY),
            ],
            any::<(bool, bool)>(),
            prop::option::of(any::<i64>()),
            prop::option::of("(HELP|TYPE|) [^\\n\\r]{0,20}"),
        )
            .prop_map(
                |(name, labels, value, (scientific, loose), timestamp, comment)| Series {
                    name,
                    labels,
                    value,
                    scientific,
                    loose,
                    timestamp,
                    comment,
                },
            )
    }

    fn write_exposition(series: &[Series], crlf: bool) -> String {
        let newline = if crlf { "\r\n" } else { "\n" };
        let mut body = String::new();
        for one in series {
            if let Some(comment) = &one.comment {
                body.push_str(&format!("# {comment}{newline}{newline}"));
            }
            let (gap, plus_inf) = if one.loose {
                ("  \t", true)
            } else {
                (" ", false)
            };
            body.push_str(&write_selector(&one.name, &one.labels, one.loose));
            body.push_str(gap);
            body.push_str(&write_value(one.value, one.scientific, plus_inf));
            if let Some(timestamp) = one.timestamp {
                body.push_str(&format!("{gap}{timestamp}"));
            }
            body.push_str(newline);
        }
        body
    }

    /// What a lookup of `name` with `wanted` labels should give, by the rules: a label with
    /// an empty value is no label.
    fn expected(
        series: &[Series],
        name: &str,
        wanted: &BTreeMap<String, String>,
    ) -> Result<f64, ValueProblem> {
        let matching: Vec<f64> = series
            .iter()
            .filter(|one| one.name == name)
            .filter(|one| {
                wanted.iter().all(|(label, value)| {
                    one.labels.get(label).map_or("", String::as_str) == value.as_str()
                })
            })
            .map(|one| one.value)
            .collect();
        match matching.as_slice() {
            [] => Err(ValueProblem::Missing),
            [value] => finite(*value),
            _ => Err(ValueProblem::Ambiguous),
        }
    }

    proptest! {
        #[test]
        fn prop_selector_parse_never_panics(text in any::<String>()) {
            let _ = MetricSelector::parse(&text);
        }

        #[test]
        fn prop_selector_parse_never_panics_on_selector_like_text(
            text in r#"[a-c_:{}="\\,!~ \t0-9é]{0,40}"#,
        ) {
            if let Ok(parsed) = MetricSelector::parse(&text) {
                prop_assert_eq!(MetricSelector::parse(&parsed.to_string()), Ok(parsed));
            }
        }

        #[test]
        fn prop_selector_display_round_trips(
            name in metric_name(),
            labels in prop::collection::btree_map(label_name(), label_value(), 0..6),
            loose in any::<bool>(),
        ) {
            let text = write_selector(&name, &labels, loose);
            prop_assume!(text.len() <= MAX_KEY_LEN);
            let parsed = MetricSelector::parse(&text)
                .map_err(|error| TestCaseError::fail(format!("{text:?}: {error}")))?;
            prop_assert_eq!(parsed.name(), name.as_str());
            let expected_labels: Vec<(String, String)> = labels.into_iter().collect();
            prop_assert_eq!(parsed.labels(), expected_labels.as_slice());
            let canonical = parsed.to_string();
            prop_assert!(canonical.len() <= text.len());
            prop_assert_eq!(MetricSelector::parse(&canonical), Ok(parsed));
        }

        #[test]
        fn prop_document_parse_never_panics_on_bytes(
            body in prop::collection::vec(any::<u8>(), 0..512),
            key in valid_selector(),
        ) {
            if let Ok(parsed) = PrometheusDocument::parse(&body) {
                let _ = parsed.value(&key);
            }
        }

        #[test]
        fn prop_document_parse_never_panics_on_text(
            body in exposition_ish(),
            key in valid_selector(),
        ) {
            let parsed = PrometheusDocument::parse(body.as_bytes());
            prop_assert!(parsed.is_ok());
            if let Ok(parsed) = parsed {
                prop_assert!(parsed.sample_count() <= body.lines().count());
                if let Ok(number) = parsed.value(&key) {
                    prop_assert!(number.is_finite());
                }
            }
        }

        #[test]
        fn prop_document_gives_back_generated_samples(
            series in prop::collection::vec(series(), 0..12),
            crlf in any::<bool>(),
            masks in prop::collection::vec(any::<u8>(), 12),
        ) {
            let body = write_exposition(&series, crlf);
            let parsed = document(&body);
            prop_assert_eq!(parsed.sample_count(), series.len());
            for (one, mask) in series.iter().zip(masks) {
                // Every label, then a subset chosen by `mask`.
                let subset: BTreeMap<String, String> = one
                    .labels
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| mask & (1 << index) != 0)
                    .map(|(_, (name, value))| (name.clone(), value.clone()))
                    .collect();
                for wanted in [&one.labels, &subset] {
                    let key = write_selector(&one.name, wanted, false);
                    let got = parsed.value(&selector(&key));
                    let want = expected(&series, &one.name, wanted);
                    match (got, want) {
                        (Ok(got), Ok(want)) => prop_assert_eq!(got.to_bits(), want.to_bits(), "{}", key),
                        (got, want) => prop_assert_eq!(got, want, "{}", key),
                    }
                }
            }
            // A label no sample has.
            prop_assert_eq!(
                parsed.value(&selector(r#"a_m{d="z"}"#)),
                Err(ValueProblem::Missing)
            );
        }
    }
}
