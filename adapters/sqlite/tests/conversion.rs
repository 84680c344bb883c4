//! Converting a database of the previous layout (a ledger row plus a row per detector) to one
//! row per poll: stopped between chunks, failing in the middle of one, resumed, and finished
//! with every poll and reading there once, as every query returns it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{
    Chamber, CorruptionReason, Detector, LedgerEntry, PageSize, PollOutcome, Reading, ReadingValue,
    every_page,
};
use chamberlain_domain::ports::{
    LedgerQuery, PollLedgerRepository, PollRecord, ReadingQuery, ReadingRepository, ReadingScope,
};
use chamberlain_domain::time::Timestamp;
use chamberlain_sqlite::{SqliteConfig, SqliteStore};
use sqlx::SqlitePool;
use uuid::Uuid;

mod common;

const ONE_ROW_PER_POLL: i64 = 20_261_207_000_000;

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("chamberlain-conversion-{}", Uuid::new_v4()));
        std::fs::create_dir(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn slot(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + s * 1000)
}

async fn exec(pool: &SqlitePool, sql: &'static str, binds: &[Option<Uuid>]) {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(*b);
    }
    q.execute(pool).await.expect("seed");
}

/// Writes a chamber and its detectors as the previous schema has them.
async fn old_chamber(pool: &SqlitePool, c: &Chamber, ds: &[Detector]) {
    sqlx::query(
        "INSERT INTO chambers (id, organization_id, section_id, name, endpoint, format, interval_ms, \
         timeout_ms, state, health_policy, schedule_since, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'json', 1000, 500, 'active', \
         '{\"degraded_after\": 3, \"down_after_failures\": 10, \"down_after_ms\": 60000}', 0, 0, 0)",
    )
    .bind(*c.id.as_uuid())
    .bind(*c.organization_id.as_uuid())
    .bind(*c.section_id.as_uuid())
    .bind(c.name.as_str())
    .bind(c.endpoint.as_str())
    .execute(pool)
    .await
    .expect("old chamber");
    for d in ds {
        sqlx::query(
            "INSERT INTO detectors (id, organization_id, chamber_id, name, unit, key_kind, key) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'json_pointer', ?6)",
        )
        .bind(*d.id.as_uuid())
        .bind(*d.organization_id.as_uuid())
        .bind(*d.chamber_id.as_uuid())
        .bind(d.name.as_str())
        .bind(d.unit.as_str())
        .bind(d.key.to_string())
        .execute(pool)
        .await
        .expect("old detector");
    }
}

async fn old_entry(pool: &SqlitePool, e: &LedgerEntry) {
    sqlx::query(
        "INSERT INTO poll_ledger (chamber_id, slot, outcome, detail, attempt, requested_at, \
         recorded_at, latency_ms, lateness_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(*e.poll.chamber_id.as_uuid())
    .bind(e.poll.slot.as_unix_millis())
    .bind(e.outcome.code())
    .bind(serde_json::to_string(&e.outcome).unwrap())
    .bind(i64::from(e.attempt))
    .bind(e.requested_at.map(Timestamp::as_unix_millis))
    .bind(e.recorded_at.as_unix_millis())
    .bind(e.latency.map(|l| l.as_millis() as i64))
    .bind(e.lateness.as_millis() as i64)
    .execute(pool)
    .await
    .expect("old ledger entry");
}

async fn old_reading(pool: &SqlitePool, r: &Reading) {
    let (value, corruption) = match r.value {
        ReadingValue::Measured(v) => (Some(v.get()), None),
        ReadingValue::Corrupted(reason) => (None, Some(reason.code())),
    };
    sqlx::query(
        "INSERT INTO readings (detector_id, chamber_id, slot, value, corruption, requested_at, \
         received_at, batch_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(*r.detector_id.as_uuid())
    .bind(*r.chamber_id.as_uuid())
    .bind(r.slot.as_unix_millis())
    .bind(value)
    .bind(corruption)
    .bind(r.requested_at.as_unix_millis())
    .bind(r.received_at.as_unix_millis())
    .bind(r.batch_id.map(|b| *b.as_uuid()))
    .execute(pool)
    .await
    .expect("old reading");
}

/// Polls in the new layout, and in the old one (0 once it is gone).
async fn counts(pool: &SqlitePool) -> (i64, i64) {
    // New polls are in `polls` or `polls_recent`, by slot.
    let polls: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM polls) + (SELECT count(*) FROM polls_recent)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let legacy: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy_poll_ledger")
        .fetch_one(pool)
        .await
        .unwrap_or(0);
    (polls, legacy)
}

/// Distinct polls in either layout: what no conversion step may change.
async fn distinct_polls(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT chamber_id, slot FROM polls \
         UNION SELECT chamber_id, slot FROM polls_recent \
         UNION SELECT chamber_id, slot FROM legacy_poll_ledger)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_new_database_has_no_previous_layout() {
    let store = SqliteStore::connect(&SqliteConfig::memory()).await.unwrap();
    assert!(!store.has_legacy_layout().await.unwrap());
    let done = store.convert_legacy(7, |_| {}, || false).await.unwrap();
    assert!(done.finished);
    assert_eq!(done.polls_moved, 0);
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, seeded, converted in steps, checked"
)]
async fn an_interrupted_conversion_resumes_and_loses_or_doubles_nothing() {
    let dir = TempDir::new();
    let path = dir.0.join("chamberlain.db");
    let pool = common::database_before(&path, ONE_ROW_PER_POLL).await;
    let org = fixtures::organization("conversion");
    let section = fixtures::section(org.id, "room");
    let batch = fixtures::batch(org.id, section.id, "run", slot(0));
    let ids = [
        Some(*org.id.as_uuid()),
        Some(*section.id.as_uuid()),
        Some(*batch.id.as_uuid()),
    ];
    exec(
        &pool,
        "INSERT INTO organizations (id, name, created_at) VALUES (?1, 'conversion', 0)",
        &ids,
    )
    .await;
    exec(
        &pool,
        "INSERT INTO sections (id, organization_id, name, created_at) VALUES (?2, ?1, 'room', 0)",
        &ids,
    )
    .await;
    exec(
        &pool,
        "INSERT INTO batches (id, organization_id, section_id, name, started_at) \
         VALUES (?3, ?1, ?2, 'run', 0)",
        &ids,
    )
    .await;

    // Three chambers of three detectors, 40 slots each: measured and corrupted values, a batch
    // on the first chamber, timeouts without readings.
    let mut seeded: Vec<(Chamber, Vec<Detector>, Vec<PollRecord>)> = Vec::new();
    for k in 0..3 {
        let c = fixtures::chamber(org.id, section.id, &format!("c{k}"), 1);
        let mut ds: Vec<Detector> = (0..3)
            .map(|i| fixtures::detector(&c, &format!("d{i}")))
            .collect();
        ds.sort_by_key(|d| d.id);
        old_chamber(&pool, &c, &ds).await;
        let mut polls = Vec::new();
        for s in 0..40 {
            let corrupt = (s % 9 == 4).then_some(CorruptionReason::Implausible);
            let mut p =
                fixtures::poll_record(&c, &ds, slot(s), f64::from(k * 100 + s as i32), corrupt);
            if s % 13 == 6 {
                p.entry.outcome = PollOutcome::Timeout;
                p.readings.clear();
            }
            if k == 0 {
                for r in &mut p.readings {
                    r.batch_id = Some(batch.id);
                }
            }
            old_entry(&pool, &p.entry).await;
            for r in &p.readings {
                old_reading(&pool, r).await;
            }
            polls.push(p);
        }
        seeded.push((c, ds, polls));
    }
    // A reading without a ledger entry (never visible): dropped with the old tables.
    let (c0, ds0, _) = &seeded[0];
    let orphan = fixtures::poll_record(c0, &ds0[..1], slot(100), 1.0, None);
    old_reading(&pool, &orphan.readings[0]).await;
    pool.close().await;

    let store = SqliteStore::connect(&SqliteConfig::file(&path))
        .await
        .unwrap();
    let pool = store.pool().clone();
    assert!(store.has_legacy_layout().await.unwrap());
    assert_eq!(counts(&pool).await, (0, 120));
    // A live write of a poll the previous layout already holds (a slot decided again after the
    // restart, a redelivery): it is existing — the first stored wins, wherever it is — so the
    // conversion later moves the original, not a copy in its place.
    let (c1, ds1, _) = &seeded[1];
    let redelivered = fixtures::poll_record(c1, ds1, slot(5), 999.0, None);
    let report = store
        .store_polls(std::slice::from_ref(&redelivered))
        .await
        .unwrap();
    assert_eq!(
        (
            report.ledger_new,
            report.ledger_existing,
            report.readings_new
        ),
        (0, 1, 0),
        "found in the previous layout"
    );
    assert_eq!(report.existing_polls, vec![redelivered.entry.poll]);
    // A poll that is nowhere yet is new.
    let fresh = fixtures::poll_record(c1, ds1, slot(1000), 7.0, None);
    let report = store
        .store_polls(std::slice::from_ref(&fresh))
        .await
        .unwrap();
    assert_eq!((report.ledger_new, report.readings_new), (1, 3));

    // Stopped between chunks after three of them.
    let chunks = AtomicU32::new(0);
    let stopped = store
        .convert_legacy(
            7,
            |_| {
                chunks.fetch_add(1, Ordering::SeqCst);
            },
            || chunks.load(Ordering::SeqCst) >= 3,
        )
        .await
        .unwrap();
    assert!(!stopped.finished);
    assert_eq!(stopped.polls_moved, 21);
    assert_eq!(stopped.polls_estimated, 120);
    assert_eq!(counts(&pool).await.1, 99, "moved, not copied");
    assert_eq!(distinct_polls(&pool).await, 121);
    let before_the_cut = counts(&pool).await;

    // Failing in the middle of a chunk: its polls are read and written to the new layout, then
    // deleting them from the old one fails; the chunk rolls back whole.
    sqlx::query(
        "CREATE TRIGGER cut_the_chunk BEFORE DELETE ON legacy_poll_ledger \
         BEGIN SELECT RAISE(ABORT, 'cut in the middle of a chunk'); END",
    )
    .execute(&pool)
    .await
    .unwrap();
    let cut = store.convert_legacy(7, |_| {}, || false).await;
    assert!(cut.is_err(), "the chunk failed: {cut:?}");
    assert_eq!(
        counts(&pool).await,
        before_the_cut,
        "the failed chunk left nothing behind"
    );
    assert_eq!(distinct_polls(&pool).await, 121, "nothing lost");
    sqlx::query("DROP TRIGGER cut_the_chunk")
        .execute(&pool)
        .await
        .unwrap();

    // Run again to the end.
    let end = store.convert_legacy(7, |_| {}, || false).await.unwrap();
    assert!(end.finished);
    assert!(!store.has_legacy_layout().await.unwrap());
    assert_eq!(
        counts(&pool).await,
        (121, 0),
        "the 120 seeded and the fresh one"
    );
    assert_eq!(end.orphan_readings, 1);
    assert_eq!(stopped.polls_already_there + end.polls_already_there, 0);

    // Every poll and reading as seeded (and the fresh one).
    for (c, _, polls) in &seeded {
        let mut expected: Vec<Reading> = polls
            .iter()
            .flat_map(|p| p.readings.clone())
            .chain(if c.id == c1.id {
                fresh.readings.clone()
            } else {
                Vec::new()
            })
            .collect();
        expected.sort_by_key(|r| (r.slot, r.detector_id));
        let got = every_page(PageSize::new(11).unwrap(), |page| {
            let q = ReadingQuery {
                page,
                ..ReadingQuery::all(ReadingScope::Chamber(c.id))
            };
            let store = &store;
            async move { store.query(org.id, &q).await }
        })
        .await
        .unwrap();
        assert_eq!(got, expected, "chamber {}", c.name);
        let ledger = PollLedgerRepository::list(&store, org.id, &LedgerQuery::all(c.id))
            .await
            .unwrap()
            .items;
        let mut entries: Vec<LedgerEntry> = polls
            .iter()
            .map(|p| p.entry.clone())
            .chain((c.id == c1.id).then(|| fresh.entry.clone()))
            .collect();
        entries.sort_by_key(|e| e.poll.slot);
        assert_eq!(ledger, entries, "ledger of {}", c.name);
        let latest = store.latest(org.id, &[c.id]).await.unwrap();
        let newest = if c.id == c1.id {
            &fresh
        } else {
            polls.iter().rev().find(|p| !p.readings.is_empty()).unwrap()
        };
        assert_eq!(latest[0].slot, newest.entry.poll.slot);
        assert_eq!(latest[0].readings, newest.readings);
    }
    let batch_readings = every_page(PageSize::new(1000).unwrap(), |page| {
        let q = ReadingQuery {
            page,
            ..ReadingQuery::all(ReadingScope::Batch(batch.id))
        };
        let store = &store;
        async move { store.query(org.id, &q).await }
    })
    .await
    .unwrap();
    assert_eq!(
        batch_readings.len(),
        seeded[0].2.iter().map(|p| p.readings.len()).sum::<usize>()
    );

    // A second run has nothing to do, and a reopened store finds the new layout only.
    let again = store.convert_legacy(7, |_| {}, || false).await.unwrap();
    assert!(again.finished);
    assert_eq!(again.polls_moved, 0);
    store.close().await;
    let reopened = SqliteStore::connect(&SqliteConfig::file(&path))
        .await
        .unwrap();
    assert!(!reopened.has_legacy_layout().await.unwrap());
    assert_eq!(counts(reopened.pool()).await, (121, 0));
}
