//! [`ReadingRepository`] and [`PollLedgerRepository`] of [`MemoryStore`].

use std::collections::btree_map::Entry;

use super::{MemoryStore, not_found, page};
use async_trait::async_trait;
use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    ChamberId, LedgerEntry, OrganizationId, Page, PollOutcome, Reading,
};
use chamberlain_domain::ports::{
    LatestReadings, LedgerQuery, PollLedgerRepository, PollRecord, ReadingCursor, ReadingQuery,
    ReadingRepository, ReadingScope, StoreError, WriteReport,
};
use chamberlain_domain::time::Timestamp;

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
            p.check_readings_share_the_entry()?;
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
