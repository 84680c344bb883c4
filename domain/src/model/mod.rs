//! Entities and validated value types. Once built, a value is valid: constructors refuse bad
//! input with a [`ValidationError`](crate::ValidationError) naming the field and the rule.

mod batch;
mod chamber;
mod credentials;
mod health;
mod ids;
mod paging;
mod poll;
mod reading;
mod tenancy;
mod values;

pub use batch::Batch;
pub use chamber::{
    Chamber, ChamberState, Detector, DetectorKey, EndpointUrl, IntervalFloor, PlausibleRange,
    PollInterval, PollTimeout, ResponseFormat,
};
pub use credentials::{MalformedToken, Password, TokenSecret};
pub use health::{ChamberHealth, HealthPolicy, HealthState, HealthTransition};
pub use ids::{
    AlertId, AlertRuleId, ApiTokenId, BatchId, ChamberId, DeadLetterId, DetectorId, OrganizationId,
    SectionId, TransmitterId, UserId,
};
pub use paging::{Page, PageRequest, PageSize, every_page};
pub use poll::{
    ExpiryReason, JobMetadata, LedgerEntry, PollId, PollJob, PollKind, PollOutcome, TraceContext,
    dedup_ttl,
};
pub use reading::{CorruptionReason, Finite, Reading, ReadingValue};
pub use tenancy::{ApiToken, Organization, Role, Section, TokenHash, TokenRefusal, User};
pub use values::{Description, Email, Name, Unit};
