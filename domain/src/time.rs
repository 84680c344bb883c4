//! Time as the domain sees it: instants in whole milliseconds since the Unix epoch.
//!
//! The slot grid, lateness and expiry are integer arithmetic on these; there is no wall clock
//! here — the current time comes from the [`Clock`](crate::ports::Clock) port.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An instant, in milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch, origin of every slot grid.
    pub const EPOCH: Timestamp = Timestamp(0);

    pub const fn from_unix_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn as_unix_millis(self) -> i64 {
        self.0
    }

    /// `self - earlier`, or zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// RFC 3339 rendering (UTC), used in messages and exports.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| format!("{}ms", self.0)),
            Err(_) => format!("{}ms", self.0),
        }
    }

    /// Parses an RFC 3339 timestamp (sub-millisecond digits are truncated).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
            .ok()
            .map(Self)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(millis(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(millis(rhs)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// Renders a duration the way limits are written in messages: `500ms`, `10s`, `24h`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_millisecond_precision() {
        let t = Timestamp::from_unix_millis(1_764_000_123_456);
        assert_eq!(t.to_rfc3339(), "2025-11-24T16:02:03.456Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        let t = Timestamp::from_unix_millis(i64::MAX - 1);
        assert_eq!((t + Duration::from_secs(5)).as_unix_millis(), i64::MAX);
        assert_eq!(Timestamp::EPOCH.saturating_since(t), Duration::ZERO);
    }

    #[test]
    fn durations_render_in_their_largest_whole_unit() {
        assert_eq!(human_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(human_duration(Duration::from_secs(10)), "10s");
        assert_eq!(human_duration(Duration::from_secs(86_400)), "24h");
        assert_eq!(human_duration(Duration::from_secs(90)), "90s");
    }
}
