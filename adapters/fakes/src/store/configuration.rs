//! [`SectionRepository`], [`ChamberRepository`], [`DetectorRepository`] and [`BatchRepository`]
//! of [`MemoryStore`].

use std::collections::HashSet;

use super::{MemoryStore, not_found, page};
use async_trait::async_trait;
use chamberlain_domain::model::{
    Batch, BatchId, Chamber, ChamberId, ChamberState, Detector, DetectorId, OrganizationId, Page,
    PageRequest, Section, SectionId,
};
use chamberlain_domain::ports::{
    BatchRepository, ChamberFilter, ChamberRepository, ChamberWithDetectors, DetectorRepository,
    ItemError, SectionRepository, StoreError,
};
use chamberlain_domain::time::Timestamp;

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
