//! Chamber health: consecutive failed polls move a chamber up → degraded → down; any success
//! moves it back up. Each change of state is a transition, published as an event.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::limits::{DEGRADED_AFTER_FAILURES, DOWN_AFTER_DURATION, DOWN_AFTER_FAILURES};
use crate::model::ChamberId;
use crate::time::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No poll has completed yet.
    Unknown,
    Up,
    Degraded,
    Down,
}

impl HealthState {
    pub const ALL: [Self; 4] = [Self::Unknown, Self::Up, Self::Degraded, Self::Down];

    /// The state named by [`HealthState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Degraded => "degraded",
            Self::Down => "down",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When failures change a chamber's health. Default: degraded after 3 consecutive failed polls,
/// down after 10 and at least 60 s of failing (whichever is later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthPolicy {
    degraded_after: u32,
    down_after_failures: u32,
    down_after_ms: u64,
}

impl HealthPolicy {
    /// # Errors
    /// `health.degraded_after` when 0; `health.down_after_failures` when below
    /// `degraded_after`.
    pub fn new(
        degraded_after: u32,
        down_after_failures: u32,
        down_after: Duration,
    ) -> Result<Self, ValidationError> {
        if degraded_after == 0 {
            return Err(ValidationError::new(
                "health.degraded_after",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: u32::MAX.to_string(),
                    actual: "0".into(),
                },
            ));
        }
        if down_after_failures < degraded_after {
            return Err(ValidationError::new(
                "health.down_after_failures",
                Rule::Inconsistent(format!(
                    "must be at least degraded_after ({degraded_after})"
                )),
            ));
        }
        Ok(Self {
            degraded_after,
            down_after_failures,
            down_after_ms: u64::try_from(down_after.as_millis()).unwrap_or(u64::MAX),
        })
    }

    pub const fn degraded_after(&self) -> u32 {
        self.degraded_after
    }

    pub const fn down_after_failures(&self) -> u32 {
        self.down_after_failures
    }

    pub const fn down_after(&self) -> Duration {
        Duration::from_millis(self.down_after_ms)
    }
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            degraded_after: DEGRADED_AFTER_FAILURES,
            down_after_failures: DOWN_AFTER_FAILURES,
            down_after_ms: DOWN_AFTER_DURATION.as_millis() as u64,
        }
    }
}

/// A chamber's current health, derived from its poll outcomes in slot order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChamberHealth {
    pub chamber_id: ChamberId,
    pub state: HealthState,
    pub consecutive_failures: u32,
    /// Slot of the first failure of the current run of failures.
    pub failing_since: Option<Timestamp>,
    /// The latest slot observed; outcomes of older slots (late finishers) do not move health.
    pub last_slot: Option<Timestamp>,
    pub changed_at: Timestamp,
    /// Optimistic-concurrency version, bumped by the repository on each successful write.
    pub version: u64,
}

/// A change of a chamber's health state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTransition {
    pub chamber_id: ChamberId,
    pub from: HealthState,
    pub to: HealthState,
    pub at: Timestamp,
    pub consecutive_failures: u32,
}

impl ChamberHealth {
    /// A chamber no poll has completed for yet.
    pub fn unknown(chamber_id: ChamberId, at: Timestamp) -> Self {
        Self {
            chamber_id,
            state: HealthState::Unknown,
            consecutive_failures: 0,
            failing_since: None,
            last_slot: None,
            changed_at: at,
            version: 0,
        }
    }

    /// Applies one poll's outcome (`succeeded` as [`PollOutcome::chamber_succeeded`]
    /// reports it) for `slot`, observed at `at`. Returns the new health and the transition, if
    /// the state changed. Outcomes for slots at or before the last observed slot change nothing.
    ///
    /// [`PollOutcome::chamber_succeeded`]: crate::model::PollOutcome::chamber_succeeded
    #[must_use]
    pub fn observe(
        &self,
        slot: Timestamp,
        succeeded: bool,
        at: Timestamp,
        policy: &HealthPolicy,
    ) -> (ChamberHealth, Option<HealthTransition>) {
        if self.last_slot.is_some_and(|last| slot <= last) {
            return (self.clone(), None);
        }
        let mut next = self.clone();
        next.last_slot = Some(slot);
        if succeeded {
            next.consecutive_failures = 0;
            next.failing_since = None;
            next.state = HealthState::Up;
        } else {
            next.consecutive_failures = self.consecutive_failures.saturating_add(1);
            let since = *next.failing_since.get_or_insert(slot);
            let failing_for = slot.saturating_since(since);
            next.state = if next.consecutive_failures >= policy.down_after_failures
                && failing_for >= policy.down_after()
            {
                HealthState::Down
            } else if next.consecutive_failures >= policy.degraded_after {
                // Once down, a chamber stays down until a success.
                if self.state == HealthState::Down {
                    HealthState::Down
                } else {
                    HealthState::Degraded
                }
            } else if self.state == HealthState::Unknown {
                HealthState::Unknown
            } else {
                HealthState::Up
            };
        }
        if next.state == self.state {
            return (next, None);
        }
        next.changed_at = at;
        let transition = HealthTransition {
            chamber_id: self.chamber_id,
            from: self.state,
            to: next.state,
            at,
            consecutive_failures: next.consecutive_failures,
        };
        (next, Some(transition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        outcomes: &[bool],
        interval_ms: i64,
        policy: &HealthPolicy,
    ) -> (ChamberHealth, Vec<(HealthState, HealthState, usize)>) {
        let mut h = ChamberHealth::unknown(ChamberId::random(), Timestamp::EPOCH);
        let mut transitions = Vec::new();
        for (i, ok) in outcomes.iter().enumerate() {
            let slot = Timestamp::from_unix_millis(1_000_000 + i as i64 * interval_ms);
            let (next, t) = h.observe(slot, *ok, slot, policy);
            if let Some(t) = t {
                transitions.push((t.from, t.to, i));
            }
            h = next;
        }
        (h, transitions)
    }

    #[test]
    fn fast_chamber_goes_down_only_after_sixty_seconds_of_failures() {
        let mut outcomes = vec![true];
        outcomes.extend(std::iter::repeat_n(false, 61));
        outcomes.push(true);
        let (h, t) = run(&outcomes, 1000, &HealthPolicy::default());
        use HealthState::*;
        // Failure 1 is slot index 1; the 3rd failure (index 3) degrades; the 61st failure is
        // 60 s after the first (index 61) and takes it down; the success brings it back.
        assert_eq!(
            t,
            vec![
                (Unknown, Up, 0),
                (Up, Degraded, 3),
                (Degraded, Down, 61),
                (Down, Up, 62)
            ]
        );
        assert_eq!(h.state, Up);
        assert_eq!(h.consecutive_failures, 0);
    }

    #[test]
    fn slow_chamber_goes_down_after_ten_failures() {
        let mut outcomes = vec![true];
        outcomes.extend(std::iter::repeat_n(false, 10));
        let (h, t) = run(&outcomes, 3_600_000, &HealthPolicy::default());
        assert_eq!(
            t.last(),
            Some(&(HealthState::Degraded, HealthState::Down, 10))
        );
        assert_eq!(h.consecutive_failures, 10);
    }

    #[test]
    fn late_outcomes_of_older_slots_do_not_move_health() {
        let policy = HealthPolicy::default();
        let h = ChamberHealth::unknown(ChamberId::random(), Timestamp::EPOCH);
        let (h, _) = h.observe(
            Timestamp::from_unix_millis(2000),
            true,
            Timestamp::EPOCH,
            &policy,
        );
        let (after, t) = h.observe(
            Timestamp::from_unix_millis(1000),
            false,
            Timestamp::EPOCH,
            &policy,
        );
        assert_eq!(t, None);
        assert_eq!(after, h);
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let (h, t) = run(
            &[true, false, false, true, false, false],
            1000,
            &HealthPolicy::default(),
        );
        assert_eq!(h.state, HealthState::Up);
        assert_eq!(h.consecutive_failures, 2);
        assert_eq!(t.len(), 1, "never degraded: {t:?}");
    }

    #[test]
    fn custom_policies_are_checked() {
        assert!(HealthPolicy::new(0, 5, Duration::ZERO).is_err());
        assert_eq!(
            HealthPolicy::new(5, 2, Duration::ZERO).unwrap_err().field,
            "health.down_after_failures"
        );
        let strict = HealthPolicy::new(1, 2, Duration::ZERO).unwrap();
        let (_, t) = run(&[true, false, false], 1000, &strict);
        assert_eq!(
            t.iter().map(|t| t.1).collect::<Vec<_>>(),
            [HealthState::Up, HealthState::Degraded, HealthState::Down]
        );
    }
}
