//! Conformance cases of the repository ports. Every function takes a fresh [`StorePorts`].

use std::time::Duration;

use crate::conformance::fixtures::{self, StorePorts, T0};
use crate::model::{
    ApiToken, ApiTokenId, Chamber, ChamberHealth, ChamberState, CorruptionReason, Detector, Email,
    ExpiryReason, HealthState, LedgerEntry, Organization, Page, PageRequest, PageSize, PollId,
    PollOutcome, Role, Section, TokenHash,
};
use crate::ports::{
    Aggregate, AggregateQuery, ChamberFilter, ChamberWithDetectors, ItemError, LedgerQuery,
    LedgerTally, ReadingCursor, ReadingQuery, ReadingScope, StoreError, TallyQuery,
};
use crate::time::Timestamp;

/// An organization with one section, one chamber (1 s) and two detectors.
#[derive(Debug, Clone)]
pub struct World {
    pub org: Organization,
    pub section: Section,
    pub chamber: Chamber,
    pub detectors: Vec<Detector>,
}

/// Creates a [`World`] through the ports.
pub async fn world(p: &StorePorts, label: &str) -> World {
    let org = fixtures::organization(&format!("org {label}"));
    p.organizations
        .create(&org)
        .await
        .expect("create organization");
    let section = fixtures::section(org.id, "growth room");
    p.sections.create(&section).await.expect("create section");
    let chamber = fixtures::chamber(org.id, section.id, "chamber-1", 1);
    let detectors = vec![
        fixtures::detector(&chamber, "temperature"),
        fixtures::detector(&chamber, "humidity"),
    ];
    p.chambers
        .create(&chamber, &detectors)
        .await
        .expect("create chamber");
    World {
        org,
        section,
        chamber,
        detectors,
    }
}

fn nf<T>(entity: &'static str) -> Result<T, StoreError> {
    Err(StoreError::NotFound { entity })
}

fn slot(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + seconds * 1000)
}

fn page_of<K>(n: u32) -> PageRequest<K> {
    PageRequest {
        after: None,
        size: PageSize::new(n).expect("valid page size"),
    }
}

fn all_readings(scope: ReadingScope) -> ReadingQuery {
    ReadingQuery {
        scope,
        from: Timestamp::from_unix_millis(0),
        to: Timestamp::from_unix_millis(i64::MAX / 2),
        page: page_of(1000),
    }
}

fn all_ledger(w: &World) -> LedgerQuery {
    LedgerQuery {
        chamber_id: w.chamber.id,
        from: Timestamp::from_unix_millis(0),
        to: Timestamp::from_unix_millis(i64::MAX / 2),
        failures_only: false,
        page: page_of(1000),
    }
}

pub async fn sections_crud(p: &StorePorts) {
    let w = world(p, "sections").await;
    assert_eq!(
        p.sections.get(w.org.id, w.section.id).await.unwrap(),
        w.section
    );

    let mut dup = fixtures::section(w.org.id, "growth room");
    assert_eq!(
        p.sections.create(&dup).await,
        Err(StoreError::Duplicate {
            entity: "section",
            field: "name"
        })
    );
    dup.name = fixtures::name("cold store");
    p.sections.create(&dup).await.unwrap();

    let orphan = fixtures::section(crate::model::OrganizationId::random(), "nowhere");
    assert_eq!(
        p.sections.create(&orphan).await,
        Err(StoreError::MissingParent {
            entity: "section",
            parent: "organization"
        })
    );

    let mut renamed = dup.clone();
    renamed.name = fixtures::name("growth room");
    assert!(matches!(
        p.sections.update(&renamed).await,
        Err(StoreError::Duplicate { .. })
    ));
    renamed.name = fixtures::name("cold store 2");
    p.sections.update(&renamed).await.unwrap();
    assert_eq!(
        p.sections.get(w.org.id, dup.id).await.unwrap().name,
        renamed.name
    );

    assert_eq!(
        p.sections.delete(w.org.id, w.section.id).await,
        Err(StoreError::HasDependents {
            entity: "section",
            dependents: "chambers"
        })
    );
    p.sections.delete(w.org.id, dup.id).await.unwrap();
    assert_eq!(
        p.sections.get(w.org.id, dup.id).await,
        Err(StoreError::NotFound { entity: "section" })
    );
}

pub async fn chambers_are_created_with_their_detectors_or_not_at_all(p: &StorePorts) {
    let w = world(p, "chambers").await;
    let loaded = p
        .chambers
        .load_for_poll(w.chamber.id)
        .await
        .unwrap()
        .expect("chamber exists");
    assert_eq!(loaded.chamber, w.chamber);
    let mut ids: Vec<_> = loaded.detectors.iter().map(|d| d.id).collect();
    ids.sort();
    let mut expected: Vec<_> = w.detectors.iter().map(|d| d.id).collect();
    expected.sort();
    assert_eq!(ids, expected);

    // Two detectors of one name: refused, and the chamber is not half-created.
    let c2 = fixtures::chamber(w.org.id, w.section.id, "chamber-2", 5);
    let twins = vec![
        fixtures::detector(&c2, "co2"),
        fixtures::detector(&c2, "co2"),
    ];
    assert_eq!(
        p.chambers.create(&c2, &twins).await,
        Err(StoreError::Duplicate {
            entity: "detector",
            field: "name"
        })
    );
    assert_eq!(
        p.chambers.get(w.org.id, c2.id).await,
        Err(StoreError::NotFound { entity: "chamber" })
    );
    assert!(
        p.detectors
            .list_for_chamber(w.org.id, c2.id)
            .await
            .unwrap()
            .is_empty()
    );

    // Same name in the same section: refused.
    let same_name = fixtures::chamber(w.org.id, w.section.id, "chamber-1", 5);
    assert_eq!(
        p.chambers
            .create(&same_name, &[fixtures::detector(&same_name, "t")])
            .await,
        Err(StoreError::Duplicate {
            entity: "chamber",
            field: "name"
        })
    );
    // Unknown section: refused.
    let lost = fixtures::chamber(w.org.id, crate::model::SectionId::random(), "lost", 5);
    assert_eq!(
        p.chambers
            .create(&lost, &[fixtures::detector(&lost, "t")])
            .await,
        Err(StoreError::MissingParent {
            entity: "chamber",
            parent: "section"
        })
    );

    // Update, filter, active listing.
    p.chambers
        .create(&c2, &[fixtures::detector(&c2, "co2")])
        .await
        .unwrap();
    let mut paused = c2.clone();
    paused.state = ChamberState::Paused;
    paused.updated_at = T0 + Duration::from_secs(60);
    p.chambers.update(&paused).await.unwrap();
    assert_eq!(p.chambers.get(w.org.id, c2.id).await.unwrap(), paused);
    let active = p
        .chambers
        .list(
            w.org.id,
            ChamberFilter {
                state: Some(ChamberState::Active),
                ..Default::default()
            },
            page_of(10),
        )
        .await
        .unwrap();
    assert_eq!(
        active.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![w.chamber.id]
    );
    let everywhere = p.chambers.list_active(page_of(1000)).await.unwrap();
    assert!(everywhere.items.iter().any(|c| c.id == w.chamber.id));
    assert!(!everywhere.items.iter().any(|c| c.id == c2.id));

    // Delete takes detectors, readings and ledger with it.
    p.readings
        .store_polls(&[fixtures::poll_record(
            &w.chamber,
            &w.detectors,
            slot(1),
            20.0,
            None,
        )])
        .await
        .unwrap();
    p.chambers.delete(w.org.id, w.chamber.id).await.unwrap();
    assert_eq!(p.chambers.load_for_poll(w.chamber.id).await.unwrap(), None);
    assert_eq!(
        p.detectors.get(w.org.id, w.detectors[0].id).await,
        Err(StoreError::NotFound { entity: "detector" })
    );
    assert_eq!(
        p.chambers.delete(w.org.id, w.chamber.id).await,
        Err(StoreError::NotFound { entity: "chamber" })
    );
}

pub async fn many_chambers_are_created_together_or_not_at_all(p: &StorePorts) {
    let w = world(p, "many").await;
    let item = |label: &str| {
        let chamber = fixtures::chamber(w.org.id, w.section.id, label, 5);
        let detectors = vec![
            fixtures::detector(&chamber, "t"),
            fixtures::detector(&chamber, "rh"),
        ];
        ChamberWithDetectors { chamber, detectors }
    };
    let stored = |items: Vec<ChamberWithDetectors>| async move {
        let mut found = 0;
        for i in &items {
            if p.chambers.get(w.org.id, i.chamber.id).await.is_ok() {
                found += 1;
            }
        }
        found
    };

    // The third item takes the name of an existing chamber: nothing is written.
    let clash = vec![
        item("bulk-1"),
        item("bulk-2"),
        item("chamber-1"),
        item("bulk-4"),
    ];
    assert_eq!(
        p.chambers.create_many(&clash).await,
        Err(ItemError {
            index: 2,
            error: StoreError::Duplicate {
                entity: "chamber",
                field: "name"
            }
        })
    );
    assert_eq!(stored(clash.clone()).await, 0);
    assert!(
        p.detectors
            .list_for_chamber(w.org.id, clash[0].chamber.id)
            .await
            .unwrap()
            .is_empty()
    );

    // Two items of one name in one section: the second is blamed, nothing is written.
    let twins = vec![item("bulk-1"), item("bulk-2"), item("bulk-1")];
    assert_eq!(
        p.chambers.create_many(&twins).await,
        Err(ItemError {
            index: 2,
            error: StoreError::Duplicate {
                entity: "chamber",
                field: "name"
            }
        })
    );
    assert_eq!(stored(twins.clone()).await, 0);

    // An unknown section.
    let mut lost = vec![item("bulk-1"), item("bulk-2")];
    lost[1].chamber.section_id = crate::model::SectionId::random();
    let lost_id = lost[1].chamber.id;
    for d in &mut lost[1].detectors {
        d.chamber_id = lost_id;
    }
    assert_eq!(
        p.chambers.create_many(&lost).await,
        Err(ItemError {
            index: 1,
            error: StoreError::MissingParent {
                entity: "chamber",
                parent: "section"
            }
        })
    );
    assert_eq!(stored(lost).await, 0);

    // A clean set: every chamber and detector is there, and nothing is ever polled twice.
    let good: Vec<_> = (0..25).map(|i| item(&format!("bulk-{i}"))).collect();
    p.chambers.create_many(&good).await.unwrap();
    assert_eq!(stored(good.clone()).await, 25);
    for i in &good {
        let loaded = p
            .chambers
            .load_for_poll(i.chamber.id)
            .await
            .unwrap()
            .expect("created");
        assert_eq!(loaded.chamber, i.chamber);
        assert_eq!(loaded.detectors.len(), 2);
    }
    // Nothing at all is a valid (empty) transaction.
    p.chambers.create_many(&[]).await.unwrap();
}

pub async fn detectors_crud(p: &StorePorts) {
    let w = world(p, "detectors").await;
    let extra = fixtures::detector(&w.chamber, "pressure");
    p.detectors.add(&extra).await.unwrap();
    assert_eq!(
        p.detectors
            .add(&fixtures::detector(&w.chamber, "pressure"))
            .await,
        Err(StoreError::Duplicate {
            entity: "detector",
            field: "name"
        })
    );
    let mut renamed = extra.clone();
    renamed.name = fixtures::name("pressure hPa");
    p.detectors.update(&renamed).await.unwrap();
    assert_eq!(p.detectors.get(w.org.id, extra.id).await.unwrap(), renamed);
    assert_eq!(
        p.detectors
            .list_for_chamber(w.org.id, w.chamber.id)
            .await
            .unwrap()
            .len(),
        3
    );
    p.detectors.delete(w.org.id, extra.id).await.unwrap();
    assert_eq!(
        p.detectors
            .list_for_chamber(w.org.id, w.chamber.id)
            .await
            .unwrap()
            .len(),
        2
    );

    // Many chambers' detectors at once: each chamber's, in id order, nothing of others.
    let second = fixtures::chamber(w.org.id, w.section.id, "second", 1);
    let second_detectors = [
        fixtures::detector(&second, "a"),
        fixtures::detector(&second, "b"),
        fixtures::detector(&second, "c"),
    ];
    p.chambers.create(&second, &second_detectors).await.unwrap();
    let both = p
        .detectors
        .list_for_chambers(w.org.id, &[second.id, w.chamber.id])
        .await
        .unwrap();
    let of = |c: crate::model::ChamberId| {
        let mut ids: Vec<_> = both
            .iter()
            .filter(|d| d.chamber_id == c)
            .map(|d| d.id)
            .collect();
        let listed = ids.clone();
        ids.sort();
        assert_eq!(listed, ids, "each chamber's detectors in id order");
        ids.len()
    };
    assert_eq!((of(w.chamber.id), of(second.id), both.len()), (2, 3, 5));
    assert!(
        p.detectors
            .list_for_chambers(w.org.id, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn tenants_never_see_each_other(p: &StorePorts) {
    let a = world(p, "a").await;
    let b = world(p, "b").await;
    p.readings
        .store_polls(&[fixtures::poll_record(
            &a.chamber,
            &a.detectors,
            slot(1),
            20.0,
            None,
        )])
        .await
        .unwrap();
    assert_eq!(p.sections.get(b.org.id, a.section.id).await, nf("section"));
    assert_eq!(p.chambers.get(b.org.id, a.chamber.id).await, nf("chamber"));
    assert_eq!(
        p.detectors.get(b.org.id, a.detectors[0].id).await,
        nf("detector")
    );
    assert!(
        p.detectors
            .list_for_chamber(b.org.id, a.chamber.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        p.detectors
            .list_for_chambers(b.org.id, &[a.chamber.id])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        p.chambers.delete(b.org.id, a.chamber.id).await,
        nf("chamber")
    );
    assert_eq!(
        p.sections.delete(b.org.id, a.section.id).await,
        nf("section")
    );
    let mut hijack = a.chamber.clone();
    hijack.organization_id = b.org.id;
    hijack.section_id = b.section.id;
    assert_eq!(p.chambers.update(&hijack).await, nf("chamber"));
    // B's chamber into A's section: the section is not B's.
    let mut smuggle = b.chamber.clone();
    smuggle.section_id = a.section.id;
    assert_eq!(
        p.chambers.update(&smuggle).await,
        Err(StoreError::MissingParent {
            entity: "chamber",
            parent: "section"
        })
    );
    let b_sections = p.sections.list(b.org.id, page_of(100)).await.unwrap();
    assert_eq!(
        b_sections.items.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![b.section.id]
    );
    let b_chambers = p
        .chambers
        .list(b.org.id, ChamberFilter::default(), page_of(100))
        .await
        .unwrap();
    assert_eq!(
        b_chambers.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![b.chamber.id]
    );
    assert_eq!(
        p.readings
            .query(
                b.org.id,
                &all_readings(ReadingScope::Detector(a.detectors[0].id))
            )
            .await,
        nf("detector")
    );
    assert_eq!(
        p.readings
            .query(b.org.id, &all_readings(ReadingScope::Chamber(a.chamber.id)))
            .await,
        nf("chamber")
    );
    assert!(
        p.readings
            .latest(b.org.id, &[a.chamber.id])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        p.ledger.list(b.org.id, &all_ledger(&a)).await,
        nf("chamber")
    );
    // A's own view is intact.
    assert_eq!(
        p.chambers.get(a.org.id, a.chamber.id).await.unwrap(),
        a.chamber
    );
    assert_eq!(
        p.readings
            .latest(a.org.id, &[a.chamber.id])
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn paging_visits_every_item_exactly_once(p: &StorePorts) {
    let w = world(p, "paging").await;
    let mut expected = vec![w.section.id];
    for i in 0..24 {
        let s = fixtures::section(w.org.id, &format!("room {i:02}"));
        p.sections.create(&s).await.unwrap();
        expected.push(s.id);
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut request = page_of(10);
    let mut pages = 0;
    loop {
        let Page { items, next } = p.sections.list(w.org.id, request.clone()).await.unwrap();
        assert!(items.len() <= 10);
        seen.extend(items.iter().map(|s| s.id));
        pages += 1;
        match next {
            Some(cursor) => request.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, expected);

    // Readings page by (slot, detector) across slots.
    let records: Vec<_> = (0..7)
        .map(|s| fixtures::poll_record(&w.chamber, &w.detectors, slot(s), 20.0, None))
        .collect();
    p.readings.store_polls(&records).await.unwrap();
    let mut query = all_readings(ReadingScope::Chamber(w.chamber.id));
    query.page = page_of(3);
    let mut cursors: Vec<ReadingCursor> = Vec::new();
    loop {
        let page = p.readings.query(w.org.id, &query).await.unwrap();
        cursors.extend(page.items.iter().map(|r| ReadingCursor {
            slot: r.slot,
            detector_id: r.detector_id,
        }));
        match page.next {
            Some(c) => query.page.after = Some(c),
            None => break,
        }
    }
    assert_eq!(cursors.len(), 14);
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "strictly ordered, no repeats"
    );
}

pub async fn reading_writes_are_idempotent(p: &StorePorts) {
    let w = world(p, "idempotent").await;
    let first = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 20.0, None);
    let report = p
        .readings
        .store_polls(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!((report.readings_new, report.ledger_new), (2, 1));
    assert!(report.existing_polls.is_empty());

    // The same poll again (a redelivery), with different values: stored once, first wins.
    let again = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 99.0, None);
    let second = fixtures::poll_record(&w.chamber, &w.detectors, slot(2), 21.0, None);
    let report = p.readings.store_polls(&[again, second]).await.unwrap();
    assert_eq!((report.readings_new, report.readings_existing), (2, 2));
    assert_eq!((report.ledger_new, report.ledger_existing), (1, 1));
    assert_eq!(report.existing_polls, vec![first.entry.poll]);

    let stored = p
        .readings
        .query(
            w.org.id,
            &all_readings(ReadingScope::Detector(w.detectors[0].id)),
        )
        .await
        .unwrap();
    assert_eq!(stored.items.len(), 2);
    assert_eq!(stored.items[0], first.readings[0]);
    assert_eq!(
        p.ledger
            .list(w.org.id, &all_ledger(&w))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

pub async fn a_bad_row_refuses_the_whole_batch(p: &StorePorts) {
    let w = world(p, "bad-row").await;
    let good = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 20.0, None);
    let mut bad = fixtures::poll_record(&w.chamber, &w.detectors, slot(2), 20.0, None);
    bad.readings[1].detector_id = crate::model::DetectorId::random();
    assert_eq!(
        p.readings.store_polls(&[good.clone(), bad]).await,
        Err(StoreError::MissingParent {
            entity: "reading",
            parent: "detector"
        })
    );
    // A detector of another chamber is refused too.
    let other = fixtures::chamber(w.org.id, w.section.id, "other", 1);
    let other_detector = fixtures::detector(&other, "t");
    p.chambers
        .create(&other, std::slice::from_ref(&other_detector))
        .await
        .unwrap();
    let mut crossed = fixtures::poll_record(&w.chamber, &w.detectors, slot(3), 20.0, None);
    crossed.readings[0].detector_id = other_detector.id;
    assert!(
        p.readings
            .store_polls(&[good.clone(), crossed])
            .await
            .is_err()
    );
    // Unknown chamber.
    let ghost = fixtures::chamber(w.org.id, w.section.id, "ghost", 1);
    let ghost_poll = fixtures::poll_record(&ghost, &[], slot(4), 0.0, None);
    assert_eq!(
        p.readings.store_polls(&[good, ghost_poll]).await,
        Err(StoreError::MissingParent {
            entity: "poll",
            parent: "chamber"
        })
    );
    // Nothing of any refused batch remains.
    let stored = p
        .readings
        .query(w.org.id, &all_readings(ReadingScope::Chamber(w.chamber.id)))
        .await
        .unwrap();
    assert!(stored.items.is_empty(), "found {:?}", stored.items);
    assert!(
        p.ledger
            .list(w.org.id, &all_ledger(&w))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn corrupted_readings_are_stored_like_any_other(p: &StorePorts) {
    let w = world(p, "corrupted").await;
    for (i, reason) in CorruptionReason::ALL.into_iter().enumerate() {
        let record =
            fixtures::poll_record(&w.chamber, &w.detectors, slot(i as i64), 0.0, Some(reason));
        p.readings
            .store_polls(std::slice::from_ref(&record))
            .await
            .unwrap();
        let got = p
            .readings
            .query(
                w.org.id,
                &ReadingQuery {
                    from: slot(i as i64),
                    to: slot(i as i64 + 1),
                    ..all_readings(ReadingScope::Detector(w.detectors[0].id))
                },
            )
            .await
            .unwrap();
        assert_eq!(got.items, vec![record.readings[0].clone()]);
        assert_eq!(got.items[0].value.corruption(), Some(reason));
        assert_eq!(got.items[0].value.value(), None);
    }
    let ledger = p.ledger.list(w.org.id, &all_ledger(&w)).await.unwrap();
    assert!(
        ledger
            .items
            .iter()
            .all(|e| matches!(e.outcome, PollOutcome::CorruptedValues { corrupted: 2 }))
    );
}

pub async fn time_range_queries_are_half_open_and_span_days(p: &StorePorts) {
    let w = world(p, "ranges").await;
    // Slots around three midnights (partition boundaries for adapters that partition by day).
    let day = 86_400;
    let slots: Vec<i64> = [day - 1, day, day + 1, 2 * day - 1, 2 * day, 3 * day + 5].into();
    let batch = fixtures::batch(w.org.id, w.section.id, "trial", slot(day));
    p.batches.start(&batch).await.unwrap();
    let records: Vec<_> = slots
        .iter()
        .map(|&s| {
            let mut r =
                fixtures::poll_record(&w.chamber, &w.detectors, slot(s), s as f64 / 1e5, None);
            if s >= day && s < 2 * day {
                r.readings
                    .iter_mut()
                    .for_each(|x| x.batch_id = Some(batch.id));
            }
            r
        })
        .collect();
    p.readings.store_polls(&records).await.unwrap();

    let q = |scope, from: i64, to: i64| ReadingQuery {
        scope,
        from: slot(from),
        to: slot(to),
        page: page_of(1000),
    };
    let slots_of = |page: Page<crate::model::Reading, ReadingCursor>| {
        page.items
            .iter()
            .map(|r| (r.slot.as_unix_millis() - T0.as_unix_millis()) / 1000)
            .collect::<Vec<_>>()
    };
    let d0 = ReadingScope::Detector(w.detectors[0].id);
    assert_eq!(
        slots_of(
            p.readings
                .query(w.org.id, &q(d0, day, 2 * day))
                .await
                .unwrap()
        ),
        vec![day, day + 1, 2 * day - 1]
    );
    assert_eq!(
        slots_of(
            p.readings
                .query(w.org.id, &q(d0, 0, 4 * day))
                .await
                .unwrap()
        ),
        slots
    );
    assert_eq!(
        slots_of(
            p.readings
                .query(w.org.id, &q(d0, day - 1, day))
                .await
                .unwrap()
        ),
        vec![day - 1]
    );
    assert!(
        p.readings
            .query(w.org.id, &q(d0, 4 * day, 5 * day))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let chamber_range = p
        .readings
        .query(
            w.org.id,
            &q(ReadingScope::Chamber(w.chamber.id), day, 2 * day + 1),
        )
        .await
        .unwrap();
    assert_eq!(chamber_range.items.len(), 8);
    let batch_range = p
        .readings
        .query(w.org.id, &q(ReadingScope::Batch(batch.id), 0, 4 * day))
        .await
        .unwrap();
    assert_eq!(batch_range.items.len(), 6);

    let latest = p.readings.latest(w.org.id, &[w.chamber.id]).await.unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].slot, slot(3 * day + 5));
    assert_eq!(latest[0].readings.len(), 2);
    let mut expected: Vec<_> = records.last().unwrap().readings.clone();
    expected.sort_by_key(|r| r.detector_id);
    let mut got = latest[0].readings.clone();
    got.sort_by_key(|r| r.detector_id);
    assert_eq!(got, expected);

    let ledger = p
        .ledger
        .list(
            w.org.id,
            &LedgerQuery {
                from: slot(day),
                to: slot(2 * day),
                ..all_ledger(&w)
            },
        )
        .await
        .unwrap();
    assert_eq!(ledger.items.len(), 3);
}

pub async fn the_ledger_keeps_one_entry_per_poll(p: &StorePorts) {
    let w = world(p, "ledger").await;
    let missed: Vec<LedgerEntry> = (0..5)
        .map(|s| {
            LedgerEntry::unfetched(
                PollId {
                    chamber_id: w.chamber.id,
                    slot: slot(s),
                },
                PollOutcome::Missed,
                0,
                slot(10),
            )
        })
        .collect();
    assert_eq!(p.ledger.record(&missed).await.unwrap(), 5);
    assert_eq!(p.ledger.record(&missed[3..]).await.unwrap(), 0);
    // A late worker result for a slot already recorded as missed does not replace it.
    let late = fixtures::poll_record(&w.chamber, &w.detectors, slot(4), 20.0, None);
    let report = p.readings.store_polls(&[late]).await.unwrap();
    assert_eq!(report.ledger_existing, 1);
    assert_eq!((report.readings_new, report.readings_existing), (0, 2));
    let at_slot_4 = ReadingQuery {
        from: slot(4),
        to: slot(5),
        ..all_readings(ReadingScope::Chamber(w.chamber.id))
    };
    assert!(
        p.readings
            .query(w.org.id, &at_slot_4)
            .await
            .unwrap()
            .items
            .is_empty(),
        "readings follow the stored outcome: the slot stays missed"
    );
    p.readings
        .store_polls(&[fixtures::poll_record(
            &w.chamber,
            &w.detectors,
            slot(5),
            20.0,
            None,
        )])
        .await
        .unwrap();
    let all = p.ledger.list(w.org.id, &all_ledger(&w)).await.unwrap();
    assert_eq!(all.items.len(), 6);
    assert_eq!(all.items[4].outcome, PollOutcome::Missed);
    let failures = p
        .ledger
        .list(
            w.org.id,
            &LedgerQuery {
                failures_only: true,
                ..all_ledger(&w)
            },
        )
        .await
        .unwrap();
    assert_eq!(failures.items.len(), 5);
    let ghost = LedgerEntry::unfetched(
        PollId {
            chamber_id: crate::model::ChamberId::random(),
            slot: slot(0),
        },
        PollOutcome::Missed,
        0,
        slot(1),
    );
    assert_eq!(
        p.ledger.record(&[missed[0].clone(), ghost]).await,
        Err(StoreError::MissingParent {
            entity: "poll",
            parent: "chamber"
        })
    );
}

/// Many healths saved at once: each new or still current one is saved; a stale one (another
/// writer got there first) and one of a chamber that is gone are returned, and change nothing.
pub async fn many_healths_are_saved_at_once_and_the_stale_returned(p: &StorePorts) {
    let worlds = [
        world(p, "many health 1").await,
        world(p, "many health 2").await,
        world(p, "many health 3").await,
        world(p, "many health 4").await,
    ];
    let [new, current, stale_new, stale] = worlds.map(|w| w.chamber.id);
    for id in [current, stale_new, stale] {
        p.health
            .save(&ChamberHealth::unknown(id, T0))
            .await
            .unwrap();
    }
    let down = |id, version| ChamberHealth {
        state: HealthState::Down,
        consecutive_failures: 3,
        failing_since: Some(slot(1)),
        last_slot: Some(slot(3)),
        changed_at: slot(3),
        version,
        ..ChamberHealth::unknown(id, T0)
    };
    let gone = crate::model::ChamberId::random();
    let mut not_saved = p
        .health
        .save_many(&[
            down(new, 0),
            down(current, 1),
            down(stale_new, 0),
            down(stale, 7),
            down(gone, 0),
        ])
        .await
        .unwrap();
    not_saved.sort();
    let mut expected = vec![stale_new, stale, gone];
    expected.sort();
    assert_eq!(not_saved, expected);
    assert_eq!(p.health.get(new).await.unwrap(), Some(down(new, 1)));
    assert_eq!(p.health.get(current).await.unwrap(), Some(down(current, 2)));
    for id in [stale_new, stale] {
        assert_eq!(
            p.health.get(id).await.unwrap(),
            Some(ChamberHealth {
                version: 1,
                ..ChamberHealth::unknown(id, T0)
            }),
            "a stale health changes nothing"
        );
    }
    assert_eq!(p.health.get(gone).await.unwrap(), None);
    assert_eq!(p.health.save_many(&[]).await.unwrap(), vec![]);
}

pub async fn health_writes_use_optimistic_concurrency(p: &StorePorts) {
    let w = world(p, "health").await;
    assert_eq!(p.health.get(w.chamber.id).await.unwrap(), None);
    let fresh = ChamberHealth::unknown(w.chamber.id, T0);
    assert_eq!(p.health.save(&fresh).await.unwrap(), 1);
    // A second writer that also started from "no row" loses.
    assert!(matches!(
        p.health.save(&fresh).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut stored = p.health.get(w.chamber.id).await.unwrap().expect("saved");
    assert_eq!(stored.version, 1);
    stored.state = HealthState::Down;
    stored.consecutive_failures = 12;
    stored.failing_since = Some(slot(1));
    stored.last_slot = Some(slot(12));
    assert_eq!(p.health.save(&stored).await.unwrap(), 2);
    let again = p.health.get(w.chamber.id).await.unwrap().expect("saved");
    assert_eq!(
        again,
        ChamberHealth {
            version: 2,
            ..stored
        }
    );
    // Read for a batch: only the chambers with health stored, each once; none for none.
    let other = world(p, "health 2").await;
    let many = p
        .health
        .get_many(&[
            other.chamber.id,
            w.chamber.id,
            crate::model::ChamberId::random(),
        ])
        .await
        .unwrap();
    assert_eq!(many, vec![again.clone()]);
    assert_eq!(p.health.get_many(&[]).await.unwrap(), vec![]);
    let mut second = ChamberHealth::unknown(other.chamber.id, T0);
    second.state = HealthState::Up;
    p.health.save(&second).await.unwrap();
    let mut many = p
        .health
        .get_many(&[w.chamber.id, other.chamber.id])
        .await
        .unwrap();
    many.sort_by_key(|h| h.state.as_str());
    assert_eq!(
        many.iter()
            .map(|h| (h.chamber_id, h.state))
            .collect::<Vec<_>>(),
        vec![
            (w.chamber.id, HealthState::Down),
            (other.chamber.id, HealthState::Up)
        ]
    );
    p.health
        .save(&ChamberHealth {
            state: HealthState::Unknown,
            version: 1,
            ..second
        })
        .await
        .unwrap();
    // Counted by state, a chamber without health as unknown (of every organization).
    let mut counts = p.health.count_by_state().await.unwrap();
    counts.retain(|(_, n)| *n > 0);
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        vec![(HealthState::Down, 1), (HealthState::Unknown, 1)]
    );
}

pub async fn a_section_has_at_most_one_open_batch(p: &StorePorts) {
    let w = world(p, "batches").await;
    let first = fixtures::batch(w.org.id, w.section.id, "lettuce", slot(0));
    p.batches.start(&first).await.unwrap();
    let second = fixtures::batch(w.org.id, w.section.id, "basil", slot(5));
    assert!(matches!(
        p.batches.start(&second).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        p.batches
            .covering(w.section.id, slot(3))
            .await
            .unwrap()
            .map(|b| b.id),
        Some(first.id)
    );
    assert_eq!(
        p.batches.covering(w.section.id, slot(-1)).await.unwrap(),
        None
    );
    assert!(matches!(
        p.batches.end(w.org.id, first.id, slot(-5)).await,
        Err(StoreError::Conflict { .. })
    ));
    let ended = p.batches.end(w.org.id, first.id, slot(10)).await.unwrap();
    assert_eq!(ended.ended_at, Some(slot(10)));
    assert!(matches!(
        p.batches.end(w.org.id, first.id, slot(11)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        p.batches.covering(w.section.id, slot(10)).await.unwrap(),
        None
    );
    p.batches.start(&second).await.unwrap();
    let listed = p
        .batches
        .list(w.org.id, Some(w.section.id), page_of(10))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    let other = world(p, "batches-other").await;
    assert_eq!(
        p.batches.get(other.org.id, first.id).await,
        Err(StoreError::NotFound { entity: "batch" })
    );
    assert!(
        p.batches
            .list(other.org.id, None, page_of(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        p.sections
            .delete(w.org.id, w.section.id)
            .await
            .map_err(|e| matches!(e, StoreError::HasDependents { .. })),
        Err(true)
    );
}

pub async fn users_and_tokens(p: &StorePorts) {
    let w = world(p, "users").await;
    let ada = fixtures::user(w.org.id, "ada@lab.example", Role::Admin);
    p.users.create(&ada).await.unwrap();
    let mut dup = fixtures::user(w.org.id, "ADA@lab.example", Role::Viewer);
    assert_eq!(
        p.users.create(&dup).await,
        Err(StoreError::Duplicate {
            entity: "user",
            field: "email"
        })
    );
    dup.email = Email::parse("bob@lab.example").unwrap();
    p.users.create(&dup).await.unwrap();
    assert_eq!(
        p.users
            .find_by_email(&Email::parse("Ada@Lab.example").unwrap())
            .await
            .unwrap(),
        vec![ada.clone()]
    );
    // The same address in another organization is another account, and both are found.
    let other = world(p, "users elsewhere").await;
    let ada_elsewhere = fixtures::user(other.org.id, "ada@lab.example", Role::Viewer);
    p.users.create(&ada_elsewhere).await.unwrap();
    let mut both = vec![ada.clone(), ada_elsewhere.clone()];
    both.sort_by_key(|u| u.organization_id);
    assert_eq!(
        p.users
            .find_by_email(&Email::parse("ada@lab.example").unwrap())
            .await
            .unwrap(),
        both
    );
    assert!(
        p.users
            .find_by_email(&Email::parse("nobody@lab.example").unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        p.users
            .list(w.org.id, page_of(10))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let mut promoted = dup.clone();
    promoted.role = Role::Operator;
    p.users.update(&promoted).await.unwrap();
    assert_eq!(
        p.users.get(w.org.id, dup.id).await.unwrap().role,
        Role::Operator
    );

    let token = ApiToken {
        id: ApiTokenId::random(),
        organization_id: w.org.id,
        user_id: ada.id,
        name: fixtures::name("ci"),
        hash: TokenHash([42; 32]),
        role_cap: Role::Operator,
        created_at: T0,
        expires_at: Some(slot(3600)),
        last_used_at: None,
        revoked_at: None,
    };
    p.tokens.create(&token).await.unwrap();
    assert!(matches!(
        p.tokens
            .create(&ApiToken {
                id: ApiTokenId::random(),
                ..token.clone()
            })
            .await,
        Err(StoreError::Duplicate { .. })
    ));
    assert_eq!(
        p.tokens.find_by_hash(&TokenHash([42; 32])).await.unwrap(),
        Some(token.clone())
    );
    assert_eq!(
        p.tokens.find_by_hash(&TokenHash([1; 32])).await.unwrap(),
        None
    );
    p.tokens.touch(token.id, slot(5)).await.unwrap();
    p.tokens.revoke(w.org.id, token.id, slot(6)).await.unwrap();
    p.tokens.revoke(w.org.id, token.id, slot(7)).await.unwrap();
    let stored = p
        .tokens
        .find_by_hash(&token.hash)
        .await
        .unwrap()
        .expect("still stored");
    assert_eq!(
        (stored.last_used_at, stored.revoked_at),
        (Some(slot(5)), Some(slot(6)))
    );
    let other = world(p, "users-other").await;
    assert_eq!(
        p.tokens.revoke(other.org.id, token.id, slot(8)).await,
        Err(StoreError::NotFound { entity: "token" })
    );
    assert!(
        p.tokens
            .list(other.org.id, None, page_of(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        p.tokens
            .list(w.org.id, Some(ada.id), page_of(10))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        p.users.get(other.org.id, ada.id).await,
        Err(StoreError::NotFound { entity: "user" })
    );

    p.users.delete(w.org.id, ada.id).await.unwrap();
    assert_eq!(
        p.tokens.find_by_hash(&token.hash).await.unwrap(),
        None,
        "tokens go with their user"
    );
    let orphan = fixtures::user(
        crate::model::OrganizationId::random(),
        "x@y.z",
        Role::Viewer,
    );
    assert_eq!(
        p.users.create(&orphan).await,
        Err(StoreError::MissingParent {
            entity: "user",
            parent: "organization"
        })
    );
}

pub async fn retention_removes_whole_days_before_the_cutoff(p: &StorePorts) {
    let w = world(p, "retention").await;
    let day = 86_400;
    // Noon of days 0..4, and the last second before midnight of day 1.
    let slots: Vec<i64> = vec![
        day / 2,
        day + day / 2,
        2 * day - 1,
        2 * day + day / 2,
        3 * day + day / 2,
    ];
    let records: Vec<_> = slots
        .iter()
        .map(|&s| fixtures::poll_record(&w.chamber, &w.detectors, slot(s), 1.0, None))
        .collect();
    p.readings.store_polls(&records).await.unwrap();
    // Cut at the start of day 2 (T0 is a UTC midnight): days 0 and 1 go, days 2 and 3 stay.
    p.readings.prune_before(slot(2 * day)).await.unwrap();
    let kept: Vec<i64> = p
        .readings
        .query(
            w.org.id,
            &all_readings(ReadingScope::Detector(w.detectors[0].id)),
        )
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| (r.slot.as_unix_millis() - T0.as_unix_millis()) / 1000)
        .collect();
    assert_eq!(kept, vec![2 * day + day / 2, 3 * day + day / 2]);
    let ledger = p.ledger.list(w.org.id, &all_ledger(&w)).await.unwrap();
    assert_eq!(ledger.items.len(), 2);
    assert_eq!(
        p.readings.latest(w.org.id, &[w.chamber.id]).await.unwrap()[0].slot,
        slot(3 * day + day / 2)
    );
    // Writing into the pruned past still works (a late backfill), and pruning again removes it.
    p.readings.store_polls(&records[..1]).await.unwrap();
    assert_eq!(
        p.ledger
            .list(w.org.id, &all_ledger(&w))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    p.readings.prune_before(slot(2 * day)).await.unwrap();
    assert_eq!(
        p.ledger
            .list(w.org.id, &all_ledger(&w))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
}

pub use crate::conformance::alerts::{
    a_rule_has_at_most_one_open_alert_and_keeps_its_history,
    a_transmitter_has_one_delivery_state_replaced_on_each_write,
    alert_rules_are_per_chamber_and_per_tenant, transmitters_and_their_dead_letters,
};

/// Chambers listed by part of their name (ASCII letters without case) and by health (a chamber
/// never polled is `unknown`), with the other filters and paging.
pub async fn chambers_are_listed_by_name_and_health(p: &StorePorts) {
    let w = world(p, "filters").await;
    let oven = fixtures::chamber(w.org.id, w.section.id, "Oven-Left", 1);
    let freezer = fixtures::chamber(w.org.id, w.section.id, "freezer", 1);
    for c in [&oven, &freezer] {
        p.chambers
            .create(c, &[fixtures::detector(c, "t")])
            .await
            .unwrap();
    }
    let mut up = ChamberHealth::unknown(oven.id, T0);
    up.state = HealthState::Up;
    p.health.save(&up).await.unwrap();
    let names = |filter: ChamberFilter| async move {
        let mut names: Vec<String> = p
            .chambers
            .list(w.org.id, filter, page_of(100))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|c| c.name.as_str().to_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(ChamberFilter {
            name_contains: Some("oVEN".into()),
            ..Default::default()
        })
        .await,
        ["Oven-Left"]
    );
    assert_eq!(
        names(ChamberFilter {
            health: Some(HealthState::Up),
            ..Default::default()
        })
        .await,
        ["Oven-Left"]
    );
    assert_eq!(
        names(ChamberFilter {
            health: Some(HealthState::Unknown),
            ..Default::default()
        })
        .await,
        ["chamber-1", "freezer"]
    );
    assert!(
        names(ChamberFilter {
            name_contains: Some("oven".into()),
            health: Some(HealthState::Down),
            ..Default::default()
        })
        .await
        .is_empty()
    );
}

pub async fn readings_are_aggregated_per_detector_and_epoch_aligned_bucket(p: &StorePorts) {
    let w = world(p, "aggregates").await;
    let other = world(p, "aggregates elsewhere").await;
    let batch = fixtures::batch(w.org.id, w.section.id, "trial", slot(0));
    p.batches.start(&batch).await.unwrap();
    // Slots 0..10 (T0 is a multiple of 4 s): detector 0 reads s, detector 1 reads s + 1;
    // slot 5 is corrupted, and slot 9 alone in its bucket with slot 8 (and 10 out of range).
    let records: Vec<_> = (0..11)
        .map(|s| {
            let corrupt = (s == 5).then_some(CorruptionReason::Unparsable);
            let mut r = fixtures::poll_record(&w.chamber, &w.detectors, slot(s), s as f64, corrupt);
            if s < 4 {
                r.readings
                    .iter_mut()
                    .for_each(|x| x.batch_id = Some(batch.id));
            }
            r
        })
        .collect();
    p.readings.store_polls(&records).await.unwrap();
    let aggregate = |scope, from: i64, to: i64| {
        let query = AggregateQuery {
            scope,
            from: slot(from),
            to: slot(to),
            bucket_millis: 4000,
        };
        async move { p.readings.aggregate(w.org.id, &query).await }
    };
    let (d0, d1) = (w.detectors[0].id, w.detectors[1].id);
    let bucket = |detector, start: i64, min: f64, max: f64, count: u64| Aggregate {
        detector_id: detector,
        bucket_start: slot(start),
        min,
        max,
        mean: (min + max) / 2.0,
        count,
    };
    // From slot 1 (inside the first bucket) to slot 10 (excluded); slot 5 not counted.
    let mut expected = vec![
        bucket(d0, 0, 1.0, 3.0, 3),
        bucket(d0, 4, 4.0, 7.0, 3),
        bucket(d0, 8, 8.0, 9.0, 2),
        bucket(d1, 0, 2.0, 4.0, 3),
        bucket(d1, 4, 5.0, 8.0, 3),
        bucket(d1, 8, 9.0, 10.0, 2),
    ];
    // Bucket 4..8 holds 4, 6, 7: its mean is not the midpoint.
    expected[1].mean = 17.0 / 3.0;
    expected[4].mean = 20.0 / 3.0;
    expected.sort_by_key(|a| (a.detector_id, a.bucket_start));
    let got = aggregate(ReadingScope::Chamber(w.chamber.id), 1, 10)
        .await
        .unwrap();
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(
            (g.detector_id, g.bucket_start, g.min, g.max, g.count),
            (e.detector_id, e.bucket_start, e.min, e.max, e.count),
            "{got:?}"
        );
        assert!((g.mean - e.mean).abs() < 1e-9, "{g:?} against {e:?}");
    }
    let one = aggregate(ReadingScope::Detector(d1), 1, 10).await.unwrap();
    assert_eq!(
        one.iter().map(|a| a.bucket_start).collect::<Vec<_>>(),
        [slot(0), slot(4), slot(8)]
    );
    assert!(one.iter().all(|a| a.detector_id == d1));
    let in_batch = aggregate(ReadingScope::Batch(batch.id), 0, 100)
        .await
        .unwrap();
    assert_eq!(
        in_batch
            .iter()
            .map(|a| (a.bucket_start, a.count))
            .collect::<Vec<_>>(),
        [(slot(0), 4), (slot(0), 4)]
    );
    // A bucket of corrupted values only is left out; nothing out of range is counted.
    assert!(
        aggregate(ReadingScope::Chamber(w.chamber.id), 5, 6)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        aggregate(ReadingScope::Chamber(w.chamber.id), 20, 30)
            .await
            .unwrap()
            .is_empty()
    );
    // Another organization's scope is not found.
    for scope in [
        ReadingScope::Chamber(other.chamber.id),
        ReadingScope::Detector(other.detectors[0].id),
    ] {
        let query = AggregateQuery {
            scope,
            from: slot(0),
            to: slot(10),
            bucket_millis: 4000,
        };
        assert!(
            matches!(
                p.readings.aggregate(w.org.id, &query).await,
                Err(StoreError::NotFound { .. })
            ),
            "{scope:?}"
        );
    }
}

pub async fn the_ledger_is_tallied_per_bucket_from_the_start(p: &StorePorts) {
    let w = world(p, "tally").await;
    let other = world(p, "tally elsewhere").await;
    // Slots 0..5 read, 5 read with corrupted values, 6 and 7 timed out, 8 missed, 9 expired.
    let mut records: Vec<_> = (0..6)
        .map(|s| {
            let corrupt = (s == 5).then_some(CorruptionReason::Implausible);
            fixtures::poll_record(&w.chamber, &w.detectors, slot(s), 1.0, corrupt)
        })
        .collect();
    for s in [6, 7] {
        let mut failed = fixtures::poll_record(&w.chamber, &w.detectors, slot(s), 1.0, None);
        failed.readings.clear();
        failed.entry.outcome = PollOutcome::Timeout;
        records.push(failed);
    }
    p.readings.store_polls(&records).await.unwrap();
    let unfetched = [
        (8, PollOutcome::Missed),
        (
            9,
            PollOutcome::Expired {
                reason: ExpiryReason::StoreBehind,
            },
        ),
    ]
    .map(|(s, outcome)| {
        LedgerEntry::unfetched(
            PollId {
                chamber_id: w.chamber.id,
                slot: slot(s),
            },
            outcome,
            0,
            slot(20),
        )
    });
    p.ledger.record(&unfetched).await.unwrap();
    let tally = |chamber_id, from: i64, to: i64, width: i64| {
        let query = TallyQuery {
            chamber_id,
            from: slot(from),
            to: slot(to),
            bucket_millis: width * 1000,
        };
        async move { p.ledger.tally(w.org.id, &query).await }
    };
    let counts = |tallies: Vec<LedgerTally>| {
        tallies
            .into_iter()
            .map(|t| {
                (
                    (t.bucket_start.as_unix_millis() - T0.as_unix_millis()) / 1000,
                    t.read,
                    t.failed,
                    t.missed,
                )
            })
            .collect::<Vec<_>>()
    };
    // Buckets of 3 s from slot 1: [1, 4), [4, 7), [7, 10) cut at 9.
    assert_eq!(
        counts(tally(w.chamber.id, 1, 9, 3).await.unwrap()),
        [(1, 3, 0, 0), (4, 2, 1, 0), (7, 0, 1, 1)]
    );
    // One bucket over everything; a range without entries has no bucket.
    assert_eq!(
        counts(tally(w.chamber.id, 0, 100, 100).await.unwrap()),
        [(0, 6, 2, 2)]
    );
    assert!(tally(w.chamber.id, 50, 60, 5).await.unwrap().is_empty());
    assert_eq!(
        tally(other.chamber.id, 0, 10, 5).await,
        nf("chamber"),
        "another organization's chamber"
    );
}

/// Expands to one `#[tokio::test]` per repository case. `$make` is an expression evaluating to
/// a future of a fresh [`StorePorts`].
/// Every reading of a scope, through pages of `size`.
async fn every_reading(
    p: &StorePorts,
    w: &World,
    scope: ReadingScope,
    size: u32,
) -> Vec<crate::model::Reading> {
    crate::model::every_page(PageSize::new(size).unwrap(), |page| {
        let q = ReadingQuery {
            page,
            ..all_readings(scope)
        };
        async move { p.readings.query(w.org.id, &q).await }
    })
    .await
    .unwrap()
}

/// `readings` in the order queries return them: by (slot, detector).
fn sorted(mut readings: Vec<crate::model::Reading>) -> Vec<crate::model::Reading> {
    readings.sort_by_key(|r| (r.slot, r.detector_id));
    readings
}

/// Each detector's (count, sum) of measured values in one all-time bucket, by aggregate.
async fn aggregated(
    p: &StorePorts,
    w: &World,
    scope: ReadingScope,
) -> Vec<(crate::model::DetectorId, u64, f64)> {
    let q = AggregateQuery {
        scope,
        from: Timestamp::from_unix_millis(0),
        to: slot(1_000_000),
        bucket_millis: 1_000_000_000_000,
    };
    #[allow(clippy::cast_precision_loss, reason = "test values are small")]
    p.readings
        .aggregate(w.org.id, &q)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.detector_id, a.count, a.mean * a.count as f64))
        .collect()
}

pub async fn a_detector_added_later_has_readings_only_from_then(p: &StorePorts) {
    let w = world(p, "added later").await;
    let before = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 20.0, None);
    p.readings
        .store_polls(std::slice::from_ref(&before))
        .await
        .unwrap();
    let added = fixtures::detector(&w.chamber, "co2");
    p.detectors.add(&added).await.unwrap();
    let mut three = w.detectors.clone();
    three.push(added.clone());
    let after = fixtures::poll_record(&w.chamber, &three, slot(2), 30.0, None);
    let report = p
        .readings
        .store_polls(std::slice::from_ref(&after))
        .await
        .unwrap();
    assert_eq!(report.readings_new, 3);

    let expected = sorted([before.readings.clone(), after.readings.clone()].concat());
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(w.chamber.id), 1000).await,
        expected
    );
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(w.chamber.id), 2).await,
        expected
    );
    assert_eq!(
        every_reading(p, &w, ReadingScope::Detector(added.id), 1000).await,
        vec![after.readings[2].clone()]
    );
    assert_eq!(
        every_reading(p, &w, ReadingScope::Detector(w.detectors[1].id), 1000).await,
        vec![before.readings[1].clone(), after.readings[1].clone()]
    );
    let latest = p.readings.latest(w.org.id, &[w.chamber.id]).await.unwrap();
    assert_eq!(latest[0].slot, slot(2));
    assert_eq!(latest[0].readings, sorted(after.readings.clone()));
    let sums = aggregated(p, &w, ReadingScope::Chamber(w.chamber.id)).await;
    assert!(sums.contains(&(added.id, 1, 32.0)), "{sums:?}");
    assert_eq!(sums.len(), 3);
}

pub async fn deleting_a_detector_removes_its_readings_and_shifts_no_other_value(p: &StorePorts) {
    let w = world(p, "deleted detector").await;
    let third = fixtures::detector(&w.chamber, "pressure");
    p.detectors.add(&third).await.unwrap();
    let mut ds = w.detectors.clone();
    ds.push(third);
    ds.sort_by_key(|d| d.id);
    let polls: Vec<_> = (1..=2)
        .map(|s| fixtures::poll_record(&w.chamber, &ds, slot(s), 10.0 * s as f64, None))
        .collect();
    p.readings.store_polls(&polls).await.unwrap();
    // The middle one of three, by id (and so by position wherever positions follow ids).
    let gone = ds.remove(1);
    p.detectors.delete(w.org.id, gone.id).await.unwrap();
    let kept = |polls: &[crate::ports::PollRecord]| {
        sorted(
            polls
                .iter()
                .flat_map(|p| {
                    p.readings
                        .iter()
                        .filter(|r| r.detector_id != gone.id)
                        .cloned()
                })
                .collect(),
        )
    };
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(w.chamber.id), 1000).await,
        kept(&polls)
    );
    assert_eq!(
        p.readings
            .query(w.org.id, &all_readings(ReadingScope::Detector(gone.id)))
            .await,
        nf("detector")
    );
    let latest = p.readings.latest(w.org.id, &[w.chamber.id]).await.unwrap();
    assert_eq!(latest[0].readings, kept(&polls[1..]));
    let sums = aggregated(p, &w, ReadingScope::Chamber(w.chamber.id)).await;
    assert!(sums.iter().all(|(d, _, _)| *d != gone.id), "{sums:?}");
    assert_eq!(sums.len(), 2);
    // A late poll still carrying the deleted detector's reading is refused.
    let mut with_gone = ds.clone();
    with_gone.push(gone.clone());
    assert_eq!(
        p.readings
            .store_polls(&[fixtures::poll_record(
                &w.chamber,
                &with_gone,
                slot(3),
                5.0,
                None
            )])
            .await,
        Err(StoreError::MissingParent {
            entity: "reading",
            parent: "detector"
        })
    );
    // Detectors come and go; every value stays with its own detector.
    let mut all = polls.clone();
    all.push(fixtures::poll_record(&w.chamber, &ds, slot(3), 30.0, None));
    p.readings.store_polls(&all[2..]).await.unwrap();
    let fourth = fixtures::detector(&w.chamber, "light");
    p.detectors.add(&fourth).await.unwrap();
    ds.push(fourth.clone());
    all.push(fixtures::poll_record(&w.chamber, &ds, slot(4), 40.0, None));
    p.readings.store_polls(&all[3..]).await.unwrap();
    for d in [ds.remove(0), ds.remove(0)] {
        p.detectors.delete(w.org.id, d.id).await.unwrap();
    }
    assert_eq!(ds, vec![fourth.clone()]);
    all.push(fixtures::poll_record(&w.chamber, &ds, slot(5), 50.0, None));
    p.readings.store_polls(&all[4..]).await.unwrap();
    let only_fourth: Vec<_> = sorted(
        all.iter()
            .flat_map(|p| {
                p.readings
                    .iter()
                    .filter(|r| r.detector_id == fourth.id)
                    .cloned()
            })
            .collect(),
    );
    assert_eq!(only_fourth.len(), 2);
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(w.chamber.id), 1000).await,
        only_fourth
    );
    assert_eq!(
        every_reading(p, &w, ReadingScope::Detector(fourth.id), 1).await,
        only_fourth
    );
    let latest = p.readings.latest(w.org.id, &[w.chamber.id]).await.unwrap();
    assert_eq!(latest[0].readings, vec![all[4].readings[0].clone()]);
}

pub async fn a_poll_may_lack_some_detectors(p: &StorePorts) {
    let w = world(p, "absent").await;
    let mut partial = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 20.0, None);
    let absent = partial.readings.remove(0);
    let report = p
        .readings
        .store_polls(std::slice::from_ref(&partial))
        .await
        .unwrap();
    assert_eq!((report.readings_new, report.ledger_new), (1, 1));
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(w.chamber.id), 1000).await,
        partial.readings
    );
    assert!(
        every_reading(p, &w, ReadingScope::Detector(absent.detector_id), 1000)
            .await
            .is_empty()
    );
    let latest = p.readings.latest(w.org.id, &[w.chamber.id]).await.unwrap();
    assert_eq!(latest[0].readings, partial.readings);
}

pub async fn a_poll_twice_in_one_batch_is_stored_once(p: &StorePorts) {
    let w = world(p, "twice").await;
    let first = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 20.0, None);
    let again = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 99.0, None);
    let report = p
        .readings
        .store_polls(&[first.clone(), again])
        .await
        .unwrap();
    assert_eq!((report.ledger_new, report.ledger_existing), (1, 1));
    assert_eq!((report.readings_new, report.readings_existing), (2, 2));
    assert_eq!(report.existing_polls, vec![first.entry.poll]);
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(w.chamber.id), 1000).await,
        sorted(first.readings)
    );
}

pub async fn a_polls_readings_share_its_times_and_batch(p: &StorePorts) {
    let w = world(p, "shared times").await;
    let good = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 20.0, None);
    let batch = fixtures::batch(w.org.id, w.section.id, "run", slot(0));
    p.batches.start(&batch).await.unwrap();
    let breaks: [fn(&mut crate::model::Reading, crate::model::BatchId); 3] = [
        |r, _| r.requested_at = r.requested_at + Duration::from_millis(1),
        |r, _| r.received_at = r.received_at + Duration::from_millis(1),
        |r, b| r.batch_id = Some(b),
    ];
    for (i, break_it) in breaks.into_iter().enumerate() {
        let mut bad = fixtures::poll_record(&w.chamber, &w.detectors, slot(2), 20.0, None);
        break_it(&mut bad.readings[1], batch.id);
        match p.readings.store_polls(&[good.clone(), bad]).await {
            Err(StoreError::Invalid(e)) => assert_eq!(e.field, "readings", "case {i}"),
            other => panic!("case {i}: {other:?}"),
        }
    }
    assert!(
        every_reading(p, &w, ReadingScope::Chamber(w.chamber.id), 1000)
            .await
            .is_empty()
    );
}

/// Polls of slots 1 to 3 of a wide chamber (values `scale · slot + position`): in slot `s`,
/// every `corrupt_every`-th reading from position `s` corrupted, and the reading of detector
/// `absent · s` absent.
fn wide_polls(
    chamber: &Chamber,
    detectors: &[Detector],
    scale: f64,
    corrupt_every: usize,
    absent: usize,
) -> Vec<crate::ports::PollRecord> {
    (1..=3)
        .map(|s| {
            let mut poll =
                fixtures::poll_record(chamber, detectors, slot(s), scale * s as f64, None);
            for r in poll
                .readings
                .iter_mut()
                .skip(s as usize)
                .step_by(corrupt_every)
            {
                r.value = crate::model::ReadingValue::Corrupted(CorruptionReason::Implausible);
            }
            let gone = detectors[absent * s as usize].id;
            poll.readings.retain(|r| r.detector_id != gone);
            poll
        })
        .collect()
}

pub async fn a_wide_chamber_pages_across_one_slot(p: &StorePorts) {
    let w = world(p, "wide").await;
    let wide = fixtures::chamber(w.org.id, w.section.id, "wide", 1);
    let ds: Vec<Detector> = (0..30)
        .map(|i| fixtures::detector(&wide, &format!("d{i:02}")))
        .collect();
    p.chambers.create(&wide, &ds).await.unwrap();
    let polls = wide_polls(&wide, &ds, 1.0, 4, 7);
    p.readings.store_polls(&polls).await.unwrap();
    let expected = sorted(polls.iter().flat_map(|p| p.readings.clone()).collect());
    let w = World {
        chamber: wide.clone(),
        detectors: ds,
        ..w
    };
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(wide.id), 7).await,
        expected
    );
    assert_eq!(
        every_reading(p, &w, ReadingScope::Chamber(wide.id), 1).await,
        expected
    );
    let one = w.detectors[7].id;
    assert_eq!(
        every_reading(p, &w, ReadingScope::Detector(one), 1).await,
        expected
            .iter()
            .filter(|r| r.detector_id == one)
            .cloned()
            .collect::<Vec<_>>()
    );
}

pub async fn a_wide_chamber_is_aggregated_for_every_detector(p: &StorePorts) {
    let w = world(p, "wide aggregate").await;
    let wide = fixtures::chamber(w.org.id, w.section.id, "wide", 1);
    // Wider than one scan of a store that aggregates a few dozen positions at a time.
    let mut ds: Vec<Detector> = (0..70)
        .map(|i| fixtures::detector(&wide, &format!("d{i:02}")))
        .collect();
    p.chambers.create(&wide, &ds).await.unwrap();
    let polls = wide_polls(&wide, &ds, 10.0, 5, 20);
    p.readings.store_polls(&polls).await.unwrap();
    // One detector deleted past the first few dozen: the others keep their values.
    let gone = ds.remove(45);
    p.detectors.delete(w.org.id, gone.id).await.unwrap();
    let mut expected: Vec<(crate::model::DetectorId, u64, f64)> = ds
        .iter()
        .filter_map(|d| {
            let values: Vec<f64> = polls
                .iter()
                .flat_map(|p| &p.readings)
                .filter(|r| r.detector_id == d.id)
                .filter_map(|r| match r.value {
                    crate::model::ReadingValue::Measured(v) => Some(v.get()),
                    crate::model::ReadingValue::Corrupted(_) => None,
                })
                .collect();
            (!values.is_empty()).then(|| (d.id, values.len() as u64, values.iter().sum()))
        })
        .collect();
    expected.sort_by_key(|e| e.0);
    let w = World {
        chamber: wide.clone(),
        detectors: ds,
        ..w
    };
    let mut got = aggregated(p, &w, ReadingScope::Chamber(wide.id)).await;
    got.sort_by_key(|g| g.0);
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!((g.0, g.1), (e.0, e.1), "{got:?}");
        assert!((g.2 - e.2).abs() < 1e-6, "{g:?} against {e:?}");
    }
    let last = w.detectors[68].id;
    let one = aggregated(p, &w, ReadingScope::Detector(last)).await;
    let e = expected.iter().find(|e| e.0 == last).unwrap();
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!((one[0].0, one[0].1), (e.0, e.1));
    assert!((one[0].2 - e.2).abs() < 1e-6, "{one:?} against {e:?}");
}

pub async fn latest_moves_only_with_readings(p: &StorePorts) {
    let w = world(p, "latest").await;
    let good = fixtures::poll_record(&w.chamber, &w.detectors, slot(1), 20.0, None);
    let mut timeout = fixtures::poll_record(&w.chamber, &[], slot(2), 0.0, None);
    timeout.entry.outcome = PollOutcome::Timeout;
    p.readings
        .store_polls(&[good.clone(), timeout])
        .await
        .unwrap();
    let latest = p.readings.latest(w.org.id, &[w.chamber.id]).await.unwrap();
    assert_eq!(
        (latest[0].slot, latest[0].readings.clone()),
        (slot(1), sorted(good.readings))
    );
}

#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@cases $make;
            sections_crud,
            chambers_are_created_with_their_detectors_or_not_at_all,
            chambers_are_listed_by_name_and_health,
            many_chambers_are_created_together_or_not_at_all,
            detectors_crud,
            tenants_never_see_each_other,
            paging_visits_every_item_exactly_once,
            reading_writes_are_idempotent,
            a_bad_row_refuses_the_whole_batch,
            corrupted_readings_are_stored_like_any_other,
            time_range_queries_are_half_open_and_span_days,
            the_ledger_keeps_one_entry_per_poll,
            readings_are_aggregated_per_detector_and_epoch_aligned_bucket,
            the_ledger_is_tallied_per_bucket_from_the_start,
            health_writes_use_optimistic_concurrency,
            many_healths_are_saved_at_once_and_the_stale_returned,
            a_section_has_at_most_one_open_batch,
            users_and_tokens,
            retention_removes_whole_days_before_the_cutoff,
            alert_rules_are_per_chamber_and_per_tenant,
            a_rule_has_at_most_one_open_alert_and_keeps_its_history,
            transmitters_and_their_dead_letters,
            a_transmitter_has_one_delivery_state_replaced_on_each_write,
            a_detector_added_later_has_readings_only_from_then,
            deleting_a_detector_removes_its_readings_and_shifts_no_other_value,
            a_poll_may_lack_some_detectors,
            a_poll_twice_in_one_batch_is_stored_once,
            a_polls_readings_share_its_times_and_batch,
            a_wide_chamber_pages_across_one_slot,
            a_wide_chamber_is_aggregated_for_every_detector,
            latest_moves_only_with_readings
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let ports: $crate::conformance::fixtures::StorePorts = $make.await;
                $crate::conformance::store::$case(&ports).await;
            }
        )*
    };
}
