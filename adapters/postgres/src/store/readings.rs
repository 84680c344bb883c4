//! [`ReadingRepository`] and [`PollLedgerRepository`] on PostgreSQL: a poll's ledger entry
//! and readings in one transaction (`UNNEST` inserts into day partitions, created on demand),
//! the latest values kept per chamber, range queries, aggregates and tallies.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::Timestamp;
use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    ChamberId, DetectorId, LedgerEntry, OrganizationId, Page, PollId, Reading,
};
use chamberlain_domain::ports::{
    Aggregate, AggregateQuery, LatestReadings, LedgerQuery, LedgerTally, PollLedgerRepository,
    PollRecord, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope, StoreError,
    TallyQuery, WriteReport,
};
use sqlx::{AssertSqlSafe, Postgres, Row, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{decode_all, limit, not_found};
use crate::PgStore;
use crate::errors::{corrupt, is_missing_partition, is_retryable_conflict, store_error};
use crate::store::rows::{self, millis, ts};
use crate::{encoding, partitions};

type Result<T> = std::result::Result<T, StoreError>;

impl PgStore {
    /// The detectors of a reading scope within `org` (an unknown or foreign scope is "not
    /// found"), and the batch to filter on for a batch scope.
    async fn scope_detectors(
        &self,
        org: OrganizationId,
        scope: ReadingScope,
    ) -> Result<(Vec<Uuid>, Option<Uuid>)> {
        let (scope_sql, entity, id, batch) = match scope {
            ReadingScope::Detector(id) => (
                "SELECT d.id FROM detectors d WHERE d.organization_id = $1 AND d.id = $2",
                "detector",
                *id.as_uuid(),
                None,
            ),
            ReadingScope::Chamber(id) => (
                "SELECT c.id AS owner, d.id FROM chambers c LEFT JOIN detectors d ON d.chamber_id = c.id \
                 WHERE c.organization_id = $1 AND c.id = $2",
                "chamber",
                *id.as_uuid(),
                None,
            ),
            ReadingScope::Batch(id) => (
                "SELECT b.id AS owner, d.id FROM batches b LEFT JOIN chambers c ON c.section_id = b.section_id \
                 LEFT JOIN detectors d ON d.chamber_id = c.id WHERE b.organization_id = $1 AND b.id = $2",
                "batch",
                *id.as_uuid(),
                Some(*id.as_uuid()),
            ),
        };
        let scope = sqlx::query(scope_sql)
            .bind(org.as_uuid())
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        if scope.is_empty() {
            return Err(not_found(entity));
        }
        let detectors = scope
            .iter()
            .filter_map(|r| r.try_get::<Option<Uuid>, _>("id").ok().flatten())
            .collect();
        Ok((detectors, batch))
    }
}

/// Readings as columns, to bind as arrays.
struct ReadingColumns {
    detector: Vec<Uuid>,
    chamber: Vec<Uuid>,
    slot: Vec<OffsetDateTime>,
    value: Vec<Option<f64>>,
    corruption: Vec<Option<i16>>,
    requested: Vec<OffsetDateTime>,
    received: Vec<OffsetDateTime>,
    batch: Vec<Option<Uuid>>,
}

impl ReadingColumns {
    fn of(readings: &[&Reading]) -> Self {
        let (value, corruption) = readings.iter().map(|r| rows::split_value(&r.value)).unzip();
        Self {
            detector: readings.iter().map(|r| *r.detector_id.as_uuid()).collect(),
            chamber: readings.iter().map(|r| *r.chamber_id.as_uuid()).collect(),
            slot: readings.iter().map(|r| ts(r.slot)).collect(),
            value,
            corruption,
            requested: readings.iter().map(|r| ts(r.requested_at)).collect(),
            received: readings.iter().map(|r| ts(r.received_at)).collect(),
            batch: readings
                .iter()
                .map(|r| r.batch_id.map(|b| *b.as_uuid()))
                .collect(),
        }
    }
}

#[derive(Default)]
struct LedgerColumns {
    chamber: Vec<Uuid>,
    slot: Vec<OffsetDateTime>,
    outcome: Vec<String>,
    detail: Vec<serde_json::Value>,
    attempt: Vec<i32>,
    requested: Vec<Option<OffsetDateTime>>,
    recorded: Vec<OffsetDateTime>,
    latency: Vec<Option<i64>>,
    lateness: Vec<i64>,
}

impl LedgerColumns {
    fn push(&mut self, e: &LedgerEntry) -> Result<()> {
        self.chamber.push(*e.poll.chamber_id.as_uuid());
        self.slot.push(ts(e.poll.slot));
        self.outcome.push(e.outcome.code().to_owned());
        self.detail.push(
            serde_json::to_value(&e.outcome)
                .map_err(|err| corrupt("poll_ledger", "detail", err))?,
        );
        self.attempt
            .push(i32::try_from(e.attempt).unwrap_or(i32::MAX));
        self.requested.push(e.requested_at.map(ts));
        self.recorded.push(ts(e.recorded_at));
        self.latency.push(e.latency.map(millis));
        self.lateness.push(millis(e.lateness));
        Ok(())
    }
}

/// Inserts ledger entries that are not stored yet; returns the polls that were new.
async fn insert_ledger(
    tx: &mut Transaction<'_, Postgres>,
    l: &LedgerColumns,
) -> std::result::Result<HashSet<(Uuid, OffsetDateTime)>, WriteFailure> {
    let rows = sqlx::query(
        "INSERT INTO poll_ledger (chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, lateness_ms) \
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::jsonb[], $5::int4[], $6::timestamptz[], \
                              $7::timestamptz[], $8::int8[], $9::int8[]) \
         ON CONFLICT (chamber_id, slot) DO NOTHING RETURNING chamber_id, slot",
    )
    .bind(&l.chamber)
    .bind(&l.slot)
    .bind(&l.outcome)
    .bind(&l.detail)
    .bind(&l.attempt)
    .bind(&l.requested)
    .bind(&l.recorded)
    .bind(&l.latency)
    .bind(&l.lateness)
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

enum WriteFailure {
    MissingPartition,
    /// A deadlock or serialization conflict aborted the transaction: run it again.
    Conflict,
    Store(StoreError),
}

impl From<StoreError> for WriteFailure {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl PgStore {
    /// Checks that every chamber exists and every reading's detector is its chamber's.
    /// Checks, in one query, that every chamber exists and every reading's detector is one of
    /// its chamber's.
    async fn check_parents(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        chambers: &[Uuid],
        readings: &[&Reading],
    ) -> Result<()> {
        let distinct: BTreeSet<Uuid> = chambers.iter().copied().collect();
        let distinct: Vec<Uuid> = distinct.into_iter().collect();
        let rows = sqlx::query(
            "SELECT c.id AS chamber_id, array_remove(array_agg(d.id), NULL) AS detectors \
             FROM chambers c LEFT JOIN detectors d ON d.chamber_id = c.id \
             WHERE c.id = ANY($1) GROUP BY c.id",
        )
        .bind(&distinct)
        .fetch_all(&mut **tx)
        .await
        .map_err(store_error)?;
        if rows.len() != distinct.len() {
            return Err(StoreError::MissingParent {
                entity: "poll",
                parent: "chamber",
            });
        }
        let mut detectors_of: HashMap<Uuid, HashSet<Uuid>> = HashMap::with_capacity(rows.len());
        for row in &rows {
            let chamber: Uuid = row.try_get("chamber_id").map_err(store_error)?;
            let detectors: Vec<Uuid> = row.try_get("detectors").map_err(store_error)?;
            detectors_of.insert(chamber, detectors.into_iter().collect());
        }
        let known = |r: &&Reading| {
            detectors_of
                .get(r.chamber_id.as_uuid())
                .is_some_and(|ds| ds.contains(r.detector_id.as_uuid()))
        };
        if !readings.iter().all(known) {
            return Err(StoreError::MissingParent {
                entity: "reading",
                parent: "detector",
            });
        }
        Ok(())
    }

    async fn try_store(
        &self,
        ordered: &[&PollRecord],
        all_readings: &[&Reading],
        l: &LedgerColumns,
    ) -> std::result::Result<WriteReport, WriteFailure> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        self.check_parents(&mut tx, &l.chamber, all_readings)
            .await?;
        // The ledger decides: only polls whose entry is new here write their readings, so the
        // readings insert can never conflict (a concurrent writer of the same poll waits on the
        // ledger's key and then finds it taken).
        let new_polls = insert_ledger(&mut tx, l).await?;
        let is_new = |p: &PollId| new_polls.contains(&(*p.chamber_id.as_uuid(), ts(p.slot)));
        let fresh: Vec<&PollRecord> = ordered
            .iter()
            .copied()
            .filter(|p| is_new(&p.entry.poll))
            .collect();
        let mut readings: Vec<&Reading> = fresh.iter().flat_map(|p| &p.readings).collect();
        readings.sort_by_key(|r| (r.detector_id, r.slot));
        if !readings.is_empty() {
            // One Bind/Execute exchange with the columns as arrays. (A binary COPY is as cheap on
            // the server, but sqlx writes its CopyDone in a separate small packet that Nagle's
            // algorithm holds until the server's delayed ACK: ~40 ms per batch.)
            let r = ReadingColumns::of(&readings);
            sqlx::query(
                "INSERT INTO readings (detector_id, chamber_id, slot, value, corruption, requested_at, received_at, batch_id) \
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[], $4::float8[], $5::int2[], \
                                      $6::timestamptz[], $7::timestamptz[], $8::uuid[])",
            )
            .bind(&r.detector)
            .bind(&r.chamber)
            .bind(&r.slot)
            .bind(&r.value)
            .bind(&r.corruption)
            .bind(&r.requested)
            .bind(&r.received)
            .bind(&r.batch)
            .execute(&mut *tx)
            .await
            .map_err(store_error_keep_partition)?;
        }
        update_latest(&mut tx, &fresh).await?;
        tx.commit().await.map_err(store_error)?;
        let inserted = readings.len() as u64;
        let existing_polls: Vec<PollId> = ordered
            .iter()
            .map(|p| p.entry.poll)
            .filter(|p| !is_new(p))
            .collect();
        Ok(WriteReport {
            readings_new: inserted,
            readings_existing: all_readings.len() as u64 - inserted,
            ledger_new: new_polls.len() as u64,
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
}

/// Moves each chamber's latest row forward to the newest slot written (never backwards).
async fn update_latest(tx: &mut Transaction<'_, Postgres>, polls: &[&PollRecord]) -> Result<()> {
    // The newest poll with readings per chamber in this batch.
    let mut newest: HashMap<ChamberId, &PollRecord> = HashMap::new();
    for p in polls.iter().copied().filter(|p| !p.readings.is_empty()) {
        let e = newest.entry(p.entry.poll.chamber_id).or_insert(p);
        if p.entry.poll.slot > e.entry.poll.slot {
            *e = p;
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let mut newest: Vec<&PollRecord> = newest.into_values().collect();
    newest.sort_by_key(|p| p.entry.poll.chamber_id);
    let mut chamber = Vec::with_capacity(newest.len());
    let mut slot = Vec::with_capacity(newest.len());
    let mut packed = Vec::with_capacity(newest.len());
    for p in &newest {
        let mut readings: Vec<&Reading> = p.readings.iter().collect();
        readings.sort_by_key(|r| r.detector_id);
        chamber.push(*p.entry.poll.chamber_id.as_uuid());
        slot.push(ts(p.entry.poll.slot));
        packed.push(encoding::pack_latest(&readings));
    }
    sqlx::query(
        "INSERT INTO chamber_latest (chamber_id, slot, readings) \
         SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::bytea[]) \
         ON CONFLICT (chamber_id) DO UPDATE SET slot = EXCLUDED.slot, readings = EXCLUDED.readings \
         WHERE chamber_latest.slot < EXCLUDED.slot",
    )
    .bind(&chamber)
    .bind(&slot)
    .bind(&packed)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

#[db_port("postgresql")]
#[async_trait]
impl ReadingRepository for PgStore {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport> {
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
        if polls.is_empty() {
            return Ok(WriteReport::default());
        }
        // Rows go in key order, so concurrent writers touching the same keys (redeliveries, the
        // same chambers' latest rows) always lock them in the same order and never deadlock.
        let mut ordered: Vec<&PollRecord> = polls.iter().collect();
        ordered.sort_by_key(|p| p.entry.poll);
        let mut readings: Vec<&Reading> = Vec::with_capacity(total);
        let mut l = LedgerColumns::default();
        for p in &ordered {
            for reading in &p.readings {
                if reading.chamber_id != p.entry.poll.chamber_id
                    || reading.slot != p.entry.poll.slot
                {
                    return Err(StoreError::MissingParent {
                        entity: "reading",
                        parent: "detector",
                    });
                }
                readings.push(reading);
            }
            l.push(&p.entry)?;
        }
        self.with_partitions(polls.iter().map(|p| p.entry.poll.slot), || {
            self.try_store(&ordered, &readings, &l)
        })
        .await
    }

    async fn query(
        &self,
        org: OrganizationId,
        q: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>> {
        let (detectors, batch) = self.scope_detectors(org, q.scope).await?;
        // One key-range scan per detector, each in slot order and cut at the page size, then
        // merged into (slot, detector) order.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT r.* FROM UNNEST($1::uuid[]) AS d(id) CROSS JOIN LATERAL ( \
                SELECT {cols} FROM readings WHERE detector_id = d.id AND slot >= $2 AND slot < $3 \
                AND ($4::timestamptz IS NULL OR (slot, detector_id) > ($4, $5)) \
                AND ($7::uuid IS NULL OR batch_id = $7) \
                ORDER BY slot LIMIT $6) r \
             ORDER BY r.slot, r.detector_id LIMIT $6",
            cols = rows::READING_COLUMNS
        )))
        .bind(&detectors)
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.page.after.map(|c| ts(c.slot)))
        .bind(q.page.after.map(|c| *c.detector_id.as_uuid()))
        .bind(limit(&q.page))
        .bind(batch)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let cursor = |r: &Reading| ReadingCursor {
            slot: r.slot,
            detector_id: r.detector_id,
        };
        Ok(Page::from_sorted(
            decode_all(&rows, rows::reading)?,
            q.page.size,
            cursor,
        ))
    }

    async fn aggregate(&self, org: OrganizationId, q: &AggregateQuery) -> Result<Vec<Aggregate>> {
        let (detectors, batch) = self.scope_detectors(org, q.scope).await?;
        // One key-range scan per detector (the key holds the rows in slot order), summed up in
        // epoch-aligned buckets by `date_bin`.
        let rows = sqlx::query(
            "SELECT d.id AS detector_id, a.bucket, a.low, a.high, a.total, a.n \
             FROM UNNEST($1::uuid[]) AS d(id) CROSS JOIN LATERAL ( \
                SELECT date_bin(make_interval(secs => $4::float8 / 1000), slot, \
                         timestamptz '1970-01-01 00:00:00+00') AS bucket, \
                       min(value) AS low, max(value) AS high, sum(value) AS total, \
                       count(value) AS n \
                FROM readings WHERE detector_id = d.id AND slot >= $2 AND slot < $3 \
                AND value IS NOT NULL AND ($5::uuid IS NULL OR batch_id = $5) \
                GROUP BY 1) a \
             ORDER BY d.id, a.bucket",
        )
        .bind(&detectors)
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.bucket_millis.max(1))
        .bind(batch)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let c = rows::Cols {
                    row,
                    table: "readings",
                };
                let count =
                    u64::try_from(c.get::<i64>("n")?).map_err(|e| corrupt("readings", "n", e))?;
                #[allow(clippy::cast_precision_loss, reason = "a mean")]
                Ok(Aggregate {
                    detector_id: DetectorId::from_uuid(c.uuid("detector_id")?),
                    bucket_start: c.ts("bucket")?,
                    min: c.get("low")?,
                    max: c.get("high")?,
                    mean: c.get::<f64>("total")? / count as f64,
                    count,
                })
            })
            .collect()
    }

    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>> {
        let ids: Vec<Uuid> = chambers.iter().map(|c| *c.as_uuid()).collect();
        let rows = sqlx::query(
            "SELECT l.chamber_id, l.slot, l.readings FROM chamber_latest l JOIN chambers c ON c.id = l.chamber_id \
             WHERE c.organization_id = $1 AND l.chamber_id = ANY($2)",
        )
        .bind(org.as_uuid())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        let mut by_chamber = HashMap::with_capacity(rows.len());
        for row in &rows {
            let c = rows::Cols {
                row,
                table: "chamber_latest",
            };
            let chamber_id = ChamberId::from_uuid(c.uuid("chamber_id")?);
            let slot = c.ts("slot")?;
            let packed: Vec<u8> = c.get("readings")?;
            let readings = encoding::unpack_latest(chamber_id, slot, &packed)?;
            by_chamber.insert(
                chamber_id,
                LatestReadings {
                    chamber_id,
                    slot,
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
        let mut l = LedgerColumns::default();
        for e in entries {
            l.push(e)?;
        }
        let write = || async {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            self.check_parents(&mut tx, &l.chamber, &[]).await?;
            let new = insert_ledger(&mut tx, &l).await?;
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
            "SELECT {} FROM poll_ledger WHERE chamber_id = $1 AND slot >= $2 AND slot < $3 \
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
        // Along the key (chamber, slot), in buckets starting at `from`.
        let rows = sqlx::query(
            "SELECT date_bin(make_interval(secs => $4::float8 / 1000), slot, $2) AS bucket, \
               count(*) FILTER (WHERE outcome IN ('ok', 'corrupted_values')) AS read, \
               count(*) FILTER (WHERE outcome IN ('missed', 'expired', 'cancelled')) AS missed, \
               count(*) AS n \
             FROM poll_ledger WHERE chamber_id = $1 AND slot >= $2 AND slot < $3 \
             GROUP BY 1 ORDER BY 1",
        )
        .bind(q.chamber_id.as_uuid())
        .bind(ts(q.from))
        .bind(ts(q.to))
        .bind(q.bucket_millis.max(1))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let c = rows::Cols {
                    row,
                    table: "poll_ledger",
                };
                let count = |column| {
                    u64::try_from(c.get::<i64>(column)?)
                        .map_err(|e| corrupt("poll_ledger", column, e))
                };
                let (read, missed, all) = (count("read")?, count("missed")?, count("n")?);
                Ok(LedgerTally {
                    bucket_start: c.ts("bucket")?,
                    read,
                    failed: all - read - missed,
                    missed,
                })
            })
            .collect()
    }
}
