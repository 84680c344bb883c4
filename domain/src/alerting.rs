//! Alert rules and when they fire: a pure state machine per rule, fed the chamber's events and
//! the clock. An alert opens once when its condition has held for longer than the rule's
//! duration, stays open (a rule never has two open alerts), and resolves when the condition
//! clears. Storing alerts, acknowledging them and sending them out are the use cases' and
//! adapters' business; this decides only *when*.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Rule, ValidationError};
use crate::model::{
    AlertId, AlertRuleId, ChamberId, Description, DetectorId, Finite, HealthState, Name,
    OrganizationId, UserId,
};
use crate::ports::DomainEvent;
use crate::time::{Timestamp, human_duration};

/// The shortest and longest duration a rule may wait before it fires.
pub const MIN_ALERT_AFTER: Duration = Duration::from_secs(1);
pub const MAX_ALERT_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// What must hold, and for how long, before an alert opens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AlertCondition {
    /// The chamber's health has been `down` for longer than `after`.
    ChamberDown { after: Duration },
    /// The detector's measured values have been outside `[min, max]` for longer than `after`
    /// (an open bound is unchecked; corrupted readings neither start nor end it).
    OutOfRange {
        detector_id: DetectorId,
        min: Option<Finite>,
        max: Option<Finite>,
        after: Duration,
    },
    /// No measured value from the chamber (or from one detector) for longer than `after`.
    NoReading {
        detector_id: Option<DetectorId>,
        after: Duration,
    },
}

impl AlertCondition {
    pub fn after(&self) -> Duration {
        match self {
            Self::ChamberDown { after }
            | Self::OutOfRange { after, .. }
            | Self::NoReading { after, .. } => *after,
        }
    }

    /// # Errors
    /// `condition.after` outside 1 s to 7 days; `condition.min` / `condition.max` when neither
    /// bound is set or `min` is above `max`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let after = self.after();
        if !(MIN_ALERT_AFTER..=MAX_ALERT_AFTER).contains(&after) {
            return Err(ValidationError::new(
                "condition.after",
                Rule::OutOfRange {
                    min: human_duration(MIN_ALERT_AFTER),
                    max: human_duration(MAX_ALERT_AFTER),
                    actual: human_duration(after),
                },
            ));
        }
        if let Self::OutOfRange { min, max, .. } = self {
            match (min, max) {
                (None, None) => {
                    return Err(ValidationError::new(
                        "condition.min",
                        Rule::Inconsistent("set min, max or both".into()),
                    ));
                }
                (Some(lo), Some(hi)) if lo.get() > hi.get() => {
                    return Err(ValidationError::new(
                        "condition.min",
                        Rule::Inconsistent(format!(
                            "must not be above max ({} > {})",
                            lo.get(),
                            hi.get()
                        )),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A rule on one chamber (and, for some conditions, one of its detectors). Names are unique
/// within a chamber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub id: AlertRuleId,
    pub organization_id: OrganizationId,
    pub chamber_id: ChamberId,
    pub name: Name,
    pub condition: AlertCondition,
    pub created_at: Timestamp,
}

/// Who acknowledged an alert, when, and what they said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledgement {
    pub user_id: UserId,
    pub at: Timestamp,
    pub comment: Description,
}

/// One alert: opened when its rule's condition had held long enough, resolved when it cleared.
/// A rule has at most one open alert; its resolved ones are its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub id: AlertId,
    pub organization_id: OrganizationId,
    pub rule_id: AlertRuleId,
    pub chamber_id: ChamberId,
    pub rule_name: Name,
    /// When the condition started to hold.
    pub since: Timestamp,
    pub opened_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    pub detail: String,
    pub acknowledgement: Option<Acknowledgement>,
}

impl Alert {
    /// The alert a rule's [`AlertSignal::Open`] opens.
    pub fn opened(rule: &AlertRule, since: Timestamp, at: Timestamp, detail: String) -> Self {
        Self {
            id: AlertId::random(),
            organization_id: rule.organization_id,
            rule_id: rule.id,
            chamber_id: rule.chamber_id,
            rule_name: rule.name.clone(),
            since,
            opened_at: at,
            resolved_at: None,
            detail,
            acknowledgement: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.resolved_at.is_none()
    }
}

/// What a rule's state machine decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertSignal {
    /// The condition has held since `since`, longer than the rule allows: open an alert.
    Open {
        since: Timestamp,
        at: Timestamp,
        detail: String,
    },
    /// The condition cleared at `at`: resolve the open alert.
    Resolve { at: Timestamp },
}

/// One rule's evaluation state.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleState {
    rule: AlertRule,
    /// When the condition started to hold (for `NoReading`: the last measured value, or when
    /// watching began).
    since: Option<Timestamp>,
    open: bool,
}

impl RuleState {
    /// Starts watching at `now`; `open` when the rule already has an open alert (after a
    /// restart).
    pub fn new(rule: AlertRule, now: Timestamp, open: bool) -> Self {
        let since = matches!(rule.condition, AlertCondition::NoReading { .. }).then_some(now);
        Self { rule, since, open }
    }

    pub fn rule(&self) -> &AlertRule {
        &self.rule
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Corrects whether the rule has an open alert (when storing a signal failed, or the store
    /// says otherwise).
    pub fn set_open(&mut self, open: bool) {
        self.open = open;
    }

    /// The condition is known to hold since `since` (a chamber already down when watching
    /// began); an earlier start already known is kept.
    pub fn holding_since(&mut self, since: Timestamp) {
        self.since = Some(self.since.map_or(since, |s| s.min(since)));
    }

    /// Feeds one event (events of other chambers are ignored).
    pub fn observe(&mut self, event: &DomainEvent) -> Option<AlertSignal> {
        if event.routing().chamber_id != Some(self.rule.chamber_id) {
            return None;
        }
        let condition = self.rule.condition;
        match (&condition, event) {
            (AlertCondition::ChamberDown { .. }, DomainEvent::HealthChanged { transition, .. }) => {
                if transition.to == HealthState::Down {
                    self.since.get_or_insert(transition.at);
                    self.check(transition.at)
                } else {
                    self.clear(transition.at)
                }
            }
            (
                AlertCondition::OutOfRange {
                    detector_id,
                    min,
                    max,
                    ..
                },
                DomainEvent::ReadingsWritten { readings, .. },
            ) => {
                let mut signal = None;
                for r in readings.iter().filter(|r| r.detector_id == *detector_id) {
                    let Some(v) = r.value.value() else { continue };
                    let outside =
                        min.is_some_and(|lo| v < lo.get()) || max.is_some_and(|hi| v > hi.get());
                    let now = if outside {
                        self.since.get_or_insert(r.slot);
                        self.check(r.slot)
                    } else {
                        self.clear(r.slot)
                    };
                    signal = now.or(signal);
                }
                signal
            }
            (
                AlertCondition::NoReading { detector_id, .. },
                DomainEvent::ReadingsWritten { readings, .. },
            ) => {
                let latest = readings
                    .iter()
                    .filter(|r| detector_id.is_none_or(|d| r.detector_id == d))
                    .filter(|r| r.value.value().is_some())
                    .map(|r| r.received_at)
                    .max()?;
                self.since = Some(self.since.map_or(latest, |s| s.max(latest)));
                if self.open {
                    self.open = false;
                    Some(AlertSignal::Resolve { at: latest })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Lets time pass: a condition that has held long enough opens now.
    pub fn tick(&mut self, now: Timestamp) -> Option<AlertSignal> {
        self.check(now)
    }

    fn check(&mut self, now: Timestamp) -> Option<AlertSignal> {
        let since = self.since?;
        let after = self.rule.condition.after();
        if self.open || now.saturating_since(since) <= after {
            return None;
        }
        self.open = true;
        Some(AlertSignal::Open {
            since,
            at: now,
            detail: self.detail(now.saturating_since(since)),
        })
    }

    fn clear(&mut self, at: Timestamp) -> Option<AlertSignal> {
        self.since = None;
        if self.open {
            self.open = false;
            Some(AlertSignal::Resolve { at })
        } else {
            None
        }
    }

    fn detail(&self, held: Duration) -> String {
        let held = human_duration(held);
        match &self.rule.condition {
            AlertCondition::ChamberDown { .. } => format!("chamber down for {held}"),
            AlertCondition::OutOfRange { min, max, .. } => {
                let bound = |b: &Option<Finite>| b.map_or("-".to_owned(), |v| v.get().to_string());
                format!("value outside [{}, {}] for {held}", bound(min), bound(max))
            }
            AlertCondition::NoReading { .. } => format!("no reading for {held}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HealthTransition, PollId, Reading, ReadingValue, SectionId};
    use crate::ports::RoutingTag;

    const T0: i64 = 1_767_225_600_000;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(T0 + s * 1000)
    }

    struct Fixture {
        org: OrganizationId,
        section: SectionId,
        chamber: ChamberId,
        detector: DetectorId,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                org: OrganizationId::random(),
                section: SectionId::random(),
                chamber: ChamberId::random(),
                detector: DetectorId::random(),
            }
        }

        fn rule(&self, condition: AlertCondition) -> AlertRule {
            AlertRule {
                id: AlertRuleId::random(),
                organization_id: self.org,
                chamber_id: self.chamber,
                name: Name::parse("rule").unwrap(),
                condition,
                created_at: at(0),
            }
        }

        fn routing(&self) -> RoutingTag {
            RoutingTag {
                organization_id: self.org,
                section_id: Some(self.section),
                chamber_id: Some(self.chamber),
            }
        }

        fn health(&self, s: i64, to: HealthState) -> DomainEvent {
            DomainEvent::HealthChanged {
                routing: self.routing(),
                transition: HealthTransition {
                    chamber_id: self.chamber,
                    from: HealthState::Up,
                    to,
                    at: at(s),
                    consecutive_failures: 10,
                },
            }
        }

        fn reading(&self, s: i64, value: Option<f64>) -> DomainEvent {
            DomainEvent::ReadingsWritten {
                routing: self.routing(),
                poll: PollId {
                    chamber_id: self.chamber,
                    slot: at(s),
                },
                readings: vec![Reading {
                    detector_id: self.detector,
                    chamber_id: self.chamber,
                    slot: at(s),
                    value: value.map_or(
                        ReadingValue::Corrupted(crate::model::CorruptionReason::Missing),
                        |v| ReadingValue::Measured(Finite::new(v).unwrap()),
                    ),
                    requested_at: at(s),
                    received_at: at(s),
                    batch_id: None,
                }],
            }
        }
    }

    fn opens(signal: Option<AlertSignal>) -> bool {
        matches!(signal, Some(AlertSignal::Open { .. }))
    }

    #[test]
    fn a_chamber_down_longer_than_the_rule_opens_one_alert_that_resolves_when_it_is_back() {
        let f = Fixture::new();
        let mut state = RuleState::new(
            f.rule(AlertCondition::ChamberDown {
                after: Duration::from_secs(30),
            }),
            at(0),
            false,
        );
        assert_eq!(state.observe(&f.health(10, HealthState::Down)), None);
        assert_eq!(state.tick(at(40)), None, "exactly 30 s is not longer");
        let Some(AlertSignal::Open { since, detail, .. }) = state.tick(at(41)) else {
            panic!("opens after 30 s down")
        };
        assert_eq!(since, at(10));
        assert!(detail.contains("down for 31s"), "{detail}");
        assert_eq!(state.tick(at(100)), None, "stays open: one alert");
        assert_eq!(state.observe(&f.health(101, HealthState::Down)), None);
        assert_eq!(
            state.observe(&f.health(120, HealthState::Up)),
            Some(AlertSignal::Resolve { at: at(120) })
        );
        assert_eq!(state.tick(at(500)), None);
    }

    #[test]
    fn a_short_outage_opens_nothing() {
        let f = Fixture::new();
        let mut state = RuleState::new(
            f.rule(AlertCondition::ChamberDown {
                after: Duration::from_secs(30),
            }),
            at(0),
            false,
        );
        state.observe(&f.health(10, HealthState::Down));
        assert_eq!(state.observe(&f.health(20, HealthState::Up)), None);
        assert_eq!(state.tick(at(100)), None);
    }

    #[test]
    fn values_outside_the_range_for_longer_than_the_rule_open_and_a_value_inside_resolves() {
        let f = Fixture::new();
        let mut state = RuleState::new(
            f.rule(AlertCondition::OutOfRange {
                detector_id: f.detector,
                min: Some(Finite::new(2.0).unwrap()),
                max: Some(Finite::new(8.0).unwrap()),
                after: Duration::from_secs(5),
            }),
            at(0),
            false,
        );
        assert_eq!(state.observe(&f.reading(1, Some(9.0))), None);
        assert_eq!(
            state.observe(&f.reading(3, None)),
            None,
            "corrupted: no change"
        );
        assert_eq!(state.observe(&f.reading(6, Some(8.5))), None);
        assert!(opens(state.observe(&f.reading(7, Some(9.5)))));
        assert_eq!(state.observe(&f.reading(8, Some(12.0))), None, "one alert");
        assert_eq!(
            state.observe(&f.reading(9, Some(5.0))),
            Some(AlertSignal::Resolve { at: at(9) })
        );
        // Another detector's values do not count.
        let mut other = Fixture::new();
        other.chamber = f.chamber;
        assert_eq!(state.observe(&other.reading(20, Some(100.0))), None);
        assert_eq!(state.tick(at(100)), None);
    }

    #[test]
    fn no_reading_for_longer_than_the_rule_opens_and_the_next_reading_resolves() {
        let f = Fixture::new();
        let mut state = RuleState::new(
            f.rule(AlertCondition::NoReading {
                detector_id: None,
                after: Duration::from_secs(60),
            }),
            at(0),
            false,
        );
        assert_eq!(state.tick(at(60)), None);
        assert_eq!(state.observe(&f.reading(50, Some(1.0))), None);
        assert_eq!(
            state.observe(&f.reading(70, None)),
            None,
            "corrupted is no reading"
        );
        assert_eq!(state.tick(at(110)), None, "60 s after the last value");
        assert!(opens(state.tick(at(111))));
        assert_eq!(state.tick(at(200)), None);
        assert_eq!(
            state.observe(&f.reading(201, Some(2.0))),
            Some(AlertSignal::Resolve { at: at(201) })
        );
    }

    #[test]
    fn another_chambers_events_are_ignored_and_an_alert_open_before_a_restart_stays_one() {
        let f = Fixture::new();
        let other = Fixture::new();
        let mut state = RuleState::new(
            f.rule(AlertCondition::ChamberDown {
                after: Duration::from_secs(1),
            }),
            at(0),
            true,
        );
        assert_eq!(state.observe(&other.health(1, HealthState::Down)), None);
        state.observe(&f.health(2, HealthState::Down));
        assert_eq!(state.tick(at(60)), None, "already open");
        assert!(state.is_open());
    }

    #[test]
    fn conditions_are_validated_naming_the_field() {
        let bad_after = AlertCondition::ChamberDown {
            after: Duration::from_millis(10),
        };
        assert_eq!(bad_after.validate().unwrap_err().field, "condition.after");
        let no_bounds = AlertCondition::OutOfRange {
            detector_id: DetectorId::random(),
            min: None,
            max: None,
            after: Duration::from_secs(5),
        };
        assert_eq!(no_bounds.validate().unwrap_err().field, "condition.min");
        let inverted = AlertCondition::OutOfRange {
            detector_id: DetectorId::random(),
            min: Some(Finite::new(3.0).unwrap()),
            max: Some(Finite::new(1.0).unwrap()),
            after: Duration::from_secs(5),
        };
        assert_eq!(inverted.validate().unwrap_err().field, "condition.min");
        assert!(
            AlertCondition::NoReading {
                detector_id: None,
                after: Duration::from_secs(60)
            }
            .validate()
            .is_ok()
        );
    }
}
