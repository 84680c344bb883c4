//! Builders of valid entities for conformance cases and tests.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{
    Batch, BatchId, Chamber, ChamberId, ChamberState, CorruptionReason, Description, Detector,
    DetectorId, DetectorKey, Email, EndpointUrl, Finite, HealthPolicy, LedgerEntry, Name,
    Organization, OrganizationId, PlausibleRange, PollId, PollInterval, PollOutcome, PollTimeout,
    Reading, ReadingValue, ResponseFormat, Role, Section, SectionId, Unit, User, UserId,
};
use crate::ports::{PollRecord, Repositories, Store};
use crate::time::Timestamp;

/// Every repository port, as one adapter (or one composition) provides them, and whatever
/// must live as long as they do. Reads as its [`Repositories`] (`ports.chambers`).
#[derive(Clone)]
pub struct StorePorts {
    pub repositories: Repositories,
    /// Whatever must live as long as the ports (a per-test database that is dropped after).
    pub keepalive: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for StorePorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePorts").finish_non_exhaustive()
    }
}

impl std::ops::Deref for StorePorts {
    type Target = Repositories;

    fn deref(&self) -> &Repositories {
        &self.repositories
    }
}

impl StorePorts {
    /// All ports from one adapter that implements them all.
    pub fn from_adapter<S: Store + 'static>(store: Arc<S>) -> Self {
        Self {
            repositories: Repositories::of(store),
            keepalive: None,
        }
    }
}

/// A fixed instant the fixtures build around (2026-01-01T00:00:00Z).
pub const T0: Timestamp = Timestamp::from_unix_millis(1_767_225_600_000);

pub fn name(s: &str) -> Name {
    Name::parse(s).expect("fixture names are valid")
}

pub fn organization(label: &str) -> Organization {
    Organization {
        id: OrganizationId::random(),
        name: name(label),
        created_at: T0,
    }
}

pub fn section(org: OrganizationId, label: &str) -> Section {
    Section {
        id: SectionId::random(),
        organization_id: org,
        name: name(label),
        description: Description::default(),
        created_at: T0,
    }
}

pub fn chamber(org: OrganizationId, section: SectionId, label: &str, interval_s: u64) -> Chamber {
    let interval = PollInterval::from_secs(interval_s).expect("fixture interval is valid");
    Chamber {
        id: ChamberId::random(),
        organization_id: org,
        section_id: section,
        name: name(label),
        endpoint: EndpointUrl::parse(&format!("http://chambers.test/{label}"))
            .expect("fixture url is valid"),
        format: ResponseFormat::Json,
        interval,
        timeout: PollTimeout::default_for(interval),
        state: ChamberState::Active,
        health_policy: HealthPolicy::default(),
        schedule_since: T0,
        created_at: T0,
        updated_at: T0,
    }
}

/// A JSON detector reading `/<label>`, plausible within -100..=100.
pub fn detector(chamber: &Chamber, label: &str) -> Detector {
    Detector {
        id: DetectorId::random(),
        chamber_id: chamber.id,
        organization_id: chamber.organization_id,
        name: name(label),
        alias: None,
        unit: Unit::parse("°C").expect("fixture unit is valid"),
        key: DetectorKey::parse(ResponseFormat::Json, &format!("/{label}"))
            .expect("fixture key is valid"),
        range: PlausibleRange::new(Some(-100.0), Some(100.0)).expect("fixture range is valid"),
    }
}

pub fn batch(org: OrganizationId, section: SectionId, label: &str, at: Timestamp) -> Batch {
    Batch {
        id: BatchId::random(),
        organization_id: org,
        section_id: section,
        name: name(label),
        description: Description::default(),
        started_at: at,
        ended_at: None,
    }
}

pub fn user(org: OrganizationId, email: &str, role: Role) -> User {
    User {
        id: UserId::random(),
        organization_id: org,
        email: Email::parse(email).expect("fixture email is valid"),
        display_name: name(email),
        role,
        password_hash: None,
        disabled: false,
        created_at: T0,
    }
}

/// A successful poll of `chamber` at `slot` with one reading per detector (`value + index`,
/// or corrupted where `corrupt` says so).
pub fn poll_record(
    chamber: &Chamber,
    detectors: &[Detector],
    slot: Timestamp,
    value: f64,
    corrupt: Option<CorruptionReason>,
) -> PollRecord {
    let requested_at = slot + Duration::from_millis(3);
    let received_at = slot + Duration::from_millis(15);
    let readings: Vec<Reading> = detectors
        .iter()
        .enumerate()
        .map(|(i, d)| Reading {
            detector_id: d.id,
            chamber_id: chamber.id,
            slot,
            value: match corrupt {
                Some(reason) => ReadingValue::Corrupted(reason),
                None => ReadingValue::Measured(
                    Finite::new(value + i as f64).expect("fixture values are finite"),
                ),
            },
            requested_at,
            received_at,
            batch_id: None,
        })
        .collect();
    let outcome = match corrupt {
        Some(_) => PollOutcome::CorruptedValues {
            corrupted: readings.len() as u32,
        },
        None => PollOutcome::Ok,
    };
    PollRecord {
        entry: LedgerEntry {
            poll: PollId {
                chamber_id: chamber.id,
                slot,
            },
            outcome,
            attempt: 1,
            requested_at: Some(requested_at),
            recorded_at: received_at,
            latency: Some(Duration::from_millis(12)),
            lateness: Duration::from_millis(3),
        },
        readings,
    }
}

/// A scheduled poll job of `chamber` at `slot`.
pub fn poll_job(
    org: OrganizationId,
    chamber: ChamberId,
    slot: Timestamp,
    interval_s: u64,
    enqueued_at: Timestamp,
) -> crate::model::PollJob {
    crate::model::PollJob {
        poll: PollId {
            chamber_id: chamber,
            slot,
        },
        organization_id: org,
        interval: PollInterval::from_secs(interval_s).expect("fixture interval is valid"),
        kind: crate::model::PollKind::Scheduled,
        meta: crate::model::JobMetadata {
            trace: Some(crate::model::TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: "vendor=chamberlain".into(),
            }),
            attempt: 1,
            enqueued_at,
        },
    }
}

/// Moves time forward for the adapter under test: a simulated clock jumps; a real-time adapter
/// (Redis keys with TTLs) actually waits.
pub type Advance =
    Arc<dyn Fn(Duration) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
