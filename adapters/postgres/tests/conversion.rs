//! Converting a database of the previous layout (a ledger row plus a row per detector) to one
//! row per poll: interrupted between chunks and in the middle of one, resumed, and finished
//! with every poll and reading there once, as every query returns it.

use std::time::Duration;

use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{
    Chamber, CorruptionReason, Detector, LedgerEntry, PageSize, PollOutcome, Reading, ReadingValue,
    every_page,
};
use chamberlain_domain::ports::{
    BatchRepository, LedgerQuery, OrganizationRepository, PollLedgerRepository, PollRecord,
    ReadingQuery, ReadingRepository, ReadingScope, SectionRepository,
};
use chamberlain_postgres::PgStore;
use chamberlain_postgres::testing::fresh_database_before;
use sqlx::{AssertSqlSafe, PgPool};

const ONE_ROW_PER_POLL: i64 = 20_261_206_000_000;

fn slot(s: i64) -> chamberlain_domain::Timestamp {
    // Around the first midnight after T0, so the polls span two day partitions.
    T0 + Duration::from_secs((86_400 - 20 + s) as u64)
}

async fn exec(pool: &PgPool, sql: String) {
    sqlx::query(AssertSqlSafe(sql))
        .execute(pool)
        .await
        .expect("seed");
}

/// Writes a chamber and its detectors as the previous schema has them.
async fn old_chamber(pool: &PgPool, c: &Chamber, ds: &[Detector]) {
    sqlx::query(
        "INSERT INTO chambers (id, organization_id, section_id, name, endpoint, format, interval_ms, timeout_ms, \
         state, health_policy, schedule_since, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'json', 1000, 500, 'active', $6, now(), now(), now())",
    )
    .bind(c.id.as_uuid())
    .bind(c.organization_id.as_uuid())
    .bind(c.section_id.as_uuid())
    .bind(c.name.as_str())
    .bind(c.endpoint.as_str())
    .bind(serde_json::to_value(c.health_policy).unwrap())
    .execute(pool)
    .await
    .expect("old chamber");
    for d in ds {
        sqlx::query(
            "INSERT INTO detectors (id, organization_id, chamber_id, name, unit, key_kind, key) \
             VALUES ($1, $2, $3, $4, $5, 'json_pointer', $6)",
        )
        .bind(d.id.as_uuid())
        .bind(d.organization_id.as_uuid())
        .bind(d.chamber_id.as_uuid())
        .bind(d.name.as_str())
        .bind(d.unit.as_str())
        .bind(d.key.to_string())
        .execute(pool)
        .await
        .expect("old detector");
    }
}

async fn old_entry(pool: &PgPool, e: &LedgerEntry) {
    sqlx::query(
        "INSERT INTO poll_ledger (chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, lateness_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.poll.chamber_id.as_uuid())
    .bind(ms(e.poll.slot))
    .bind(e.outcome.code())
    .bind(serde_json::to_value(&e.outcome).unwrap())
    .bind(e.attempt as i32)
    .bind(e.requested_at.map(ms))
    .bind(ms(e.recorded_at))
    .bind(e.latency.map(|l| l.as_millis() as i64))
    .bind(e.lateness.as_millis() as i64)
    .execute(pool)
    .await
    .expect("old ledger entry");
}

async fn old_reading(pool: &PgPool, r: &Reading) {
    let (value, corruption) = match r.value {
        ReadingValue::Measured(v) => (Some(v.get()), None),
        ReadingValue::Corrupted(_) => (None, Some(4_i16)), // implausible
    };
    sqlx::query(
        "INSERT INTO readings (detector_id, chamber_id, slot, value, corruption, requested_at, received_at, batch_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.detector_id.as_uuid())
    .bind(r.chamber_id.as_uuid())
    .bind(ms(r.slot))
    .bind(value)
    .bind(corruption)
    .bind(ms(r.requested_at))
    .bind(ms(r.received_at))
    .bind(r.batch_id.map(|b| *b.as_uuid()))
    .execute(pool)
    .await
    .expect("old reading");
}

fn ms(t: chamberlain_domain::Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.as_unix_millis()) * 1_000_000)
        .unwrap()
}

/// Distinct polls in either layout: what no conversion step may change.
async fn distinct_polls(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT chamber_id, slot FROM polls \
         UNION SELECT chamber_id, slot FROM legacy_poll_ledger) p",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn counts(pool: &PgPool) -> (i64, i64) {
    let polls: i64 = sqlx::query_scalar("SELECT count(*) FROM polls")
        .fetch_one(pool)
        .await
        .unwrap();
    let legacy: i64 = sqlx::query_scalar(
        "SELECT CASE WHEN to_regclass('legacy_poll_ledger') IS NULL THEN 0 \
         ELSE (SELECT count(*) FROM legacy_poll_ledger) END",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(0);
    (polls, legacy)
}

#[tokio::test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario, seeded, converted in steps, checked"
)]
async fn an_interrupted_conversion_resumes_and_loses_or_doubles_nothing() {
    let (mut config, _db) = fresh_database_before(ONE_ROW_PER_POLL).await;
    config.migrate_on_connect = false;
    let old = PgStore::connect(&config).await.unwrap();
    let pool = old.pool().clone();
    let org = fixtures::organization("conversion");
    OrganizationRepository::create(&old, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&old, &section).await.unwrap();
    let batch = fixtures::batch(org.id, section.id, "run", slot(0));
    BatchRepository::start(&old, &batch).await.unwrap();
    for (table, day) in [
        ("poll_ledger", "20260101"),
        ("poll_ledger", "20260102"),
        ("readings", "20260101"),
        ("readings", "20260102"),
    ] {
        let next = if day == "20260101" {
            "2026-01-02"
        } else {
            "2026-01-03"
        };
        let from = format!("{}-{}-{}", &day[..4], &day[4..6], &day[6..]);
        exec(&pool, format!("CREATE TABLE {table}_p{day} PARTITION OF {table} FOR VALUES FROM ('{from}T00:00:00Z') TO ('{next}T00:00:00Z')")).await;
    }

    // Three chambers of three detectors, 40 slots each across midnight: measured and
    // corrupted values, a batch on the first chamber, timeouts without readings.
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
    old.close().await;

    config.migrate_on_connect = true;
    let store = PgStore::connect(&config).await.unwrap();
    let pool = store.pool().clone();
    assert!(store.has_legacy_layout().await.unwrap());
    assert_eq!(counts(&pool).await, (0, 120));
    // A worker of the new version writes a poll the previous layout already holds (a slot
    // decided again after the restart, a redelivery): it is existing — the first stored wins,
    // wherever it is — so the conversion later moves the original, not a copy in its place.
    let (c1, ds1, polls1) = &seeded[1];
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

    // Stopped between chunks after three of them.
    let mut chunks = 0;
    let chunks_seen = std::sync::atomic::AtomicU32::new(0);
    let stopped = store
        .convert_legacy(
            7,
            |_| {
                chunks += 1;
                chunks_seen.store(chunks, std::sync::atomic::Ordering::SeqCst);
            },
            || chunks_seen.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        )
        .await
        .unwrap();
    assert!(!stopped.finished);
    assert_eq!(stopped.polls_moved, 21);
    assert_eq!(counts(&pool).await.1, 99, "moved, not copied");
    assert_eq!(distinct_polls(&pool).await, 120);

    // Dropped in the middle of a chunk: another transaction holds the old ledger in SHARE
    // mode, so the chunk reads its polls, writes them to the new layout, and then waits to
    // delete them from the old one; it is dropped there and rolls back whole.
    let before = counts(&pool).await;
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE legacy_poll_ledger IN SHARE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let cut = tokio::time::timeout(
        Duration::from_millis(500),
        store.convert_legacy(7, |_| {}, || false),
    )
    .await;
    assert!(cut.is_err(), "the chunk waited on the lock: {cut:?}");
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE FROM legacy_poll_ledger%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    blocker.rollback().await.unwrap();
    assert_eq!(
        waiting, 1,
        "the chunk had written the new rows and waited to delete the old"
    );
    let (polls, legacy) = counts(&pool).await;
    assert_eq!((polls, legacy), before, "the cut chunk left nothing behind");
    assert_eq!(distinct_polls(&pool).await, 120, "nothing lost");

    // Run again to the end.
    let end = store.convert_legacy(7, |_| {}, || false).await.unwrap();
    assert!(end.finished);
    assert!(!store.has_legacy_layout().await.unwrap());
    assert_eq!(counts(&pool).await, (120, 0));
    assert_eq!(end.orphan_readings, 1);

    // Every poll and reading as seeded (the redelivered one as first stored: the original).
    for (c, _, polls) in &seeded {
        let mut expected: Vec<Reading> = polls.iter().flat_map(|p| p.readings.clone()).collect();
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
        let mut entries: Vec<LedgerEntry> = polls.iter().map(|p| p.entry.clone()).collect();
        entries.sort_by_key(|e| e.poll.slot);
        assert_eq!(ledger, entries, "ledger of {}", c.name);
        let latest = store.latest(org.id, &[c.id]).await.unwrap();
        let newest = polls.iter().rev().find(|p| !p.readings.is_empty()).unwrap();
        assert_eq!(latest[0].slot, newest.entry.poll.slot);
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
    assert!(
        polls1
            .iter()
            .any(|p| p.entry.poll == redelivered.entry.poll)
    );

    // A second run has nothing to do.
    let again = store.convert_legacy(7, |_| {}, || false).await.unwrap();
    assert!(again.finished);
    assert_eq!(again.polls_moved, 0);
}
