//! Watching events live: what a subscriber asked for, checked against its organization, and the
//! back-pressure rule that keeps a slow subscriber from slowing anyone else.
//!
//! The feed ([`EventFeed`]) carries every organization's events; a [`Watch`] passes on only the
//! caller's organization's, narrowed to the section, chamber, detectors and kinds it asked for.
//! The driving adapter (the gRPC stream) keeps a bounded buffer per subscriber and applies
//! [`LagState`]: an event that does not fit is dropped and counted, the subscriber is told how
//! many it missed as soon as there is room, and one that stays behind longer than
//! [`WatchSettings::max_lag`] is disconnected.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Rule, ValidationError};
use crate::model::{ChamberId, DetectorId, OrganizationId, SectionId};
use crate::ports::{
    ChamberRepository, DetectorRepository, DomainEvent, EventDelivery, EventFeed,
    EventSubscription, Repositories, SectionRepository,
};
use crate::time::Timestamp;
use crate::usecases::{Actor, UseCaseError};

/// The kinds of event a watch may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// A poll's stored readings.
    Readings,
    /// A poll's ledger entry.
    Polls,
    /// Chamber health transitions.
    Health,
    /// Batches started and ended.
    Batches,
    /// Alerts opened and resolved.
    Alerts,
}

impl EventKind {
    pub const ALL: [Self; 5] = [
        Self::Readings,
        Self::Polls,
        Self::Health,
        Self::Batches,
        Self::Alerts,
    ];

    pub fn of(event: &DomainEvent) -> Self {
        match event {
            DomainEvent::ReadingsWritten { .. } => Self::Readings,
            DomainEvent::PollCompleted { .. } => Self::Polls,
            DomainEvent::HealthChanged { .. } => Self::Health,
            DomainEvent::BatchStarted { .. } | DomainEvent::BatchEnded { .. } => Self::Batches,
            DomainEvent::AlertOpened { .. } | DomainEvent::AlertResolved { .. } => Self::Alerts,
        }
    }
}

/// What a subscriber asks to watch. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRequest {
    pub section_id: Option<SectionId>,
    pub chamber_id: Option<ChamberId>,
    /// Only these detectors' readings (other kinds are not narrowed by it).
    pub detector_ids: Vec<DetectorId>,
    pub kinds: Vec<EventKind>,
}

/// A validated watch request, bound to one organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFilter {
    organization_id: OrganizationId,
    section_id: Option<SectionId>,
    chamber_id: Option<ChamberId>,
    detectors: BTreeSet<DetectorId>,
    kinds: BTreeSet<EventKind>,
}

impl WatchFilter {
    /// The part of `event` this watch sees: `None` for nothing. Another organization's event is
    /// never seen, whatever else matches.
    pub fn select(&self, event: &DomainEvent) -> Option<DomainEvent> {
        let routing = event.routing();
        if routing.organization_id != self.organization_id
            || !self.kinds.contains(&EventKind::of(event))
        {
            return None;
        }
        if self
            .section_id
            .is_some_and(|s| routing.section_id != Some(s))
            || self
                .chamber_id
                .is_some_and(|c| routing.chamber_id != Some(c))
        {
            return None;
        }
        match event {
            DomainEvent::ReadingsWritten {
                routing,
                poll,
                readings,
            } if !self.detectors.is_empty() => {
                let readings: Vec<_> = readings
                    .iter()
                    .filter(|r| self.detectors.contains(&r.detector_id))
                    .cloned()
                    .collect();
                (!readings.is_empty()).then_some(DomainEvent::ReadingsWritten {
                    routing: *routing,
                    poll: *poll,
                    readings,
                })
            }
            _ => Some(event.clone()),
        }
    }
}

/// What a watch hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    Event(DomainEvent),
    /// Events may be missing here: the bus dropped some for this process (it fell behind) or
    /// reconnected. Which of them this watch would have seen is unknown.
    Gap,
}

/// A live subscription narrowed to one caller's filter.
pub struct Watch {
    subscription: Box<dyn EventSubscription>,
    filter: WatchFilter,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The next matching event (or gap); `None` when the feed closed.
    pub async fn next(&mut self) -> Option<WatchItem> {
        loop {
            match self.subscription.next().await? {
                EventDelivery::Event(event) => {
                    if let Some(seen) = self.filter.select(&event) {
                        return Some(WatchItem::Event(seen));
                    }
                }
                EventDelivery::Lagged { .. } | EventDelivery::Interrupted => {
                    return Some(WatchItem::Gap);
                }
            }
        }
    }

    pub fn filter(&self) -> &WatchFilter {
        &self.filter
    }
}

/// How far behind a subscriber may fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Events buffered per subscriber; beyond it events are dropped and counted.
    pub buffer: usize,
    /// A subscriber that has been behind (dropping events, never back under half its buffer)
    /// for longer than this is disconnected.
    pub max_lag: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            buffer: 1024,
            max_lag: Duration::from_secs(10),
        }
    }
}

/// What to do with a subscriber after an event was dropped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagVerdict {
    Keep,
    /// Behind for longer than the bound: end its stream.
    Disconnect {
        missed: u64,
        behind_for: Duration,
    },
}

/// One subscriber's back-pressure state (pure: the adapter reports what happened).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LagState {
    /// Dropped since the last notice the subscriber received.
    unreported: u64,
    /// Dropped in all.
    missed_total: u64,
    behind_since: Option<Timestamp>,
}

impl LagState {
    /// An event did not fit in the subscriber's buffer and was dropped.
    pub fn dropped(&mut self, now: Timestamp, settings: &WatchSettings) -> LagVerdict {
        self.unreported += 1;
        self.missed_total += 1;
        let since = *self.behind_since.get_or_insert(now);
        let behind_for = now.saturating_since(since);
        if behind_for > settings.max_lag {
            LagVerdict::Disconnect {
                missed: self.missed_total,
                behind_for,
            }
        } else {
            LagVerdict::Keep
        }
    }

    /// The count to report in a "lagged" notice before the next event, if any was dropped.
    pub fn pending_notice(&self) -> Option<u64> {
        (self.unreported > 0).then_some(self.unreported)
    }

    /// The notice was queued for the subscriber.
    pub fn notice_queued(&mut self) {
        self.unreported = 0;
    }

    /// An event was queued; `free` of `capacity` buffer slots are left. Back under half full, the
    /// subscriber has caught up.
    pub fn queued(&mut self, free: usize, capacity: usize) {
        if free * 2 >= capacity {
            self.behind_since = None;
        }
    }

    pub fn is_behind(&self) -> bool {
        self.behind_since.is_some()
    }

    pub fn missed_total(&self) -> u64 {
        self.missed_total
    }
}

/// The watch use case: validates a request against the caller's organization and subscribes.
#[derive(Clone)]
pub struct EventWatch {
    pub feed: Arc<dyn EventFeed>,
    pub sections: Arc<dyn SectionRepository>,
    pub chambers: Arc<dyn ChamberRepository>,
    pub detectors: Arc<dyn DetectorRepository>,
    pub settings: WatchSettings,
}

impl std::fmt::Debug for EventWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWatch")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EventWatch {
    pub fn new(
        repositories: &Repositories,
        feed: Arc<dyn EventFeed>,
        settings: WatchSettings,
    ) -> Self {
        Self {
            feed,
            sections: repositories.sections.clone(),
            chambers: repositories.chambers.clone(),
            detectors: repositories.detectors.clone(),
            settings,
        }
    }

    /// Starts watching. Any role of the organization may watch.
    ///
    /// # Errors
    /// `NotFound` for a section, chamber or detector that is not the caller's organization's
    /// (another tenant's looks the same); `Invalid` for a detector of another chamber than the
    /// one asked for; `Unavailable` when the store or the bus cannot be reached.
    pub async fn watch(&self, actor: &Actor, request: WatchRequest) -> Result<Watch, UseCaseError> {
        let org = actor.organization_id;
        let section_id = request.section_id;
        if let Some(section) = section_id {
            self.sections.get(org, section).await?;
        }
        if let Some(chamber) = request.chamber_id {
            let chamber = self.chambers.get(org, chamber).await?;
            if section_id.is_some_and(|s| s != chamber.section_id) {
                return Err(ValidationError::new(
                    "chamber_id",
                    Rule::Inconsistent("the chamber is not in the section asked for".into()),
                )
                .into());
            }
        }
        for (i, id) in request.detector_ids.iter().enumerate() {
            let detector = self.detectors.get(org, *id).await?;
            if request.chamber_id.is_some_and(|c| c != detector.chamber_id) {
                return Err(ValidationError::new(
                    format!("detector_ids[{i}]"),
                    Rule::Inconsistent("the detector is not the chamber's asked for".into()),
                )
                .into());
            }
        }
        let kinds: BTreeSet<EventKind> = if request.kinds.is_empty() {
            EventKind::ALL.into_iter().collect()
        } else {
            request.kinds.into_iter().collect()
        };
        let subscription = self
            .feed
            .subscribe()
            .await
            .map_err(|e| UseCaseError::Unavailable {
                message: e.to_string(),
            })?;
        Ok(Watch {
            subscription,
            filter: WatchFilter {
                organization_id: org,
                section_id,
                chamber_id: request.chamber_id,
                detectors: request.detector_ids.into_iter().collect(),
                kinds,
            },
        })
    }
}
