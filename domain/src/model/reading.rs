//! Readings: one detector's value for one poll.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::model::{BatchId, ChamberId, DetectorId};
use crate::parse::ValueProblem;
use crate::time::Timestamp;

/// A finite `f64`: never NaN or infinite, once built.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct Finite(f64);

impl Finite {
    /// # Errors
    /// `value`: [`Rule::NotFinite`].
    pub fn new(v: f64) -> Result<Self, ValidationError> {
        if v.is_finite() {
            Ok(Self(v))
        } else {
            Err(ValidationError::new("value", Rule::NotFinite))
        }
    }

    pub const fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for Finite {
    type Error = ValidationError;
    fn try_from(v: f64) -> Result<Self, ValidationError> {
        Self::new(v)
    }
}

impl From<Finite> for f64 {
    fn from(v: Finite) -> f64 {
        v.0
    }
}

/// Why a reading holds no value. Input from a chamber is never refused: it is stored with one of
/// these, so that coverage and the ledger stay true.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorruptionReason {
    /// The detector's key was not in the response (or was null).
    Missing,
    /// Present, but not a number.
    Unparsable,
    /// NaN or an infinity.
    NonFinite,
    /// A number outside the detector's plausible range.
    Implausible,
    /// The key matched more than one value (a Prometheus selector without enough labels).
    Ambiguous,
    /// The whole response could not be read in the chamber's format.
    MalformedResponse,
}

impl CorruptionReason {
    pub const ALL: [Self; 6] = [
        Self::Missing,
        Self::Unparsable,
        Self::NonFinite,
        Self::Implausible,
        Self::Ambiguous,
        Self::MalformedResponse,
    ];

    /// Stable snake_case code stored in the database and shown in exports.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Unparsable => "unparsable",
            Self::NonFinite => "non_finite",
            Self::Implausible => "implausible",
            Self::Ambiguous => "ambiguous",
            Self::MalformedResponse => "malformed_response",
        }
    }

    /// Inverse of [`CorruptionReason::code`] (for adapters reading stored rows).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// Stable number 1–6 stored where a reason takes one small integer (the value arrays of one
    /// row per poll); 0 is never a reason, so stores may use it for "none".
    pub const fn number(self) -> u8 {
        match self {
            Self::Missing => 1,
            Self::Unparsable => 2,
            Self::NonFinite => 3,
            Self::Implausible => 4,
            Self::Ambiguous => 5,
            Self::MalformedResponse => 6,
        }
    }

    /// Inverse of [`CorruptionReason::number`].
    pub fn from_number(number: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.number() == number)
    }
}

impl From<ValueProblem> for CorruptionReason {
    fn from(p: ValueProblem) -> Self {
        match p {
            ValueProblem::Missing => Self::Missing,
            ValueProblem::Unparsable => Self::Unparsable,
            ValueProblem::NonFinite => Self::NonFinite,
            ValueProblem::Ambiguous => Self::Ambiguous,
        }
    }
}

impl fmt::Display for CorruptionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A reading's content: a finite measured value, or no value and the reason.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingValue {
    Measured(Finite),
    Corrupted(CorruptionReason),
}

impl ReadingValue {
    pub fn value(&self) -> Option<f64> {
        match self {
            Self::Measured(v) => Some(v.get()),
            Self::Corrupted(_) => None,
        }
    }

    pub fn is_corrupted(&self) -> bool {
        matches!(self, Self::Corrupted(_))
    }

    pub fn corruption(&self) -> Option<CorruptionReason> {
        match self {
            Self::Measured(_) => None,
            Self::Corrupted(r) => Some(*r),
        }
    }
}

/// `(detector, slot)` → value. Unique per `(detector, slot)`: redelivery never stores a reading
/// twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub detector_id: DetectorId,
    pub chamber_id: ChamberId,
    pub slot: Timestamp,
    pub value: ReadingValue,
    pub requested_at: Timestamp,
    pub received_at: Timestamp,
    /// The batch open in the chamber's section when the reading was requested.
    pub batch_id: Option<BatchId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_refuses_nan_and_infinities() {
        assert!(Finite::new(21.5).is_ok());
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Finite::new(bad).unwrap_err().rule, Rule::NotFinite);
        }
        assert!(serde_json::from_str::<Finite>("1e400").is_err());
    }

    #[test]
    fn corruption_codes_round_trip() {
        for r in CorruptionReason::ALL {
            assert_eq!(CorruptionReason::from_code(r.code()), Some(r));
        }
        assert_eq!(CorruptionReason::from_code("nope"), None);
    }
}
