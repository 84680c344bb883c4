//! Validation errors: every refused value names its field and the rule it broke.

use std::borrow::Cow;
use std::fmt;

/// The rule a value broke. Rendered after the field name, e.g.
/// `chamber.interval: must be between 1s and 24h (got 500ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// An empty (or all-whitespace) value where one is required.
    Required,
    /// A string longer than allowed.
    TooLong { max: usize, actual: usize },
    /// A control character (newline, tab, NUL, ...) in a name-like string.
    ControlCharacter,
    /// A number or duration outside its bounds.
    OutOfRange {
        min: String,
        max: String,
        actual: String,
    },
    /// NaN or an infinity where a finite number is required.
    NotFinite,
    /// The value does not have the required shape (the text says which).
    Format(String),
    /// A relation between two fields broke (e.g. `min` above `max`).
    Inconsistent(String),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Required => f.write_str("is required"),
            Rule::TooLong { max, actual } => {
                write!(f, "must be at most {max} characters (got {actual})")
            }
            Rule::ControlCharacter => f.write_str("must not contain control characters"),
            Rule::OutOfRange { min, max, actual } => {
                write!(f, "must be between {min} and {max} (got {actual})")
            }
            Rule::NotFinite => f.write_str("must be a finite number"),
            Rule::Format(why) | Rule::Inconsistent(why) => f.write_str(why),
        }
    }
}

/// A value refused at construction: which field, and which rule.
///
/// Value types report their natural field name (`name`, `interval`, ...); entity constructors
/// qualify it with [`ValidationError::within`] (`chamber.name`), so the message a lab operator
/// reads points at exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct ValidationError {
    pub field: Cow<'static, str>,
    pub rule: Rule,
}

impl ValidationError {
    pub fn new(field: impl Into<Cow<'static, str>>, rule: Rule) -> Self {
        Self {
            field: field.into(),
            rule,
        }
    }

    /// Qualifies the field with the entity (or list element) it belongs to:
    /// `name` within `chamber` becomes `chamber.name`.
    #[must_use]
    pub fn within(self, parent: &str) -> Self {
        Self {
            field: Cow::Owned(format!("{parent}.{}", self.field)),
            rule: self.rule,
        }
    }

    /// Renames the field outright (when a value type is used for a differently named field).
    #[must_use]
    pub fn for_field(self, field: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            rule: self.rule,
        }
    }
}
