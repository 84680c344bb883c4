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

/// A store keeps the detector layouts it has read; a layout changed by another process (a
/// gateway adding or deleting a detector) is seen at this store's next write of the chamber.
#[tokio::test]
async fn a_layout_changed_by_another_process_is_seen_at_the_next_write() {
    use chamberlain_domain::conformance::fixtures;
    use chamberlain_domain::conformance::store::world;
    use chamberlain_domain::ports::DetectorRepository;

    let (worker, db) = fresh_store().await;
    let config = PgConfig::from_url(&server_url())
        .unwrap()
        .with_database(&db.name);
    let gateway = PgStore::connect(&config).await.unwrap();
    let ports = fixtures::StorePorts::from_adapter(std::sync::Arc::new(gateway.clone()));
    let w = world(&ports, "layout elsewhere").await;
    let slot = |s: u64| fixtures::T0 + Duration::from_secs(s);
    let first = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 1.0, None);
    let report = worker.store_polls(&[first]).await.unwrap();
    assert_eq!(report.readings_new, 2);

    // Added elsewhere: the worker stores its readings.
    let added = fixtures::detector(&w.chamber, "co2");
    DetectorRepository::add(&gateway, &added).await.unwrap();
    let mut three = w.detectors.clone();
    three.push(added.clone());
    let second = fixtures::poll_record(&w.chamber, &three, slot(2), 2.0, None);
    let report = worker.store_polls(&[second]).await.unwrap();
    assert_eq!(report.readings_new, 3);
    let latest = worker.latest(w.org.id, &[w.chamber.id]).await.unwrap();
    assert_eq!(latest[0].readings.len(), 3);

    // Deleted elsewhere: a poll still carrying its reading is refused, as from any store.
    DetectorRepository::delete(&gateway, w.org.id, added.id)
        .await
        .unwrap();
    let third = fixtures::poll_record(&w.chamber, &three, slot(3), 3.0, None);
    let refused = worker.store_polls(&[third]).await.unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::MissingParent {
                parent: "detector",
                ..
            }
        ),
        "{refused:?}"
    );
    let fourth = fixtures::poll_record(&w.chamber, &w.detectors, slot(4), 4.0, None);
    assert_eq!(worker.store_polls(&[fourth]).await.unwrap().readings_new, 2);
}
