//! [`ReadingRepository`] and [`PollLedgerRepository`] on PostgreSQL: one row per poll in
//! `polls` (day partitions, created on demand) holding the ledger entry and the poll's values
//! as arrays laid out by the chamber's detector layout ([`layouts`]), the latest values kept per
//! chamber, range queries, aggregates and tallies.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::Timestamp;
use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    BatchId, ChamberId, DetectorId, LedgerEntry, OrganizationId, Page, PollId, Reading,
};
use chamberlain_domain::ports::{
    Aggregate, AggregateQuery, LatestReadings, LedgerQuery, LedgerTally, PollLedgerRepository,
    PollRecord, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope, StoreError,
    TallyQuery, WriteReport,
};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::layouts::{self, Layouts};
use super::{limit, not_found};
use crate::PgStore;
use crate::errors::{corrupt, is_missing_partition, is_retryable_conflict, store_error};
use crate::partitions;
use crate::store::rows::{self, millis, ts};

type Result<T> = std::result::Result<T, StoreError>;

/// What a reading query covers: the chambers to read, and for a detector scope the detector,
/// for a batch scope the batch to filter on.
struct Scope {
    chambers: Vec<Uuid>,
    detector: Option<Uuid>,
    batch: Option<Uuid>,
}

impl PgStore {
    /// Resolves a reading scope within `org` (an unknown or foreign scope is "not found").
    async fn scope(&self, org: OrganizationId, scope: ReadingScope) -> Result<Scope> {
        let (sql, entity, id) = match scope {
            ReadingScope::Detector(id) => (
                "SELECT chamber_id AS chamber FROM detectors WHERE organization_id = $1 AND id = $2",
                "detector",
                *id.as_uuid(),
            ),
            ReadingScope::Chamber(id) => (
                "SELECT id AS chamber FROM chambers WHERE organization_id = $1 AND id = $2",
                "chamber",
                *id.as_uuid(),
            ),
            // The chambers of the batch's section (today's), their polls filtered by the batch.
            ReadingScope::Batch(id) => (
                "SELECT c.id AS chamber FROM batches b LEFT JOIN chambers c ON c.section_id = b.section_id \
                 WHERE b.organization_id = $1 AND b.id = $2",
                "batch",
                *id.as_uuid(),
            ),
        };
        let rows = sqlx::query(sql)
            .bind(org.as_uuid())
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        if rows.is_empty() {
            return Err(not_found(entity));
        }
        let chambers = rows
            .iter()
            .filter_map(|r| r.try_get::<Option<Uuid>, _>("chamber").ok().flatten())
            .collect();
        Ok(Scope {
            chambers,
            detector: matches!(scope, ReadingScope::Detector(_)).then_some(id),
            batch: matches!(scope, ReadingScope::Batch(_)).then_some(id),
        })
    }
}

/// Polls as columns, to bind as arrays. A poll's values are a slice `first .. first + width`
/// of the flat `values` and `codes` arrays (NaN: no value; 0: no reason), so the arrays carry
/// no NULLs and PostgreSQL slices them in O(width).
#[derive(Default)]
struct PollColumns {
    chamber: Vec<Uuid>,
    slot: Vec<OffsetDateTime>,
    outcome: Vec<String>,
    detail: Vec<serde_json::Value>,
    attempt: Vec<i32>,
    requested: Vec<Option<OffsetDateTime>>,
    recorded: Vec<OffsetDateTime>,
    latency: Vec<Option<i64>>,
    lateness: Vec<i64>,
    layout: Vec<Option<i32>>,
    batch: Vec<Option<Uuid>>,
    first: Vec<i32>,
    width: Vec<i32>,
    corrupt: Vec<bool>,
    values: Vec<f64>,
    codes: Vec<i16>,
}

impl PollColumns {
    fn push_entry(&mut self, e: &LedgerEntry) -> Result<()> {
        self.chamber.push(*e.poll.chamber_id.as_uuid());
        self.slot.push(ts(e.poll.slot));
        self.outcome.push(e.outcome.code().to_owned());
        self.detail
            .push(serde_json::to_value(&e.outcome).map_err(|err| corrupt("polls", "detail", err))?);
        self.attempt
            .push(i32::try_from(e.attempt).unwrap_or(i32::MAX));
        self.requested.push(e.requested_at.map(ts));
        self.recorded.push(ts(e.recorded_at));
        self.latency.push(e.latency.map(millis));
        self.lateness.push(millis(e.lateness));
        Ok(())
    }

    /// A poll without values (no readings, or a ledger entry alone).
    fn push_bare(&mut self, e: &LedgerEntry) -> Result<()> {
        self.push_entry(e)?;
        self.layout.push(None);
        self.batch.push(None);
        self.first.push(1);
        self.width.push(0);
        self.corrupt.push(false);
        Ok(())
    }

    /// A poll with readings, laid out by its chamber's current layout. Returns how many of its
    /// readings were placed (a detector's second reading in one poll is not).
    fn push_poll(&mut self, p: &PollRecord, layout: &layouts::Current) -> Result<u64> {
        self.push_entry(&p.entry)?;
        let first = self.values.len();
        self.values.resize(first + layout.width, f64::NAN);
        self.codes.resize(first + layout.width, 0);
        let mut placed = vec![false; layout.width];
        let mut corrupt = false;
        for r in &p.readings {
            let Some(&i) = layout.position.get(r.detector_id.as_uuid()) else {
                return Err(StoreError::MissingParent {
                    entity: "reading",
                    parent: "detector",
                });
            };
            if std::mem::replace(&mut placed[i], true) {
                continue;
            }
            match rows::split_value(&r.value) {
                (Some(v), _) => self.values[first + i] = v,
                (None, code) => {
                    self.codes[first + i] = code.unwrap_or(0);
                    corrupt = true;
                }
            }
        }
        self.layout.push(Some(layout.version));
        self.batch.push(
            p.readings
                .first()
                .and_then(|r| r.batch_id)
                .map(|b| *b.as_uuid()),
        );
        self.first
            .push(i32::try_from(first + 1).map_err(|_| too_many(self.values.len()))?);
        self.width
            .push(i32::try_from(layout.width).map_err(|_| too_many(layout.width))?);
        self.corrupt.push(corrupt);
        Ok(placed.iter().filter(|p| **p).count() as u64)
    }
}

fn too_many(n: usize) -> StoreError {
    StoreError::Invalid(ValidationError::new(
        "readings",
        Rule::TooLong {
            max: MAX_READINGS_PER_WRITE,
            actual: n,
        },
    ))
}

/// Inserts the polls that are not stored yet, and moves each chamber's latest row forward to
/// the newest of them with values (never backwards); returns the polls that were new.
async fn insert_polls(
    tx: &mut Transaction<'_, Postgres>,
    c: &PollColumns,
) -> std::result::Result<HashSet<(Uuid, OffsetDateTime)>, WriteFailure> {
    let rows = sqlx::query(
        "WITH u AS (SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::jsonb[], $5::int4[], \
                      $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::int8[], $10::int4[], $11::uuid[], \
                      $12::int4[], $13::int4[], $14::bool[]) \
                    AS u(chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, \
                         lateness_ms, layout_version, batch_id, first, width, corrupt)), \
         ins AS (INSERT INTO polls (chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, \
                                    latency_ms, lateness_ms, layout_version, batch_id, value, corruption) \
                 SELECT chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, \
                        lateness_ms, layout_version, batch_id, \
                        CASE WHEN layout_version IS NOT NULL THEN \
                             array_replace(($15::float8[])[first:first + width - 1], 'NaN'::float8, NULL) END, \
                        CASE WHEN corrupt THEN \
                             array_replace(($16::int2[])[first:first + width - 1], 0::int2, NULL) END \
                 FROM u \
                 ON CONFLICT (chamber_id, slot) DO NOTHING \
                 RETURNING chamber_id, slot, layout_version, requested_at, recorded_at, batch_id, value, corruption), \
         latest AS (INSERT INTO chamber_latest (chamber_id, slot, layout_version, requested_at, received_at, \
                                                batch_id, value, corruption) \
                 SELECT DISTINCT ON (chamber_id) chamber_id, slot, layout_version, requested_at, recorded_at, \
                        batch_id, value, corruption \
                 FROM ins WHERE layout_version IS NOT NULL ORDER BY chamber_id, slot DESC \
                 ON CONFLICT (chamber_id) DO UPDATE SET slot = EXCLUDED.slot, \
                     layout_version = EXCLUDED.layout_version, requested_at = EXCLUDED.requested_at, \
                     received_at = EXCLUDED.received_at, batch_id = EXCLUDED.batch_id, \
                     value = EXCLUDED.value, corruption = EXCLUDED.corruption \
                 WHERE chamber_latest.slot < EXCLUDED.slot) \
         SELECT chamber_id, slot FROM ins",
    )
    .bind(&c.chamber)
    .bind(&c.slot)
    .bind(&c.outcome)
    .bind(&c.detail)
    .bind(&c.attempt)
    .bind(&c.requested)
    .bind(&c.recorded)
    .bind(&c.latency)
    .bind(&c.lateness)
    .bind(&c.layout)
    .bind(&c.batch)
    .bind(&c.first)
    .bind(&c.width)
    .bind(&c.corrupt)
    .bind(&c.values)
    .bind(&c.codes)
    .fetch_all(&mut **tx)
    .await
    .map_err(store_error_keep_partition)?;
    let mut new = HashSet::with_capacity(rows.len());
    for r in &rows {
        new.insert((
            r.try_get("chamber_id").map_err(store_error)?,
            r.try_get("slot").map_err(store_error)?,
        ));
    }
    Ok(new)
}

/// Like [`store_error`], but keeps "no partition" recognisable for the retry.
fn store_error_keep_partition(e: sqlx::Error) -> WriteFailure {
    if is_retryable_conflict(&e) {
        WriteFailure::Conflict
    } else if is_missing_partition(&e) {
        WriteFailure::MissingPartition
    } else {
        WriteFailure::Store(store_error(e))
    }
}

pub(crate) enum WriteFailure {
    MissingPartition,
    /// A deadlock or serialization conflict aborted the transaction: run it again.
    Conflict,
    Store(StoreError),
}

/// A write's failure as the ports report it (for a caller that does not retry).
pub(crate) fn into_store_error(f: WriteFailure) -> StoreError {
    match f {
        WriteFailure::Store(e) => e,
        WriteFailure::MissingPartition => StoreError::unavailable("no partition for a slot"),
        WriteFailure::Conflict => StoreError::unavailable("write aborted by a deadlock"),
    }
}

impl From<StoreError> for WriteFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Polls to write: each (chamber, slot) once, as it first appeared, in key order (so concurrent
/// writers of the same keys — redeliveries, the same chambers' latest rows — lock them in the
/// same order and never deadlock); the repeats, counted existing.
fn distinct_polls(polls: &[PollRecord]) -> (Vec<&PollRecord>, Vec<&PollRecord>) {
    let mut seen = HashSet::with_capacity(polls.len());
    let (mut first, mut repeats) = (Vec::with_capacity(polls.len()), Vec::new());
    for p in polls {
        if seen.insert(p.entry.poll) {
            first.push(p);
        } else {
            repeats.push(p);
        }
    }
    first.sort_by_key(|p| p.entry.poll);
    (first, repeats)
}

impl PgStore {
    /// One write of distinct polls, in key order: the chambers' current layouts (which also
    /// checks that every chamber exists and every reading's detector is one of its chamber's),
    /// then one statement inserting the polls and moving the latest rows.
    pub(crate) async fn write_polls(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        polls: &[&PollRecord],
    ) -> std::result::Result<(HashSet<(Uuid, OffsetDateTime)>, u64), WriteFailure> {
        let all: BTreeSet<Uuid> = polls
            .iter()
            .map(|p| *p.entry.poll.chamber_id.as_uuid())
            .collect();
        let all: Vec<Uuid> = all.into_iter().collect();
        let current = layouts::current(tx, &all, &self.layouts).await?;
        if current.len() != all.len() {
            return Err(WriteFailure::Store(StoreError::MissingParent {
                entity: "poll",
                parent: "chamber",
            }));
        }
        let mut c = PollColumns::default();
        let mut placed = Vec::with_capacity(polls.len());
        for p in polls {
            let chamber = p.entry.poll.chamber_id.as_uuid();
            match current.get(chamber) {
                Some(layout) if !p.readings.is_empty() => {
                    placed.push(c.push_poll(p, layout)?);
                }
                _ => {
                    c.push_bare(&p.entry)?;
                    placed.push(0);
                }
            }
        }
        let new = insert_polls(tx, &c).await?;
        let readings_new = polls
            .iter()
            .zip(&placed)
            .filter(|(p, _)| {
                new.contains(&(*p.entry.poll.chamber_id.as_uuid(), ts(p.entry.poll.slot)))
            })
            .map(|(_, n)| n)
            .sum();
        Ok((new, readings_new))
    }

    /// Splits polls into those to write and those the previous layout's ledger already holds
    /// (while it is there): a live write of such a poll is existing — the first stored wins,
    /// wherever it is — so the conversion never drops an original for a later copy. A poll moved
    /// by the conversion between this look and the write is found by the write's own key.
    async fn not_in_legacy_ledger<'p>(
        &self,
        polls: Vec<&'p PollRecord>,
    ) -> Result<(Vec<&'p PollRecord>, Vec<&'p PollRecord>)> {
        use std::sync::atomic::Ordering;
        if polls.is_empty() || !self.legacy.load(Ordering::SeqCst) {
            return Ok((polls, Vec::new()));
        }
        let chambers: Vec<Uuid> = polls
            .iter()
            .map(|p| *p.entry.poll.chamber_id.as_uuid())
            .collect();
        let slots: Vec<OffsetDateTime> = polls.iter().map(|p| ts(p.entry.poll.slot)).collect();
        let found = sqlx::query(
            "SELECT l.chamber_id, l.slot FROM UNNEST($1::uuid[], $2::timestamptz[]) AS k(chamber_id, slot) \
             JOIN legacy_poll_ledger l ON l.chamber_id = k.chamber_id AND l.slot = k.slot",
        )
        .bind(&chambers)
        .bind(&slots)
        .fetch_all(&self.pool)
        .await;
        let rows = match found {
            Ok(rows) => rows,
            // Converted and dropped meanwhile (by `chamberlain migrate` elsewhere).
            Err(e) if crate::errors::is_undefined_table(&e) => {
                self.legacy.store(false, Ordering::SeqCst);
                return Ok((polls, Vec::new()));
            }
            Err(e) => return Err(store_error(e)),
        };
        let mut there = HashSet::with_capacity(rows.len());
        for row in &rows {
            let c = rows::Cols {
                row,
                table: "legacy_poll_ledger",
            };
            there.insert((c.uuid("chamber_id")?, ts(c.ts("slot")?)));
        }
        Ok(polls.into_iter().partition(|p| {
            !there.contains(&(*p.entry.poll.chamber_id.as_uuid(), ts(p.entry.poll.slot)))
        }))
    }

    async fn try_store(
        &self,
        ordered: &[&PollRecord],
        repeats: &[&PollRecord],
        total_readings: usize,
    ) -> std::result::Result<WriteReport, WriteFailure> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let (new, readings_new) = self.write_polls(&mut tx, ordered).await?;
        tx.commit().await.map_err(store_error)?;
        let is_new = |p: &PollId| new.contains(&(*p.chamber_id.as_uuid(), ts(p.slot)));
        let existing_polls: Vec<PollId> = ordered
            .iter()
            .map(|p| p.entry.poll)
            .filter(|p| !is_new(p))
            .chain(repeats.iter().map(|p| p.entry.poll))
            .collect();
        Ok(WriteReport {
            readings_new,
            readings_existing: total_readings as u64 - readings_new,
            ledger_new: new.len() as u64,
            ledger_existing: existing_polls.len() as u64,
            existing_polls,
        })
    }

    /// Runs a write, creating the partitions its slots need and retrying once if one was
    /// missing (a slot outside the partitions created ahead: a late backfill, a clock jump).
    async fn with_partitions<T, F, Fut>(
        &self,
        slots: impl Iterator<Item = Timestamp>,
        write: F,
    ) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, WriteFailure>>,
    {
        let days: BTreeSet<i64> = slots.map(partitions::day_of).collect();
        // A few tries: a missing partition is created, a deadlock or serialization conflict is
        // run again; anything else is the caller's.
        let mut last = StoreError::unavailable("write not attempted");
        for _ in 0..3 {
            match write().await {
                Ok(v) => return Ok(v),
                Err(WriteFailure::Store(e)) => return Err(e),
                Err(WriteFailure::MissingPartition) => {
                    partitions::ensure_days(&self.pool, &days).await?;
                    last =
                        StoreError::unavailable("no partition for a slot even after creating it");
                }
                Err(WriteFailure::Conflict) => {
                    last = StoreError::unavailable("write aborted by repeated deadlocks");
                }
            }
        }
        Err(last)
    }

    /// One page of a detector's readings: the positions of the detector in its chamber's
    /// layouts pick one element of each poll's arrays, along the key (chamber, slot).
    async fn query_detector(
        &self,
        chamber: Uuid,
        detector: Uuid,
        layouts: &Layouts,
        q: &ReadingQuery,
    ) -> Result<Vec<Reading>> {
        let (versions, positions) = layouts.positions_of(chamber, detector);
        // After the cursor (slot, detector): the cursor's slot itself only if this detector
        // sorts after the cursor's. Slots are whole milliseconds.
        let from = match q.page.after {
            Some(c) if *c.detector_id.as_uuid() < detector => q.from.max(c.slot),
            Some(c) => q.from.max(c.slot + std::time::Duration::from_millis(1)),
            None => q.from,
        };
        let rows = sqlx::query(
            "SELECT p.slot, p.value[x.i] AS value, p.corruption[x.i] AS corruption, \
                    p.requested_at, p.recorded_at, p.batch_id \
             FROM polls p CROSS JOIN LATERAL \
                  (SELECT ($5::int4[])[array_position($4::int4[], p.layout_version)] AS i) x \
             WHERE p.chamber_id = $1 AND p.slot >= $2 AND p.slot < $3 AND p.layout_version = ANY($4) \
               AND (p.value[x.i] IS NOT NULL OR p.corruption[x.i] IS NOT NULL) \
               AND ($7::uuid IS NULL OR p.batch_id = $7) \
             ORDER BY p.slot LIMIT $6",
        )
        .bind(chamber)
        .bind(ts(from))
        .bind(ts(q.to))
        .bind(&versions)
        .bind(&positions)
        .bind(limit(&q.page))
        .bind(None::<Uuid>)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let c = rows::Cols {
                    row,
                    table: "polls",
                };
                Ok(Reading {
                    detector_id: DetectorId::from_uuid(detector),
                    chamber_id: ChamberId::from_uuid(chamber),
                    slot: c.ts("slot")?,
                    value: rows::reading_value(c.get("value")?, c.get("corruption")?)?,
                    requested_at: c.ts("requested_at")?,
                    received_at: c.ts("recorded_at")?,
                    batch_id: c.get::<Option<Uuid>>("batch_id")?.map(BatchId::from_uuid),
                })
            })
            .collect()
    }

    /// One page of the readings of several chambers (a chamber or a batch), in (slot, detector)
    /// order: the chambers' polls from the cursor's slot on, merged by slot, each expanded into
    /// its live detectors' readings; read on while deleted detectors or absent values leave the
    /// page short.
    async fn query_chambers(
        &self,
        scope: &Scope,
        layouts: &Layouts,
        q: &ReadingQuery,
    ) -> Result<Vec<Reading>> {
        let wanted = q.page.size.as_usize() + 1;
        // Enough whole slots for a page in one read: the last slot read may be cut short and is
        // read again, so one more poll per chamber (up to a page's worth).
        let mut polls_per_read =
            (wanted.div_ceil(layouts.narrowest()) + scope.chambers.len().min(wanted)) as i64;
        let mut from = q.page.after.map_or(q.from, |c| q.from.max(c.slot));
        let mut out: Vec<Reading> = Vec::new();
        loop {
            let rows = sqlx::query(
                "SELECT p.* FROM UNNEST($1::uuid[]) AS c(id) CROSS JOIN LATERAL ( \
                    SELECT chamber_id, slot, layout_version, value, corruption, requested_at, recorded_at, batch_id \
                    FROM polls WHERE chamber_id = c.id AND slot >= $2 AND slot < $3 \
                    AND layout_version IS NOT NULL AND ($5::uuid IS NULL OR batch_id = $5) \
                    ORDER BY slot LIMIT $4) p \
                 ORDER BY p.slot, p.chamber_id LIMIT $4",
            )
            .bind(&scope.chambers)
            .bind(ts(from))
            .bind(ts(q.to))
            .bind(polls_per_read)
            .bind(scope.batch)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
            let complete = (rows.len() as i64) < polls_per_read;
            let mut polls = rows
                .iter()
                .map(PollRow::decode)
                .collect::<Result<Vec<_>>>()?;
            if !complete {
                // The last slot read may be cut short (other chambers' polls at that slot past
                // the limit): it is read again, whole, next time.
                let last = polls.last().map(|p| p.slot);
                polls.retain(|p| Some(p.slot) != last);
                if polls.is_empty() {
                    polls_per_read *= 2;
                    continue;
                }
            }
            let mut readings = Vec::new();
            for p in &polls {
                p.expand(layouts, &mut readings)?;
            }
            readings.retain(|r| {
                q.page
                    .after
                    .is_none_or(|c| (r.slot, r.detector_id) > (c.slot, c.detector_id))
            });
            readings.sort_by_key(|r| (r.slot, r.detector_id));
            out.extend(readings);
            if complete || out.len() >= wanted {
                return Ok(out);
            }
            from = polls
                .last()
                .map_or(from, |p| p.slot + std::time::Duration::from_millis(1));
        }
    }
}

/// Positions aggregated per scan of a chamber aggregate: four aggregate columns each, well
/// within PostgreSQL's 1,664 columns of a row.
const POSITIONS_PER_SCAN: usize = 32;

/// An aggregate's groups, by (detector, bucket), merged across chambers' layout versions.
#[derive(Default)]
struct Sums(BTreeMap<(DetectorId, Timestamp), Sum>);

struct Sum {
    min: f64,
    max: f64,
    total: f64,
    count: u64,
}

impl Sums {
    /// Adds one group of `row`: its bucket in the column `bucket`, its minimum, maximum, sum
    /// and count in the four columns from `first`. A group of no detector (a position
    /// deleted, or beyond its version's width) or of no value is skipped.
    fn add(&mut self, detector: Option<Uuid>, row: &PgRow, first: usize) -> Result<()> {
        let Some(detector) = detector else {
            return Ok(());
        };
        let count: i64 = row
            .try_get(first + 3)
            .map_err(|e| corrupt("polls", "count", e))?;
        let count = u64::try_from(count).map_err(|e| corrupt("polls", "count", e))?;
        if count == 0 {
            return Ok(());
        }
        let value = |i: usize, name: &'static str| {
            row.try_get::<Option<f64>, _>(i)
                .map_err(|e| corrupt("polls", name, e))?
                .ok_or_else(|| corrupt("polls", name, "no value in a group of values"))
        };
        let (low, high, total) = (
            value(first, "min")?,
            value(first + 1, "max")?,
            value(first + 2, "sum")?,
        );
        let bucket = rows::Cols {
            row,
            table: "polls",
        }
        .ts("bucket")?;
        self.0
            .entry((DetectorId::from_uuid(detector), bucket))
            .and_modify(|s| {
                s.min = s.min.min(low);
                s.max = s.max.max(high);
                s.total += total;
                s.count += count;
            })
            .or_insert(Sum {
                min: low,
                max: high,
                total,
                count,
            });
        Ok(())
    }

    #[allow(clippy::cast_precision_loss, reason = "a mean")]
    fn into_aggregates(self) -> Vec<Aggregate> {
        self.0
            .into_iter()
            .map(|((detector_id, bucket_start), s)| Aggregate {
                detector_id,
                bucket_start,
                min: s.min,
                max: s.max,
                mean: s.total / s.count as f64,
                count: s.count,
            })
            .collect()
    }
}

/// A poll row as reading queries see it.
struct PollRow {
    chamber: Uuid,
    slot: Timestamp,
    version: i32,
    value: Vec<Option<f64>>,
    corruption: Option<Vec<Option<i16>>>,
    requested_at: Timestamp,
    received_at: Timestamp,
    batch: Option<BatchId>,
}

impl PollRow {
    fn decode(row: &PgRow) -> Result<Self> {
        let c = rows::Cols {
            row,
            table: "polls",
        };
        Ok(Self {
            chamber: c.uuid("chamber_id")?,
            slot: c.ts("slot")?,
            version: c.get("layout_version")?,
            value: c.get("value")?,
            corruption: c.get("corruption")?,
            requested_at: c.ts("requested_at")?,
            received_at: c.ts("recorded_at")?,
            batch: c.get::<Option<Uuid>>("batch_id")?.map(BatchId::from_uuid),
        })
    }

    /// The poll's readings of live detectors, in position order.
    fn expand(&self, layouts: &Layouts, out: &mut Vec<Reading>) -> Result<()> {
        let detectors = layouts.version(self.chamber, self.version)?;
        for (i, detector) in detectors.iter().enumerate() {
            let Some(detector) = detector.filter(|d| layouts.is_live(*d)) else {
                continue;
            };
            let value = self.value.get(i).copied().flatten();
            let code = self
                .corruption
                .as_ref()
                .and_then(|c| c.get(i).copied().flatten());
            if value.is_none() && code.is_none() {
                continue; // absent from this poll
            }
            out.push(Reading {
                detector_id: DetectorId::from_uuid(detector),
                chamber_id: ChamberId::from_uuid(self.chamber),
                slot: self.slot,
                value: rows::reading_value(value, code)?,
                requested_at: self.requested_at,
                received_at: self.received_at,
                batch_id: self.batch,
            });
        }
        Ok(())
    }
}

#[db_port("postgresql")]
#[async_trait]
impl ReadingRepository for PgStore {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport> {
        let total: usize = polls.iter().map(|p| p.readings.len()).sum();
        if total > MAX_READINGS_PER_WRITE {
            return Err(too_many(total));
        }
        if polls.is_empty() {
            return Ok(WriteReport::default());
        }
        for p in polls {
            if p.readings
                .iter()
                .any(|r| r.chamber_id != p.entry.poll.chamber_id || r.slot != p.entry.poll.slot)
            {
                return Err(StoreError::MissingParent {
                    entity: "reading",
                    parent: "detector",
                });
            }
            p.check_readings_share_the_entry()?;
        }
        let (ordered, mut repeats) = distinct_polls(polls);
        let (ordered, stored_before) = self.not_in_legacy_ledger(ordered).await?;
        repeats.extend(stored_before);
        self.with_partitions(polls.iter().map(|p| p.entry.poll.slot), || {
            self.try_store(&ordered, &repeats, total)
        })
        .await
    }

    async fn query(
        &self,
        org: OrganizationId,
        q: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>> {
        let scope = self.scope(org, q.scope).await?;
        let layouts = Layouts::of(&self.pool, &scope.chambers).await?;
        let readings = match (scope.detector, scope.chambers.first()) {
            (Some(detector), Some(&chamber)) => {
                self.query_detector(chamber, detector, &layouts, q).await?
            }
            _ => self.query_chambers(&scope, &layouts, q).await?,
        };
        let cursor = |r: &Reading| ReadingCursor {
            slot: r.slot,
            detector_id: r.detector_id,
        };
        Ok(Page::from_sorted(readings, q.page.size, cursor))
    }

    async fn aggregate(&self, org: OrganizationId, q: &AggregateQuery) -> Result<Vec<Aggregate>> {
        let scope = self.scope(org, q.scope).await?;
        let layouts = Layouts::of(&self.pool, &scope.chambers).await?;
        // Per (chamber, layout version, bucket) in SQL, along the key; positions become
        // detectors here, and a detector's groups of several versions are merged. The rows are
        // read in a subquery that SQL may not flatten (`OFFSET 0`), so only the bucket and the
        // values wanted reach the grouping: grouped by the bucket alone, the planner hashes a
        // few groups instead of sorting every row (with the whole array) on disk.
        let bucket = "date_bin(make_interval(secs => $4::float8 / 1000), slot, timestamptz '1970-01-01 00:00:00+00') AS bucket";
        let mut sums = Sums::default();
        if let (Some(detector), Some(&chamber)) = (scope.detector, scope.chambers.first()) {
            // A detector: its one position in each layout version (usually one), read along
            // the chamber's key.
            let (versions, positions) = layouts.positions_of(chamber, detector);
            for (&version, &position) in versions.iter().zip(&positions) {
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT bucket, min(v) AS low, max(v) AS high, sum(v) AS total, count(v) AS n \
                     FROM (SELECT {bucket}, value[$7] AS v FROM polls \
                           WHERE chamber_id = $1 AND slot >= $2 AND slot < $3 AND layout_version = $6 \
                           AND ($5::uuid IS NULL OR batch_id = $5) OFFSET 0) p \
                     WHERE v IS NOT NULL GROUP BY bucket"
                )))
                .bind(chamber)
                .bind(ts(q.from))
                .bind(ts(q.to))
                .bind(q.bucket_millis.max(1))
                .bind(scope.batch)
                .bind(version)
                .bind(position)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
                for row in &rows {
                    sums.add(Some(detector), row, 1)?;
                }
            }
        } else {
            // Chambers: every position of every poll, a few dozen positions per scan, each
            // position four aggregate columns (unnesting the arrays instead made a row per
            // value to group: 2 to 3 times slower).
            let widest = layouts.widest();
            for first in (1..=widest).step_by(POSITIONS_PER_SCAN) {
                let last = (first + POSITIONS_PER_SCAN - 1).min(widest);
                let values = (first..=last)
                    .map(|i| format!("value[{i}] AS v{i}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let aggregates = (first..=last)
                    .map(|i| format!("min(v{i}), max(v{i}), sum(v{i}), count(v{i})"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT p.chamber_id, p.layout_version, p.bucket, {aggregates} \
                     FROM UNNEST($1::uuid[]) AS c(id) CROSS JOIN LATERAL ( \
                        SELECT chamber_id, layout_version, {bucket}, {values} FROM polls \
                        WHERE chamber_id = c.id AND slot >= $2 AND slot < $3 AND layout_version IS NOT NULL \
                        AND ($5::uuid IS NULL OR batch_id = $5) OFFSET 0) p \
                     GROUP BY 1, 2, 3"
                )))
                .bind(&scope.chambers)
                .bind(ts(q.from))
                .bind(ts(q.to))
                .bind(q.bucket_millis.max(1))
                .bind(scope.batch)
                .fetch_all(&self.pool)
                .await
                .map_err(store_error)?;
                for row in &rows {
                    let c = rows::Cols {
                        row,
                        table: "polls",
                    };
                    let (chamber, version) =
                        (c.uuid("chamber_id")?, c.get::<i32>("layout_version")?);
                    let detectors = layouts.version(chamber, version)?;
                    for (k, position) in (first..=last).enumerate() {
                        let detector = detectors
                            .get(position - 1)
                            .copied()
                            .flatten()
                            .filter(|d| layouts.is_live(*d));
                        sums.add(detector, row, 3 + 4 * k)?;
                    }
                }
            }
        }
        Ok(sums.into_aggregates())
    }

    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>> {
        let ids: Vec<Uuid> = chambers.iter().map(|c| *c.as_uuid()).collect();
        // Plain joins (hash joins over 10,000 chambers): forcing key lookups per row made the
        // estimated cost high enough to set off PostgreSQL's JIT compilation, which alone took
        // longer than the query. Not a prepared statement: planned for the ids it is given
        // (hash joins for thousands, key lookups for a few), where the plan cached for a
        // prepared statement assumed ten ids and looked 10,000 up one by one, three times.
        let rows = sqlx::query(
            "SELECT l.chamber_id, l.slot, l.layout_version, l.value, l.corruption, l.requested_at, \
                    l.received_at AS recorded_at, l.batch_id, c.layout_version AS current_version, \
                    v.detectors AS layout \
             FROM chamber_latest l JOIN chambers c ON c.id = l.chamber_id \
             JOIN detector_layouts v ON v.chamber_id = l.chamber_id AND v.version = l.layout_version \
             WHERE c.organization_id = $1 AND l.chamber_id = ANY($2)",
        )
        .persistent(false)
        .bind(org.as_uuid())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut latest = Vec::with_capacity(rows.len());
        for row in &rows {
            let c = rows::Cols {
                row,
                table: "chamber_latest",
            };
            let layout: Vec<Option<Uuid>> = c.get("layout")?;
            let current = c.get::<i32>("current_version")?;
            latest.push((PollRow::decode(row)?, layout, current));
        }
        // A row laid out before the chamber's current layout may name deleted detectors: the
        // current layouts of those chambers (rare) tell which are live.
        let outdated: Vec<Uuid> = latest
            .iter()
            .filter(|(poll, _, current)| poll.version != *current)
            .map(|(poll, ..)| poll.chamber)
            .collect();
        let live = if outdated.is_empty() {
            None
        } else {
            Some(Layouts::of(&self.pool, &outdated).await?)
        };
        let mut by_chamber = HashMap::with_capacity(latest.len());
        for (poll, layout, current) in latest {
            let mut readings = Vec::with_capacity(layout.len());
            for (i, detector) in layout.iter().enumerate() {
                let Some(detector) = detector.filter(|d| {
                    poll.version == current || live.as_ref().is_some_and(|l| l.is_live(*d))
                }) else {
                    continue;
                };
                let value = poll.value.get(i).copied().flatten();
                let code = poll
                    .corruption
                    .as_ref()
                    .and_then(|c| c.get(i).copied().flatten());
                if value.is_none() && code.is_none() {
                    continue;
                }
                readings.push(Reading {
                    detector_id: DetectorId::from_uuid(detector),
                    chamber_id: ChamberId::from_uuid(poll.chamber),
                    slot: poll.slot,
                    value: rows::reading_value(value, code)?,
                    requested_at: poll.requested_at,
                    received_at: poll.received_at,
                    batch_id: poll.batch,
                });
            }
            readings.sort_by_key(|r| r.detector_id);
            let chamber_id = ChamberId::from_uuid(poll.chamber);
            by_chamber.insert(
                chamber_id,
                LatestReadings {
                    chamber_id,
                    slot: poll.slot,
                    readings,
                },
            );
        }
        Ok(chambers
            .iter()
            .filter_map(|c| by_chamber.remove(c))
            .collect())
    }

    async fn prune_before(&self, cutoff: Timestamp) -> Result<()> {
        let cutoff_day = partitions::day_of(cutoff);
        let dropped = partitions::drop_before(&self.pool, cutoff_day).await?;
        sqlx::query("DELETE FROM chamber_latest WHERE slot < $1")
            .bind(ts(partitions::day_start(cutoff_day)))
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if !dropped.is_empty() {
            tracing::info!(partitions = ?dropped, "retention dropped partitions");
        }
        Ok(())
    }
}

#[db_port("postgresql")]
#[async_trait]
impl PollLedgerRepository for PgStore {
    async fn record(&self, entries: &[LedgerEntry]) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let records: Vec<PollRecord> = entries
            .iter()
            .map(|e| PollRecord {
                entry: e.clone(),
                readings: Vec::new(),
            })
            .collect();
        let (ordered, _) = distinct_polls(&records);
        let (ordered, _) = self.not_in_legacy_ledger(ordered).await?;
        let write = || async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            let (new, _) = self.write_polls(&mut tx, &ordered).await?;
            tx.commit().await.map_err(store_error)?;
            Ok(new.len() as u64)
        };
        self.with_partitions(entries.iter().map(|e| e.poll.slot), write)
            .await
    }

    async fn list(
        &self,
        org: OrganizationId,
        q: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>> {
        if !self
            .exists(
                "SELECT 1 FROM chambers WHERE organization_id = $1 AND id = $2",
                *org.as_uuid(),
                *q.chamber_id.as_uuid(),
            )
            .await?
        {
            return Err(not_found("chamber"));
        }
        self.read_page(
sqlx::query(AssertSqlSafe(format!(
            "SELECT {} FROM polls WHERE chamber_id = $1 AND slot >= $2 AND slot < $3 \
             AND (NOT $4 OR outcome <> 'ok') AND ($5::timestamptz IS NULL OR slot > $5) ORDER BY slot LIMIT $6",
            rows::LEDGER_COLUMNS
        )))
        .bind(q.chamber_id.as_uuid())
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.failures_only)
        .bind(q.page.after.map(ts))
        .bind(limit(&q.page)),
rows::ledger_entry,
q.page.size,
|e| e.poll.slot,
)
.await
    }

    async fn tally(&self, org: OrganizationId, q: &TallyQuery) -> Result<Vec<LedgerTally>> {
        if !self
            .exists(
                "SELECT 1 FROM chambers WHERE organization_id = $1 AND id = $2",
                *org.as_uuid(),
                *q.chamber_id.as_uuid(),
            )
            .await?
        {
            return Err(not_found("chamber"));
        }
        // Along the key (chamber, slot), in buckets starting at `from`, counted by outcome: a
        // few groups hashed (the outcome's category decided by the domain, not per row in SQL).
        let rows = sqlx::query(
            "SELECT bucket, outcome, count(*) AS n \
             FROM (SELECT date_bin(make_interval(secs => $4::float8 / 1000), slot, $2) AS bucket, outcome \
                   FROM polls WHERE chamber_id = $1 AND slot >= $2 AND slot < $3 OFFSET 0) p \
             GROUP BY 1, 2",
        )
        .bind(q.chamber_id.as_uuid())
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.bucket_millis.max(1))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut tallies: BTreeMap<Timestamp, LedgerTally> = BTreeMap::new();
        for row in &rows {
            let c = rows::Cols {
                row,
                table: "polls",
            };
            let bucket_start = c.ts("bucket")?;
            let n = u64::try_from(c.get::<i64>("n")?).map_err(|e| corrupt("polls", "n", e))?;
            tallies
                .entry(bucket_start)
                .or_insert_with(|| LedgerTally::empty(bucket_start))
                .count(c.get::<&str>("outcome")?, n);
        }
        Ok(tallies.into_values().collect())
    }
}
