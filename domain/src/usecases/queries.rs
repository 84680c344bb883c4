//! Reading the data: readings over a time range, the latest values, and the poll ledger.

use std::sync::Arc;

use crate::error::{Rule, ValidationError};
use std::time::Duration;

use crate::model::{
    BatchId, ChamberId, LedgerEntry, OrganizationId, Page, PageSize, Reading, Role, SectionId,
    every_page,
};
use crate::ports::{
    AggregateQuery, BatchRepository, ChamberFilter, ChamberRepository, LatestReadings, LedgerQuery,
    LedgerTally, PollLedgerRepository, ReadingCursor, ReadingQuery, ReadingRepository,
    ReadingScope, Repositories, SectionRepository, TallyQuery,
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
    pub sections: Arc<dyn SectionRepository>,
}

pub use crate::ports::Aggregate;

/// The most buckets one aggregate call may produce per detector.
pub const MAX_BUCKETS: u64 = 100_000;

/// What the ledger says about a chamber's or batch's slots over a range.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub slots: u64,
    pub read: u64,
    pub failed: u64,
    pub missed: u64,
}

impl Coverage {
    /// The coverage one ledger tally counts.
    pub fn of(tally: &LedgerTally) -> Self {
        let mut coverage = Self::default();
        coverage.add(tally);
        coverage
    }

    fn add(&mut self, tally: &LedgerTally) {
        self.read += tally.read;
        self.failed += tally.failed;
        self.missed += tally.missed;
        self.slots += tally.read + tally.failed + tally.missed;
    }

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

pub(super) fn check_range(from: Timestamp, to: Timestamp) -> Result<(), ValidationError> {
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
            sections: repositories.sections.clone(),
        }
    }

    /// Every chamber of a section (by id).
    pub(super) async fn chambers_of_section(
        &self,
        org: OrganizationId,
        section: SectionId,
    ) -> Result<Vec<ChamberId>, UseCaseError> {
        let in_section = ChamberFilter {
            section_id: Some(section),
            ..ChamberFilter::default()
        };
        let size = PageSize::new(1000).unwrap_or_default();
        let chambers = every_page(size, |page| {
            self.chambers.list(org, in_section.clone(), page)
        })
        .await?;
        Ok(chambers.iter().map(|c| c.id).collect())
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
    /// for a scope outside the caller's organization; `Unavailable`.
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
        let width = bucket_width(bucket, from, to)?;
        Ok(self
            .readings
            .aggregate(
                actor.organization_id,
                &AggregateQuery {
                    scope,
                    from,
                    to,
                    bucket_millis: width,
                },
            )
            .await?)
    }

    /// A chamber's coverage per bucket of `bucket` from `from` (bucket `i` starts at
    /// `from + i·bucket`; the last is cut at `to`), one per bucket, empty ones included: what a
    /// coverage strip shows. Counted by the store in one query.
    ///
    /// # Errors
    /// `Invalid` (`to`; `bucket` below 1 s or making more than 100,000 buckets); `NotFound`
    /// (`chamber`); `Unavailable`.
    pub async fn coverage_per_bucket(
        &self,
        actor: &Actor,
        chamber_id: ChamberId,
        from: Timestamp,
        to: Timestamp,
        bucket: Duration,
    ) -> Result<Vec<(Timestamp, Coverage)>, UseCaseError> {
        actor.require(Role::Viewer, "read the poll ledger")?;
        check_range(from, to)?;
        let width = bucket_width(bucket, from, to)?;
        let tallies = self
            .ledger
            .tally(
                actor.organization_id,
                &TallyQuery {
                    chamber_id,
                    from,
                    to,
                    bucket_millis: width,
                },
            )
            .await?;
        let mut tallies = tallies.into_iter().peekable();
        let mut out = Vec::new();
        let mut start = from.as_unix_millis();
        while start < to.as_unix_millis() {
            let at = Timestamp::from_unix_millis(start);
            let coverage = match tallies.peek() {
                Some(t) if t.bucket_start == at => Coverage::of(&tallies.next().expect("peeked")),
                _ => Coverage::default(),
            };
            out.push((at, coverage));
            start += width;
        }
        Ok(out)
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
                let ids = self.chambers_of_section(org, batch.section_id).await?;
                (ids, from, to)
            }
        };
        let mut coverage = Coverage::default();
        if from >= to {
            return Ok(coverage);
        }
        let width = to.as_unix_millis() - from.as_unix_millis();
        for chamber_id in chambers {
            let tallies = self
                .ledger
                .tally(
                    org,
                    &TallyQuery {
                        chamber_id,
                        from,
                        to,
                        bucket_millis: width,
                    },
                )
                .await?;
            for tally in tallies {
                coverage.add(&tally);
            }
        }
        Ok(coverage)
    }
}

/// A bucket's width in milliseconds: at least 1 s, and at most [`MAX_BUCKETS`] of them over
/// the range.
fn bucket_width(bucket: Duration, from: Timestamp, to: Timestamp) -> Result<i64, UseCaseError> {
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
    Ok(width)
}
