//! Lateness, duplicates and missed slots for scripted requests: the slots are set explicitly
//! and the wall clock is a manual one, so no timing is involved.

use std::time::Duration;

use chamberlain_simulator::{Duplicates, SLOT_WINDOW};
use hyper::{Method, StatusCode};

use crate::support::{Client, T0, fleet, start};

#[tokio::test]
async fn lateness_is_arrival_minus_slot() {
    let (config, _clock) = fleet(10, 1);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    // 100 requests late by 0..=99 ms, one 5 s late, one 30 ms early.
    for late in 0..100 {
        let chamber = late % 10;
        let answer = client
            .get(&format!("/chambers/{chamber}"), Some(T0 - late), Some(1))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    client.get("/chambers/0", Some(T0 - 5_000), Some(1)).await;
    client
        .get("/chambers/0/metrics", Some(T0 + 30), Some(1))
        .await;

    let report = simulator.report();
    assert_eq!(report.requests, 102);
    let lateness = report.lateness_ms;
    assert_eq!(lateness.samples, 102);
    assert_eq!(lateness.early, 1);
    // Ranks: the early request counts as 0, then 0..=99, then 5000.
    assert_eq!(lateness.p50, Some(49));
    assert_eq!(lateness.p99, Some(99));
    assert_eq!(lateness.max, Some(5_000));
}

#[tokio::test]
async fn lateness_above_128_ms_is_within_two_percent() {
    let (config, _clock) = fleet(1, 1);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    for slot in 0..10 {
        client
            .get("/chambers/0", Some(T0 - 1_000 - slot), Some(1))
            .await;
    }
    let lateness = simulator.report().lateness_ms;
    let p50 = lateness.p50.unwrap();
    assert!((1_004..=1_004 + 1_004 / 50).contains(&p50), "{p50}");
    assert_eq!(lateness.max, Some(1_009));
}

#[tokio::test]
async fn repeated_slots_are_duplicates_split_by_attempt() {
    let (config, _clock) = fleet(3, 1);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    let script: &[(u32, i64, Option<u32>)] = &[
        (0, T0, Some(1)),
        (0, T0, Some(1)),         // the same poll twice
        (0, T0, Some(2)),         // a retry
        (0, T0, Some(3)),         // another retry
        (0, T0 + 1_000, Some(2)), // first seen with attempt 2: a retry request, no duplicate
        (0, T0 + 1_000, None),    // no attempt header counts as attempt 1
        (1, T0, Some(1)),         // another chamber, same slot: not a duplicate
        (1, T0 - 1_000, Some(1)), // out of order, new
    ];
    for &(chamber, slot, attempt) in script {
        client
            .get(&format!("/chambers/{chamber}"), Some(slot), attempt)
            .await;
    }
    let report = simulator.report();
    assert_eq!(
        report.duplicates,
        Duplicates {
            attempt_one: 2,
            retries: 2
        }
    );
    assert_eq!(report.retry_requests, 3);
    assert_eq!(report.out_of_window, 0);
    let zero = report.chamber(0).unwrap();
    assert_eq!(zero.requests, 6);
    assert_eq!(
        zero.duplicates,
        Duplicates {
            attempt_one: 2,
            retries: 2
        }
    );
    assert_eq!(zero.first_slot, Some(T0));
    assert_eq!(zero.last_slot, Some(T0 + 1_000));
    let one = report.chamber(1).unwrap();
    assert_eq!(one.duplicates.total(), 0);
    assert_eq!(one.first_slot, Some(T0 - 1_000));
    assert!(report.chamber(2).is_none());
    assert_eq!(report.chambers_polled, 2);
    assert_eq!(report.min_requests_per_chamber, 0);
    assert_eq!(report.max_requests_per_chamber, 6);
    // No interval configured: missed slots are not counted.
    assert_eq!(report.missed_slots, None);
    assert_eq!(zero.missed_slots, None);
}

#[tokio::test]
async fn missed_slots_count_gaps_in_the_interval_grid() {
    let (config, _clock) = fleet(4, 1);
    let config = config
        .interval(Duration::from_secs(1))
        .chamber_interval(2, Duration::from_secs(5));
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    let script: &[(u32, i64)] = &[
        // Chamber 0: every slot, one of them twice.
        (0, T0),
        (0, T0 + 1_000),
        (0, T0 + 1_000),
        (0, T0 + 2_000),
        // Chamber 1: a gap of 3 intervals (2 missed), a gap of 4 intervals later
        // partly filled out of order: 12_000 and 14_000 missing.
        (1, T0),
        (1, T0 + 1_000),
        (1, T0 + 4_000),
        (1, T0 + 5_000),
        (1, T0 + 9_000),
        (1, T0 + 8_000),
        (1, T0 + 6_000),
        // Chamber 2 at 5 s: 0, 5, 20 s: 10 and 15 s missing.
        (2, T0),
        (2, T0 + 5_000),
        (2, T0 + 20_000),
        // Chamber 3: never polled, nothing missed (no first slot).
    ];
    for &(chamber, slot) in script {
        client
            .get(&format!("/chambers/{chamber}"), Some(slot), Some(1))
            .await;
    }
    let report = simulator.report();
    let missed = |chamber| report.chamber(chamber).unwrap().missed_slots;
    assert_eq!(missed(0), Some(0));
    assert_eq!(missed(1), Some(3)); // 2_000, 3_000, 7_000
    assert_eq!(missed(2), Some(2));
    assert_eq!(report.missed_slots, Some(5));
    assert_eq!(report.duplicates.attempt_one, 1);
}

#[tokio::test]
async fn slots_older_than_the_window_are_out_of_window() {
    let (config, _clock) = fleet(1, 1);
    let simulator = start(config.interval(Duration::from_secs(1))).await;
    let mut client = Client::connect(simulator.addr()).await;
    let window = SLOT_WINDOW as i64;
    for i in 0..=window {
        client
            .get("/chambers/0", Some(T0 + i * 1_000), Some(1))
            .await;
    }
    // T0 fell out of the window: a retry of it cannot be told from a new slot.
    client.get("/chambers/0", Some(T0), Some(2)).await;
    // T0 + 1 s is the oldest slot still remembered.
    client.get("/chambers/0", Some(T0 + 1_000), Some(2)).await;
    let report = simulator.report();
    assert_eq!(report.out_of_window, 1);
    assert_eq!(report.duplicates.retries, 1);
    assert_eq!(report.missed_slots, Some(0));
}

#[tokio::test]
async fn reset_forgets_everything() {
    let (config, _clock) = fleet(2, 1);
    let simulator = start(config.interval(Duration::from_secs(1))).await;
    let mut client = Client::connect(simulator.addr()).await;
    client.get("/chambers/0", Some(T0 - 10), Some(1)).await;
    client.get("/chambers/0", Some(T0 - 10), Some(1)).await;
    client.get("/chambers/0", Some(T0 + 5_000), Some(1)).await;
    assert_eq!(simulator.report().requests, 3);
    simulator.reset();
    let report = simulator.report();
    assert_eq!(report.requests, 0);
    assert_eq!(report.lateness_ms.samples, 0);
    assert_eq!(report.lateness_ms.p50, None);
    assert_eq!(report.duplicates.total(), 0);
    assert_eq!(report.missed_slots, Some(0));
    assert!(report.per_chamber.is_empty());
    // The slot seen before the reset is new again.
    client.get("/chambers/0", Some(T0 - 10), Some(1)).await;
    let report = simulator.report();
    assert_eq!(report.duplicates.total(), 0);
    assert_eq!(report.lateness_ms.max, Some(10));
}

#[tokio::test]
async fn report_is_served_as_json_and_printed_as_a_table() {
    let (config, _clock) = fleet(3, 2);
    let simulator = start(config.interval(Duration::from_secs(1))).await;
    let mut client = Client::connect(simulator.addr()).await;
    client.get("/chambers/0", Some(T0 - 7), Some(1)).await;
    client.get("/chambers/0", Some(T0 + 2_000), Some(1)).await;
    let answer = client.get("/report", None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(json["requests"], 2);
    assert_eq!(json["missed_slots"], 1);
    assert_eq!(json["lateness_ms"]["max"], 7);
    assert_eq!(json["per_chamber"][0]["chamber"], 0);
    // Asking for the report is not a chamber request.
    assert_eq!(simulator.report().requests, 2);
    let table = simulator.report().to_string();
    assert!(
        table.starts_with("simulator report: 3 chambers x 2 detectors"),
        "{table}"
    );
    assert!(table.contains("missed slots    1"), "{table}");
    assert!(table.contains("#0: 1 missed"), "{table}");
}

#[tokio::test]
async fn delete_on_the_report_starts_a_new_window_over_http() {
    let (config, _clock) = fleet(2, 1);
    let simulator = start(config.interval(Duration::from_secs(1))).await;
    let mut client = Client::connect(simulator.addr()).await;
    client.get("/chambers/0", Some(T0 - 30), Some(1)).await;
    client.get("/chambers/1", Some(T0), Some(1)).await;
    assert_eq!(simulator.report().requests, 2);
    let answer = client
        .request(Method::DELETE, "/report", None, None)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let report = simulator.report();
    assert_eq!(report.requests, 0);
    assert_eq!(report.lateness_ms.max, None);
    // Only the report can be deleted; a chamber stays GET only.
    let answer = client
        .request(Method::DELETE, "/chambers/0", None, None)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    client.get("/chambers/0", Some(T0 - 4), Some(1)).await;
    let report = simulator.report();
    assert_eq!(report.requests, 1);
    assert_eq!(report.lateness_ms.max, Some(4));
}
