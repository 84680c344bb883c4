//! Repository ports: where entities, readings and the ledger are kept.
//!
//! Every tenant-scoped call takes the caller's [`OrganizationId`] and only ever sees rows of
//! that organization: a row of another organization is reported exactly like a missing row
//! ([`StoreError::NotFound`]), so ids of other tenants cannot even be probed. Calls that are not
//! tenant-scoped (`load_for_poll`, `list_active`, `find_by_email`, `find_by_hash`) exist for the
//! scheduler, the workers and authentication, never for API handlers.
//!
//! Writes are all-or-nothing: a call that fails leaves nothing of its input behind.

use async_trait::async_trait;

use crate::error::{Rule, ValidationError};
use crate::limits::MAX_PAGE_SIZE;
use crate::model::{
    ApiToken, ApiTokenId, Batch, BatchId, Chamber, ChamberHealth, ChamberId, ChamberState,
    Detector, DetectorId, Email, HealthState, LedgerEntry, Organization, OrganizationId, Page,
    PageRequest, PageSize, PollId, Reading, Section, SectionId, TokenHash, User, UserId,
};
use crate::time::Timestamp;

/// The error contract shared by all repository ports. Each method's docs say which variants it
/// returns for which case; adapters translate driver errors into these (a unique violation into
/// `Duplicate`, a foreign-key violation into `MissingParent`, a lost connection or timeout into
/// `Unavailable`) and never pass a driver error through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such row in the caller's organization.
    #[error("{entity} not found")]
    NotFound { entity: &'static str },
    /// A uniqueness rule: another row already has this value of `field`.
    #[error("a {entity} with this {field} already exists")]
    Duplicate {
        entity: &'static str,
        field: &'static str,
    },
    /// The row refers to a parent that does not exist (in the caller's organization).
    #[error("{entity} refers to a {parent} that does not exist")]
    MissingParent {
        entity: &'static str,
        parent: &'static str,
    },
    /// The row still has dependents (a section that holds chambers, ...).
    #[error("{entity} still has {dependents}")]
    HasDependents {
        entity: &'static str,
        dependents: &'static str,
    },
    /// The write conflicts with the current state (a concurrent update, a second open batch).
    #[error("{entity} conflict: {reason}")]
    Conflict {
        entity: &'static str,
        reason: String,
    },
    /// A value the store cannot hold (checked again at this edge: NaN, over-long text).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The store cannot be reached or did not answer in time; the call may be retried.
    #[error("storage unavailable: {message}")]
    Unavailable { message: String },
}

impl StoreError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
        }
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// Organizations (tenants).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait OrganizationRepository: Send + Sync {
    /// # Errors
    /// `Duplicate { field: "name" }` if the name is taken; `Unavailable`.
    async fn create(&self, org: &Organization) -> Result<(), StoreError>;

    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn get(&self, id: OrganizationId) -> Result<Organization, StoreError>;
}

/// Sections. Names are unique within an organization.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SectionRepository: Send + Sync {
    /// # Errors
    /// `MissingParent { parent: "organization" }`; `Duplicate { field: "name" }`; `Unavailable`.
    async fn create(&self, section: &Section) -> Result<(), StoreError>;

    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn get(&self, org: OrganizationId, id: SectionId) -> Result<Section, StoreError>;

    /// Sections of `org` ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<SectionId>,
    ) -> Result<Page<Section, SectionId>, StoreError>;

    /// Replaces name and description.
    ///
    /// # Errors
    /// `NotFound`; `Duplicate { field: "name" }`; `Unavailable`.
    async fn update(&self, section: &Section) -> Result<(), StoreError>;

    /// # Errors
    /// `NotFound`; `HasDependents` while chambers or batches remain; `Unavailable`.
    async fn delete(&self, org: OrganizationId, id: SectionId) -> Result<(), StoreError>;
}

/// A write of many items refused because of one of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item {index}: {error}")]
pub struct ItemError {
    /// The item's position in the submitted slice.
    pub index: usize,
    pub error: StoreError,
}

/// Filters for listing chambers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChamberFilter {
    pub section_id: Option<SectionId>,
    pub state: Option<ChamberState>,
    /// Names containing this text (ASCII letters compared without case).
    pub name_contains: Option<String>,
    /// Chambers in this health state (`Unknown` includes those never polled).
    pub health: Option<HealthState>,
}

/// A chamber with its detectors, as a worker needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChamberWithDetectors {
    pub chamber: Chamber,
    pub detectors: Vec<Detector>,
}

/// Chambers. Names are unique within a section.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ChamberRepository: Send + Sync {
    /// Creates the chamber and its detectors together.
    ///
    /// # Errors
    /// `MissingParent { parent: "section" }` (also when the section is another tenant's);
    /// `Duplicate { entity: "chamber", field: "name" }`;
    /// `Duplicate { entity: "detector", field: "name" }` for two detectors of one name;
    /// `Unavailable`. Nothing is written on error.
    async fn create(&self, chamber: &Chamber, detectors: &[Detector]) -> Result<(), StoreError>;

    /// Creates every chamber with its detectors in one transaction: all of them or none.
    ///
    /// # Errors
    /// The first item that cannot be written, by its index in `chambers`, with the error
    /// [`ChamberRepository::create`] would give for it alone (`MissingParent`, `Duplicate` also
    /// for two items of one name in one section, `Unavailable`). Nothing is written on error.
    async fn create_many(&self, chambers: &[ChamberWithDetectors]) -> Result<(), ItemError>;

    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn get(&self, org: OrganizationId, id: ChamberId) -> Result<Chamber, StoreError>;

    /// Chambers of `org` matching `filter`, ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError>;

    /// Replaces the chamber's mutable fields (everything but id, organization and created_at).
    ///
    /// # Errors
    /// `NotFound`; `MissingParent { parent: "section" }` when moved to an unknown section;
    /// `Duplicate { field: "name" }`; `Unavailable`.
    async fn update(&self, chamber: &Chamber) -> Result<(), StoreError>;

    /// Deletes the chamber with its detectors, readings, ledger and health.
    ///
    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn delete(&self, org: OrganizationId, id: ChamberId) -> Result<(), StoreError>;

    /// For workers (not tenant-scoped): the chamber and its detectors, or `None` if deleted.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<ChamberWithDetectors>, StoreError>;

    /// For the scheduler's resync (not tenant-scoped): active chambers of every organization,
    /// ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_active(
        &self,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError>;
}

/// Detectors. Names are unique within a chamber.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait DetectorRepository: Send + Sync {
    /// # Errors
    /// `MissingParent { parent: "chamber" }`; `Duplicate { field: "name" }`; `Unavailable`.
    async fn add(&self, detector: &Detector) -> Result<(), StoreError>;

    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn get(&self, org: OrganizationId, id: DetectorId) -> Result<Detector, StoreError>;

    /// The chamber's detectors ordered by id (empty for an unknown chamber).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_for_chamber(
        &self,
        org: OrganizationId,
        chamber: ChamberId,
    ) -> Result<Vec<Detector>, StoreError>;

    /// The detectors of every chamber named (a page of a chamber list), ordered by chamber,
    /// then id; chambers of other organizations and unknown ones contribute nothing. One query
    /// in the SQL stores; this default asks chamber by chamber.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_for_chambers(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<Detector>, StoreError> {
        let mut all = Vec::new();
        for chamber in chambers {
            all.extend(self.list_for_chamber(org, *chamber).await?);
        }
        Ok(all)
    }

    /// # Errors
    /// `NotFound`; `Duplicate { field: "name" }`; `Unavailable`.
    async fn update(&self, detector: &Detector) -> Result<(), StoreError>;

    /// Deletes the detector and its readings.
    ///
    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn delete(&self, org: OrganizationId, id: DetectorId) -> Result<(), StoreError>;
}

/// Batches. At most one open batch per section.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BatchRepository: Send + Sync {
    /// # Errors
    /// `MissingParent { parent: "section" }`; `Conflict` if the section has an open batch;
    /// `Unavailable`.
    async fn start(&self, batch: &Batch) -> Result<(), StoreError>;

    /// Ends an open batch at `at` and returns it.
    ///
    /// # Errors
    /// `NotFound`; `Conflict` if already ended or `at` precedes its start; `Unavailable`.
    async fn end(
        &self,
        org: OrganizationId,
        id: BatchId,
        at: Timestamp,
    ) -> Result<Batch, StoreError>;

    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn get(&self, org: OrganizationId, id: BatchId) -> Result<Batch, StoreError>;

    /// Batches of `org` (of one section if given), ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list(
        &self,
        org: OrganizationId,
        section: Option<SectionId>,
        page: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>, StoreError>;

    /// For workers (not tenant-scoped): the batch of `section` covering `at`, if any.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError>;
}

/// One poll's results, stored together: its ledger entry and its readings.
#[derive(Debug, Clone, PartialEq)]
pub struct PollRecord {
    pub entry: LedgerEntry,
    pub readings: Vec<Reading>,
}

impl PollRecord {
    /// Checks what [`ReadingRepository::store_polls`] requires of a poll's readings beyond their
    /// parents: each carries the entry's `requested_at`, its `recorded_at` as `received_at`,
    /// and one batch shared by all of them (stores keep these once per poll).
    ///
    /// # Errors
    /// `Invalid { field: "readings" }` naming the first reading that differs.
    pub fn check_readings_share_the_entry(&self) -> Result<(), StoreError> {
        let Some(first) = self.readings.first() else {
            return Ok(());
        };
        let differs = |what: &str| {
            StoreError::Invalid(ValidationError::new(
                "readings",
                Rule::Inconsistent(format!(
                    "every reading of a poll carries its entry's {what} (chamber {}, slot {})",
                    self.entry.poll.chamber_id, self.entry.poll.slot
                )),
            ))
        };
        for r in &self.readings {
            if Some(r.requested_at) != self.entry.requested_at {
                return Err(differs("requested_at"));
            }
            if r.received_at != self.entry.recorded_at {
                return Err(differs("recorded_at as received_at"));
            }
            if r.batch_id != first.batch_id {
                return Err(differs("batch (one for all of them)"));
            }
        }
        Ok(())
    }
}

/// Where converting a store's readings from an earlier layout stands (`chamberlain migrate`,
/// which moves them in bounded chunks, each all or nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConversionProgress {
    /// Polls moved by this run.
    pub polls_moved: u64,
    /// Of them, polls that were already in the new layout (the first one kept).
    pub polls_already_there: u64,
    /// Readings moved by this run.
    pub readings_moved: u64,
    /// Polls of the previous layout when this run started (an estimate on PostgreSQL).
    pub polls_estimated: u64,
    /// Readings with no ledger entry (never returned by any query), dropped at the end.
    pub orphan_readings: u64,
    /// Whether the previous layout is gone.
    pub finished: bool,
}

/// How many rows a write added; the rest were already there (redelivered polls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub readings_new: u64,
    pub readings_existing: u64,
    pub ledger_new: u64,
    pub ledger_existing: u64,
    /// Polls whose ledger entry was already stored: redeliveries, whose events and health
    /// changes were already handled.
    pub existing_polls: Vec<PollId>,
}

/// What a reading query covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingScope {
    Detector(DetectorId),
    Chamber(ChamberId),
    Batch(BatchId),
}

/// Keyset cursor for reading queries, ordered by (slot, detector).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadingCursor {
    pub slot: Timestamp,
    pub detector_id: DetectorId,
}

/// Min, max, mean and count of one detector's measured values in one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aggregate {
    pub detector_id: DetectorId,
    pub bucket_start: Timestamp,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

/// The measured values of a scope with `from <= slot < to`, summed up per detector and
/// epoch-aligned bucket of `bucket_millis` (a bucket starts at a multiple of it since the Unix
/// epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateQuery {
    pub scope: ReadingScope,
    pub from: Timestamp,
    pub to: Timestamp,
    /// At least 1.
    pub bucket_millis: i64,
}

/// How a chamber's slots in one bucket ended, by its ledger entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerTally {
    pub bucket_start: Timestamp,
    /// The chamber answered (`ok`, `corrupted_values`: `PollOutcome::chamber_succeeded` is
    /// `Some(true)`).
    pub read: u64,
    /// A failure of the chamber (`timeout`, `http_status`, ...: `Some(false)`).
    pub failed: u64,
    /// Not the chamber's doing: `missed`, `expired`, `cancelled` (`None`).
    pub missed: u64,
}

impl LedgerTally {
    /// A bucket with nothing counted yet.
    pub fn empty(bucket_start: Timestamp) -> Self {
        Self {
            bucket_start,
            read: 0,
            failed: 0,
            missed: 0,
        }
    }

    /// Counts `n` entries of the outcome whose [`code`](crate::model::PollOutcome::code) is
    /// `code` (as a store keeps it) where [`PollOutcome::chamber_succeeded`] puts them; a code
    /// no outcome has counts as failed.
    ///
    /// [`PollOutcome::chamber_succeeded`]: crate::model::PollOutcome::chamber_succeeded
    pub fn count(&mut self, code: &str, n: u64) {
        match code {
            "ok" | "corrupted_values" => self.read += n,
            "missed" | "expired" | "cancelled" => self.missed += n,
            _ => self.failed += n,
        }
    }
}

/// A chamber's ledger with `from <= slot < to`, counted per bucket of `bucket_millis` starting
/// at `from` (bucket `i` is `from + i·width ..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TallyQuery {
    pub chamber_id: ChamberId,
    pub from: Timestamp,
    pub to: Timestamp,
    /// At least 1.
    pub bucket_millis: i64,
}

/// Readings of a scope with `from <= slot < to`, ordered by (slot, detector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadingQuery {
    pub scope: ReadingScope,
    pub from: Timestamp,
    pub to: Timestamp,
    pub page: PageRequest<ReadingCursor>,
}

impl ReadingQuery {
    /// Every reading of the scope (the widest range, the largest page): for tests and exports
    /// that page through everything.
    pub fn all(scope: ReadingScope) -> Self {
        Self {
            scope,
            from: Timestamp::from_unix_millis(i64::MIN / 2),
            to: Timestamp::from_unix_millis(i64::MAX / 2),
            page: PageRequest::first(PageSize::new(MAX_PAGE_SIZE).unwrap_or_default()),
        }
    }
}

/// The latest slot of a chamber with a stored poll, and its detectors' readings at that slot.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestReadings {
    pub chamber_id: ChamberId,
    pub slot: Timestamp,
    pub readings: Vec<Reading>,
}

/// Readings (and, written with them, the ledger).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ReadingRepository: Send + Sync {
    /// Stores the polls' ledger entries and readings in one transaction, idempotently. The
    /// ledger entry decides: a poll whose entry is already stored (a redelivery, or a slot
    /// recorded as missed before a late result arrived) keeps what is stored, and its readings
    /// are not written but counted as existing — so the ledger and the readings of a poll always
    /// come from the same outcome, and `(detector, slot)` is never stored twice. A poll twice in
    /// one batch is stored once, as it first appears; the second counts as existing (and so does
    /// a detector's second reading within one poll). A detector of the chamber with no reading in
    /// a poll is simply absent from it.
    ///
    /// # Errors
    /// `MissingParent { entity: "reading", parent: "detector" }` if a reading names an unknown
    /// detector, or one not of the poll's chamber; `MissingParent { entity: "poll", parent:
    /// "chamber" }`; `Invalid { field: "readings" }` if a poll's readings do not all carry its
    /// entry's times and one batch ([`PollRecord::check_readings_share_the_entry`]); `Invalid` for more than
    /// [`MAX_READINGS_PER_WRITE`](crate::limits::MAX_READINGS_PER_WRITE) readings;
    /// `Unavailable`. Nothing is written on error: one bad row refuses the whole batch.
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport, StoreError>;

    /// # Errors
    /// `NotFound { entity }` for a scope that is not in `org`; `Unavailable`.
    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, StoreError>;

    /// The latest slot of each of `chambers` with its readings (chambers without readings, or
    /// not in `org`, are left out).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, StoreError>;

    /// The scope's measured values summed up per detector and bucket (corrupted values are not
    /// counted; a bucket without a measured value is left out), ordered by (detector, bucket).
    /// Adapters compute it where the readings are (SQL `GROUP BY`); the default pages through
    /// [`ReadingRepository::query`].
    ///
    /// # Errors
    /// `NotFound { entity }` for a scope that is not in `org`; `Unavailable`.
    async fn aggregate(
        &self,
        org: OrganizationId,
        query: &AggregateQuery,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let width = query.bucket_millis.max(1);
        let mut sums: std::collections::BTreeMap<(DetectorId, i64), (f64, f64, f64, u64)> =
            std::collections::BTreeMap::new();
        let mut page_query = ReadingQuery {
            scope: query.scope,
            from: query.from,
            to: query.to,
            page: PageRequest::first(PageSize::new(MAX_PAGE_SIZE).unwrap_or_default()),
        };
        loop {
            let page = self.query(org, &page_query).await?;
            for r in &page.items {
                let Some(v) = r.value.value() else { continue };
                let start = r.slot.as_unix_millis().div_euclid(width) * width;
                let e = sums.entry((r.detector_id, start)).or_insert((
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
                Some(next) => page_query.page.after = Some(next),
                None => break,
            }
        }
        #[allow(clippy::cast_precision_loss, reason = "a mean")]
        Ok(sums
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

    /// Retention: removes readings and ledger entries of every chamber with a slot before
    /// `cutoff`, at the adapter's granularity. It never removes anything at or after `cutoff`,
    /// and always removes everything before the start of `cutoff`'s UTC day (an adapter that
    /// partitions by day drops whole days). The latest readings of a chamber are kept in
    /// [`ReadingRepository::latest`] only while they are stored.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn prune_before(&self, cutoff: Timestamp) -> Result<(), StoreError>;
}

/// Ledger entries with `from <= slot < to` of one chamber, ordered by slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerQuery {
    pub chamber_id: ChamberId,
    pub from: Timestamp,
    pub to: Timestamp,
    /// Only entries that are not `ok`.
    pub failures_only: bool,
    pub page: PageRequest<Timestamp>,
}

impl LedgerQuery {
    /// The chamber's whole ledger (the widest range, the largest page).
    pub fn all(chamber_id: ChamberId) -> Self {
        Self {
            chamber_id,
            from: Timestamp::from_unix_millis(i64::MIN / 2),
            to: Timestamp::from_unix_millis(i64::MAX / 2),
            failures_only: false,
            page: PageRequest::first(PageSize::new(MAX_PAGE_SIZE).unwrap_or_default()),
        }
    }
}

/// The poll ledger: one entry per slot.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PollLedgerRepository: Send + Sync {
    /// Records entries for polls that produced no readings (missed, expired, cancelled),
    /// keeping any entry already stored for the same poll. Returns how many were new.
    ///
    /// # Errors
    /// `MissingParent { parent: "chamber" }`; `Unavailable`. Nothing is written on error.
    async fn record(&self, entries: &[LedgerEntry]) -> Result<u64, StoreError>;

    /// # Errors
    /// `NotFound { entity: "chamber" }` if the chamber is not in `org`; `Unavailable`.
    async fn list(
        &self,
        org: OrganizationId,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>, StoreError>;

    /// The chamber's ledger counted per bucket (buckets without entries left out), in bucket
    /// order. Adapters count where the ledger is (SQL `GROUP BY`); the default pages through
    /// [`PollLedgerRepository::list`].
    ///
    /// # Errors
    /// `NotFound { entity: "chamber" }` if the chamber is not in `org`; `Unavailable`.
    async fn tally(
        &self,
        org: OrganizationId,
        query: &TallyQuery,
    ) -> Result<Vec<LedgerTally>, StoreError> {
        let width = query.bucket_millis.max(1);
        let from = query.from.as_unix_millis();
        let mut tallies: std::collections::BTreeMap<i64, LedgerTally> =
            std::collections::BTreeMap::new();
        let mut page_query = LedgerQuery {
            chamber_id: query.chamber_id,
            from: query.from,
            to: query.to,
            failures_only: false,
            page: PageRequest::first(PageSize::new(MAX_PAGE_SIZE).unwrap_or_default()),
        };
        loop {
            let page = self.list(org, &page_query).await?;
            for entry in &page.items {
                let slot = entry.poll.slot.as_unix_millis();
                let start = from + (slot - from).div_euclid(width) * width;
                let tally = tallies.entry(start).or_insert(LedgerTally {
                    bucket_start: Timestamp::from_unix_millis(start),
                    read: 0,
                    failed: 0,
                    missed: 0,
                });
                match entry.outcome.chamber_succeeded() {
                    Some(true) => tally.read += 1,
                    Some(false) => tally.failed += 1,
                    None => tally.missed += 1,
                }
            }
            match page.next {
                Some(next) => page_query.page.after = Some(next),
                None => break,
            }
        }
        Ok(tallies.into_values().collect())
    }
}

/// Chamber health, written with optimistic concurrency (several workers may finish polls of one
/// chamber at once).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ChamberHealthRepository: Send + Sync {
    /// # Errors
    /// `Unavailable`.
    async fn get(&self, chamber: ChamberId) -> Result<Option<ChamberHealth>, StoreError>;

    /// The stored health of each of `chambers` that has one (one read for a batch of polls).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn get_many(&self, chambers: &[ChamberId]) -> Result<Vec<ChamberHealth>, StoreError> {
        let mut out = Vec::new();
        for id in chambers {
            out.extend(self.get(*id).await?);
        }
        Ok(out)
    }

    /// How many chambers (of every organization) are in each health state; a chamber with no
    /// health stored yet counts as `unknown`. States with no chamber may be left out.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn count_by_state(&self) -> Result<Vec<(HealthState, u64)>, StoreError>;

    /// Stores `health` if the stored version is still `health.version` (0: no row yet), and
    /// returns the new version.
    ///
    /// # Errors
    /// `Conflict` if another writer got there first (re-read and retry); `MissingParent {
    /// parent: "chamber" }`; `Unavailable`.
    async fn save(&self, health: &ChamberHealth) -> Result<u64, StoreError>;

    /// Saves each of `healths` (each chamber at most once) as [`save`](Self::save) would, in as
    /// few round trips as the store allows, and returns the chambers whose health was not saved:
    /// its stored version was no longer the one given, the chamber is gone, or (for a store that
    /// saves one at a time) the store failed on it. Every other health is saved.
    ///
    /// # Errors
    /// `Unavailable`: then none was saved.
    async fn save_many(&self, healths: &[ChamberHealth]) -> Result<Vec<ChamberId>, StoreError> {
        let mut not_saved = Vec::new();
        for health in healths {
            if self.save(health).await.is_err() {
                not_saved.push(health.chamber_id);
            }
        }
        Ok(not_saved)
    }
}

/// Users. An e-mail address is unique within an organization; one person may have an account
/// in several (sign-in is by address, and chooses among them).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// # Errors
    /// `MissingParent { parent: "organization" }`; `Duplicate { field: "email" }`; `Unavailable`.
    async fn create(&self, user: &User) -> Result<(), StoreError>;

    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn get(&self, org: OrganizationId, id: UserId) -> Result<User, StoreError>;

    /// Every organization's account with this address, in organization id order: for signing
    /// in (not tenant-scoped).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn find_by_email(&self, email: &Email) -> Result<Vec<User>, StoreError>;

    /// # Errors
    /// `Unavailable`.
    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>, StoreError>;

    /// # Errors
    /// `NotFound`; `Duplicate { field: "email" }`; `Unavailable`.
    async fn update(&self, user: &User) -> Result<(), StoreError>;

    /// Deletes the user and their API tokens.
    ///
    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn delete(&self, org: OrganizationId, id: UserId) -> Result<(), StoreError>;
}

/// API tokens (hashes only).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ApiTokenRepository: Send + Sync {
    /// # Errors
    /// `MissingParent { parent: "user" }`; `Duplicate { field: "hash" }`; `Unavailable`.
    async fn create(&self, token: &ApiToken) -> Result<(), StoreError>;

    /// For authentication (not tenant-scoped).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiToken>, StoreError>;

    /// Tokens of `org` (of one user if given), ordered by id.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list(
        &self,
        org: OrganizationId,
        user: Option<UserId>,
        page: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>, StoreError>;

    /// Marks the token revoked at `at` (revoking twice keeps the first time).
    ///
    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn revoke(
        &self,
        org: OrganizationId,
        id: ApiTokenId,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Records a use of the token.
    ///
    /// # Errors
    /// `NotFound`; `Unavailable`.
    async fn touch(&self, id: ApiTokenId, at: Timestamp) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExpiryReason, PollOutcome};

    /// One outcome of each kind; the match fails to compile when a kind is added, so its code
    /// gets a place in the tally.
    fn every_outcome() -> Vec<PollOutcome> {
        let all = vec![
            PollOutcome::Ok,
            PollOutcome::CorruptedValues { corrupted: 1 },
            PollOutcome::Timeout,
            PollOutcome::ConnectionFailed { reason: "x".into() },
            PollOutcome::Blocked { reason: "x".into() },
            PollOutcome::HttpStatus { status: 500 },
            PollOutcome::TooLarge { limit_bytes: 1 },
            PollOutcome::Malformed { reason: "x".into() },
            PollOutcome::Missed,
            PollOutcome::Expired {
                reason: ExpiryReason::StoreBehind,
            },
            PollOutcome::Cancelled,
        ];
        for outcome in &all {
            match outcome {
                PollOutcome::Ok
                | PollOutcome::CorruptedValues { .. }
                | PollOutcome::Timeout
                | PollOutcome::ConnectionFailed { .. }
                | PollOutcome::Blocked { .. }
                | PollOutcome::HttpStatus { .. }
                | PollOutcome::TooLarge { .. }
                | PollOutcome::Malformed { .. }
                | PollOutcome::Missed
                | PollOutcome::Expired { .. }
                | PollOutcome::Cancelled => {}
            }
        }
        all
    }

    #[test]
    fn a_tally_counts_each_outcome_code_where_chamber_succeeded_puts_it() {
        for outcome in every_outcome() {
            let mut tally = LedgerTally::empty(Timestamp::from_unix_millis(0));
            tally.count(outcome.code(), 3);
            let expected = match outcome.chamber_succeeded() {
                Some(true) => (3, 0, 0),
                Some(false) => (0, 3, 0),
                None => (0, 0, 3),
            };
            assert_eq!(
                (tally.read, tally.failed, tally.missed),
                expected,
                "{}",
                outcome.code()
            );
        }
    }
}
