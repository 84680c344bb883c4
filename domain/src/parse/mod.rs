//! Parsers for chamber responses, and the detector keys that pick values out of them.
//!
//! A chamber answers a poll with a body in one of two formats:
//!
//! - **JSON**: any JSON document. A detector finds its value with a [`JsonPointer`]
//!   (RFC 6901), such as `/temperature` or `/detectors/0/value`. Numbers, strings that hold
//!   a number (`"23.5"`, `" 1e3 "`) and booleans (`1.0` / `0.0`) are readings. See
//!   [`JsonDocument`].
//! - **Prometheus text exposition format 0.0.4**: lines such as
//!   `chamber_temperature_celsius{sensor="top"} 23.5`. A detector finds its value with a
//!   [`MetricSelector`]: a metric name with optional label matchers, which must select
//!   exactly one sample. See [`PrometheusDocument`].
//!
//! # Input from a chamber is never refused
//!
//! Parsing a body fails ([`ParseError`]) only when the body as a whole cannot be used: it is
//! not UTF-8, or (for JSON) it is not a JSON document. Even then the poll is recorded: every
//! detector of the chamber gets a corrupted reading. Otherwise each detector's lookup gives
//! either a value or a [`ValueProblem`]: a value that is missing, unparsable, non-finite or
//! ambiguous becomes a corrupted reading carrying the problem's [reason code](ValueProblem::code)
//! rather than an error. Whether a finite value is *plausible* is decided elsewhere, by the
//! detector's plausibility policy, which also turns implausible values into corrupted readings.
//!
//! Detector keys, on the other hand, come from a lab operator's configuration and are checked
//! when they are built: a [`JsonPointer`] or [`MetricSelector`] is always valid, and a
//! [`KeyError`] says which rule the text broke.

mod json;
mod prometheus;

use std::fmt;

pub use json::{JsonDocument, JsonPointer};
pub use prometheus::{MetricSelector, PrometheusDocument};

/// The most bytes a detector key ([`JsonPointer`] or [`MetricSelector`]) may have.
pub const MAX_KEY_LEN: usize = 512;

/// The most bytes of [`ParseError::Malformed`]'s reason.
pub const MAX_REASON_LEN: usize = 200;

/// Why the text of a detector key is not a valid [`JsonPointer`] or [`MetricSelector`].
///
/// Messages state the rule that was broken; they are shown to a lab operator next to the
/// name of the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("must not be empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] bytes.
    #[error("too long: at most {max} bytes")]
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The key contains a control character (a raw line break, tab, ...).
    #[error("must not contain control characters")]
    ControlCharacter,
    /// A metric selector starts or ends with whitespace.
    #[error("must not start or end with whitespace")]
    SurroundingWhitespace,
    /// A JSON pointer does not start with `/`.
    #[error("must start with '/'")]
    MissingLeadingSlash,
    /// A JSON pointer has a `~` that is not followed by `0` or `1`.
    #[error("'~' must be followed by '0' or '1'")]
    InvalidTilde,
    /// A metric name does not match `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name: must match [a-zA-Z_:][a-zA-Z0-9_:]*")]
    InvalidMetricName,
    /// A label name does not match `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("invalid label name: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName,
    /// A label name is not followed by `=`.
    #[error("expected '=' after label '{label}'")]
    ExpectedEquals {
        /// The label name.
        label: String,
    },
    /// A label matcher uses `!=`, `=~` or `!~`.
    #[error("only '=' label matchers are supported (label '{label}')")]
    UnsupportedMatcher {
        /// The label name.
        label: String,
    },
    /// A label value does not start with `"`.
    #[error("value of label '{label}' must be double-quoted")]
    UnquotedLabelValue {
        /// The label name.
        label: String,
    },
    /// A label value has a `\` that is not followed by `\`, `"` or `n`.
    #[error("invalid escape in value of label '{label}': only \\\\, \\\" and \\n are allowed")]
    InvalidLabelEscape {
        /// The label name.
        label: String,
    },
    /// A label value has no closing `"`.
    #[error("value of label '{label}' has no closing '\"'")]
    UnterminatedLabelValue {
        /// The label name.
        label: String,
    },
    /// A label value is followed by something other than `,` or `}`.
    #[error("expected ',' or '}}' after value of label '{label}'")]
    ExpectedCommaOrBrace {
        /// The label name.
        label: String,
    },
    /// The label set has no closing `}`.
    #[error("missing closing '}}'")]
    MissingClosingBrace,
    /// There is something after the closing `}` of the label set.
    #[error("unexpected characters after '}}'")]
    TrailingCharacters,
    /// The same label name appears twice.
    #[error("duplicate label '{name}'")]
    DuplicateLabel {
        /// The label name.
        name: String,
    },
}

/// Why a chamber's response body cannot be used at all.
///
/// Every detector of the chamber then gets a corrupted reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The body is not valid UTF-8.
    #[error("body is not valid utf-8")]
    NotUtf8,
    /// The body is not in the expected format.
    #[error("malformed body: {reason}")]
    Malformed {
        /// What is wrong, with a position when known; at most [`MAX_REASON_LEN`] bytes
        /// when built with [`ParseError::malformed`].
        reason: String,
    },
}

impl ParseError {
    /// A [`ParseError::Malformed`] whose reason is `reason`, shortened to at most
    /// [`MAX_REASON_LEN`] bytes (ending with `...` when shortened).
    pub fn malformed(reason: impl fmt::Display) -> Self {
        Self::Malformed {
            reason: shorten(reason.to_string(), MAX_REASON_LEN),
        }
    }
}

/// `text` if it has at most `max` bytes, else its longest prefix (on a character boundary)
/// of at most `max - 3` bytes followed by `...`.
fn shorten(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("...");
    text
}

/// Why a detector's value could not be read from a parsed response.
///
/// The reading is recorded as corrupted with [`code`](Self::code) as its reason.
/// `Display` writes the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueProblem {
    /// The key is not in the response, or its JSON value is `null`.
    Missing,
    /// The key is present but its value is not a number (a JSON object, array or
    /// non-numeric string; a malformed Prometheus line for the metric).
    Unparsable,
    /// The value is NaN, +Inf or -Inf.
    NonFinite,
    /// A metric selector matches more than one Prometheus sample.
    Ambiguous,
}

impl ValueProblem {
    /// Every problem, in declaration order.
    pub const ALL: [Self; 4] = [
        Self::Missing,
        Self::Unparsable,
        Self::NonFinite,
        Self::Ambiguous,
    ];

    /// The snake_case reason code: `missing`, `unparsable`, `non_finite` or `ambiguous`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Unparsable => "unparsable",
            Self::NonFinite => "non_finite",
            Self::Ambiguous => "ambiguous",
        }
    }
}

impl fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// `value` if it is finite, else [`ValueProblem::NonFinite`].
fn finite(value: f64) -> Result<f64, ValueProblem> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ValueProblem::NonFinite)
    }
}

/// `body` as UTF-8 text without a leading byte order mark.
fn utf8_text(body: &[u8]) -> Result<&str, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_problem_codes_are_snake_case_and_match_display() {
        let codes: Vec<&str> = ValueProblem::ALL.iter().map(ValueProblem::code).collect();
        assert_eq!(codes, ["missing", "unparsable", "non_finite", "ambiguous"]);
        for problem in ValueProblem::ALL {
            assert_eq!(problem.to_string(), problem.code());
        }
    }

    #[test]
    fn key_error_messages_state_the_rule() {
        assert_eq!(
            KeyError::TooLong { max: MAX_KEY_LEN }.to_string(),
            "too long: at most 512 bytes"
        );
        assert_eq!(
            KeyError::MissingLeadingSlash.to_string(),
            "must start with '/'"
        );
        assert_eq!(
            KeyError::InvalidTilde.to_string(),
            "'~' must be followed by '0' or '1'"
        );
        assert_eq!(
            KeyError::DuplicateLabel { name: "x".into() }.to_string(),
            "duplicate label 'x'"
        );
        assert_eq!(
            KeyError::InvalidLabelEscape { label: "a".into() }.to_string(),
            r#"invalid escape in value of label 'a': only \\, \" and \n are allowed"#
        );
        assert_eq!(
            KeyError::ExpectedCommaOrBrace { label: "a".into() }.to_string(),
            "expected ',' or '}' after value of label 'a'"
        );
        assert_eq!(
            KeyError::MissingClosingBrace.to_string(),
            "missing closing '}'"
        );
        assert!(
            KeyError::InvalidMetricName
                .to_string()
                .starts_with("invalid metric name")
        );
    }

    #[test]
    fn messages_are_lowercase_without_trailing_period() {
        let messages = [
            KeyError::Empty.to_string(),
            KeyError::TooLong { max: 1 }.to_string(),
            KeyError::ControlCharacter.to_string(),
            KeyError::SurroundingWhitespace.to_string(),
            KeyError::MissingLeadingSlash.to_string(),
            KeyError::InvalidTilde.to_string(),
            KeyError::InvalidMetricName.to_string(),
            KeyError::InvalidLabelName.to_string(),
            KeyError::ExpectedEquals { label: "a".into() }.to_string(),
            KeyError::UnsupportedMatcher { label: "a".into() }.to_string(),
            KeyError::UnquotedLabelValue { label: "a".into() }.to_string(),
            KeyError::InvalidLabelEscape { label: "a".into() }.to_string(),
            KeyError::UnterminatedLabelValue { label: "a".into() }.to_string(),
            KeyError::ExpectedCommaOrBrace { label: "a".into() }.to_string(),
            KeyError::MissingClosingBrace.to_string(),
            KeyError::TrailingCharacters.to_string(),
            KeyError::DuplicateLabel { name: "a".into() }.to_string(),
            ParseError::NotUtf8.to_string(),
            ParseError::malformed("x").to_string(),
        ];
        for message in messages {
            let first = message.chars().next().unwrap_or_default();
            assert!(!first.is_uppercase(), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn malformed_reason_is_shortened_on_a_char_boundary() {
        assert_eq!(
            ParseError::malformed("short"),
            ParseError::Malformed {
                reason: "short".into()
            }
        );
        let long = "é".repeat(300);
        let ParseError::Malformed { reason } = ParseError::malformed(&long) else {
            panic!("not malformed");
        };
        assert!(reason.len() <= MAX_REASON_LEN, "{}", reason.len());
        assert!(reason.ends_with("..."));
        assert!(long.starts_with(reason.trim_end_matches("...")));
        let exact = "a".repeat(MAX_REASON_LEN);
        assert_eq!(
            ParseError::malformed(&exact),
            ParseError::Malformed { reason: exact }
        );
    }

    #[test]
    fn utf8_text_strips_bom_and_refuses_invalid_utf8() {
        assert_eq!(utf8_text(b"\xef\xbb\xbfabc"), Ok("abc"));
        assert_eq!(utf8_text(b"abc"), Ok("abc"));
        assert_eq!(utf8_text(b"a\xffc"), Err(ParseError::NotUtf8));
    }

    #[test]
    fn finite_refuses_nan_and_infinities() {
        assert_eq!(finite(1.5), Ok(1.5));
        assert_eq!(finite(f64::NAN), Err(ValueProblem::NonFinite));
        assert_eq!(finite(f64::INFINITY), Err(ValueProblem::NonFinite));
        assert_eq!(finite(f64::NEG_INFINITY), Err(ValueProblem::NonFinite));
    }
}
