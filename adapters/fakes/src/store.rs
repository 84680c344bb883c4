//! [`MemoryStore`]: every repository port over in-memory tables behind one lock, so each call
//! is atomic (all-or-nothing) like a database transaction.

mod alerts;
mod configuration;
mod health;
mod readings;
mod tenancy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use chamberlain_domain::alerting::{Alert, AlertRule};
use chamberlain_domain::model::{
    AlertId, AlertRuleId, ApiToken, ApiTokenId, Batch, BatchId, Chamber, ChamberHealth, ChamberId,
    DeadLetterId, Detector, DetectorId, LedgerEntry, Organization, OrganizationId, Page,
    PageRequest, Reading, Section, SectionId, TransmitterId, User, UserId,
};
use chamberlain_domain::ports::StoreError;
use chamberlain_domain::time::Timestamp;
use chamberlain_domain::transmit::{DeadLetter, DeliveryState, Transmitter};

#[derive(Debug, Default)]
pub(crate) struct Tables {
    organizations: BTreeMap<OrganizationId, Organization>,
    sections: BTreeMap<SectionId, Section>,
    chambers: BTreeMap<ChamberId, Chamber>,
    detectors: BTreeMap<DetectorId, Detector>,
    batches: BTreeMap<BatchId, Batch>,
    /// Keyed by (detector, slot): the uniqueness rule of readings.
    readings: BTreeMap<(DetectorId, Timestamp), Reading>,
    /// Keyed by (chamber, slot): one entry per poll.
    ledger: BTreeMap<(ChamberId, Timestamp), LedgerEntry>,
    health: HashMap<ChamberId, ChamberHealth>,
    users: BTreeMap<UserId, User>,
    tokens: BTreeMap<ApiTokenId, ApiToken>,
    pub(crate) alert_rules: BTreeMap<AlertRuleId, AlertRule>,
    pub(crate) alerts: BTreeMap<AlertId, Alert>,
    pub(crate) transmitters: BTreeMap<TransmitterId, Transmitter>,
    pub(crate) dead_letters: BTreeMap<DeadLetterId, DeadLetter>,
    pub(crate) delivery_states: BTreeMap<TransmitterId, DeliveryState>,
}

/// All repositories in memory. Cheap to create: one per test.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied write: every write
        // validates first and mutates last. So a poisoned lock is still consistent.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) fn page<T: Clone, K: Ord + Copy>(
    items: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
    request: &PageRequest<K>,
) -> Page<T, K> {
    let mut sorted: Vec<T> = items
        .filter(|item| request.after.is_none_or(|after| key(item) > after))
        .collect();
    sorted.sort_by_key(|item| key(item));
    Page::from_sorted(sorted, request.size, key)
}

pub(crate) fn not_found(entity: &'static str) -> StoreError {
    StoreError::NotFound { entity }
}

impl Tables {
    fn section_in(&self, org: OrganizationId, id: SectionId) -> Option<&Section> {
        self.sections.get(&id).filter(|s| s.organization_id == org)
    }

    pub(crate) fn has_organization(&self, org: OrganizationId) -> bool {
        self.organizations.contains_key(&org)
    }

    pub(crate) fn chamber_in(&self, org: OrganizationId, id: ChamberId) -> Option<&Chamber> {
        self.chambers.get(&id).filter(|c| c.organization_id == org)
    }

    fn chamber_name_taken(&self, c: &Chamber) -> bool {
        self.chambers
            .values()
            .any(|o| o.id != c.id && o.section_id == c.section_id && o.name == c.name)
    }

    /// What [`ChamberRepository::create`] refuses, checked without writing.
    fn check_new_chamber(
        &self,
        chamber: &Chamber,
        detectors: &[Detector],
    ) -> Result<(), StoreError> {
        if self
            .section_in(chamber.organization_id, chamber.section_id)
            .is_none()
        {
            return Err(StoreError::MissingParent {
                entity: "chamber",
                parent: "section",
            });
        }
        if self.chambers.contains_key(&chamber.id) || self.chamber_name_taken(chamber) {
            return Err(StoreError::Duplicate {
                entity: "chamber",
                field: "name",
            });
        }
        let mut names = HashSet::new();
        for d in detectors {
            if d.chamber_id != chamber.id || d.organization_id != chamber.organization_id {
                return Err(StoreError::MissingParent {
                    entity: "detector",
                    parent: "chamber",
                });
            }
            if !names.insert(d.name.clone()) || self.detectors.contains_key(&d.id) {
                return Err(StoreError::Duplicate {
                    entity: "detector",
                    field: "name",
                });
            }
        }
        Ok(())
    }

    fn insert_chamber(&mut self, chamber: &Chamber, detectors: &[Detector]) {
        self.chambers.insert(chamber.id, chamber.clone());
        for d in detectors {
            self.detectors.insert(d.id, d.clone());
        }
    }

    fn detector_name_taken(&self, d: &Detector) -> bool {
        self.detectors
            .values()
            .any(|o| o.id != d.id && o.chamber_id == d.chamber_id && o.name == d.name)
    }
}
