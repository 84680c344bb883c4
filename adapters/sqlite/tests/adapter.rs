//! What is particular to the SQLite adapter, beyond the conformance suite: the pragmas in
//! effect, data surviving a reopen, the translation of driver errors, corrupt rows, and batches
//! the size of a real poll round.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::conformance::fixtures::{self, StorePorts, T0};
use chamberlain_domain::conformance::store::{World, world};
use chamberlain_domain::error::Rule;
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    ChamberId, Email, ExpiryReason, LedgerEntry, PageRequest, PageSize, PollId, PollOutcome,
    Reading, Role,
};
use chamberlain_domain::ports::{
    LedgerQuery, OrganizationRepository, ReadingQuery, ReadingScope, StoreError, UserRepository,
};
use chamberlain_domain::time::Timestamp;
use chamberlain_sqlite::{SqliteConfig, SqliteStore};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

mod common;

/// A temporary directory removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("chamberlain-sqlite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).expect("create a temporary directory");
        Self(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("chamberlain.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn open(path: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::connect(&SqliteConfig::file(path))
            .await
            .expect("open the database"),
    )
}

fn slot(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + seconds * 1000)
}

fn all(scope: ReadingScope) -> ReadingQuery {
    ReadingQuery::all(scope)
}

fn unavailable_naming(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match result {
        Err(StoreError::Unavailable { message }) => {
            assert!(message.contains(what), "{message:?} should name {what}");
        }
        other => panic!("expected Unavailable naming {what}, got {other:?}"),
    }
}

#[tokio::test]
async fn every_connection_has_the_pragmas() {
    let dir = TempDir::new();
    let config = SqliteConfig::from_url(&format!(
        "sqlite://{}?pool_size=3&busy_timeout_ms=1234",
        dir.db().display()
    ))
    .unwrap();
    let store = SqliteStore::connect(&config).await.unwrap();
    // Hold three at once: three distinct connections.
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(store.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let page: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(
            (journal.as_str(), synchronous, foreign_keys, busy, page),
            ("wal", 1, 1, 1234, 4096),
            "journal_mode, synchronous (1 = NORMAL), foreign_keys, busy_timeout, page_size of a new file"
        );
    }
}

#[tokio::test]
async fn data_survives_reopening_the_file_and_migrating_again() {
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    let ports = StorePorts::from_adapter(store.clone());
    let w = world(&ports, "reopen").await;
    let record = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 21.5, None);
    ports
        .readings
        .store_polls(std::slice::from_ref(&record))
        .await
        .unwrap();
    drop(ports);
    store.close().await;
    assert!(
        matches!(
            OrganizationRepository::get(&*store, w.org.id).await,
            Err(StoreError::Unavailable { .. })
        ),
        "a closed store is unavailable"
    );

    let store = open(&dir.db()).await;
    store.migrate().await.expect("migrating twice is a no-op");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        applied,
        std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations/sqlite"
        ))
        .unwrap()
        .filter(|e| e
            .as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "sql"))
        .count() as i64,
        "each migration applied once"
    );
    let ports = StorePorts::from_adapter(store);
    assert_eq!(
        ports.chambers.get(w.org.id, w.chamber.id).await.unwrap(),
        w.chamber
    );
    let mut stored = ports
        .readings
        .query(w.org.id, &all(ReadingScope::Chamber(w.chamber.id)))
        .await
        .unwrap()
        .items;
    let mut expected = record.readings.clone();
    stored.sort_by_key(|r| r.detector_id);
    expected.sort_by_key(|r| r.detector_id);
    assert_eq!(stored, expected);
}

async fn ports_get(
    store: &SqliteStore,
    org: &chamberlain_domain::model::Organization,
) -> chamberlain_domain::model::Organization {
    OrganizationRepository::get(store, org.id).await.unwrap()
}

#[tokio::test]
async fn a_database_locked_by_another_process_is_unavailable_then_recovers() {
    let dir = TempDir::new();
    let config = SqliteConfig::file(dir.db())
        .with_busy_timeout(Duration::from_millis(50))
        .unwrap();
    let store = SqliteStore::connect(&config).await.unwrap();
    // Another writer (as another process would) holds the write lock.
    let mut other = SqliteConnectOptions::new()
        .filename(dir.db())
        .connect()
        .await
        .unwrap();
    other.execute("BEGIN IMMEDIATE").await.unwrap();
    let org = fixtures::organization("locked out");
    let err = OrganizationRepository::create(&store, &org)
        .await
        .unwrap_err();
    assert!(
        err.is_transient(),
        "a busy database is Unavailable, got {err:?}"
    );
    other.execute("ROLLBACK").await.unwrap();
    other.close().await.unwrap();
    OrganizationRepository::create(&store, &org)
        .await
        .expect("the lock is gone");
    assert_eq!(ports_get(&store, &org).await, org);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_take_turns() {
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    let ports = StorePorts::from_adapter(store);
    let w = world(&ports, "concurrent").await;
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let ports = ports.clone();
            let w = w.clone();
            tokio::spawn(async move {
                let records: Vec<_> = (0..20)
                    .map(|s| {
                        fixtures::poll_record(&w.chamber, &w.detectors, slot(i * 20 + s), 1.0, None)
                    })
                    .collect();
                ports.readings.store_polls(&records).await
            })
        })
        .collect();
    for writer in writers {
        let report = writer.await.unwrap().expect("no writer is refused");
        assert_eq!(report.readings_new, 40);
    }
    let ledger = ports
        .ledger
        .list(w.org.id, &LedgerQuery::all(w.chamber.id))
        .await
        .unwrap();
    assert_eq!(ledger.items.len(), 320);
}

/// A chamber of `n` detectors.
async fn wide_world(p: &StorePorts, n: usize) -> World {
    let w = world(p, "wide").await;
    let chamber = fixtures::chamber(w.org.id, w.section.id, "wide", 1);
    let detectors: Vec<_> = (0..n)
        .map(|i| fixtures::detector(&chamber, &format!("d{i:04}")))
        .collect();
    p.chambers.create(&chamber, &detectors).await.unwrap();
    World {
        chamber,
        detectors,
        ..w
    }
}

#[tokio::test]
async fn large_batches_are_counted_exactly_and_read_back_whole() {
    let ports = StorePorts::from_adapter(Arc::new(
        SqliteStore::connect(&SqliteConfig::memory()).await.unwrap(),
    ));
    // 273 = 256 + 16 + 1: every chunk size of the multi-row inserts.
    let w = wide_world(&ports, 273).await;
    let records: Vec<_> = (0..37)
        .map(|s| fixtures::poll_record(&w.chamber, &w.detectors, slot(s), 0.5, None))
        .collect();
    let total = 273 * 37;
    let report = ports.readings.store_polls(&records).await.unwrap();
    assert_eq!((report.readings_new, report.readings_existing), (total, 0));
    assert_eq!((report.ledger_new, report.ledger_existing), (37, 0));

    // Half of it again, plus one new poll: only the new poll's rows are new.
    let mut again = records[..18].to_vec();
    again.push(fixtures::poll_record(
        &w.chamber,
        &w.detectors,
        slot(100),
        0.5,
        None,
    ));
    let report = ports.readings.store_polls(&again).await.unwrap();
    assert_eq!(
        (report.readings_new, report.readings_existing),
        (273, 273 * 18)
    );
    assert_eq!(
        report.existing_polls,
        records[..18]
            .iter()
            .map(|r| r.entry.poll)
            .collect::<Vec<_>>()
    );

    // Paged back in (slot, detector) order, every reading equal to what was written.
    let mut expected: Vec<Reading> = records
        .iter()
        .chain(again.last())
        .flat_map(|r| r.readings.clone())
        .collect();
    expected.sort_by_key(|r| (r.slot, r.detector_id));
    let mut query = all(ReadingScope::Chamber(w.chamber.id));
    query.page = PageRequest::first(PageSize::new(1000).unwrap());
    let mut got = Vec::new();
    loop {
        let page = ports.readings.query(w.org.id, &query).await.unwrap();
        got.extend(page.items);
        match page.next {
            Some(next) => query.page.after = Some(next),
            None => break,
        }
    }
    assert_eq!(got, expected);

    // One detector, paged: its own slots in order.
    let mut query = all(ReadingScope::Detector(w.detectors[7].id));
    query.page.size = PageSize::new(5).unwrap();
    let mut slots = Vec::new();
    loop {
        let page = ports.readings.query(w.org.id, &query).await.unwrap();
        slots.extend(page.items.iter().map(|r| r.slot));
        match page.next {
            Some(next) => query.page.after = Some(next),
            None => break,
        }
    }
    let mut expected_slots: Vec<_> = (0..37).map(slot).collect();
    expected_slots.push(slot(100));
    assert_eq!(slots, expected_slots);
}

#[tokio::test]
async fn too_many_readings_are_refused_before_any_write() {
    let ports = StorePorts::from_adapter(Arc::new(
        SqliteStore::connect(&SqliteConfig::memory()).await.unwrap(),
    ));
    let w = wide_world(&ports, 1000).await;
    let polls = MAX_READINGS_PER_WRITE / 1000 + 1;
    let records: Vec<_> = (0..polls as i64)
        .map(|s| fixtures::poll_record(&w.chamber, &w.detectors, slot(s), 0.5, None))
        .collect();
    match ports.readings.store_polls(&records).await {
        Err(StoreError::Invalid(e)) => {
            assert_eq!(e.field, "readings");
            assert!(matches!(e.rule, Rule::TooLong { .. }));
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let ledger = ports
        .ledger
        .list(w.org.id, &LedgerQuery::all(w.chamber.id))
        .await
        .unwrap();
    assert!(ledger.items.is_empty());
}

#[tokio::test]
async fn every_outcome_round_trips_through_the_ledger() {
    let ports = StorePorts::from_adapter(Arc::new(
        SqliteStore::connect(&SqliteConfig::memory()).await.unwrap(),
    ));
    let w = world(&ports, "outcomes").await;
    let outcomes = [
        PollOutcome::Ok,
        PollOutcome::CorruptedValues { corrupted: 3 },
        PollOutcome::Timeout,
        PollOutcome::ConnectionFailed {
            reason: "connection refused".into(),
        },
        PollOutcome::Blocked {
            reason: "loopback address \"127.0.0.1\"".into(),
        },
        PollOutcome::HttpStatus { status: 503 },
        PollOutcome::TooLarge {
            limit_bytes: 1 << 20,
        },
        PollOutcome::Malformed {
            reason: "expected value at line 1 column 1".into(),
        },
        PollOutcome::Missed,
        PollOutcome::Expired {
            reason: ExpiryReason::Late,
        },
        PollOutcome::Cancelled,
    ];
    let entries: Vec<_> = outcomes
        .iter()
        .enumerate()
        .map(|(i, outcome)| {
            let mut e = LedgerEntry::unfetched(
                PollId {
                    chamber_id: w.chamber.id,
                    slot: slot(i as i64),
                },
                outcome.clone(),
                2,
                slot(i as i64 + 1),
            );
            if i % 2 == 0 {
                e.requested_at = Some(slot(i as i64));
                e.latency = Some(Duration::from_millis(250));
            }
            e
        })
        .collect();
    assert_eq!(ports.ledger.record(&entries).await.unwrap(), 11);
    let stored = ports
        .ledger
        .list(w.org.id, &LedgerQuery::all(w.chamber.id))
        .await
        .unwrap();
    assert_eq!(stored.items, entries);
    let failures = ports
        .ledger
        .list(
            w.org.id,
            &LedgerQuery {
                failures_only: true,
                ..LedgerQuery::all(w.chamber.id)
            },
        )
        .await
        .unwrap();
    assert_eq!(failures.items.len(), 10);
}

#[tokio::test]
async fn corrupt_rows_are_unavailable_naming_table_and_column() {
    let store = Arc::new(SqliteStore::connect(&SqliteConfig::memory()).await.unwrap());
    let ports = StorePorts::from_adapter(store.clone());
    let w = world(&ports, "corrupt").await;
    ports
        .readings
        .store_polls(&[fixtures::poll_record(
            &w.chamber,
            &w.detectors,
            slot(1),
            20.0,
            None,
        )])
        .await
        .unwrap();
    let pool = store.pool();
    let corrupt = |sql: &'static str| async move {
        sqlx::query(sql).execute(pool).await.expect("corrupt a row");
    };
    // The poll is in `polls` or `polls_recent`, whichever holds its slot: changed in both.
    let corrupt_poll = |sql: &'static str| async move {
        let mut changed = 0;
        for table in ["polls", "polls_recent"] {
            let sql = sql.replace("UPDATE polls ", &format!("UPDATE {table} "));
            changed += sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(pool)
                .await
                .expect("corrupt a poll")
                .rows_affected();
        }
        assert_eq!(changed, 1, "{sql}");
    };

    corrupt("UPDATE chambers SET endpoint = 'ftp://chambers.test/x'").await;
    unavailable_naming(
        ports.chambers.get(w.org.id, w.chamber.id).await,
        "chambers.endpoint",
    );
    unavailable_naming(
        ports.chambers.load_for_poll(w.chamber.id).await,
        "chambers.endpoint",
    );
    corrupt("UPDATE chambers SET endpoint = 'http://chambers.test/chamber-1'").await;
    corrupt(
        "UPDATE chambers SET health_policy = \
         '{\"degraded_after\": 0, \"down_after_failures\": 1, \"down_after_ms\": 0}'",
    )
    .await;
    unavailable_naming(
        ports.chambers.get(w.org.id, w.chamber.id).await,
        "chambers.health_policy",
    );
    corrupt(
        "UPDATE chambers SET health_policy = \
         '{\"degraded_after\": 3, \"down_after_failures\": 10, \"down_after_ms\": 60000}'",
    )
    .await;
    assert_eq!(
        ports.chambers.get(w.org.id, w.chamber.id).await.unwrap(),
        w.chamber,
        "the JSON the adapter writes"
    );

    corrupt("UPDATE detectors SET key = 'temperature'").await;
    unavailable_naming(
        ports.detectors.get(w.org.id, w.detectors[0].id).await,
        "detectors.key",
    );

    // An infinity at the first position, and a reason number no reason has.
    corrupt_poll("UPDATE polls SET value = unhex('000000000000f07f' || substr(hex(value), 17))")
        .await;
    unavailable_naming(
        ports
            .readings
            .query(w.org.id, &all(ReadingScope::Chamber(w.chamber.id)))
            .await,
        "polls.value",
    );
    unavailable_naming(
        ports.readings.latest(w.org.id, &[w.chamber.id]).await,
        "polls.value",
    );
    corrupt_poll(
        "UPDATE polls SET value = unhex('000000000000f87f' || substr(hex(value), 17)), \
         corruption = unhex('09' || substr('000000000000000000000000', 1, 2 * (length(value) / 8 - 1)))",
    )
    .await;
    unavailable_naming(
        ports
            .readings
            .query(w.org.id, &all(ReadingScope::Chamber(w.chamber.id)))
            .await,
        "polls.corruption",
    );

    corrupt_poll("UPDATE polls SET outcome = 'timeout'").await;
    unavailable_naming(
        ports
            .ledger
            .list(w.org.id, &LedgerQuery::all(w.chamber.id))
            .await,
        "polls.outcome",
    );

    corrupt("UPDATE organizations SET name = '   '").await;
    unavailable_naming(
        OrganizationRepository::get(&*store, w.org.id).await,
        "organizations.name",
    );
}

#[tokio::test]
async fn a_check_of_the_schema_is_invalid_input() {
    let ports = StorePorts::from_adapter(Arc::new(
        SqliteStore::connect(&SqliteConfig::memory()).await.unwrap(),
    ));
    let w = world(&ports, "checks").await;
    let mut batch = fixtures::batch(w.org.id, w.section.id, "backwards", slot(10));
    batch.ended_at = Some(slot(5));
    match ports.batches.start(&batch).await {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "batches_ended_after_start"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn retention_leaves_other_chambers_and_later_slots_alone() {
    let ports = StorePorts::from_adapter(Arc::new(
        SqliteStore::connect(&SqliteConfig::memory()).await.unwrap(),
    ));
    let a = world(&ports, "a").await;
    let b = world(&ports, "b").await;
    for w in [&a, &b] {
        let records: Vec<_> = (0..10)
            .map(|s| fixtures::poll_record(&w.chamber, &w.detectors, slot(s), 1.0, None))
            .collect();
        ports.readings.store_polls(&records).await.unwrap();
    }
    // A cutoff inside a day: this adapter removes exactly what is before it.
    ports.readings.prune_before(slot(4)).await.unwrap();
    for w in [&a, &b] {
        let ledger = ports
            .ledger
            .list(w.org.id, &LedgerQuery::all(w.chamber.id))
            .await
            .unwrap();
        assert_eq!(
            ledger.items.iter().map(|e| e.poll.slot).collect::<Vec<_>>(),
            (4..10).map(slot).collect::<Vec<_>>()
        );
        let readings = ports
            .readings
            .query(w.org.id, &all(ReadingScope::Chamber(w.chamber.id)))
            .await
            .unwrap();
        assert_eq!(readings.items.len(), 12);
    }
    assert!(
        ports
            .readings
            .latest(a.org.id, &[a.chamber.id, ChamberId::random()])
            .await
            .unwrap()
            .len()
            == 1
    );
}

/// A database made before e-mail addresses became unique per organization: the migration
/// rebuilds `users` without losing a user or a token (dropping the old table must not cascade
/// to `api_tokens`), and the keys still hold afterwards.
#[tokio::test]
async fn the_per_organization_email_migration_keeps_users_and_tokens() {
    const PER_ORGANIZATION: i64 = 20_261_204_000_000;
    let dir = TempDir::new();
    let pool = common::database_before(&dir.db(), PER_ORGANIZATION).await;
    let (org, user, token) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    for statement in [
        "INSERT INTO organizations (id, name, created_at) VALUES (?1, 'Lab', 0)",
        "INSERT INTO users (id, organization_id, email, display_name, role, created_at) \
         VALUES (?2, ?1, 'ada@lab.example', 'Ada', 'admin', 0)",
        "INSERT INTO api_tokens (id, organization_id, user_id, name, token_hash, role_cap, \
         created_at) VALUES (?3, ?1, ?2, 'ci', zeroblob(32), 'admin', 0)",
    ] {
        sqlx::query(statement)
            .bind(org)
            .bind(user)
            .bind(token)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    let store = open(&dir.db()).await;
    let ada = Email::parse("ada@lab.example").unwrap();
    let found = UserRepository::find_by_email(&*store, &ada).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id.as_uuid(), &user);
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tokens, 1, "the token survived the rebuild");
    let broken: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_check")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(broken.is_empty(), "{broken:?}");

    // The same address in another organization is now another account...
    let ports = StorePorts::from_adapter(store.clone());
    let other = world(&ports, "elsewhere").await;
    ports
        .users
        .create(&fixtures::user(
            other.org.id,
            "ada@lab.example",
            Role::Viewer,
        ))
        .await
        .unwrap();
    assert_eq!(ports.users.find_by_email(&ada).await.unwrap().len(), 2);
    // ...and the rebuilt table's keys still cascade: deleting Ada deletes her token.
    ports
        .users
        .delete(found[0].organization_id, found[0].id)
        .await
        .unwrap();
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(tokens, 0);
}

/// The store keeps the layout versions it read in memory: a chamber deleted and created again
/// with the same id (its version 1 now lists other detectors) is written with its new layout,
/// not the one remembered.
#[tokio::test]
async fn a_chamber_created_again_with_its_id_is_written_with_its_new_layout() {
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    let ports = StorePorts::from_adapter(store.clone());
    let w = world(&ports, "again").await;
    let first = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 21.5, None);
    ports
        .readings
        .store_polls(std::slice::from_ref(&first))
        .await
        .unwrap();
    ports.chambers.delete(w.org.id, w.chamber.id).await.unwrap();
    let detectors = vec![
        fixtures::detector(&w.chamber, "co2"),
        fixtures::detector(&w.chamber, "o2"),
    ];
    ports.chambers.create(&w.chamber, &detectors).await.unwrap();
    let second = fixtures::poll_record(&w.chamber, &detectors, slot(2), 7.25, None);
    ports
        .readings
        .store_polls(std::slice::from_ref(&second))
        .await
        .unwrap();
    let mut stored = ports
        .readings
        .query(w.org.id, &all(ReadingScope::Chamber(w.chamber.id)))
        .await
        .unwrap()
        .items;
    let mut expected = second.readings.clone();
    stored.sort_by_key(|r| r.detector_id);
    expected.sort_by_key(|r| r.detector_id);
    assert_eq!(stored, expected);
}
