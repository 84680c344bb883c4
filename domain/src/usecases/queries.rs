//! Reading the data: readings over a time range, the latest values, and the poll ledger.

use std::sync::Arc;

use crate::error::{Rule, ValidationError};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{
    BatchId, ChamberId, DetectorId, LedgerEntry, Page, PageRequest, PageSize, PollOutcome, Reading,
    Role,
};
use crate::ports::{
    BatchRepository, ChamberFilter, ChamberRepository, LatestReadings, LedgerQuery,
    PollLedgerRepository, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope,
    Repositories,
};
use crate::time::Timestamp;
use crate::usecases::{Actor, UseCaseError};

/// The most chambers one "latest values" call may ask for.
pub const MAX_LATEST_CHAMBERS: usize = 1000;

/// Query use cases; any role of the organization may read.
#[derive(Clone)]
pub struct ReadingQueries {
    pub readings: Arc<dyn ReadingRepository>,
    pub ledger: Arc<dyn PollLedgerRepository>,
    pub chambers: Arc<dyn ChamberRepository>,
    pub batches: Arc<dyn BatchRepository>,
}

/// The most buckets one aggregate call may produce per detector.
pub const MAX_BUCKETS: u64 = 100_000;
/// The most readings one aggregate call may scan.
pub const MAX_AGGREGATED_READINGS: usize = 5_000_000;

/// Measured values of one detector in one time bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    pub detector_id: DetectorId,
    pub bucket_start: Timestamp,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

/// What the ledger says about a chamber's or batch's slots over a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub slots: u64,
    pub read: u64,
    pub failed: u64,
    pub missed: u64,
}

impl Coverage {
    /// Read slots over all slots; 0 without slots.
    #[allow(clippy::cast_precision_loss, reason = "a ratio")]
    pub fn ratio(&self) -> f64 {
        if self.slots == 0 {
            0.0
        } else {
            self.read as f64 / self.slots as f64
        }
    }
}

/// A chamber or a batch, for coverage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoverageScope {
    Chamber(ChamberId),
    Batch(BatchId),
}

impl std::fmt::Debug for ReadingQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadingQueries").finish_non_exhaustive()
    }
}

fn check_range(from: Timestamp, to: Timestamp) -> Result<(), ValidationError> {
    if from >= to {
        return Err(ValidationError::new(
            "to",
            Rule::Inconsistent(format!("must be after from ({from})")),
        ));
    }
    Ok(())
}

impl ReadingQueries {
    pub fn new(repositories: &Repositories) -> Self {
        Self {
            readings: repositories.readings.clone(),
            ledger: repositories.ledger.clone(),
            chambers: repositories.chambers.clone(),
            batches: repositories.batches.clone(),
        }
    }

    /// Readings of a detector, chamber or batch with `from <= slot < to`, by (slot, detector).
    ///
    /// # Errors
    /// `Invalid` (`to` not after `from`); `NotFound` for a scope outside the caller's
    /// organization; `Unavailable`.
    pub async fn readings(
        &self,
        actor: &Actor,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, UseCaseError> {
        actor.require(Role::Viewer, "read readings")?;
        check_range(query.from, query.to)?;
        Ok(self.readings.query(actor.organization_id, query).await?)
    }

    /// The latest slot of each chamber with its detectors' values.
    ///
    /// # Errors
    /// `Invalid` (`chamber_ids`: empty or more than 1,000); `Unavailable`.
    pub async fn latest(
        &self,
        actor: &Actor,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, UseCaseError> {
        actor.require(Role::Viewer, "read readings")?;
        if chambers.is_empty() || chambers.len() > MAX_LATEST_CHAMBERS {
            return Err(ValidationError::new(
                "chamber_ids",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: MAX_LATEST_CHAMBERS.to_string(),
                    actual: chambers.len().to_string(),
                },
            )
            .into());
        }
        Ok(self
            .readings
            .latest(actor.organization_id, chambers)
            .await?)
    }

    /// The ledger of a chamber over a range.
    ///
    /// # Errors
    /// `Invalid`; `NotFound { entity: "chamber" }`; `Unavailable`.
    pub async fn ledger(
        &self,
        actor: &Actor,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>, UseCaseError> {
        actor.require(Role::Viewer, "read the poll ledger")?;
        check_range(query.from, query.to)?;
        Ok(self.ledger.list(actor.organization_id, query).await?)
    }

    /// Min, max, mean and count of measured values per detector and epoch-aligned bucket, with
    /// `from <= slot < to`, ordered by (detector, bucket). Corrupted values are not counted.
    ///
    /// # Errors
    /// `Invalid` (`to`; `bucket` below 1 s or making more than 100,000 buckets); `NotFound`
    /// for a scope outside the caller's organization; `FailedPrecondition` when the range holds
    /// more than 5,000,000 readings (narrow it); `Unavailable`.
    pub async fn aggregate(
        &self,
        actor: &Actor,
        scope: ReadingScope,
        from: Timestamp,
        to: Timestamp,
        bucket: Duration,
    ) -> Result<Vec<Aggregate>, UseCaseError> {
        actor.require(Role::Viewer, "read readings")?;
        check_range(from, to)?;
        let width = i64::try_from(bucket.as_millis()).unwrap_or(i64::MAX);
        let span = u64::try_from(to.as_unix_millis() - from.as_unix_millis()).unwrap_or(u64::MAX);
        if width < 1000 || span / u64::try_from(width).unwrap_or(1) > MAX_BUCKETS {
            return Err(ValidationError::new(
                "bucket",
                Rule::OutOfRange {
                    min: "1s".into(),
                    max: format!("{MAX_BUCKETS} buckets over the range"),
                    actual: format!("{}ms", bucket.as_millis()),
                },
            )
            .into());
        }
        let mut acc: BTreeMap<(DetectorId, i64), (f64, f64, f64, u64)> = BTreeMap::new();
        let mut scanned = 0usize;
        let mut query = ReadingQuery {
            scope,
            from,
            to,
            page: PageRequest::first(
                PageSize::new(crate::limits::MAX_PAGE_SIZE).unwrap_or_default(),
            ),
        };
        loop {
            let page = self.readings.query(actor.organization_id, &query).await?;
            scanned += page.items.len();
            if scanned > MAX_AGGREGATED_READINGS {
                return Err(UseCaseError::FailedPrecondition(format!(
                    "the range holds more than {MAX_AGGREGATED_READINGS} readings; narrow it"
                )));
            }
            for r in &page.items {
                let Some(v) = r.value.value() else { continue };
                let start = r.slot.as_unix_millis().div_euclid(width) * width;
                let e = acc.entry((r.detector_id, start)).or_insert((
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    0.0,
                    0,
                ));
                e.0 = e.0.min(v);
                e.1 = e.1.max(v);
                e.2 += v;
                e.3 += 1;
            }
            match page.next {
                Some(next) => query.page.after = Some(next),
                None => break,
            }
        }
        #[allow(clippy::cast_precision_loss, reason = "a mean")]
        Ok(acc
            .into_iter()
            .map(|((detector_id, start), (min, max, sum, count))| Aggregate {
                detector_id,
                bucket_start: Timestamp::from_unix_millis(start),
                min,
                max,
                mean: sum / count as f64,
                count,
            })
            .collect())
    }

    /// How many of a chamber's slots over `from..to` were read, failed or missed, by the
    /// ledger. A batch covers every chamber of its section while it was open.
    ///
    /// # Errors
    /// `Invalid` (`to`); `NotFound` (`chamber`, `batch`); `Unavailable`.
    pub async fn coverage(
        &self,
        actor: &Actor,
        scope: CoverageScope,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Coverage, UseCaseError> {
        actor.require(Role::Viewer, "read the poll ledger")?;
        check_range(from, to)?;
        let org = actor.organization_id;
        let (chambers, from, to) = match scope {
            CoverageScope::Chamber(id) => {
                self.chambers.get(org, id).await?;
                (vec![id], from, to)
            }
            CoverageScope::Batch(id) => {
                let batch = self.batches.get(org, id).await?;
                let from = from.max(batch.started_at);
                let to = batch.ended_at.map_or(to, |end| to.min(end));
                let mut ids = Vec::new();
                let mut page = PageRequest::first(PageSize::new(1000).unwrap_or_default());
                loop {
                    let p = self
                        .chambers
                        .list(
                            org,
                            ChamberFilter {
                                section_id: Some(batch.section_id),
                                state: None,
                                ..ChamberFilter::default()
                            },
                            page.clone(),
                        )
                        .await?;
                    ids.extend(p.items.iter().map(|c| c.id));
                    match p.next {
                        Some(next) => page.after = Some(next),
                        None => break,
                    }
                }
                (ids, from, to)
            }
        };
        let mut coverage = Coverage::default();
        if from >= to {
            return Ok(coverage);
        }
        for chamber_id in chambers {
            let mut query = LedgerQuery {
                chamber_id,
                from,
                to,
                failures_only: false,
                page: PageRequest::first(PageSize::new(1000).unwrap_or_default()),
            };
            loop {
                let page = self.ledger.list(org, &query).await?;
                for entry in &page.items {
                    coverage.slots += 1;
                    match entry.outcome {
                        PollOutcome::Ok | PollOutcome::CorruptedValues { .. } => coverage.read += 1,
                        PollOutcome::Missed | PollOutcome::Expired | PollOutcome::Cancelled => {
                            coverage.missed += 1;
                        }
                        _ => coverage.failed += 1,
                    }
                }
                match page.next {
                    Some(next) => query.page.after = Some(next),
                    None => break,
                }
            }
        }
        Ok(coverage)
    }
}
