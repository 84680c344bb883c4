//! Small validated value types shared by several entities.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::limits::{MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_UNIT_CHARS};

/// Whether `c` is an invisible formatting character (Unicode category Cf: bidi overrides and
/// isolates, zero-width space, byte order mark, soft hyphen, ...) that a name must not hide.
/// The zero-width joiner and non-joiner are allowed: Persian, Indic scripts and emoji sequences
/// need them.
fn is_hidden_format(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.general_category() == GeneralCategory::Format && !matches!(c, '\u{200C}' | '\u{200D}')
}

/// `raw` trimmed and in Unicode normalization form C (so the composed and decomposed spellings
/// of one name are one name), or the rule it breaks.
fn check_text(
    field: &'static str,
    raw: &str,
    max_chars: usize,
    required: bool,
    allow_newlines: bool,
) -> Result<String, ValidationError> {
    use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};
    let trimmed = raw.trim();
    // ASCII (nearly every name) is already NFC and has no formatting characters: no copy, no
    // per-character table lookups.
    let ascii = trimmed.is_ascii();
    let normalized: String = if ascii || is_nfc_quick(trimmed.chars()) == IsNormalized::Yes {
        trimmed.to_owned()
    } else {
        trimmed.nfc().collect()
    };
    let s = normalized.as_str();
    if required && s.is_empty() {
        return Err(ValidationError::new(field, Rule::Required));
    }
    let chars = s.chars().count();
    if chars > max_chars {
        return Err(ValidationError::new(
            field,
            Rule::TooLong {
                max: max_chars,
                actual: chars,
            },
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !(allow_newlines && (c == '\n' || c == '\t')))
    {
        return Err(ValidationError::new(field, Rule::ControlCharacter));
    }
    if let Some(hidden) = s.chars().find(|c| !ascii && is_hidden_format(*c)) {
        return Err(ValidationError::new(
            field,
            Rule::Format(format!(
                "must not contain invisible formatting characters (U+{:04X})",
                u32::from(hidden)
            )),
        ));
    }
    Ok(normalized)
}

/// The name of an organization, section, chamber, detector or batch: 1 to 200 characters after
/// trimming, no control characters and no invisible formatting characters (right-to-left
/// override, zero-width space, BOM, ...), kept in Unicode NFC so that one name has one spelling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// # Errors
    /// `name`: [`Rule::Required`], [`Rule::TooLong`] or [`Rule::ControlCharacter`].
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        check_text("name", raw, MAX_NAME_CHARS, true, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text (tabs and newlines allowed), up to 2,000 characters; may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Description(String);

impl Description {
    /// # Errors
    /// `description`: [`Rule::TooLong`] or [`Rule::ControlCharacter`].
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        check_text("description", raw, MAX_DESCRIPTION_CHARS, false, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A measurement unit such as `°C`, `%RH` or `ppm`: up to 32 characters, may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Unit(String);

impl Unit {
    /// # Errors
    /// `unit`: [`Rule::TooLong`] or [`Rule::ControlCharacter`].
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        check_text("unit", raw, MAX_UNIT_CHARS, false, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, lower-cased so that uniqueness ignores case. Deliberately loose (one `@`,
/// non-empty local part and domain, no whitespace): delivery is not our business.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    /// # Errors
    /// `email`: [`Rule::Required`], [`Rule::TooLong`] or [`Rule::Format`].
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = check_text("email", raw, Self::MAX_CHARS, true, false)?;
        let bad = |why: &str| ValidationError::new("email", Rule::Format(why.into()));
        if s.chars().any(char::is_whitespace) {
            return Err(bad("must not contain whitespace"));
        }
        match s.split_once('@') {
            Some((local, domain))
                if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
            {
                Ok(Self(s.to_lowercase()))
            }
            _ => Err(bad("must look like name@domain")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_conversions {
    ($($t:ident),*) => {$(
        impl TryFrom<String> for $t {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, ValidationError> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}
string_conversions!(Name, Description, Unit, Email);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn invisible_formatting_characters_are_refused_naming_the_character() {
        for (text, code) in [
            ("Growth\u{202E}2 moor", "U+202E"), // right-to-left override
            ("Gro\u{200B}wth", "U+200B"),       // zero-width space
            ("\u{FEFF}Growth", "U+FEFF"),       // byte order mark
            ("Growth\u{2066}1", "U+2066"),      // left-to-right isolate
            ("Gro\u{00AD}wth", "U+00AD"),       // soft hyphen
        ] {
            let refused = Name::parse(text).unwrap_err();
            assert_eq!(refused.field, "name");
            assert!(refused.to_string().contains(code), "{text:?}: {refused}");
            assert!(Unit::parse(text).is_err(), "{text:?} as a unit");
            assert!(
                Description::parse(text).is_err(),
                "{text:?} as a description"
            );
        }
        // The joiners that scripts and emoji need stay allowed.
        assert!(Name::parse("می\u{200C}خواهم").is_ok());
        assert!(Name::parse("lab \u{1F469}\u{200D}\u{1F52C}").is_ok());
    }

    #[test]
    fn composed_and_decomposed_spellings_are_one_name() {
        let composed = Name::parse("Kühlraum").unwrap();
        let decomposed = Name::parse("Ku\u{0308}hlraum").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(decomposed.as_str(), "K\u{00FC}hlraum");
        assert_eq!(
            Unit::parse("\u{212B}").unwrap().as_str(),
            "\u{00C5}",
            "the Ångström sign is stored as its NFC letter"
        );
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            Name::parse("  Growth room 2 ").map(|n| n.0),
            Ok("Growth room 2".to_owned())
        );
        assert_eq!(Name::parse("   ").map_err(|e| e.rule), Err(Rule::Required));
        let long = "é".repeat(201);
        let err = Name::parse(&long).unwrap_err();
        assert_eq!(
            err.to_string(),
            "name: must be at most 200 characters (got 201)"
        );
        assert!(
            Name::parse(&"é".repeat(200)).is_ok(),
            "the limit counts characters, not bytes"
        );
        assert_eq!(
            Name::parse("a\nb").map_err(|e| e.rule),
            Err(Rule::ControlCharacter)
        );
    }

    #[test]
    fn descriptions_allow_line_breaks_but_not_other_controls() {
        assert!(Description::parse("line one\nline two\tend").is_ok());
        assert!(Description::parse("").is_ok());
        assert!(Description::parse("bell\u{7}").is_err());
    }

    #[test]
    fn emails_are_lowercased_and_loosely_checked() {
        assert_eq!(
            Email::parse("Ada@Lab.Example").unwrap().as_str(),
            "ada@lab.example"
        );
        for bad in ["", "no-at-sign", "@x", "x@", "a b@c", "a@b@c"] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn text_values_never_panic_and_hold_their_invariants(s in ".*") {
            if let Ok(n) = Name::parse(&s) {
                prop_assert!(!n.as_str().is_empty());
                prop_assert!(n.as_str().chars().count() <= MAX_NAME_CHARS);
                prop_assert!(!n.as_str().chars().any(char::is_control));
                prop_assert_eq!(Name::parse(n.as_str()), Ok(n.clone()));
            }
            if let Ok(u) = Unit::parse(&s) {
                prop_assert!(u.as_str().chars().count() <= MAX_UNIT_CHARS);
            }
            if let Ok(e) = Email::parse(&s) {
                prop_assert!(e.as_str().contains('@'));
            }
            let _ = Description::parse(&s);
        }
    }
}
