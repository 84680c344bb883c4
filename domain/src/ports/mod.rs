//! Ports: the object-safe async traits through which use cases reach everything outside the
//! domain. Use cases hold them as `Arc<dyn Port>`. Each port documents its error contract;
//! each has one conformance suite (`crate::conformance`, feature `conformance`) that every
//! adapter's tests run.

mod access;
mod alerts;
mod chamber_client;
mod coordination;
mod delivery;
mod events;
mod passwords;
mod poll_reads;
mod queue;
mod repositories;
mod storage;

pub use access::{AccessEpoch, AccessError, Admission, Bucket, Rate, RateLimiter, next_arrival};
pub use alerts::{AlertFilter, AlertRepository, TransmitterRepository};
pub use chamber_client::{ChamberClient, FetchError, FetchRequest, FetchedResponse};
pub use coordination::{Clock, LeaderLease, LeaseError, LeaseGrant, ScheduleCheckpoint};
pub use delivery::{DeliveryClient, DeliveryError};
pub use events::{
    ChamberChange, ChamberChanges, ChangeSubscription, DomainEvent, EventDelivery, EventFeed,
    EventPublisher, EventSubscription, PublishError, RoutingTag,
};
pub use passwords::{PasswordError, PasswordHasher};
pub use poll_reads::{PollReads, RepositoryPollReads};
pub use queue::{
    EnqueueReport, LeaseReceipt, LeasedJob, PollQueue, QueueConsumer, QueueDepth, QueueError,
    QueueInspector, QueuedJob, QueuedJobState,
};
pub use repositories::{Repositories, Store};
pub use storage::{
    Aggregate, AggregateQuery, ApiTokenRepository, BatchRepository, ChamberFilter,
    ChamberHealthRepository, ChamberRepository, ChamberWithDetectors, ConversionProgress,
    DetectorRepository, ItemError, LatestReadings, LedgerQuery, LedgerTally,
    OrganizationRepository, PollLedgerRepository, PollRecord, ReadingCursor, ReadingQuery,
    ReadingRepository, ReadingScope, SectionRepository, StoreError, TallyQuery, UserRepository,
    WriteReport,
};

#[cfg(feature = "mock")]
pub use access::{MockAccessEpoch, MockRateLimiter};
#[cfg(feature = "mock")]
pub use alerts::{MockAlertRepository, MockTransmitterRepository};
#[cfg(feature = "mock")]
pub use chamber_client::MockChamberClient;
#[cfg(feature = "mock")]
pub use coordination::{MockClock, MockLeaderLease, MockScheduleCheckpoint};
#[cfg(feature = "mock")]
pub use delivery::MockDeliveryClient;
#[cfg(feature = "mock")]
pub use events::{MockChamberChanges, MockEventFeed, MockEventPublisher};
#[cfg(feature = "mock")]
pub use passwords::MockPasswordHasher;
#[cfg(feature = "mock")]
pub use queue::MockPollQueue;
#[cfg(feature = "mock")]
pub use storage::{
    MockApiTokenRepository, MockBatchRepository, MockChamberHealthRepository,
    MockChamberRepository, MockDetectorRepository, MockOrganizationRepository,
    MockPollLedgerRepository, MockReadingRepository, MockSectionRepository, MockUserRepository,
};
