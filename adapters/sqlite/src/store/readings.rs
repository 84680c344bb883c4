//! [`ReadingRepository`] and [`PollLedgerRepository`] of [`SqliteStore`]: one row per poll in
//! `polls` holding the ledger entry and the poll's values as blobs laid out by the chamber's
//! detector layout ([`layouts`](super::layouts)), multi-row inserts on the hot path, the latest
//! slot of each chamber in `chamber_latest`, range queries, aggregates and tallies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::error::Rule;
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    BatchId, ChamberId, DetectorId, LedgerEntry, OrganizationId, Page, PollId, Reading,
    ReadingValue,
};
use chamberlain_domain::ports::{
    Aggregate, AggregateQuery, LatestReadings, LedgerQuery, LedgerTally, PollLedgerRepository,
    PollRecord, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope, StoreError,
    TallyQuery, WriteReport,
};
use chamberlain_domain::time::Timestamp;
use futures_util::TryStreamExt;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, SqliteConnection};
use uuid::Uuid;

use super::layouts::{self, Layouts, Values};
use super::recent;
use super::rows::{Cols, decode_all, ledger_entry};
use super::{
    PRUNE_STEP, SqlQuery, SqliteStore, chamber_in, end_read, exists, id_list, limit, millis_of,
    missing_parent, not_found,
};
use crate::errors::{Write, child, db, refused, writing};

type Result<T> = std::result::Result<T, StoreError>;

// ------------------------------------------------------------------------------------------
// Multi-row inserts for the hot path: a batch is cut greedily into chunks of CHUNK_SIZES rows,
// so that the writer prepares (and caches) at most five statements per table and a batch of
// fewer than 256 rows (the worker's usual write) is at most about a dozen statements (each a
// round trip to sqlx's SQLite thread): 250 rows are 3 × 64 + 3 × 16 + 2 × 4 + 2 × 1.
// ------------------------------------------------------------------------------------------

const CHUNK_SIZES: [usize; 5] = [256, 64, 16, 4, 1];

struct MultiInsert {
    sql: [Arc<str>; CHUNK_SIZES.len()],
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

/// The two tables of polls, split at the boundary slot ([`recent`]).
#[derive(Clone, Copy)]
enum Table {
    /// `polls`, by (chamber, slot): the slots before the boundary.
    Polls,
    /// `polls_recent`, by (bucket, slot, chamber): the slots from the boundary on.
    Recent,
}

static INSERT_POLLS: LazyLock<MultiInsert> = LazyLock::new(|| {
    MultiInsert::new(
        concat!("INSERT INTO polls (", poll_columns!(), ") VALUES"),
        13,
        " ON CONFLICT DO NOTHING",
    )
});

static INSERT_RECENT_POLLS: LazyLock<MultiInsert> = LazyLock::new(|| {
    MultiInsert::new(
        concat!(
            "INSERT INTO polls_recent (bucket, ",
            poll_columns!(),
            ") VALUES"
        ),
        14,
        " ON CONFLICT DO NOTHING",
    )
});

static MOVE_LATEST: LazyLock<MultiInsert> = LazyLock::new(|| {
    MultiInsert::new(
        "INSERT INTO chamber_latest (chamber_id, slot) VALUES",
        2,
        " ON CONFLICT (chamber_id) DO UPDATE SET slot = excluded.slot \
          WHERE excluded.slot > chamber_latest.slot",
    )
});

/// A poll encoded for its row.
struct PollRow {
    chamber_id: Uuid,
    slot: i64,
    outcome: &'static str,
    detail: String,
    attempt: i64,
    requested_at: Option<i64>,
    recorded_at: i64,
    latency_ms: Option<i64>,
    lateness_ms: i64,
    layout_version: Option<i64>,
    batch_id: Option<Uuid>,
    value: Option<Vec<u8>>,
    corruption: Option<Vec<u8>>,
    /// Readings placed in `value` (a detector's second reading in one poll is not).
    readings: u64,
}

impl PollRow {
    /// A ledger entry alone: a poll without values.
    fn bare(e: &LedgerEntry) -> Result<Self> {
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
            layout_version: None,
            batch_id: None,
            value: None,
            corruption: None,
            readings: 0,
        })
    }

    /// A poll with readings, laid out by its chamber's current layout; a reading of another
    /// chamber or slot, or of a detector not in the layout, refuses it.
    fn with_values(p: &PollRecord, layout: &layouts::Current) -> Result<Self> {
        let mut row = Self::bare(&p.entry)?;
        if p.readings.is_empty() {
            return Ok(row);
        }
        let PollId { chamber_id, slot } = p.entry.poll;
        let mut by_position: Vec<Option<&ReadingValue>> = vec![None; layout.width];
        for r in &p.readings {
            let position = layout.position.get(r.detector_id.as_uuid());
            let (Some(&i), true) = (position, r.chamber_id == chamber_id && r.slot == slot) else {
                return Err(missing_parent("reading", "detector"));
            };
            if by_position[i].is_none() {
                by_position[i] = Some(&r.value);
                row.readings += 1;
            }
        }
        let (value, corruption) = Values::encode(&by_position);
        row.layout_version = Some(layout.version);
        row.batch_id = p.readings[0].batch_id.map(|b| *b.as_uuid());
        row.value = Some(value);
        row.corruption = corruption;
        Ok(row)
    }
}

/// How a write learns which of its polls are stored already.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Keys {
    /// Looked up before inserting (one query): those found are reported as existing.
    LookedUp,
    /// Assumed new, as nearly every poll is (no lookup, one B-tree search less per poll): a
    /// chunk that inserts fewer rows than it holds ends the write with [`Written::Again`].
    AssumedNew,
}

/// What [`write_polls`] did.
pub(super) enum Written {
    Done(WriteReport),
    /// A poll assumed new was stored already: roll the transaction back and write again with
    /// [`Keys::LookedUp`].
    Again,
}

/// Inserts `rows` (each key once) into `table`. With [`Keys::LookedUp`], [`stored_already`] found none of
/// them stored in this write transaction, so a row found stored after all fails the write as
/// unavailable (to be written again), never silently; with [`Keys::AssumedNew`], `false` says
/// that some were, and the write must be rolled back.
async fn insert_polls(
    conn: &mut SqliteConnection,
    table: Table,
    rows: &[&PollRow],
    keys: Keys,
) -> Result<bool> {
    let statements = match table {
        Table::Polls => &*INSERT_POLLS,
        Table::Recent => &*INSERT_RECENT_POLLS,
    };
    let mut rest = rows;
    while !rest.is_empty() {
        let (mut query, n) = statements.next(rest.len());
        let (chunk, tail) = rest.split_at(n);
        for r in chunk {
            if let Table::Recent = table {
                query = query.bind(i64::from(recent::bucket_of(&r.chamber_id)));
            }
            query = query
                .bind(r.chamber_id)
                .bind(r.slot)
                .bind(r.outcome)
                .bind(r.detail.as_str())
                .bind(r.attempt)
                .bind(r.requested_at)
                .bind(r.recorded_at)
                .bind(r.latency_ms)
                .bind(r.lateness_ms)
                .bind(r.layout_version)
                .bind(r.batch_id)
                .bind(r.value.as_deref())
                .bind(r.corruption.as_deref());
        }
        let written = query
            .execute(&mut *conn)
            .await
            .map_err(writing(child("poll", "chamber")))?
            .rows_affected();
        if written != n as u64 {
            if keys == Keys::AssumedNew {
                return Ok(false);
            }
            // The rows were looked up in this write transaction (SQLite's one writer): none can
            // have been stored meanwhile.
            return Err(StoreError::unavailable(format!(
                "{} of {n} polls found stored while being written; the write is retried",
                n as u64 - written.min(n as u64)
            )));
        }
        rest = tail;
    }
    Ok(true)
}

/// The keys of `rows` that `polls` or `polls_recent` hold already. One row comes back whatever
/// the number of keys (each row is a message from sqlx's SQLite thread).
async fn stored_already(
    conn: &mut SqliteConnection,
    rows: &[&PollRow],
) -> Result<HashSet<(Uuid, i64)>> {
    let mut keys = String::with_capacity(rows.len() * 50 + 2);
    keys.push('[');
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            keys.push(',');
        }
        keys.push_str("[\"");
        keys.push_str(
            r.chamber_id
                .simple()
                .encode_lower(&mut Uuid::encode_buffer()),
        );
        keys.push_str("\",");
        keys.push_str(&r.slot.to_string());
        keys.push(',');
        keys.push_str(&recent::bucket_of(&r.chamber_id).to_string());
        keys.push(']');
    }
    keys.push(']');
    let found: Option<String> = sqlx::query_scalar(
        "SELECT group_concat(hex(chamber_id) || ':' || slot) FROM (\
           SELECT p.chamber_id, p.slot FROM json_each(?1) AS k \
           JOIN polls AS p ON p.chamber_id = unhex(k.value ->> 0) AND p.slot = k.value ->> 1 \
           UNION ALL SELECT p.chamber_id, p.slot FROM json_each(?1) AS k \
           JOIN polls_recent AS p ON p.bucket = k.value ->> 2 AND p.slot = k.value ->> 1 \
             AND p.chamber_id = unhex(k.value ->> 0))",
    )
    .bind(keys)
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    Ok(layouts::id_numbers(found.as_deref(), "polls")?
        .into_iter()
        .collect())
}

/// Moves each chamber's latest slot forward to `slots` (never backwards).
async fn move_latest(conn: &mut SqliteConnection, slots: &BTreeMap<Uuid, i64>) -> Result<()> {
    let slots: Vec<(&Uuid, &i64)> = slots.iter().collect();
    let mut rest = slots.as_slice();
    while !rest.is_empty() {
        let (mut query, n) = MOVE_LATEST.next(rest.len());
        let (chunk, tail) = rest.split_at(n);
        for (chamber, slot) in chunk {
            query = query.bind(**chamber).bind(**slot);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(writing(child("poll", "chamber")))?;
        rest = tail;
    }
    Ok(())
}

/// Whether a write also looks for its polls in the previous layout's ledger.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Legacy {
    /// A live write while the previous layout is not converted yet: a poll found there is
    /// existing (first wins), so the conversion never finds a later copy in its place.
    Consult,
    /// No previous layout, or the conversion's own write (its polls are there by definition).
    Ignore,
}

/// The keys of `rows` that the previous layout's ledger holds.
async fn in_legacy_ledger(
    conn: &mut SqliteConnection,
    rows: &[PollRow],
) -> Result<HashSet<(Uuid, i64)>> {
    let keys: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| serde_json::json!([r.chamber_id.simple().to_string(), r.slot]))
        .collect();
    let found = sqlx::query(
        "SELECT l.chamber_id, l.slot FROM json_each(?1) AS k JOIN legacy_poll_ledger AS l \
         ON l.chamber_id = unhex(k.value ->> 0) AND l.slot = k.value ->> 1",
    )
    .bind(serde_json::Value::from(keys).to_string())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut out = HashSet::with_capacity(found.len());
    for row in &found {
        let c = Cols::new(row, "legacy_poll_ledger");
        out.insert((c.uuid("chamber_id")?, c.get::<i64>("slot")?));
    }
    Ok(out)
}

/// Writes the polls that are new (each key once: of a poll twice in one write, the first is new
/// and the second existing) and moves the chambers' latest slots. The chambers' current layouts
/// check that every chamber exists and every reading's detector is one of its chamber's; one
/// bad poll refuses the whole write. [`write_polls_once`] is the usual way in.
pub(super) async fn write_polls(
    conn: &mut SqliteConnection,
    polls: &[&PollRecord],
    legacy: Legacy,
    known: &layouts::Known,
    keys: Keys,
) -> Result<Written> {
    let chambers: HashSet<Uuid> = polls
        .iter()
        .map(|p| *p.entry.poll.chamber_id.as_uuid())
        .collect();
    let current = layouts::current(conn, &chambers, known).await?;
    let mut rows = Vec::with_capacity(polls.len());
    for p in polls {
        let Some(layout) = current.get(p.entry.poll.chamber_id.as_uuid()) else {
            return Err(missing_parent("poll", "chamber"));
        };
        rows.push(PollRow::with_values(p, layout)?);
    }
    // In key order, chamber by chamber: consecutive rows land on the same pages of the primary
    // key (a stable sort: of two rows with one key, the first wins).
    let stored_before = match legacy {
        Legacy::Consult => in_legacy_ledger(conn, &rows).await?,
        Legacy::Ignore => HashSet::new(),
    };
    let mut ordered: Vec<&PollRow> = rows
        .iter()
        .filter(|r| !stored_before.contains(&(r.chamber_id, r.slot)))
        .collect();
    ordered.sort_by_key(|r| (r.chamber_id, r.slot));
    ordered.dedup_by_key(|r| (r.chamber_id, r.slot));
    if keys == Keys::LookedUp {
        let stored = stored_already(conn, &ordered).await?;
        ordered.retain(|r| !stored.contains(&(r.chamber_id, r.slot)));
    }
    // Each poll into the table of its slot; the recent ones in their key order, (bucket, slot,
    // chamber).
    let since = recent::boundaries(conn).await?;
    let (mut newer, older): (Vec<&PollRow>, Vec<&PollRow>) = ordered
        .iter()
        .copied()
        .partition(|r| r.slot >= since[usize::from(recent::bucket_of(&r.chamber_id))]);
    newer.sort_by_key(|r| (recent::bucket_of(&r.chamber_id), r.slot, r.chamber_id));
    if !insert_polls(conn, Table::Polls, &older, keys).await?
        || !insert_polls(conn, Table::Recent, &newer, keys).await?
    {
        return Ok(Written::Again);
    }
    let mut inserted: HashSet<(Uuid, i64)> =
        ordered.iter().map(|r| (r.chamber_id, r.slot)).collect();
    let mut latest: BTreeMap<Uuid, i64> = BTreeMap::new();
    let mut report = WriteReport::default();
    let total: u64 = polls.iter().map(|p| p.readings.len() as u64).sum();
    for (p, row) in polls.iter().zip(&rows) {
        if inserted.remove(&(row.chamber_id, row.slot)) {
            report.ledger_new += 1;
            report.readings_new += row.readings;
            if row.value.is_some() {
                let newest = latest.entry(row.chamber_id).or_insert(row.slot);
                *newest = (*newest).max(row.slot);
            }
        } else {
            report.ledger_existing += 1;
            report.existing_polls.push(p.entry.poll);
        }
    }
    report.readings_existing = total - report.readings_new;
    move_latest(conn, &latest).await?;
    let newest = newer.iter().map(|r| r.slot).max();
    if let Some((bucket, to)) = newest.and_then(|slot| recent::due(&since, slot)) {
        recent::move_before(conn, bucket, to).await?;
    }
    Ok(Written::Done(report))
}

impl SqliteStore {
    /// [`write_polls`] in a write transaction of its own, assuming the polls new; if one was
    /// stored already (a redelivered poll, rare), that transaction is rolled back and the write
    /// done again, looking them up.
    async fn write_polls_once(&self, polls: &[&PollRecord]) -> Result<WriteReport> {
        let legacy = self.legacy();
        let mut w = self.begin_write().await?;
        let first = write_polls(w.conn(), polls, legacy, &self.layouts, Keys::AssumedNew).await;
        match first {
            Ok(Written::Done(report)) => return w.finish(Ok(report)).await,
            Ok(Written::Again) => w.rollback().await,
            Err(e) => return w.finish(Err(e)).await,
        }
        let mut w = self.begin_write().await?;
        let again = write_polls(w.conn(), polls, legacy, &self.layouts, Keys::LookedUp)
            .await
            .and_then(|written| match written {
                Written::Done(report) => Ok(report),
                Written::Again => Err(StoreError::unavailable(
                    "polls looked up as new were found stored; the write is retried",
                )),
            });
        w.finish(again).await
    }
}

// ------------------------------------------------------------------------------------------
// Reading polls back.
// ------------------------------------------------------------------------------------------

/// `head` polls `tail` UNION ALL `head` polls_recent `tail`: a query's rows from both tables of
/// polls (an ORDER BY after it merges the two, each read in its index's order).
macro_rules! in_both_tables {
    ($head:expr, $tail:expr) => {
        concat!(
            $head,
            " polls",
            $tail,
            " UNION ALL ",
            $head,
            " polls_recent",
            $tail
        )
    };
}

/// [`in_both_tables`] for one chamber's rows, `?1` its id: `head` polls WHERE chamber_id = ?1
/// `rest` UNION ALL the same of polls_recent, read along its key within the chamber's bucket.
macro_rules! of_chamber_in_both_tables {
    ($head:expr, $rest:expr) => {
        concat!(
            $head,
            " polls WHERE chamber_id = ?1",
            $rest,
            " UNION ALL ",
            $head,
            " polls_recent WHERE bucket = ",
            recent_bucket_of!("?1"),
            " AND chamber_id = ?1",
            $rest
        )
    };
}

macro_rules! stored_poll_columns {
    () => {
        "chamber_id, slot, layout_version, value, corruption, requested_at, recorded_at, batch_id"
    };
}

/// A poll row with values, as reading queries see it.
struct StoredPoll {
    chamber: Uuid,
    slot: Timestamp,
    version: i64,
    value: Vec<u8>,
    corruption: Option<Vec<u8>>,
    requested_at: Timestamp,
    received_at: Timestamp,
    batch: Option<BatchId>,
}

impl StoredPoll {
    fn decode(row: &SqliteRow) -> Result<Self> {
        let c = Cols::new(row, "polls");
        Ok(Self {
            chamber: c.uuid("chamber_id")?,
            slot: c.at("slot")?,
            version: c.get("layout_version")?,
            value: c.get("value")?,
            corruption: c.get("corruption")?,
            requested_at: c.at("requested_at")?,
            received_at: c.at("recorded_at")?,
            batch: c.get::<Option<Uuid>>("batch_id")?.map(BatchId::from_uuid),
        })
    }

    fn values(&self) -> Values<'_> {
        Values {
            value: &self.value,
            corruption: self.corruption.as_deref(),
        }
    }

    fn reading(&self, detector: Uuid, value: ReadingValue) -> Reading {
        Reading {
            detector_id: DetectorId::from_uuid(detector),
            chamber_id: ChamberId::from_uuid(self.chamber),
            slot: self.slot,
            value,
            requested_at: self.requested_at,
            received_at: self.received_at,
            batch_id: self.batch,
        }
    }

    /// The poll's readings of live detectors (`live` unless every detector of the layout
    /// counts), in position order.
    fn expand(
        &self,
        layout: &[Option<Uuid>],
        live: impl Fn(Uuid) -> bool,
        out: &mut Vec<Reading>,
    ) -> Result<()> {
        let values = self.values();
        for (i, detector) in layout.iter().enumerate().take(values.width()) {
            let Some(detector) = detector.filter(|d| live(*d)) else {
                continue;
            };
            if let Some(value) = values.get(i)? {
                out.push(self.reading(detector, value));
            }
        }
        Ok(())
    }
}

/// Where a reading query's polls come from.
#[derive(Clone, Copy)]
enum Source {
    Chamber(Uuid),
    Batch(Uuid),
}

/// Resolves a reading scope within `org` (an unknown or foreign scope is `NotFound`): where its
/// polls are, and for a detector scope the detector.
async fn resolve(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    scope: ReadingScope,
) -> Result<(Source, Option<Uuid>)> {
    let (sql, entity, id) = match scope {
        ReadingScope::Detector(id) => (
            "SELECT chamber_id AS source FROM detectors WHERE id = ?1 AND organization_id = ?2",
            "detector",
            *id.as_uuid(),
        ),
        ReadingScope::Chamber(id) => (
            "SELECT id AS source FROM chambers WHERE id = ?1 AND organization_id = ?2",
            "chamber",
            *id.as_uuid(),
        ),
        ReadingScope::Batch(id) => (
            "SELECT id AS source FROM batches WHERE id = ?1 AND organization_id = ?2",
            "batch",
            *id.as_uuid(),
        ),
    };
    let row = sqlx::query(sql)
        .bind(id)
        .bind(*org.as_uuid())
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?
        .ok_or_else(|| not_found(entity))?;
    let source: Uuid = Cols::new(&row, "scope").uuid("source")?;
    Ok(match scope {
        ReadingScope::Detector(_) => (Source::Chamber(source), Some(id)),
        ReadingScope::Chamber(_) => (Source::Chamber(source), None),
        ReadingScope::Batch(_) => (Source::Batch(source), None),
    })
}

/// Up to `?4` polls with values of chamber `?1` from slot `?2` (inclusive) to `?3`.
const POLLS_OF_A_CHAMBER: &str = concat!(
    of_chamber_in_both_tables!(
        concat!("SELECT ", stored_poll_columns!(), " FROM"),
        " AND slot >= ?2 AND slot < ?3 AND layout_version IS NOT NULL"
    ),
    " ORDER BY slot LIMIT ?4"
);

/// Up to `limit` polls with values of a source from `from` (inclusive) to `to`, in (slot,
/// chamber) order.
async fn read_polls(
    conn: &mut SqliteConnection,
    source: Source,
    from: Timestamp,
    to: Timestamp,
    limit: i64,
) -> Result<Vec<StoredPoll>> {
    let (sql, id) = match source {
        Source::Chamber(id) => (POLLS_OF_A_CHAMBER, id),
        Source::Batch(id) => (
            concat!(
                in_both_tables!(
                    concat!("SELECT ", stored_poll_columns!(), " FROM"),
                    " WHERE batch_id = ?1 AND slot >= ?2 AND slot < ?3"
                ),
                " ORDER BY slot, chamber_id LIMIT ?4"
            ),
            id,
        ),
    };
    let rows = sqlx::query(sql)
        .bind(id)
        .bind(from.as_unix_millis())
        .bind(to.as_unix_millis())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    rows.iter().map(StoredPoll::decode).collect()
}

/// The first page (and one more) of a detector's readings after the cursor: its position in
/// each layout version picks one value of each of its chamber's polls.
async fn query_detector(
    conn: &mut SqliteConnection,
    chamber: Uuid,
    detector: Uuid,
    q: &ReadingQuery,
) -> Result<Vec<Reading>> {
    let mut layouts = Layouts::default();
    layouts.load(conn, [&chamber]).await?;
    let positions = layouts.positions_of(chamber, detector);
    let wanted = q.page.size.as_usize() + 1;
    // After the cursor (slot, detector): the cursor's slot itself only if this detector sorts
    // after the cursor's.
    let mut from = match q.page.after {
        Some(c) if *c.detector_id.as_uuid() < detector => q.from.max(c.slot),
        Some(c) => q.from.max(Timestamp::from_unix_millis(
            c.slot.as_unix_millis().saturating_add(1),
        )),
        None => q.from,
    };
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    // Only the detector's 8 bytes of value (and byte of corruption) of each poll, at its
    // position in the poll's layout version: integers of our own, written into the statement.
    let position = positions
        .iter()
        .map(|(version, i)| format!("WHEN {version} THEN {i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let versions = positions
        .keys()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let select = |table: &str, bucket: &str| {
        format!(
            "SELECT chamber_id, slot, layout_version, \
               substr(value, 1 + 8 * (CASE layout_version {position} END), 8) AS value, \
               substr(corruption, 1 + (CASE layout_version {position} END), 1) AS corruption, \
               requested_at, recorded_at, batch_id \
             FROM {table} WHERE {bucket}chamber_id = ?1 AND slot >= ?2 AND slot < ?3 \
               AND layout_version IN ({versions})"
        )
    };
    let sql = format!(
        "{} UNION ALL {} ORDER BY slot LIMIT ?4",
        select("polls", ""),
        select(
            "polls_recent",
            concat!("bucket = ", recent_bucket_of!("?1"), " AND ")
        )
    );
    let mut out = Vec::with_capacity(wanted);
    loop {
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(chamber)
            .bind(from.as_unix_millis())
            .bind(q.to.as_unix_millis())
            .bind(limit(q.page.size))
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        let polls = rows
            .iter()
            .map(StoredPoll::decode)
            .collect::<Result<Vec<_>>>()?;
        for p in &polls {
            if let Some(value) = p.values().get(0)? {
                out.push(p.reading(detector, value));
            }
        }
        match polls.last() {
            Some(last) if polls.len() as i64 == limit(q.page.size) && out.len() < wanted => {
                from = Timestamp::from_unix_millis(last.slot.as_unix_millis().saturating_add(1));
            }
            _ => return Ok(out),
        }
    }
}

/// The first page (and one more) of the readings of a chamber or a batch after the cursor, in
/// (slot, detector) order: polls from the cursor's slot on, each expanded into its live
/// detectors' readings; read on while deleted detectors or absent values leave the page short.
async fn query_polls(
    conn: &mut SqliteConnection,
    source: Source,
    q: &ReadingQuery,
) -> Result<Vec<Reading>> {
    let wanted = q.page.size.as_usize() + 1;
    let mut layouts = Layouts::default();
    if let Source::Chamber(chamber) = source {
        layouts.load(conn, [&chamber]).await?;
    }
    // Enough whole slots for a page in one read, plus one: the last slot read may be cut short
    // (a batch's other chambers) and is read again.
    let mut polls_per_read = (wanted.div_ceil(layouts.narrowest()) + 1) as i64;
    let mut from = q.page.after.map_or(q.from, |c| q.from.max(c.slot));
    let mut out: Vec<Reading> = Vec::new();
    loop {
        let mut polls = read_polls(conn, source, from, q.to, polls_per_read).await?;
        let complete = (polls.len() as i64) < polls_per_read;
        if !complete {
            let last = polls.last().map(|p| p.slot);
            polls.retain(|p| Some(p.slot) != last);
            if polls.is_empty() {
                polls_per_read *= 2;
                continue;
            }
        }
        layouts.load(conn, polls.iter().map(|p| &p.chamber)).await?;
        let mut readings = Vec::new();
        for p in &polls {
            p.expand(
                layouts.version(p.chamber, p.version)?,
                |d| layouts.is_live(d),
                &mut readings,
            )?;
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
        from = polls.last().map_or(from, |p| {
            Timestamp::from_unix_millis(p.slot.as_unix_millis().saturating_add(1))
        });
    }
}

async fn query_readings(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &ReadingQuery,
) -> Result<Vec<Reading>> {
    match resolve(conn, org, q.scope).await? {
        (Source::Chamber(chamber), Some(detector)) => {
            query_detector(conn, chamber, detector, q).await
        }
        (source, _) => query_polls(conn, source, q).await,
    }
}

/// How many milliseconds of polls SQLite packs into one row of an aggregate's input: a row per
/// (chamber, layout version, bucket, minute), so that a day at 1 s is 1,440 rows (each row
/// crossing to this process costs more than folding its values) and a row of a wide chamber
/// stays small.
const AGGREGATE_PACK_MILLIS: i64 = 60_000;

/// Measured values per detector and epoch-aligned bucket (`slot - slot % w`): SQLite reads the
/// scope's polls along the primary key (or the batch index) and packs the value blobs of each
/// (chamber, layout version, bucket, minute) into one row — for a detector scope only its 8
/// bytes of each poll — and they are folded here (SQLite cannot read a double out of a blob).
async fn aggregate_readings(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &AggregateQuery,
) -> Result<Vec<Aggregate>> {
    let (source, detector) = resolve(conn, org, q.scope).await?;
    let mut layouts = Layouts::default();
    let bind = |sql: &'static str, id: Uuid| {
        sqlx::query(sql)
            .bind(id)
            .bind(q.from.as_unix_millis())
            .bind(q.to.as_unix_millis())
            .bind(q.bucket_millis.max(1))
            .bind(AGGREGATE_PACK_MILLIS)
    };
    let mut sums: BTreeMap<(DetectorId, Timestamp), Sum> = BTreeMap::new();
    // Each packed row is folded as it arrives: memory is one row and the result.
    match (source, detector) {
        (Source::Chamber(chamber), Some(detector)) => {
            layouts.load(conn, [&chamber]).await?;
            // Its position in each layout version that holds it (usually one).
            for (version, position) in layouts.positions_of(chamber, detector) {
                let mut rows = bind(
                    concat!(
                        "SELECT chamber_id, layout_version, slot - slot % ?4 AS bucket, \
                           group_concat(hex(substr(value, ?7, 8)), '') AS packed FROM (",
                        of_chamber_in_both_tables!(
                            "SELECT chamber_id, layout_version, slot, value FROM",
                            " AND slot >= ?2 AND slot < ?3 AND layout_version = ?6"
                        ),
                        ") GROUP BY bucket, slot / ?5"
                    ),
                    chamber,
                )
                .bind(version)
                .bind(i64::try_from(position * 8 + 1).unwrap_or(i64::MAX))
                .fetch(&mut *conn);
                while let Some(row) = rows.try_next().await.map_err(db)? {
                    fold_packed(&row, Some(detector), &layouts, &mut sums)?;
                }
            }
        }
        (Source::Chamber(chamber), None) => {
            layouts.load(conn, [&chamber]).await?;
            let mut rows = bind(
                concat!(
                    "SELECT chamber_id, layout_version, slot - slot % ?4 AS bucket, \
                       group_concat(hex(value), '') AS packed FROM (",
                    of_chamber_in_both_tables!(
                        "SELECT chamber_id, layout_version, slot, value FROM",
                        " AND slot >= ?2 AND slot < ?3 AND layout_version IS NOT NULL"
                    ),
                    ") GROUP BY layout_version, bucket, slot / ?5"
                ),
                chamber,
            )
            .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await.map_err(db)? {
                fold_packed(&row, None, &layouts, &mut sums)?;
            }
        }
        (Source::Batch(batch), _) => {
            // The batch's chambers first (the batch index covers them), for their layouts.
            let chambers: Vec<Uuid> = sqlx::query_scalar(
                "SELECT chamber_id FROM polls WHERE batch_id = ?1 AND slot >= ?2 AND slot < ?3 \
                 UNION SELECT chamber_id FROM polls_recent \
                   WHERE batch_id = ?1 AND slot >= ?2 AND slot < ?3",
            )
            .bind(batch)
            .bind(q.from.as_unix_millis())
            .bind(q.to.as_unix_millis())
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
            layouts.load(conn, &chambers).await?;
            let mut rows = bind(
                concat!(
                    "SELECT chamber_id, layout_version, slot - slot % ?4 AS bucket, \
                       group_concat(hex(value), '') AS packed FROM (",
                    in_both_tables!(
                        "SELECT chamber_id, layout_version, slot, value FROM",
                        " WHERE batch_id = ?1 AND slot >= ?2 AND slot < ?3"
                    ),
                    ") GROUP BY chamber_id, layout_version, bucket, slot / ?5"
                ),
                batch,
            )
            .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await.map_err(db)? {
                fold_packed(&row, None, &layouts, &mut sums)?;
            }
        }
    }
    #[allow(clippy::cast_precision_loss, reason = "a mean")]
    Ok(sums
        .into_iter()
        .map(|((detector_id, bucket_start), s)| Aggregate {
            detector_id,
            bucket_start,
            min: s.min,
            max: s.max,
            mean: s.total / s.count as f64,
            count: s.count,
        })
        .collect())
}

/// Folds one packed row of an aggregate's input (the values of a chamber's polls of one layout
/// version, bucket and minute, hex-encoded) into `sums`: for `one` detector its values alone,
/// else every live detector's by position.
fn fold_packed(
    row: &SqliteRow,
    one: Option<Uuid>,
    layouts: &Layouts,
    sums: &mut BTreeMap<(DetectorId, Timestamp), Sum>,
) -> Result<()> {
    let c = Cols::new(row, "polls");
    let chamber = c.uuid("chamber_id")?;
    let version: i64 = c.get("layout_version")?;
    let columns: Vec<Option<DetectorId>> = match one {
        Some(detector) => vec![Some(DetectorId::from_uuid(detector))],
        None => layouts
            .version(chamber, version)?
            .iter()
            .map(|d| d.filter(|d| layouts.is_live(*d)).map(DetectorId::from_uuid))
            .collect(),
    };
    let values = decode_hex(c.get("packed")?)?;
    if columns.is_empty() || values.len() % (columns.len() * 8) != 0 {
        return Err(crate::errors::corrupt(
            "polls",
            "value",
            format!("{} bytes for {} positions", values.len(), columns.len()),
        ));
    }
    let mut row_sums: Vec<Sum> = columns.iter().map(|_| Sum::default()).collect();
    for (i, bytes) in values.chunks_exact(8).enumerate() {
        let v = f64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        if !v.is_nan() {
            row_sums[i % columns.len()].add(v);
        }
    }
    let bucket = c.at("bucket")?;
    for (detector, sum) in columns.iter().zip(row_sums) {
        if let (Some(detector), true) = (detector, sum.count > 0) {
            sums.entry((*detector, bucket)).or_default().merge(&sum);
        }
    }
    Ok(())
}

/// A running minimum, maximum, total and count.
struct Sum {
    min: f64,
    max: f64,
    total: f64,
    count: u64,
}

impl Default for Sum {
    fn default() -> Self {
        Self {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            total: 0.0,
            count: 0,
        }
    }
}

impl Sum {
    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.total += v;
        self.count += 1;
    }

    fn merge(&mut self, other: &Self) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.total += other.total;
        self.count += other.count;
    }
}

/// The bytes of SQLite's `hex()` (upper-case digits, two a byte).
fn decode_hex(text: &str) -> Result<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(crate::errors::corrupt("polls", "value", "not hexadecimal")),
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Ok(digit(*hi)? << 4 | digit(*lo)?),
            _ => Err(crate::errors::corrupt(
                "polls",
                "value",
                "an odd number of hex digits",
            )),
        })
        .collect()
}

/// Chamber `?1`'s ledger from slot `?2` (inclusive) to `?3` counted in buckets of `?4` ms.
const TALLY_OF_A_CHAMBER: &str = concat!(
    "SELECT ?2 + ((slot - ?2) / ?4) * ?4 AS bucket, \
           sum(outcome IN ('ok', 'corrupted_values')) AS read, \
           sum(outcome IN ('missed', 'expired', 'cancelled')) AS missed, \
           count(*) AS n FROM (",
    of_chamber_in_both_tables!("SELECT slot, outcome FROM", " AND slot >= ?2 AND slot < ?3"),
    ") GROUP BY bucket ORDER BY bucket"
);

/// A chamber's ledger counted per bucket from `from` by SQLite, along the keys of both tables of
/// polls.
async fn tally_ledger(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &TallyQuery,
) -> Result<Vec<LedgerTally>> {
    if !exists(conn, chamber_in(org, q.chamber_id)).await? {
        return Err(not_found("chamber"));
    }
    let rows = sqlx::query(TALLY_OF_A_CHAMBER)
        .bind(*q.chamber_id.as_uuid())
        .bind(q.from.as_unix_millis())
        .bind(q.to.as_unix_millis())
        .bind(q.bucket_millis.max(1))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let c = Cols::new(row, "polls");
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

/// [`LATEST_OF_CHAMBERS`] in one of the two tables (`bucket`: the join's condition on
/// `polls_recent`'s bucket).
macro_rules! from_latest {
    ($table:expr, $bucket:expr) => {
        concat!(
            "SELECT p.chamber_id, p.slot, p.layout_version, p.value, p.corruption, \
               p.requested_at, p.recorded_at, p.batch_id, c.layout_version AS current_version, \
               v.detectors AS layout \
             FROM chamber_latest l JOIN chambers c ON c.id = l.chamber_id JOIN ",
            $table,
            " p ON ",
            $bucket,
            "p.chamber_id = l.chamber_id AND p.slot = l.slot \
             JOIN detector_layouts v ON v.chamber_id = p.chamber_id \
               AND v.version = p.layout_version \
             WHERE c.organization_id = ?1 \
               AND l.chamber_id IN (SELECT unhex(value) FROM json_each(?2))"
        )
    };
}

/// The newest poll with values of each chamber of organization `?1` among `?2` (a JSON list of
/// hex ids), with the layout it was written in: the poll is in one of the two tables (in
/// `polls_recent`, found along its key from the chamber's bucket).
const LATEST_OF_CHAMBERS: &str = concat!(
    from_latest!("polls", ""),
    " UNION ALL ",
    from_latest!(
        "polls_recent",
        concat!("p.bucket = ", recent_bucket_of!("l.chamber_id"), " AND ")
    )
);

/// The newest poll with values of each chamber: one lookup in `chamber_latest` and one in
/// `polls` each, with the layout it was written in; the current layouts are read only for
/// chambers whose detectors changed since.
async fn latest_readings(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    chambers: &[ChamberId],
) -> Result<Vec<LatestReadings>> {
    let rows = sqlx::query(LATEST_OF_CHAMBERS)
        .bind(*org.as_uuid())
        .bind(id_list(chambers.iter().map(ChamberId::as_uuid)))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    let mut latest = Vec::with_capacity(rows.len());
    for row in &rows {
        let c = Cols::new(row, "chamber_latest");
        let layout = layouts::decode(c.get("layout")?)?;
        let current: i64 = c.get("current_version")?;
        latest.push((StoredPoll::decode(row)?, layout, current));
    }
    // A row laid out before the chamber's current layout may name deleted detectors: the
    // layouts of those chambers (rare) tell which are live.
    let mut live = Layouts::default();
    let outdated: Vec<Uuid> = latest
        .iter()
        .filter(|(poll, _, current)| poll.version != *current)
        .map(|(poll, ..)| poll.chamber)
        .collect();
    live.load(conn, &outdated).await?;
    let mut by_chamber = HashMap::with_capacity(latest.len());
    for (poll, layout, current) in latest {
        let mut readings = Vec::with_capacity(layout.len());
        poll.expand(
            &layout,
            |d| poll.version == current || live.is_live(d),
            &mut readings,
        )?;
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

#[db_port("sqlite")]
#[async_trait]
impl ReadingRepository for SqliteStore {
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport> {
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
        let polls: Vec<&PollRecord> = polls.iter().collect();
        self.write_polls_once(&polls).await
    }

    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>> {
        let mut tx = self.begin_read().await?;
        let result = query_readings(&mut tx, org, query).await;
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
    ) -> Result<Vec<LatestReadings>> {
        let mut tx = self.begin_read().await?;
        let result = latest_readings(&mut tx, org, chambers).await;
        end_read(tx, result).await
    }

    async fn aggregate(
        &self,
        org: OrganizationId,
        query: &AggregateQuery,
    ) -> Result<Vec<Aggregate>> {
        let mut tx = self.begin_read().await?;
        let result = aggregate_readings(&mut tx, org, query).await;
        end_read(tx, result).await
    }

    async fn prune_before(&self, cutoff: Timestamp) -> Result<()> {
        // Exactly the polls before `cutoff`, found through the primary key (every chamber's
        // range), PRUNE_STEP rows per write transaction so that poll writes are never held up
        // for long; then the latest slots that pointed at them. A failure part-way leaves less
        // pruned, never more; the next call finishes the job.
        // `polls_recent` holds the newest slots (seconds of them): rarely any before a retention
        // cutoff, found by reading it whole.
        for sql in [
            "DELETE FROM polls WHERE (chamber_id, slot) IN (\
               SELECT chamber_id, slot FROM polls \
               WHERE chamber_id IN (SELECT id FROM chambers) AND slot < ?1 LIMIT ?2)",
            "DELETE FROM polls_recent WHERE (bucket, slot, chamber_id) IN (\
               SELECT bucket, slot, chamber_id FROM polls_recent WHERE slot < ?1 LIMIT ?2)",
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
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM chamber_latest WHERE slot < ?1")
            .bind(cutoff.as_unix_millis())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain));
        w.finish(result).await.map(|_| ())
    }
}

/// Up to `?5` of chamber `?1`'s ledger entries from slot `?2` (inclusive) to `?3` (failures
/// only unless `?4` is 0).
const LEDGER_OF_A_CHAMBER: &str = concat!(
    of_chamber_in_both_tables!(
        concat!("SELECT ", ledger_columns!(), " FROM"),
        " AND slot >= ?2 AND slot < ?3 AND (?4 = 0 OR outcome <> 'ok')"
    ),
    " ORDER BY slot LIMIT ?5"
);

async fn list_ledger(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &LedgerQuery,
) -> Result<Vec<LedgerEntry>> {
    if !exists(conn, chamber_in(org, q.chamber_id)).await? {
        return Err(not_found("chamber"));
    }
    let from = match q.page.after {
        Some(after) => q.from.max(Timestamp::from_unix_millis(
            after.as_unix_millis().saturating_add(1),
        )),
        None => q.from,
    };
    let rows = sqlx::query(LEDGER_OF_A_CHAMBER)
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
        let records: Vec<&PollRecord> = records.iter().collect();
        self.write_polls_once(&records)
            .await
            .map(|report| report.ledger_new)
    }

    async fn list(
        &self,
        org: OrganizationId,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>> {
        let mut tx = self.begin_read().await?;
        let result = list_ledger(&mut tx, org, query).await;
        let entries = end_read(tx, result).await?;
        Ok(Page::from_sorted(entries, query.page.size, |e| e.poll.slot))
    }

    async fn tally(&self, org: OrganizationId, query: &TallyQuery) -> Result<Vec<LedgerTally>> {
        let mut tx = self.begin_read().await?;
        let result = tally_ledger(&mut tx, org, query).await;
        end_read(tx, result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SqliteConfig;

    /// What SQLite plans for `sql`, one step per line.
    async fn plan(store: &SqliteStore, sql: &str) -> String {
        use sqlx::Row as _;
        let steps = sqlx::query(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
            .fetch_all(&store.readers)
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
        steps
            .iter()
            .map(|step| step.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn queries_of_a_chamber_read_its_bucket_of_recent_polls_along_the_key() {
        let store = SqliteStore::connect(&SqliteConfig::memory()).await.unwrap();
        for sql in [
            POLLS_OF_A_CHAMBER,
            TALLY_OF_A_CHAMBER,
            LEDGER_OF_A_CHAMBER,
            LATEST_OF_CHAMBERS,
        ] {
            let plan = plan(&store, sql).await;
            assert!(
                plan.contains("SEARCH p USING PRIMARY KEY (bucket=? AND slot=? AND chamber_id=?)")
                    || plan.contains(
                        "SEARCH polls_recent USING PRIMARY KEY (bucket=? AND slot>? AND slot<?)"
                    ),
                "{plan}\n{sql}"
            );
            assert!(!plan.contains("SCAN polls_recent"), "{plan}\n{sql}");
        }
    }
}
