//! Events: what happened, for live subscribers, alerts and transmitters; and the chamber change
//! feed the scheduler follows.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::alerting::Alert;
use crate::model::{
    Batch, Chamber, ChamberId, HealthTransition, LedgerEntry, OrganizationId, PollId, Reading,
    SectionId,
};

/// Where an event belongs, so a hub can route it to the subscribers of that organization,
/// section or chamber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoutingTag {
    pub organization_id: OrganizationId,
    pub section_id: Option<SectionId>,
    pub chamber_id: Option<ChamberId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DomainEvent {
    /// A poll's readings were stored (only newly stored ones: a redelivery publishes nothing).
    ReadingsWritten {
        routing: RoutingTag,
        poll: PollId,
        readings: Vec<Reading>,
    },
    /// A poll's ledger entry was stored.
    PollCompleted {
        routing: RoutingTag,
        entry: LedgerEntry,
    },
    /// A chamber's health changed state.
    HealthChanged {
        routing: RoutingTag,
        transition: HealthTransition,
    },
    BatchStarted {
        routing: RoutingTag,
        batch: Batch,
    },
    BatchEnded {
        routing: RoutingTag,
        batch: Batch,
    },
    /// An alert rule's condition held long enough: the alert opened.
    AlertOpened {
        routing: RoutingTag,
        alert: Box<Alert>,
    },
    /// The condition cleared: the alert resolved.
    AlertResolved {
        routing: RoutingTag,
        alert: Box<Alert>,
    },
}

impl DomainEvent {
    pub fn routing(&self) -> &RoutingTag {
        match self {
            Self::ReadingsWritten { routing, .. }
            | Self::PollCompleted { routing, .. }
            | Self::HealthChanged { routing, .. }
            | Self::BatchStarted { routing, .. }
            | Self::BatchEnded { routing, .. }
            | Self::AlertOpened { routing, .. }
            | Self::AlertResolved { routing, .. } => routing,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("event bus unavailable: {message}")]
    Unavailable { message: String },
}

/// Publishes events. Best effort by contract: a failure is reported to the caller, who logs it
/// and carries on — publishing never holds up polling.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// # Errors
    /// `Unavailable`.
    async fn publish(&self, events: &[DomainEvent]) -> Result<(), PublishError>;
}

/// What a subscription to the event feed hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum EventDelivery {
    Event(DomainEvent),
    /// The subscriber fell behind and `missed` events were dropped for it (the feed never waits
    /// for a slow subscriber).
    Lagged {
        missed: u64,
    },
    /// The feed lost its connection and reconnected: events published meanwhile are lost, how
    /// many is unknown.
    Interrupted,
}

/// A subscription to the event feed.
#[async_trait]
pub trait EventSubscription: Send {
    /// The next delivery; `None` when the feed is closed for good.
    async fn next(&mut self) -> Option<EventDelivery>;
}

/// The receiving side of the event bus: every event published anywhere (any worker, any
/// gateway) reaches every subscription, in the order each publisher published them. Delivery is
/// best effort and never slows publishers: a subscription that falls behind is told how many
/// events it missed ([`EventDelivery::Lagged`]).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait EventFeed: Send + Sync {
    /// Events published from now on (the subscription is live when this returns).
    ///
    /// # Errors
    /// `Unavailable` when the bus cannot be reached.
    async fn subscribe(&self) -> Result<Box<dyn EventSubscription>, PublishError>;
}

/// A change to the set of chambers or their schedules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChamberChange {
    /// Created or updated (including pause, resume and interval changes): the new state.
    Upserted { chamber: Chamber },
    Removed {
        organization_id: OrganizationId,
        chamber_id: ChamberId,
    },
    /// The subscriber missed changes (it fell behind, or the feed reconnected): resync fully.
    Resync,
}

/// A subscription to the change feed.
#[async_trait]
pub trait ChangeSubscription: Send {
    /// The next change; `None` when the feed is closed for good.
    async fn next(&mut self) -> Option<ChamberChange>;
}

/// The change feed: every chamber write publishes to it; the scheduler follows it (and resyncs
/// periodically, so a lost change is corrected within the resync period).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ChamberChanges: Send + Sync {
    /// # Errors
    /// `Unavailable` (the write it reports has happened; the resync will catch up).
    async fn publish(&self, change: &ChamberChange) -> Result<(), PublishError>;

    /// Changes published from now on.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn subscribe(&self) -> Result<Box<dyn ChangeSubscription>, PublishError>;
}
