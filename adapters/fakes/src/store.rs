//! [`MemoryStore`]: every repository port over in-memory tables behind one lock, so each call
//! is atomic (all-or-nothing) like a database transaction.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chamberlain_domain::alerting::{Alert, AlertRule};
use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    AlertId, AlertRuleId, ApiToken, ApiTokenId, Batch, BatchId, Chamber, ChamberHealth, ChamberId,
    ChamberState, DeadLetterId, Detector, DetectorId, Email, LedgerEntry, Organization,
    OrganizationId, Page, PageRequest, PollOutcome, Reading, Section, SectionId, TokenHash,
    TransmitterId, User, UserId,
};
use chamberlain_domain::ports::{
    ApiTokenRepository, BatchRepository, ChamberFilter, ChamberHealthRepository, ChamberRepository,
    ChamberWithDetectors, DetectorRepository, ItemError, LatestReadings, LedgerQuery,
    OrganizationRepository, PollLedgerRepository, PollRecord, ReadingCursor, ReadingQuery,
    ReadingRepository, ReadingScope, SectionRepository, StoreError, UserRepository, WriteReport,
};
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

#[async_trait]
impl OrganizationRepository for MemoryStore {
    async fn create(&self, org: &Organization) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.organizations.values().any(|o| o.name == org.name) {
            return Err(StoreError::Duplicate {
                entity: "organization",
                field: "name",
            });
        }
        if t.organizations.contains_key(&org.id) {
            return Err(StoreError::Duplicate {
                entity: "organization",
                field: "id",
            });
        }
        t.organizations.insert(org.id, org.clone());
        Ok(())
    }

    async fn get(&self, id: OrganizationId) -> Result<Organization, StoreError> {
        self.lock()
            .organizations
            .get(&id)
            .cloned()
            .ok_or(not_found("organization"))
    }
}

#[async_trait]
impl SectionRepository for MemoryStore {
    async fn create(&self, section: &Section) -> Result<(), StoreError> {
        let mut t = self.lock();
        if !t.organizations.contains_key(&section.organization_id) {
            return Err(StoreError::MissingParent {
                entity: "section",
                parent: "organization",
            });
        }
        if t.sections
            .values()
            .any(|s| s.organization_id == section.organization_id && s.name == section.name)
            || t.sections.contains_key(&section.id)
        {
            return Err(StoreError::Duplicate {
                entity: "section",
                field: "name",
            });
        }
        t.sections.insert(section.id, section.clone());
        Ok(())
    }

    async fn get(&self, org: OrganizationId, id: SectionId) -> Result<Section, StoreError> {
        self.lock()
            .section_in(org, id)
            .cloned()
            .ok_or(not_found("section"))
    }

    async fn list(
        &self,
        org: OrganizationId,
        request: PageRequest<SectionId>,
    ) -> Result<Page<Section, SectionId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.sections
                .values()
                .filter(|s| s.organization_id == org)
                .cloned(),
            |s| s.id,
            &request,
        ))
    }

    async fn update(&self, section: &Section) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.section_in(section.organization_id, section.id).is_none() {
            return Err(not_found("section"));
        }
        if t.sections.values().any(|s| {
            s.id != section.id
                && s.organization_id == section.organization_id
                && s.name == section.name
        }) {
            return Err(StoreError::Duplicate {
                entity: "section",
                field: "name",
            });
        }
        let stored = t
            .sections
            .get_mut(&section.id)
            .ok_or(not_found("section"))?;
        stored.name = section.name.clone();
        stored.description = section.description.clone();
        Ok(())
    }

    async fn delete(&self, org: OrganizationId, id: SectionId) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.section_in(org, id).is_none() {
            return Err(not_found("section"));
        }
        if t.chambers.values().any(|c| c.section_id == id) {
            return Err(StoreError::HasDependents {
                entity: "section",
                dependents: "chambers",
            });
        }
        if t.batches.values().any(|b| b.section_id == id) {
            return Err(StoreError::HasDependents {
                entity: "section",
                dependents: "batches",
            });
        }
        t.sections.remove(&id);
        Ok(())
    }
}

#[async_trait]
impl ChamberRepository for MemoryStore {
    async fn create(&self, chamber: &Chamber, detectors: &[Detector]) -> Result<(), StoreError> {
        let mut t = self.lock();
        t.check_new_chamber(chamber, detectors)?;
        t.insert_chamber(chamber, detectors);
        Ok(())
    }

    async fn create_many(&self, chambers: &[ChamberWithDetectors]) -> Result<(), ItemError> {
        let mut t = self.lock();
        let mut names = HashSet::new();
        for (index, c) in chambers.iter().enumerate() {
            let fresh = names.insert((c.chamber.section_id, c.chamber.name.clone()));
            let checked = if fresh {
                t.check_new_chamber(&c.chamber, &c.detectors)
            } else {
                Err(StoreError::Duplicate {
                    entity: "chamber",
                    field: "name",
                })
            };
            checked.map_err(|error| ItemError { index, error })?;
        }
        for c in chambers {
            t.insert_chamber(&c.chamber, &c.detectors);
        }
        Ok(())
    }

    async fn get(&self, org: OrganizationId, id: ChamberId) -> Result<Chamber, StoreError> {
        self.lock()
            .chamber_in(org, id)
            .cloned()
            .ok_or(not_found("chamber"))
    }

    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        request: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.chambers
                .values()
                .filter(|c| c.organization_id == org)
                .filter(|c| filter.section_id.is_none_or(|s| c.section_id == s))
                .filter(|c| filter.state.is_none_or(|s| c.state == s))
                .filter(|c| {
                    filter.name_contains.as_deref().is_none_or(|part| {
                        c.name
                            .as_str()
                            .to_ascii_lowercase()
                            .contains(&part.to_ascii_lowercase())
                    })
                })
                .filter(|c| {
                    filter.health.is_none_or(|h| {
                        t.health
                            .get(&c.id)
                            .map_or(chamberlain_domain::model::HealthState::Unknown, |x| x.state)
                            == h
                    })
                })
                .cloned(),
            |c| c.id,
            &request,
        ))
    }

    async fn update(&self, chamber: &Chamber) -> Result<(), StoreError> {
        let mut t = self.lock();
        let Some(stored) = t.chamber_in(chamber.organization_id, chamber.id) else {
            return Err(not_found("chamber"));
        };
        let created_at = stored.created_at;
        if t.section_in(chamber.organization_id, chamber.section_id)
            .is_none()
        {
            return Err(StoreError::MissingParent {
                entity: "chamber",
                parent: "section",
            });
        }
        if t.chamber_name_taken(chamber) {
            return Err(StoreError::Duplicate {
                entity: "chamber",
                field: "name",
            });
        }
        t.chambers.insert(
            chamber.id,
            Chamber {
                created_at,
                ..chamber.clone()
            },
        );
        Ok(())
    }

    async fn delete(&self, org: OrganizationId, id: ChamberId) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.chamber_in(org, id).is_none() {
            return Err(not_found("chamber"));
        }
        t.chambers.remove(&id);
        t.detectors.retain(|_, d| d.chamber_id != id);
        t.readings.retain(|_, r| r.chamber_id != id);
        t.ledger.retain(|(c, _), _| *c != id);
        t.health.remove(&id);
        t.alert_rules.retain(|_, r| r.chamber_id != id);
        t.alerts.retain(|_, a| a.chamber_id != id);
        Ok(())
    }

    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<ChamberWithDetectors>, StoreError> {
        let t = self.lock();
        Ok(t.chambers.get(&id).map(|c| ChamberWithDetectors {
            chamber: c.clone(),
            detectors: t
                .detectors
                .values()
                .filter(|d| d.chamber_id == id)
                .cloned()
                .collect(),
        }))
    }

    async fn list_active(
        &self,
        request: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.chambers
                .values()
                .filter(|c| c.state == ChamberState::Active)
                .cloned(),
            |c| c.id,
            &request,
        ))
    }
}

#[async_trait]
impl DetectorRepository for MemoryStore {
    async fn add(&self, detector: &Detector) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.chamber_in(detector.organization_id, detector.chamber_id)
            .is_none()
        {
            return Err(StoreError::MissingParent {
                entity: "detector",
                parent: "chamber",
            });
        }
        if t.detectors.contains_key(&detector.id) || t.detector_name_taken(detector) {
            return Err(StoreError::Duplicate {
                entity: "detector",
                field: "name",
            });
        }
        t.detectors.insert(detector.id, detector.clone());
        Ok(())
    }

    async fn get(&self, org: OrganizationId, id: DetectorId) -> Result<Detector, StoreError> {
        let t = self.lock();
        t.detectors
            .get(&id)
            .filter(|d| d.organization_id == org)
            .cloned()
            .ok_or(not_found("detector"))
    }

    async fn list_for_chamber(
        &self,
        org: OrganizationId,
        chamber: ChamberId,
    ) -> Result<Vec<Detector>, StoreError> {
        let t = self.lock();
        Ok(t.detectors
            .values()
            .filter(|d| d.organization_id == org && d.chamber_id == chamber)
            .cloned()
            .collect())
    }

    async fn update(&self, detector: &Detector) -> Result<(), StoreError> {
        let mut t = self.lock();
        let stored = t
            .detectors
            .get(&detector.id)
            .filter(|d| d.organization_id == detector.organization_id)
            .ok_or(not_found("detector"))?;
        let chamber_id = stored.chamber_id;
        let updated = Detector {
            chamber_id,
            ..detector.clone()
        };
        if t.detector_name_taken(&updated) {
            return Err(StoreError::Duplicate {
                entity: "detector",
                field: "name",
            });
        }
        t.detectors.insert(detector.id, updated);
        Ok(())
    }

    async fn delete(&self, org: OrganizationId, id: DetectorId) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.detectors
            .get(&id)
            .is_none_or(|d| d.organization_id != org)
        {
            return Err(not_found("detector"));
        }
        t.detectors.remove(&id);
        t.readings.retain(|(d, _), _| *d != id);
        Ok(())
    }
}

#[async_trait]
impl BatchRepository for MemoryStore {
    async fn start(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.section_in(batch.organization_id, batch.section_id)
            .is_none()
        {
            return Err(StoreError::MissingParent {
                entity: "batch",
                parent: "section",
            });
        }
        if t.batches
            .values()
            .any(|b| b.section_id == batch.section_id && b.is_open())
        {
            return Err(StoreError::Conflict {
                entity: "batch",
                reason: "the section already has an open batch".into(),
            });
        }
        t.batches.insert(batch.id, batch.clone());
        Ok(())
    }

    async fn end(
        &self,
        org: OrganizationId,
        id: BatchId,
        at: Timestamp,
    ) -> Result<Batch, StoreError> {
        let mut t = self.lock();
        let batch = t
            .batches
            .get_mut(&id)
            .filter(|b| b.organization_id == org)
            .ok_or(not_found("batch"))?;
        if !batch.is_open() {
            return Err(StoreError::Conflict {
                entity: "batch",
                reason: "already ended".into(),
            });
        }
        if at < batch.started_at {
            return Err(StoreError::Conflict {
                entity: "batch",
                reason: "cannot end before it started".into(),
            });
        }
        batch.ended_at = Some(at);
        Ok(batch.clone())
    }

    async fn get(&self, org: OrganizationId, id: BatchId) -> Result<Batch, StoreError> {
        let t = self.lock();
        t.batches
            .get(&id)
            .filter(|b| b.organization_id == org)
            .cloned()
            .ok_or(not_found("batch"))
    }

    async fn list(
        &self,
        org: OrganizationId,
        section: Option<SectionId>,
        request: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.batches
                .values()
                .filter(|b| b.organization_id == org && section.is_none_or(|s| b.section_id == s))
                .cloned(),
            |b| b.id,
            &request,
        ))
    }

    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError> {
        let t = self.lock();
        Ok(t.batches
            .values()
            .find(|b| b.section_id == section && b.covers(at))
            .cloned())
    }
}

#[async_trait]
impl ReadingRepository for MemoryStore {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport, StoreError> {
        let total: usize = polls.iter().map(|p| p.readings.len()).sum();
        if total > MAX_READINGS_PER_WRITE {
            return Err(StoreError::Invalid(ValidationError::new(
                "readings",
                Rule::TooLong {
                    max: MAX_READINGS_PER_WRITE,
                    actual: total,
                },
            )));
        }
        let mut t = self.lock();
        // Check everything first: one bad row refuses the whole batch.
        for p in polls {
            let chamber = p.entry.poll.chamber_id;
            if !t.chambers.contains_key(&chamber) {
                return Err(StoreError::MissingParent {
                    entity: "poll",
                    parent: "chamber",
                });
            }
            for r in &p.readings {
                let ok = r.chamber_id == chamber
                    && r.slot == p.entry.poll.slot
                    && t.detectors
                        .get(&r.detector_id)
                        .is_some_and(|d| d.chamber_id == chamber);
                if !ok {
                    return Err(StoreError::MissingParent {
                        entity: "reading",
                        parent: "detector",
                    });
                }
            }
        }
        let mut report = WriteReport::default();
        for p in polls {
            let key = (p.entry.poll.chamber_id, p.entry.poll.slot);
            let Entry::Vacant(v) = t.ledger.entry(key) else {
                report.ledger_existing += 1;
                report.readings_existing += p.readings.len() as u64;
                report.existing_polls.push(p.entry.poll);
                continue;
            };
            v.insert(p.entry.clone());
            report.ledger_new += 1;
            for r in &p.readings {
                match t.readings.entry((r.detector_id, r.slot)) {
                    Entry::Occupied(_) => report.readings_existing += 1,
                    Entry::Vacant(v) => {
                        v.insert(r.clone());
                        report.readings_new += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, StoreError> {
        let t = self.lock();
        let in_range = |r: &&Reading| r.slot >= query.from && r.slot < query.to;
        let matching: Vec<Reading> = match query.scope {
            ReadingScope::Detector(id) => {
                if t.detectors
                    .get(&id)
                    .is_none_or(|d| d.organization_id != org)
                {
                    return Err(not_found("detector"));
                }
                t.readings
                    .range((id, query.from)..(id, query.to))
                    .map(|(_, r)| r)
                    .cloned()
                    .collect()
            }
            ReadingScope::Chamber(id) => {
                if t.chamber_in(org, id).is_none() {
                    return Err(not_found("chamber"));
                }
                t.readings
                    .values()
                    .filter(|r| r.chamber_id == id)
                    .filter(in_range)
                    .cloned()
                    .collect()
            }
            ReadingScope::Batch(id) => {
                if t.batches.get(&id).is_none_or(|b| b.organization_id != org) {
                    return Err(not_found("batch"));
                }
                t.readings
                    .values()
                    .filter(|r| r.batch_id == Some(id))
                    .filter(in_range)
                    .cloned()
                    .collect()
            }
        };
        let cursor = |r: &Reading| ReadingCursor {
            slot: r.slot,
            detector_id: r.detector_id,
        };
        Ok(page(matching.into_iter(), cursor, &query.page))
    }

    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, StoreError> {
        let t = self.lock();
        let mut out = Vec::new();
        for &id in chambers {
            if t.chamber_in(org, id).is_none() {
                continue;
            }
            let latest = t
                .readings
                .values()
                .filter(|r| r.chamber_id == id)
                .map(|r| r.slot)
                .max();
            if let Some(slot) = latest {
                let mut readings: Vec<Reading> = t
                    .readings
                    .values()
                    .filter(|r| r.chamber_id == id && r.slot == slot)
                    .cloned()
                    .collect();
                readings.sort_by_key(|r| r.detector_id);
                out.push(LatestReadings {
                    chamber_id: id,
                    slot,
                    readings,
                });
            }
        }
        Ok(out)
    }

    async fn prune_before(&self, cutoff: Timestamp) -> Result<(), StoreError> {
        let mut t = self.lock();
        t.readings.retain(|_, r| r.slot >= cutoff);
        t.ledger.retain(|(_, slot), _| *slot >= cutoff);
        Ok(())
    }
}

#[async_trait]
impl PollLedgerRepository for MemoryStore {
    async fn record(&self, entries: &[LedgerEntry]) -> Result<u64, StoreError> {
        let mut t = self.lock();
        if entries
            .iter()
            .any(|e| !t.chambers.contains_key(&e.poll.chamber_id))
        {
            return Err(StoreError::MissingParent {
                entity: "poll",
                parent: "chamber",
            });
        }
        let mut new = 0;
        for e in entries {
            let key = (e.poll.chamber_id, e.poll.slot);
            if let Entry::Vacant(v) = t.ledger.entry(key) {
                v.insert(e.clone());
                new += 1;
            }
        }
        Ok(new)
    }

    async fn list(
        &self,
        org: OrganizationId,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>, StoreError> {
        let t = self.lock();
        if t.chamber_in(org, query.chamber_id).is_none() {
            return Err(not_found("chamber"));
        }
        let entries = t
            .ledger
            .range((query.chamber_id, query.from)..(query.chamber_id, query.to))
            .map(|(_, e)| e)
            .filter(|e| !query.failures_only || e.outcome != PollOutcome::Ok)
            .cloned();
        Ok(page(entries, |e| e.poll.slot, &query.page))
    }
}

#[async_trait]
impl ChamberHealthRepository for MemoryStore {
    async fn get(&self, chamber: ChamberId) -> Result<Option<ChamberHealth>, StoreError> {
        Ok(self.lock().health.get(&chamber).cloned())
    }

    async fn count_by_state(
        &self,
    ) -> Result<Vec<(chamberlain_domain::model::HealthState, u64)>, StoreError> {
        let t = self.lock();
        let mut counts: BTreeMap<&'static str, (chamberlain_domain::model::HealthState, u64)> =
            BTreeMap::new();
        for id in t.chambers.keys() {
            let state = t
                .health
                .get(id)
                .map_or(chamberlain_domain::model::HealthState::Unknown, |h| h.state);
            counts.entry(state.as_str()).or_insert((state, 0)).1 += 1;
        }
        Ok(counts.into_values().collect())
    }

    async fn save(&self, health: &ChamberHealth) -> Result<u64, StoreError> {
        let mut t = self.lock();
        if !t.chambers.contains_key(&health.chamber_id) {
            return Err(StoreError::MissingParent {
                entity: "health",
                parent: "chamber",
            });
        }
        let stored = t.health.get(&health.chamber_id).map_or(0, |h| h.version);
        if stored != health.version {
            return Err(StoreError::Conflict {
                entity: "health",
                reason: format!("version {} is stale (stored: {stored})", health.version),
            });
        }
        let version = stored + 1;
        t.health.insert(
            health.chamber_id,
            ChamberHealth {
                version,
                ..health.clone()
            },
        );
        Ok(version)
    }
}

#[async_trait]
impl UserRepository for MemoryStore {
    async fn create(&self, user: &User) -> Result<(), StoreError> {
        let mut t = self.lock();
        if !t.organizations.contains_key(&user.organization_id) {
            return Err(StoreError::MissingParent {
                entity: "user",
                parent: "organization",
            });
        }
        if t.users
            .values()
            .any(|u| u.organization_id == user.organization_id && u.email == user.email)
            || t.users.contains_key(&user.id)
        {
            return Err(StoreError::Duplicate {
                entity: "user",
                field: "email",
            });
        }
        t.users.insert(user.id, user.clone());
        Ok(())
    }

    async fn get(&self, org: OrganizationId, id: UserId) -> Result<User, StoreError> {
        let t = self.lock();
        t.users
            .get(&id)
            .filter(|u| u.organization_id == org)
            .cloned()
            .ok_or(not_found("user"))
    }

    async fn find_by_email(&self, email: &Email) -> Result<Vec<User>, StoreError> {
        let mut found: Vec<User> = self
            .lock()
            .users
            .values()
            .filter(|u| &u.email == email)
            .cloned()
            .collect();
        found.sort_by_key(|u| u.organization_id);
        Ok(found)
    }

    async fn list(
        &self,
        org: OrganizationId,
        request: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.users
                .values()
                .filter(|u| u.organization_id == org)
                .cloned(),
            |u| u.id,
            &request,
        ))
    }

    async fn update(&self, user: &User) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.users
            .get(&user.id)
            .is_none_or(|u| u.organization_id != user.organization_id)
        {
            return Err(not_found("user"));
        }
        if t.users.values().any(|u| {
            u.id != user.id && u.organization_id == user.organization_id && u.email == user.email
        }) {
            return Err(StoreError::Duplicate {
                entity: "user",
                field: "email",
            });
        }
        t.users.insert(user.id, user.clone());
        Ok(())
    }

    async fn delete(&self, org: OrganizationId, id: UserId) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.users.get(&id).is_none_or(|u| u.organization_id != org) {
            return Err(not_found("user"));
        }
        t.users.remove(&id);
        t.tokens.retain(|_, tok| tok.user_id != id);
        Ok(())
    }
}

#[async_trait]
impl ApiTokenRepository for MemoryStore {
    async fn create(&self, token: &ApiToken) -> Result<(), StoreError> {
        let mut t = self.lock();
        if t.users
            .get(&token.user_id)
            .is_none_or(|u| u.organization_id != token.organization_id)
        {
            return Err(StoreError::MissingParent {
                entity: "token",
                parent: "user",
            });
        }
        if t.tokens.values().any(|x| x.hash == token.hash) || t.tokens.contains_key(&token.id) {
            return Err(StoreError::Duplicate {
                entity: "token",
                field: "hash",
            });
        }
        t.tokens.insert(token.id, token.clone());
        Ok(())
    }

    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiToken>, StoreError> {
        Ok(self
            .lock()
            .tokens
            .values()
            .find(|t| &t.hash == hash)
            .cloned())
    }

    async fn list(
        &self,
        org: OrganizationId,
        user: Option<UserId>,
        request: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>, StoreError> {
        let t = self.lock();
        Ok(page(
            t.tokens
                .values()
                .filter(|x| x.organization_id == org && user.is_none_or(|u| x.user_id == u))
                .cloned(),
            |x| x.id,
            &request,
        ))
    }

    async fn revoke(
        &self,
        org: OrganizationId,
        id: ApiTokenId,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut t = self.lock();
        let token = t
            .tokens
            .get_mut(&id)
            .filter(|x| x.organization_id == org)
            .ok_or(not_found("token"))?;
        token.revoked_at.get_or_insert(at);
        Ok(())
    }

    async fn touch(&self, id: ApiTokenId, at: Timestamp) -> Result<(), StoreError> {
        let mut t = self.lock();
        let token = t.tokens.get_mut(&id).ok_or(not_found("token"))?;
        token.last_used_at = Some(token.last_used_at.map_or(at, |prev| prev.max(at)));
        Ok(())
    }
}
