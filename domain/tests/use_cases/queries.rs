//! Aggregates per bucket and coverage from the ledger.

use std::time::Duration;

use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{CorruptionReason, LedgerEntry, PollId, PollOutcome, Role};
use chamberlain_domain::ports::{PollLedgerRepository, ReadingRepository, ReadingScope};
use chamberlain_domain::usecases::{CoverageScope, UseCaseError};

use crate::support::Harness;

#[tokio::test]
async fn aggregates_are_per_detector_and_bucket_and_skip_corrupted_values() {
    let h = Harness::new();
    let actor = h.tenant("a", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    // Slots at T0 + 0..6 s: values 1..=6 (detector 0) and 2..=7 (detector 1); slot 3 corrupted.
    let records: Vec<_> = (0..6)
        .map(|i| {
            let slot = T0 + Duration::from_secs(i);
            let corrupt = (i == 3).then_some(CorruptionReason::Unparsable);
            fixtures::poll_record(&c.chamber, &c.detectors, slot, (i + 1) as f64, corrupt)
        })
        .collect();
    h.store.store_polls(&records).await.unwrap();
    let to = T0 + Duration::from_secs(6);
    let aggs = h
        .queries
        .aggregate(
            &actor,
            ReadingScope::Chamber(c.chamber.id),
            T0,
            to,
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    let first = c.detectors[0].id;
    let mine: Vec<_> = aggs.iter().filter(|a| a.detector_id == first).collect();
    assert_eq!(mine.len(), 2);
    // T0 is bucket-aligned at 3 s in the fixtures' epoch.
    assert_eq!(T0.as_unix_millis() % 3000, 0, "fixture assumption");
    assert_eq!((mine[0].min, mine[0].max, mine[0].count), (1.0, 3.0, 3));
    assert!((mine[0].mean - 2.0).abs() < 1e-9);
    assert_eq!(
        (mine[1].min, mine[1].max, mine[1].count),
        (5.0, 6.0, 2),
        "slot 3 was corrupted"
    );
    assert_eq!(aggs.len(), 2 * c.detectors.len());

    match h
        .queries
        .aggregate(
            &actor,
            ReadingScope::Chamber(c.chamber.id),
            T0,
            to,
            Duration::from_millis(10),
        )
        .await
    {
        Err(UseCaseError::Invalid(e)) => assert_eq!(e.field, "bucket"),
        other => panic!("expected an invalid bucket, got {other:?}"),
    }
}

#[tokio::test]
async fn coverage_counts_read_failed_and_missed_slots_and_is_tenant_scoped() {
    let h = Harness::new();
    let actor = h.tenant("a", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    let at = |s: u64| T0 + Duration::from_secs(s);
    let ok: Vec<_> = (0..3)
        .map(|i| fixtures::poll_record(&c.chamber, &c.detectors, at(i), 1.0, None))
        .collect();
    h.store.store_polls(&ok).await.unwrap();
    let poll = |s| PollId {
        chamber_id: c.chamber.id,
        slot: at(s),
    };
    h.store
        .record(&[
            LedgerEntry::unfetched(poll(3), PollOutcome::Missed, 0, at(4)),
            LedgerEntry::unfetched(poll(4), PollOutcome::Timeout, 1, at(5)),
        ])
        .await
        .unwrap();
    let cov = h
        .queries
        .coverage(&actor, CoverageScope::Chamber(c.chamber.id), T0, at(10))
        .await
        .unwrap();
    assert_eq!((cov.slots, cov.read, cov.failed, cov.missed), (5, 3, 1, 1));
    assert!((cov.ratio() - 0.6).abs() < 1e-9);

    let other = h.tenant("b", Role::Admin).await;
    assert_eq!(
        h.queries
            .coverage(&other, CoverageScope::Chamber(c.chamber.id), T0, at(10))
            .await,
        Err(UseCaseError::NotFound { entity: "chamber" })
    );
}

#[tokio::test]
async fn coverage_per_bucket_has_a_cell_for_every_bucket_empty_ones_too() {
    let h = Harness::new();
    let actor = h.tenant("a", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    let at = |s: u64| T0 + Duration::from_secs(s);
    // Read at 0 and 1, nothing in 2..4, a timeout at 4 and a missed slot at 7.
    let ok: Vec<_> = (0..2)
        .map(|i| fixtures::poll_record(&c.chamber, &c.detectors, at(i), 1.0, None))
        .collect();
    h.store.store_polls(&ok).await.unwrap();
    let poll = |s| PollId {
        chamber_id: c.chamber.id,
        slot: at(s),
    };
    h.store
        .record(&[
            LedgerEntry::unfetched(poll(4), PollOutcome::Timeout, 1, at(5)),
            LedgerEntry::unfetched(poll(7), PollOutcome::Missed, 0, at(8)),
        ])
        .await
        .unwrap();
    let cells = h
        .queries
        .coverage_per_bucket(&actor, c.chamber.id, T0, at(8), Duration::from_secs(2))
        .await
        .unwrap();
    let seen: Vec<_> = cells
        .iter()
        .map(|(start, c)| {
            (
                start.as_unix_millis() - T0.as_unix_millis(),
                (c.slots, c.read, c.failed, c.missed),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (0, (2, 2, 0, 0)),
            (2000, (0, 0, 0, 0)),
            (4000, (1, 0, 1, 0)),
            (6000, (1, 0, 0, 1)),
        ]
    );
    assert!(matches!(
        h.queries
            .coverage_per_bucket(&actor, c.chamber.id, T0, at(8), Duration::from_millis(10))
            .await,
        Err(UseCaseError::Invalid(_))
    ));
}

/// Reads a whole export.
async fn export_text(mut export: chamberlain_domain::usecases::CsvExport) -> String {
    let mut text = String::new();
    while let Some(chunk) = export.next_chunk().await.unwrap() {
        text.push_str(&chunk);
    }
    text
}

#[tokio::test]
async fn a_csv_export_is_the_header_then_each_chambers_readings_in_slot_order() {
    use chamberlain_domain::usecases::{CSV_HEADER, ExportScope, NewChamber, NewDetector};
    let h = Harness::new();
    let actor = h.tenant("a", Role::Operator).await;
    let first = h.json_chamber(&actor, "c1").await;
    let section = first.chamber.section_id;
    let second = h
        .admin
        .create_chamber(
            &actor,
            NewChamber {
                section_id: section,
                name: "c2".into(),
                url: "http://chamber.test/c2".into(),
                format: "json".into(),
                interval: Duration::from_secs(1),
                timeout: None,
                detectors: vec![NewDetector {
                    name: "t".into(),
                    key: "/t".into(),
                    ..Default::default()
                }],
            },
        )
        .await
        .unwrap();
    let at = |s: u64| T0 + Duration::from_secs(s);
    // Slot 1 of the first chamber is corrupted; slot 9 is outside the range.
    let mut records: Vec<_> = [0, 1, 2, 9]
        .iter()
        .map(|&i| {
            let corrupt = (i == 1).then_some(CorruptionReason::Unparsable);
            fixtures::poll_record(&first.chamber, &first.detectors, at(i), 20.0, corrupt)
        })
        .collect();
    records.push(fixtures::poll_record(
        &second.chamber,
        &second.detectors,
        at(0),
        5.0,
        None,
    ));
    h.store.store_polls(&records).await.unwrap();
    let export = |scope| h.queries.export_csv(&actor, scope, T0, at(5));

    let chamber = export_text(
        export(ExportScope::Chamber(first.chamber.id))
            .await
            .unwrap(),
    )
    .await;
    let lines: Vec<&str> = chamber.lines().collect();
    assert_eq!(lines[0], CSV_HEADER.trim_end());
    // 3 slots × 2 detectors, by (slot, detector).
    assert_eq!(lines.len(), 7, "{chamber}");
    assert!(lines[1].starts_with(&at(0).to_rfc3339()), "{chamber}");
    assert!(lines[6].starts_with(&at(2).to_rfc3339()), "{chamber}");
    assert_eq!(
        lines.iter().filter(|l| l.ends_with(",unparsable,")).count(),
        2,
        "a corrupted reading has no value and its reason: {chamber}"
    );

    let whole = export_text(export(ExportScope::Section(section)).await.unwrap()).await;
    assert_eq!(whole.lines().count(), 1 + 6 + 1, "{whole}");
    assert_eq!(
        whole.matches(&second.chamber.id.to_string()).count(),
        1,
        "{whole}"
    );

    let one = export_text(
        export(ExportScope::Detector(first.detectors[0].id))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(one.lines().count(), 1 + 3, "{one}");

    // Another organization's scopes are not found before any line is made.
    let other = h.tenant("b", Role::Admin).await;
    for scope in [
        ExportScope::Chamber(first.chamber.id),
        ExportScope::Section(section),
        ExportScope::Detector(first.detectors[0].id),
    ] {
        assert!(
            matches!(
                h.queries.export_csv(&other, scope, T0, at(5)).await,
                Err(UseCaseError::NotFound { .. })
            ),
            "{scope:?}"
        );
    }
    assert!(matches!(
        h.queries
            .export_csv(&actor, ExportScope::Chamber(first.chamber.id), at(5), T0)
            .await,
        Err(UseCaseError::Invalid(_))
    ));
}
