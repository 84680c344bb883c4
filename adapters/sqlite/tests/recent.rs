//! The newest polls in `polls_recent`, moved into `polls` every few seconds of slots: a poll is
//! in one table only, whatever the order it is written in, and every query reads both, merged
//! in its order across the boundary between them.

use std::sync::Arc;

use chamberlain_domain::conformance::fixtures::{self, StorePorts, T0};
use chamberlain_domain::conformance::store::{World, world};
use chamberlain_domain::model::{PageRequest, PageSize, PollId, ReadingValue, every_page};
use chamberlain_domain::ports::{
    AggregateQuery, LedgerQuery, ReadingQuery, ReadingScope, StoreError, TallyQuery,
};
use chamberlain_domain::time::Timestamp;
use chamberlain_sqlite::{SqliteConfig, SqliteStore};

mod common;

fn slot(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + seconds * 1000)
}

/// The polls of each table, as (chamber, slot in seconds from T0), and the boundary of each
/// bucket of chambers (by the first four bits of the id), in milliseconds.
struct Tables {
    polls: Vec<(uuid::Uuid, i64)>,
    recent: Vec<(uuid::Uuid, i64)>,
    since: Vec<i64>,
}

async fn tables(store: &SqliteStore) -> Tables {
    let keys = |table: &str| {
        let sql = format!("SELECT chamber_id, slot FROM {table} ORDER BY slot, chamber_id");
        async move {
            sqlx::query_as::<_, (uuid::Uuid, i64)>(sqlx::AssertSqlSafe(sql))
                .fetch_all(store.pool())
                .await
                .unwrap()
                .into_iter()
                .map(|(c, s)| (c, (s - T0.as_unix_millis()) / 1000))
                .collect()
        }
    };
    Tables {
        polls: keys("polls").await,
        recent: keys("polls_recent").await,
        since: sqlx::query_scalar("SELECT since FROM polls_recent_since ORDER BY bucket")
            .fetch_all(store.pool())
            .await
            .unwrap(),
    }
}

impl Tables {
    /// The boundary of `chamber`'s bucket, in seconds from T0.
    fn since(&self, chamber: &uuid::Uuid) -> f64 {
        assert_eq!(self.since.len(), 16, "a boundary per bucket");
        let bucket = usize::from(chamber.as_bytes()[0] >> 4);
        (self.since[bucket] - T0.as_unix_millis()) as f64 / 1000.0
    }

    /// Each key once in all, each table on its side of its chamber's boundary.
    fn assert_split(&self) {
        let mut all: Vec<_> = self.polls.iter().chain(&self.recent).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a poll in both tables");
        assert!(
            self.polls.iter().all(|(c, s)| (*s as f64) < self.since(c)),
            "polls before the boundary only"
        );
        assert!(
            self.recent
                .iter()
                .all(|(c, s)| (*s as f64) >= self.since(c)),
            "polls_recent from the boundary on only"
        );
    }
}

async fn store_seconds(ports: &StorePorts, worlds: &[&World], seconds: impl Iterator<Item = i64>) {
    for s in seconds {
        let records: Vec<_> = worlds
            .iter()
            .map(|w| fixtures::poll_record(&w.chamber, &w.detectors, slot(s), s as f64, None))
            .collect();
        let report = ports.readings.store_polls(&records).await.unwrap();
        assert_eq!(report.ledger_new, worlds.len() as u64, "second {s}");
    }
}

fn size(n: u32) -> PageSize {
    PageSize::new(n).unwrap()
}

#[tokio::test]
async fn polls_move_into_polls_and_every_query_reads_both_tables_in_order() {
    let store = Arc::new(SqliteStore::connect(&SqliteConfig::memory()).await.unwrap());
    let ports = StorePorts::from_adapter(store.clone());
    let a = world(&ports, "a").await;
    let b = world(&ports, "b").await;
    // 90 s of polls of two chambers, one write a second, as the worker writes them.
    store_seconds(&ports, &[&a, &b], 0..90).await;
    let t = tables(&store).await;
    t.assert_split();
    assert_eq!(t.polls.len() + t.recent.len(), 180);
    assert!(
        t.polls.len() >= 2 * 40 && !t.recent.is_empty(),
        "moved {} polls, {} recent",
        t.polls.len(),
        t.recent.len()
    );

    let detectors = a.detectors.len();
    // A chamber, page by page (pages cut across the boundary): every reading in (slot, detector)
    // order.
    let readings = every_page(size(7), |page| {
        let ports = &ports;
        let q = ReadingQuery {
            page,
            ..ReadingQuery::all(ReadingScope::Chamber(a.chamber.id))
        };
        async move { ports.readings.query(a.org.id, &q).await }
    })
    .await
    .unwrap();
    assert_eq!(readings.len(), 90 * detectors);
    let mut sorted = readings.clone();
    sorted.sort_by_key(|r| (r.slot, r.detector_id));
    assert_eq!(readings, sorted);
    assert_eq!(readings.first().unwrap().slot, slot(0));
    assert_eq!(readings.last().unwrap().slot, slot(89));

    // A detector, page by page: one value a second, its own.
    let detector = &a.detectors[0];
    let values = every_page(size(11), |page| {
        let ports = &ports;
        let q = ReadingQuery {
            page,
            ..ReadingQuery::all(ReadingScope::Detector(detector.id))
        };
        async move { ports.readings.query(a.org.id, &q).await }
    })
    .await
    .unwrap();
    let expected: Vec<(Timestamp, f64)> = (0..90).map(|s| (slot(s), s as f64)).collect();
    let got: Vec<(Timestamp, f64)> = values
        .iter()
        .map(|r| match r.value {
            ReadingValue::Measured(v) => (r.slot, v.get()),
            ReadingValue::Corrupted(reason) => panic!("corrupted: {reason:?}"),
        })
        .collect();
    assert_eq!(got, expected);

    // The ledger, page by page, and a range that straddles the boundary.
    let ledger = every_page(size(13), |page| {
        let ports = &ports;
        let q = LedgerQuery {
            page,
            ..LedgerQuery::all(a.chamber.id)
        };
        async move { ports.ledger.list(a.org.id, &q).await }
    })
    .await
    .unwrap();
    assert_eq!(
        ledger.iter().map(|e| e.poll.slot).collect::<Vec<_>>(),
        (0..90).map(slot).collect::<Vec<_>>()
    );

    // Tallies and aggregates count each poll once.
    let tallies = ports
        .ledger
        .tally(
            a.org.id,
            &TallyQuery {
                chamber_id: a.chamber.id,
                from: slot(0),
                to: slot(90),
                bucket_millis: 30_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        tallies.iter().map(|t| t.read).collect::<Vec<_>>(),
        vec![30, 30, 30]
    );
    for scope in [
        ReadingScope::Detector(detector.id),
        ReadingScope::Chamber(a.chamber.id),
    ] {
        let aggregates = ports
            .readings
            .aggregate(
                a.org.id,
                &AggregateQuery {
                    scope,
                    from: slot(0),
                    to: slot(90),
                    bucket_millis: 10_000,
                },
            )
            .await
            .unwrap();
        let first: Vec<_> = aggregates
            .iter()
            .filter(|g| g.detector_id == detector.id)
            .map(|g| (g.count, g.min, g.max))
            .collect();
        assert_eq!(
            first,
            (0..9)
                .map(|b| (10, f64::from(b * 10), f64::from(b * 10 + 9)))
                .collect::<Vec<_>>(),
            "{scope:?}"
        );
    }

    // The latest poll of each chamber, wherever it is.
    let latest = ports
        .readings
        .latest(a.org.id, &[a.chamber.id])
        .await
        .unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].slot, slot(89));
    assert_eq!(latest[0].readings.len(), detectors);
}

#[tokio::test]
async fn a_poll_written_again_is_existing_on_either_side_of_the_boundary() {
    let store = Arc::new(SqliteStore::connect(&SqliteConfig::memory()).await.unwrap());
    let ports = StorePorts::from_adapter(store.clone());
    let a = world(&ports, "a").await;
    store_seconds(&ports, &[&a], 0..60).await;
    let before = tables(&store).await;
    before.assert_split();
    let (moved, recent) = (before.polls[3].1, before.recent.last().unwrap().1);

    // Redelivered: one already moved, one still recent, and one new, in one write.
    let again: Vec<_> = [moved, recent, 60]
        .into_iter()
        .map(|s| fixtures::poll_record(&a.chamber, &a.detectors, slot(s), 0.0, None))
        .collect();
    let report = ports.readings.store_polls(&again).await.unwrap();
    assert_eq!(report.ledger_new, 1);
    assert_eq!(report.ledger_existing, 2);
    assert_eq!(
        report.existing_polls,
        vec![
            PollId {
                chamber_id: a.chamber.id,
                slot: slot(moved)
            },
            PollId {
                chamber_id: a.chamber.id,
                slot: slot(recent)
            },
        ]
    );
    let after = tables(&store).await;
    after.assert_split();
    assert_eq!(after.polls.len() + after.recent.len(), 61);

    // The first value stays (first wins).
    let readings = ports
        .readings
        .query(
            a.org.id,
            &ReadingQuery {
                from: slot(moved),
                to: slot(moved + 1),
                ..ReadingQuery::all(ReadingScope::Detector(a.detectors[0].id))
            },
        )
        .await
        .unwrap();
    assert_eq!(readings.items.len(), 1);
    assert!(
        matches!(readings.items[0].value, ReadingValue::Measured(v) if v.get() == moved as f64)
    );
}

#[tokio::test]
async fn a_late_poll_goes_to_polls_and_reads_in_its_place() {
    let store = Arc::new(SqliteStore::connect(&SqliteConfig::memory()).await.unwrap());
    let ports = StorePorts::from_adapter(store.clone());
    let a = world(&ports, "a").await;
    store_seconds(&ports, &[&a], 10..70).await;
    // Slot 5, never written, arrives late: before the boundary.
    store_seconds(&ports, &[&a], [5].into_iter()).await;
    let t = tables(&store).await;
    t.assert_split();
    assert!(t.polls.iter().any(|(_, s)| *s == 5), "slot 5 in polls");
    let ledger = ports
        .ledger
        .list(
            a.org.id,
            &LedgerQuery {
                page: PageRequest {
                    after: None,
                    size: size(3),
                },
                ..LedgerQuery::all(a.chamber.id)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        ledger.items.iter().map(|e| e.poll.slot).collect::<Vec<_>>(),
        vec![slot(5), slot(10), slot(11)]
    );
}

#[tokio::test]
async fn retention_and_a_deleted_chamber_remove_polls_from_both_tables() {
    let store = Arc::new(SqliteStore::connect(&SqliteConfig::memory()).await.unwrap());
    let ports = StorePorts::from_adapter(store.clone());
    let a = world(&ports, "a").await;
    let b = world(&ports, "b").await;
    store_seconds(&ports, &[&a, &b], 0..60).await;
    let t = tables(&store).await;
    let since = t
        .since(a.chamber.id.as_uuid())
        .max(t.since(b.chamber.id.as_uuid())) as i64;
    assert!((10..58).contains(&since), "boundary at {since} s");

    // A cutoff past both boundaries: what is before it goes, from both tables.
    let cutoff = since + 2;
    ports.readings.prune_before(slot(cutoff)).await.unwrap();
    let t = tables(&store).await;
    t.assert_split();
    assert!(t.polls.is_empty(), "{:?}", t.polls);
    assert_eq!(t.recent.len() as i64, 2 * (60 - cutoff));

    // Deleting a chamber deletes its polls (in `polls_recent` by a trigger on `chambers`: it has
    // no foreign key).
    ports.chambers.delete(b.org.id, b.chamber.id).await.unwrap();
    let t = tables(&store).await;
    assert!(
        t.polls
            .iter()
            .chain(&t.recent)
            .all(|(c, _)| c == a.chamber.id.as_uuid())
    );
    assert_eq!(t.recent.len() as i64, 60 - cutoff);
    let gone = ports
        .ledger
        .list(b.org.id, &LedgerQuery::all(b.chamber.id))
        .await;
    assert!(matches!(gone, Err(StoreError::NotFound { .. })), "{gone:?}");
}

/// A database whose `polls_recent` was keyed by (slot, chamber): the migration that keys it by
/// (bucket, slot, chamber) keeps every row, each in its chamber's bucket, every query finds
/// them, and deleting a chamber still deletes its recent polls (a trigger now, not a cascade).
#[tokio::test]
async fn recent_polls_keyed_by_slot_are_rekeyed_by_bucket_and_still_found() {
    const BY_BUCKET: i64 = 20_261_209_000_000;
    let dir = std::env::temp_dir().join(format!("chamberlain-recent-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("chamberlain.db");
    let pool = common::database_before(&file, BY_BUCKET).await;
    let (org, section) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    // Two chambers in buckets 1 and 10.
    let mut low = *uuid::Uuid::new_v4().as_bytes();
    low[0] = 0x1c;
    let mut high = low;
    high[0] = 0xa3;
    let chambers = [uuid::Uuid::from_bytes(low), uuid::Uuid::from_bytes(high)];
    sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES (?1, 'Lab', 0)")
        .bind(org)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sections (id, organization_id, name, created_at) VALUES (?2, ?1, 'S', 0)",
    )
    .bind(org)
    .bind(section)
    .execute(&pool)
    .await
    .unwrap();
    for (i, chamber) in chambers.iter().enumerate() {
        sqlx::query(
            "INSERT INTO chambers (id, organization_id, section_id, name, endpoint, format, \
             interval_ms, timeout_ms, state, health_policy, schedule_since, created_at, \
             updated_at) VALUES (?3, ?1, ?2, ?4, 'http://127.0.0.1:9/', 'json', 1000, 500, \
             'active', '{\"degraded_after\": 3, \"down_after_failures\": 10, \
             \"down_after_ms\": 60000}', 0, 0, 0)",
        )
        .bind(org)
        .bind(section)
        .bind(chamber)
        .bind(format!("c{i}"))
        .execute(&pool)
        .await
        .unwrap();
        // Ten seconds of timeouts, in the table of the newest polls.
        for s in 0..10 {
            sqlx::query(
                "INSERT INTO polls_recent (chamber_id, slot, outcome, detail, attempt, \
                 recorded_at, lateness_ms) VALUES (?1, ?2, 'timeout', '{\"outcome\": \"timeout\"}', 1, ?2, 0)",
            )
            .bind(chamber)
            .bind(slot(s).as_unix_millis())
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    pool.close().await;

    let store = SqliteStore::connect(&SqliteConfig::file(&file))
        .await
        .unwrap();
    let buckets: Vec<(uuid::Uuid, i64, i64)> = sqlx::query_as(
        "SELECT chamber_id, bucket, count(*) FROM polls_recent GROUP BY 1, 2 ORDER BY 2",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(buckets, [(chambers[0], 1, 10), (chambers[1], 10, 10)]);
    let store = Arc::new(store);
    let ports = StorePorts::from_adapter(store.clone());
    let org = chamberlain_domain::model::OrganizationId::from_uuid(org);
    for chamber in chambers {
        let chamber = chamberlain_domain::model::ChamberId::from_uuid(chamber);
        let entries = ports
            .ledger
            .list(org, &LedgerQuery::all(chamber))
            .await
            .unwrap();
        let slots: Vec<Timestamp> = entries.items.iter().map(|e| e.poll.slot).collect();
        assert_eq!(slots, (0..10).map(slot).collect::<Vec<_>>());
    }
    ports
        .chambers
        .delete(
            org,
            chamberlain_domain::model::ChamberId::from_uuid(chambers[1]),
        )
        .await
        .unwrap();
    let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT DISTINCT chamber_id FROM polls_recent")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(left, [chambers[0]]);
    drop(ports);
    store.pool().close().await;
    let _ = std::fs::remove_dir_all(&dir);
}
