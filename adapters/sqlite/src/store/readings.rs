//! [`ReadingRepository`] and [`PollLedgerRepository`] of [`SqliteStore`]: a poll's ledger
//! entry and readings in one write, multi-row inserts on the hot path, range queries, latest,
//! aggregates and tallies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::error::Rule;
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    ChamberId, DetectorId, LedgerEntry, OrganizationId, Page, PollId, Reading, ReadingValue,
};
use chamberlain_domain::ports::{
    Aggregate, AggregateQuery, LatestReadings, LedgerQuery, LedgerTally, PollLedgerRepository,
    PollRecord, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope, StoreError,
    TallyQuery, WriteReport,
};
use chamberlain_domain::time::Timestamp;
use sqlx::{AssertSqlSafe, SqliteConnection};
use uuid::Uuid;

use super::rows::{Cols, decode_all, ledger_entry, reading};
use super::{
    PRUNE_STEP, SqlQuery, SqliteStore, chamber_in, end_read, exists, finite, id_list, limit,
    millis_of, missing_parent, not_found,
};
use crate::errors::{Write, child, db, refused, writing};

// ------------------------------------------------------------------------------------------
// Multi-row inserts for the hot path: a batch is cut greedily into chunks of CHUNK_SIZES rows,
// so that the writer prepares (and caches) at most three statements per table and a batch
// of 10,000 readings is about forty statements.
// ------------------------------------------------------------------------------------------

const CHUNK_SIZES: [usize; 3] = [256, 16, 1];

struct MultiInsert {
    sql: [Arc<str>; 3],
}

impl MultiInsert {
    fn new(head: &str, columns: usize, tail: &str) -> Self {
        let row = format!("({})", vec!["?"; columns].join(", "));
        Self {
            sql: CHUNK_SIZES
                .map(|n| format!("{head} {}{tail}", vec![row.as_str(); n].join(", ")).into()),
        }
    }

    /// The statement for the next chunk of `remaining` rows, and its size.
    fn next(&self, remaining: usize) -> (SqlQuery<'static>, usize) {
        let (i, n) = CHUNK_SIZES
            .iter()
            .enumerate()
            .find(|(_, n)| **n <= remaining)
            .map_or((CHUNK_SIZES.len() - 1, 1), |(i, n)| (i, *n));
        (sqlx::query(AssertSqlSafe(Arc::clone(&self.sql[i]))), n)
    }
}

static INSERT_READINGS: LazyLock<MultiInsert> = LazyLock::new(|| {
    MultiInsert::new(
        concat!("INSERT INTO readings (", reading_columns!(), ") VALUES"),
        8,
        " ON CONFLICT DO NOTHING",
    )
});

static INSERT_LEDGER: LazyLock<MultiInsert> = LazyLock::new(|| {
    MultiInsert::new(
        concat!("INSERT INTO poll_ledger (", ledger_columns!(), ") VALUES"),
        9,
        " ON CONFLICT DO NOTHING RETURNING chamber_id, slot",
    )
});

/// A ledger entry encoded for its row.
struct LedgerRow {
    chamber_id: Uuid,
    slot: i64,
    outcome: &'static str,
    detail: String,
    attempt: i64,
    requested_at: Option<i64>,
    recorded_at: i64,
    latency_ms: Option<i64>,
    lateness_ms: i64,
}

impl LedgerRow {
    fn new(e: &LedgerEntry) -> Result<Self, StoreError> {
        Ok(Self {
            chamber_id: *e.poll.chamber_id.as_uuid(),
            slot: e.poll.slot.as_unix_millis(),
            outcome: e.outcome.code(),
            detail: serde_json::to_string(&e.outcome).map_err(|err| {
                refused(
                    "ledger.outcome",
                    Rule::Format(format!("not serialisable: {err}")),
                )
            })?,
            attempt: i64::from(e.attempt),
            requested_at: e.requested_at.map(Timestamp::as_unix_millis),
            recorded_at: e.recorded_at.as_unix_millis(),
            latency_ms: e
                .latency
                .map(|d| millis_of("ledger.latency", d))
                .transpose()?,
            lateness_ms: millis_of("ledger.lateness", e.lateness)?,
        })
    }
}

/// Inserts the entries not stored yet; returns the keys of those inserted.
async fn insert_ledger(
    conn: &mut SqliteConnection,
    rows: &[LedgerRow],
) -> Result<HashSet<(Uuid, i64)>, StoreError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        let (mut query, n) = INSERT_LEDGER.next(rest.len());
        let (chunk, tail) = rest.split_at(n);
        for r in chunk {
            query = query
                .bind(r.chamber_id)
                .bind(r.slot)
                .bind(r.outcome)
                .bind(r.detail.as_str())
                .bind(r.attempt)
                .bind(r.requested_at)
                .bind(r.recorded_at)
                .bind(r.latency_ms)
                .bind(r.lateness_ms);
        }
        let returned = query
            .fetch_all(&mut *conn)
            .await
            .map_err(writing(child("poll", "chamber")))?;
        for row in &returned {
            let c = Cols::new(row, "poll_ledger");
            inserted.insert((c.uuid("chamber_id")?, c.get::<i64>("slot")?));
        }
        rest = tail;
    }
    Ok(inserted)
}

/// Inserts the readings not stored yet; returns how many were inserted.
async fn insert_readings(
    conn: &mut SqliteConnection,
    readings: &[&Reading],
) -> Result<u64, StoreError> {
    let mut inserted = 0;
    let mut rest = readings;
    while !rest.is_empty() {
        let (mut query, n) = INSERT_READINGS.next(rest.len());
        let (chunk, tail) = rest.split_at(n);
        for r in chunk {
            let (value, corruption) = match r.value {
                ReadingValue::Measured(v) => (Some(finite("reading.value", v.get())?), None),
                ReadingValue::Corrupted(reason) => (None, Some(reason.code())),
            };
            query = query
                .bind(*r.detector_id.as_uuid())
                .bind(*r.chamber_id.as_uuid())
                .bind(r.slot.as_unix_millis())
                .bind(value)
                .bind(corruption)
                .bind(r.requested_at.as_unix_millis())
                .bind(r.received_at.as_unix_millis())
                .bind(r.batch_id.map(|b| *b.as_uuid()));
        }
        inserted += query
            .execute(&mut *conn)
            .await
            .map_err(writing(child("reading", "detector")))?
            .rows_affected();
        rest = tail;
    }
    Ok(inserted)
}

/// The detectors of each of `chambers` that exists (a chamber without detectors maps to an
/// empty set; an unknown chamber is absent).
async fn detectors_of(
    conn: &mut SqliteConnection,
    chambers: &HashSet<ChamberId>,
) -> Result<HashMap<ChamberId, HashSet<DetectorId>>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.id AS chamber_id, d.id AS detector_id FROM chambers AS c \
         LEFT JOIN detectors AS d ON d.chamber_id = c.id \
         WHERE c.id IN (SELECT unhex(value) FROM json_each(?1))",
    )
    .bind(id_list(chambers.iter().map(ChamberId::as_uuid)))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut known: HashMap<ChamberId, HashSet<DetectorId>> = HashMap::new();
    for row in &rows {
        let c = Cols::new(row, "detectors");
        let detectors = known
            .entry(ChamberId::from_uuid(c.uuid("chamber_id")?))
            .or_default();
        if let Some(id) = c.get::<Option<Uuid>>("detector_id")? {
            detectors.insert(DetectorId::from_uuid(id));
        }
    }
    Ok(known)
}

async fn store_polls(
    conn: &mut SqliteConnection,
    polls: &[PollRecord],
    ledger_rows: &[LedgerRow],
) -> Result<WriteReport, StoreError> {
    // Parents first, in the order of the input: one bad row refuses the whole batch.
    let chambers: HashSet<ChamberId> = polls.iter().map(|p| p.entry.poll.chamber_id).collect();
    let known = detectors_of(conn, &chambers).await?;
    for p in polls {
        let PollId { chamber_id, slot } = p.entry.poll;
        let Some(detectors) = known.get(&chamber_id) else {
            return Err(missing_parent("poll", "chamber"));
        };
        let of_this_poll = |r: &Reading| {
            r.chamber_id == chamber_id && r.slot == slot && detectors.contains(&r.detector_id)
        };
        if !p.readings.iter().all(of_this_poll) {
            return Err(missing_parent("reading", "detector"));
        }
    }

    // The ledger entry decides: only the readings of polls whose entry is new are written.
    let mut report = WriteReport::default();
    let mut inserted = insert_ledger(conn, ledger_rows).await?;
    let mut readings: Vec<&Reading> = Vec::new();
    for p in polls {
        let key = (
            *p.entry.poll.chamber_id.as_uuid(),
            p.entry.poll.slot.as_unix_millis(),
        );
        // A poll twice in one batch: the first is new, the second existing.
        if inserted.remove(&key) {
            report.ledger_new += 1;
            readings.extend(&p.readings);
        } else {
            report.ledger_existing += 1;
            report.readings_existing += p.readings.len() as u64;
            report.existing_polls.push(p.entry.poll);
        }
    }
    // In key order, chamber by chamber: consecutive rows land on the same pages of the primary
    // key and of the chamber index (a stable sort: of two rows with one key, the first wins).
    readings.sort_by_key(|r| (r.chamber_id, r.detector_id, r.slot));
    let new = insert_readings(conn, &readings).await?;
    report.readings_new = new;
    report.readings_existing += readings.len() as u64 - new;
    Ok(report)
}

/// The first page of readings after `cursor` within `[from, to)` of one scope.
async fn query_readings(
    conn: &mut SqliteConnection,
    q: &ReadingQuery,
) -> Result<Vec<Reading>, StoreError> {
    let (from, to) = (q.from.as_unix_millis(), q.to.as_unix_millis());
    let limit = limit(q.page.size);
    // The cursor matters only when it lies inside the range; before it, every row of the range
    // is after the cursor.
    let cursor = q.page.after.filter(|c| c.slot >= q.from);
    let query = match (q.scope, cursor) {
        (ReadingScope::Detector(id), cursor) => {
            // One detector: (slot, detector) order is slot order, and the cursor a lower bound.
            let from = match cursor {
                None => from,
                Some(c) if id > c.detector_id => c.slot.as_unix_millis(),
                Some(c) => c.slot.as_unix_millis().saturating_add(1),
            };
            sqlx::query(concat!(
                "SELECT ",
                reading_columns!(),
                " FROM readings WHERE detector_id = ?1 AND slot >= ?2 AND slot < ?3 \
                  ORDER BY slot LIMIT ?4"
            ))
            .bind(*id.as_uuid())
            .bind(from)
            .bind(to)
            .bind(limit)
        }
        (ReadingScope::Chamber(id), None) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE chamber_id = ?1 AND slot >= ?2 AND slot < ?3 \
              ORDER BY slot, detector_id LIMIT ?4"
        ))
        .bind(*id.as_uuid())
        .bind(from)
        .bind(to)
        .bind(limit),
        (ReadingScope::Chamber(id), Some(c)) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE chamber_id = ?1 AND (slot, detector_id) > (?2, ?3) \
              AND slot < ?4 ORDER BY slot, detector_id LIMIT ?5"
        ))
        .bind(*id.as_uuid())
        .bind(c.slot.as_unix_millis())
        .bind(*c.detector_id.as_uuid())
        .bind(to)
        .bind(limit),
        (ReadingScope::Batch(id), None) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE batch_id = ?1 AND slot >= ?2 AND slot < ?3 \
              ORDER BY slot, detector_id LIMIT ?4"
        ))
        .bind(*id.as_uuid())
        .bind(from)
        .bind(to)
        .bind(limit),
        (ReadingScope::Batch(id), Some(c)) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE batch_id = ?1 AND (slot, detector_id) > (?2, ?3) \
              AND slot < ?4 ORDER BY slot, detector_id LIMIT ?5"
        ))
        .bind(*id.as_uuid())
        .bind(c.slot.as_unix_millis())
        .bind(*c.detector_id.as_uuid())
        .bind(to)
        .bind(limit),
    };
    let rows = query.fetch_all(&mut *conn).await.map_err(db)?;
    decode_all(&rows, reading)
}

async fn scoped_query(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &ReadingQuery,
) -> Result<Vec<Reading>, StoreError> {
    check_scope(conn, org, q.scope).await?;
    query_readings(conn, q).await
}

/// The scope is the organization's, or `NotFound` naming it.
async fn check_scope(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    scope: ReadingScope,
) -> Result<(), StoreError> {
    let (check, entity) = match scope {
        ReadingScope::Detector(id) => (
            sqlx::query("SELECT 1 FROM detectors WHERE id = ?1 AND organization_id = ?2")
                .bind(*id.as_uuid()),
            "detector",
        ),
        ReadingScope::Chamber(id) => (
            sqlx::query("SELECT 1 FROM chambers WHERE id = ?1 AND organization_id = ?2")
                .bind(*id.as_uuid()),
            "chamber",
        ),
        ReadingScope::Batch(id) => (
            sqlx::query("SELECT 1 FROM batches WHERE id = ?1 AND organization_id = ?2")
                .bind(*id.as_uuid()),
            "batch",
        ),
    };
    if exists(conn, check.bind(*org.as_uuid())).await? {
        Ok(())
    } else {
        Err(not_found(entity))
    }
}

/// Measured values per detector and epoch-aligned bucket, summed up by SQLite. A chamber's
/// detectors are read through the primary key (detector, slot), whose rows hold the values, so
/// no row is looked up twice; `slot - slot % w` is the bucket (slots are after the epoch).
async fn aggregate_readings(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &AggregateQuery,
) -> Result<Vec<Aggregate>, StoreError> {
    check_scope(conn, org, q.scope).await?;
    macro_rules! aggregate_sql {
        ($scope:literal) => {
            concat!(
                "SELECT detector_id, slot - slot % ?4 AS bucket, min(value) AS low, \
                   max(value) AS high, total(value) AS sum, count(value) AS n \
                 FROM readings WHERE ",
                $scope,
                " AND slot >= ?2 AND slot < ?3 AND value IS NOT NULL \
                 GROUP BY detector_id, bucket ORDER BY detector_id, bucket"
            )
        };
    }
    let (sql, id) = match q.scope {
        ReadingScope::Detector(id) => (aggregate_sql!("detector_id = ?1"), *id.as_uuid()),
        ReadingScope::Chamber(id) => (
            aggregate_sql!("detector_id IN (SELECT id FROM detectors WHERE chamber_id = ?1)"),
            *id.as_uuid(),
        ),
        ReadingScope::Batch(id) => (aggregate_sql!("batch_id = ?1"), *id.as_uuid()),
    };
    let rows = sqlx::query(sql)
        .bind(id)
        .bind(q.from.as_unix_millis())
        .bind(q.to.as_unix_millis())
        .bind(q.bucket_millis.max(1))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let c = Cols::new(row, "readings");
            let count: u64 = c.count("n")?;
            let sum: f64 = c.get("sum")?;
            #[allow(clippy::cast_precision_loss, reason = "a mean")]
            Ok(Aggregate {
                detector_id: DetectorId::from_uuid(c.uuid("detector_id")?),
                bucket_start: c.at("bucket")?,
                min: c.get("low")?,
                max: c.get("high")?,
                mean: sum / count as f64,
                count,
            })
        })
        .collect()
}

/// A chamber's ledger counted per bucket from `from` by SQLite, along the primary key
/// (chamber, slot).
async fn tally_ledger(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &TallyQuery,
) -> Result<Vec<LedgerTally>, StoreError> {
    check_scope(conn, org, ReadingScope::Chamber(q.chamber_id)).await?;
    let rows = sqlx::query(
        "SELECT ?2 + ((slot - ?2) / ?4) * ?4 AS bucket, \
           sum(outcome IN ('ok', 'corrupted_values')) AS read, \
           sum(outcome IN ('missed', 'expired', 'cancelled')) AS missed, \
           count(*) AS n \
         FROM poll_ledger WHERE chamber_id = ?1 AND slot >= ?2 AND slot < ?3 \
         GROUP BY bucket ORDER BY bucket",
    )
    .bind(*q.chamber_id.as_uuid())
    .bind(q.from.as_unix_millis())
    .bind(q.to.as_unix_millis())
    .bind(q.bucket_millis.max(1))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|row| {
            let c = Cols::new(row, "poll_ledger");
            let (read, missed, all): (u64, u64, u64) =
                (c.count("read")?, c.count("missed")?, c.count("n")?);
            Ok(LedgerTally {
                bucket_start: c.at("bucket")?,
                read,
                failed: all - read - missed,
                missed,
            })
        })
        .collect()
}

async fn latest_readings(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    chambers: &[ChamberId],
) -> Result<Vec<LatestReadings>, StoreError> {
    let mut out = Vec::new();
    for &id in chambers {
        // max(slot) of one chamber is one seek at the end of its range of the chamber index.
        let rows = sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE chamber_id = ?1 \
              AND slot = (SELECT max(slot) FROM readings WHERE chamber_id = ?1) \
              AND EXISTS (SELECT 1 FROM chambers WHERE id = ?1 AND organization_id = ?2) \
              ORDER BY detector_id"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        let readings = decode_all(&rows, reading)?;
        if let Some(slot) = readings.first().map(|r| r.slot) {
            out.push(LatestReadings {
                chamber_id: id,
                slot,
                readings,
            });
        }
    }
    Ok(out)
}

#[db_port("sqlite")]
#[async_trait]
impl ReadingRepository for SqliteStore {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport, StoreError> {
        let total: usize = polls.iter().map(|p| p.readings.len()).sum();
        if total > MAX_READINGS_PER_WRITE {
            return Err(refused(
                "readings",
                Rule::TooLong {
                    max: MAX_READINGS_PER_WRITE,
                    actual: total,
                },
            ));
        }
        if polls.is_empty() {
            return Ok(WriteReport::default());
        }
        for p in polls {
            p.check_readings_share_the_entry()?;
        }
        // Encoded before the write turn is taken.
        let ledger_rows = polls
            .iter()
            .map(|p| LedgerRow::new(&p.entry))
            .collect::<Result<Vec<_>, _>>()?;
        let mut w = self.begin_write().await?;
        let result = store_polls(w.conn(), polls, &ledger_rows).await;
        w.finish(result).await
    }

    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = scoped_query(&mut tx, org, query).await;
        let readings = end_read(tx, result).await?;
        Ok(Page::from_sorted(readings, query.page.size, |r| {
            ReadingCursor {
                slot: r.slot,
                detector_id: r.detector_id,
            }
        }))
    }

    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = latest_readings(&mut tx, org, chambers).await;
        end_read(tx, result).await
    }

    async fn aggregate(
        &self,
        org: OrganizationId,
        query: &AggregateQuery,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = aggregate_readings(&mut tx, org, query).await;
        end_read(tx, result).await
    }

    async fn prune_before(&self, cutoff: Timestamp) -> Result<(), StoreError> {
        // Exactly the rows before `cutoff`, found through the primary keys (every detector's,
        // every chamber's range), PRUNE_STEP rows per write transaction so that poll writes are
        // never held up for long. A failure part-way leaves less pruned, never more; the next
        // call finishes the job.
        for sql in [
            "DELETE FROM readings WHERE (detector_id, slot) IN (\
               SELECT detector_id, slot FROM readings \
               WHERE detector_id IN (SELECT id FROM detectors) AND slot < ?1 LIMIT ?2)",
            "DELETE FROM poll_ledger WHERE (chamber_id, slot) IN (\
               SELECT chamber_id, slot FROM poll_ledger \
               WHERE chamber_id IN (SELECT id FROM chambers) AND slot < ?1 LIMIT ?2)",
        ] {
            loop {
                let mut w = self.begin_write().await?;
                let result = sqlx::query(sql)
                    .bind(cutoff.as_unix_millis())
                    .bind(PRUNE_STEP)
                    .execute(w.conn())
                    .await
                    .map_err(writing(Write::Plain));
                let removed = w.finish(result).await?.rows_affected();
                if removed < PRUNE_STEP as u64 {
                    break;
                }
            }
        }
        Ok(())
    }
}

async fn record_ledger(
    conn: &mut SqliteConnection,
    entries: &[LedgerEntry],
    rows: &[LedgerRow],
) -> Result<u64, StoreError> {
    let chambers: HashSet<ChamberId> = entries.iter().map(|e| e.poll.chamber_id).collect();
    let known = detectors_of(conn, &chambers).await?;
    if chambers.iter().any(|c| !known.contains_key(c)) {
        return Err(missing_parent("poll", "chamber"));
    }
    Ok(insert_ledger(conn, rows).await?.len() as u64)
}

async fn list_ledger(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &LedgerQuery,
) -> Result<Vec<LedgerEntry>, StoreError> {
    if !exists(conn, chamber_in(org, q.chamber_id)).await? {
        return Err(not_found("chamber"));
    }
    let from = match q.page.after {
        Some(after) => q.from.max(Timestamp::from_unix_millis(
            after.as_unix_millis().saturating_add(1),
        )),
        None => q.from,
    };
    let rows = sqlx::query(concat!(
        "SELECT ",
        ledger_columns!(),
        " FROM poll_ledger WHERE chamber_id = ?1 AND slot >= ?2 AND slot < ?3 \
          AND (?4 = 0 OR outcome <> 'ok') ORDER BY slot LIMIT ?5"
    ))
    .bind(*q.chamber_id.as_uuid())
    .bind(from.as_unix_millis())
    .bind(q.to.as_unix_millis())
    .bind(q.failures_only)
    .bind(limit(q.page.size))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    decode_all(&rows, ledger_entry)
}

#[db_port("sqlite")]
#[async_trait]
impl PollLedgerRepository for SqliteStore {
    async fn record(&self, entries: &[LedgerEntry]) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let rows = entries
            .iter()
            .map(LedgerRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mut w = self.begin_write().await?;
        let result = record_ledger(w.conn(), entries, &rows).await;
        w.finish(result).await
    }

    async fn list(
        &self,
        org: OrganizationId,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = list_ledger(&mut tx, org, query).await;
        let entries = end_read(tx, result).await?;
        Ok(Page::from_sorted(entries, query.page.size, |e| e.poll.slot))
    }

    async fn tally(
        &self,
        org: OrganizationId,
        query: &TallyQuery,
    ) -> Result<Vec<LedgerTally>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = tally_ledger(&mut tx, org, query).await;
        end_read(tx, result).await
    }
}
