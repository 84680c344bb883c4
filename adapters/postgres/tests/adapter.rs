//! PostgreSQL-specific behaviour beyond the shared conformance suite: timeouts, unreachable
//! servers, partitions ahead of time.

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::ports::{ReadingRepository, StoreError};
use chamberlain_postgres::testing::{fresh_store, server_url};
use chamberlain_postgres::{PgConfig, PgStore, partitions};

#[tokio::test]
async fn partitions_exist_from_yesterday_to_a_week_ahead() {
    let (store, _db) = fresh_store().await;
    let days = partitions::existing_days(store.pool()).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let today = partitions::day_of(Timestamp::from_unix_millis(now.as_millis() as i64));
    for day in today - 1..=today + 7 {
        assert!(days.contains(&day), "day {day} has no partition: {days:?}");
    }
    // Maintenance is idempotent.
    store
        .maintain(Timestamp::from_unix_millis(now.as_millis() as i64))
        .await
        .unwrap();
    assert_eq!(partitions::existing_days(store.pool()).await.unwrap(), days);
    // Retention drops exactly the days before the cutoff's day.
    store
        .prune_before(partitions::day_start(today))
        .await
        .unwrap();
    let left = partitions::existing_days(store.pool()).await.unwrap();
    assert_eq!(left.first(), Some(&today));
}

#[tokio::test]
async fn a_statement_past_the_timeout_is_unavailable_not_a_driver_error() {
    let (_store, db) = fresh_store().await;
    let config = PgConfig::from_url(&server_url())
        .unwrap()
        .with_database(&db.name)
        .with_statement_timeout(Duration::from_millis(200))
        .unwrap();
    let store = PgStore::connect(&config).await.unwrap();
    // Hold a lock the write needs for longer than the statement timeout.
    let mut blocker = store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE chamber_latest IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let err = store
        .prune_before(Timestamp::from_unix_millis(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable { message } if message.contains("57014")),
        "{err:?}"
    );
    assert!(err.is_transient());
    blocker.rollback().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config =
        PgConfig::from_url(&format!("postgres://postgres@127.0.0.1:{port}/x")).unwrap();
    config.acquire_timeout = Duration::from_secs(2);
    let err = PgStore::connect(&config).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
}

/// `chamber_latest` is rewritten once per poll of each chamber: the rewrites stay on their
/// rows' pages (HOT updates), so the table keeps the size of its live rows between vacuums.
/// With full pages (PostgreSQL's default) these 40 rounds of 200 chambers grew it to 50 pages.
#[tokio::test]
async fn the_latest_rows_are_rewritten_in_place() {
    use chamberlain_domain::conformance::fixtures;
    use chamberlain_domain::ports::{ChamberRepository, OrganizationRepository, SectionRepository};

    let (store, _db) = fresh_store().await;
    let org = fixtures::organization("latest in place");
    OrganizationRepository::create(&store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&store, &section).await.unwrap();
    let mut chambers = Vec::new();
    for i in 0..200 {
        let c = fixtures::chamber(org.id, section.id, &format!("c{i:03}"), 1);
        let ds: Vec<_> = (0..8)
            .map(|d| fixtures::detector(&c, &format!("d{d}")))
            .collect();
        ChamberRepository::create(&store, &c, &ds).await.unwrap();
        chambers.push((c, ds));
    }
    let size = || async {
        sqlx::query_scalar::<_, i64>("SELECT pg_relation_size('chamber_latest') / 8192")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    for round in 0..40u64 {
        let slot = fixtures::T0 + Duration::from_secs(round);
        let polls: Vec<_> = chambers
            .iter()
            .map(|(c, ds)| fixtures::poll_record(c, ds, slot, round as f64, None))
            .collect();
        ReadingRepository::store_polls(&store, &polls)
            .await
            .unwrap();
    }
    let pages = size().await;
    // 200 rows of ~200 bytes: 5 pages full, 10 half full.
    assert!(
        pages <= 20,
        "chamber_latest grew to {pages} pages for 200 rows"
    );
}
