use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::{
    CorruptionReason, ExpiryReason, HealthState, PollKind, PollOutcome, ReadingValue, Role,
};
use chamberlain_domain::ports::{
    ChamberHealthRepository, DomainEvent, FetchError, LedgerQuery, PollQueue, ReadingQuery,
    ReadingRepository, ReadingScope,
};
use chamberlain_domain::usecases::{JobOutcome, NewSection};
use chamberlain_fakes::ScriptedAnswer;

use crate::support::{Handled, Harness, drain};

fn slot(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + s * 1000)
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

#[tokio::test]
async fn a_good_response_becomes_readings_a_ledger_entry_an_ack_and_events() {
    let h = Harness::new();
    let actor = h.tenant("good", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    let mut events = h.events.subscribe();
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::ok(r#"{"t": 21.5, "h": "40.25"}"#),
    );
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(1), PollKind::Scheduled)
        .await;
    h.clock.set(slot(1) + ms(20));

    let Handled::Completed(done) = h.handle(leased).await.unwrap() else {
        panic!("completed")
    };
    assert_eq!(
        (
            done.write.readings_new,
            done.write.ledger_new,
            done.stored.len()
        ),
        (2, 1, 1)
    );
    assert_eq!(h.queue.depth().await.unwrap().leased, 0, "acknowledged");

    let request = &h.client.requests()[0];
    assert_eq!(
        (request.slot, request.timeout, request.attempt),
        (slot(1), Duration::from_secs(1), 1)
    );
    let readings = h
        .store
        .query(
            actor.organization_id,
            &ReadingQuery::all(ReadingScope::Chamber(c.chamber.id)),
        )
        .await
        .unwrap()
        .items;
    let values: Vec<_> = readings
        .iter()
        .map(|r| (r.detector_id, r.value.value()))
        .collect();
    assert!(values.contains(&(c.detectors[0].id, Some(21.5))));
    assert!(values.contains(&(c.detectors[1].id, Some(40.25))));
    assert!(
        readings
            .iter()
            .all(|r| r.slot == slot(1) && r.requested_at == slot(1) + ms(20))
    );

    let ledger = h
        .queries
        .ledger(&actor, &LedgerQuery::all(c.chamber.id))
        .await
        .unwrap()
        .items;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].outcome, PollOutcome::Ok);
    assert_eq!(ledger[0].lateness, ms(20));
    assert_eq!(h.queue.depth().await.unwrap().leased, 0, "acknowledged");
    assert_eq!(
        ChamberHealthRepository::get(&*h.store, c.chamber.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        HealthState::Up
    );

    let kinds: Vec<_> = drain(&mut events)
        .into_iter()
        .map(|e| match e {
            DomainEvent::HealthChanged { transition, .. } => {
                format!("health {}->{}", transition.from, transition.to)
            }
            DomainEvent::ReadingsWritten {
                readings, routing, ..
            } => {
                assert_eq!(routing.chamber_id, Some(c.chamber.id));
                assert_eq!(routing.organization_id, actor.organization_id);
                format!("readings {}", readings.len())
            }
            DomainEvent::PollCompleted { entry, .. } => format!("poll {}", entry.outcome.code()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["health unknown->up", "readings 2", "poll ok"]);
}

async fn values_for(body: &str) -> (PollOutcome, Vec<ReadingValue>) {
    let h = Harness::new();
    let actor = h.tenant("values", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    h.client
        .script("http://chamber.test/c1", ScriptedAnswer::ok(body));
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(1), PollKind::Scheduled)
        .await;
    h.clock.set(slot(1) + ms(5));
    let JobOutcome::Done(p) = h.handler.fetch(&leased.job).await.unwrap() else {
        panic!("done")
    };
    let by_detector = |id| {
        p.record
            .readings
            .iter()
            .find(|r| r.detector_id == id)
            .map(|r| r.value)
            .unwrap()
    };
    (
        p.record.entry.outcome.clone(),
        vec![
            by_detector(c.detectors[0].id),
            by_detector(c.detectors[1].id),
        ],
    )
}

#[tokio::test]
async fn bad_values_become_corrupted_readings_with_a_reason() {
    use CorruptionReason::*;
    let corrupted = |r| ReadingValue::Corrupted(r);
    let (outcome, values) = values_for(r#"{"t": "warm", "h": 140}"#).await;
    assert_eq!(outcome, PollOutcome::CorruptedValues { corrupted: 2 });
    assert_eq!(values, [corrupted(Unparsable), corrupted(Implausible)]);
    let (_, values) = values_for(r#"{"t": null}"#).await;
    assert_eq!(values, [corrupted(Missing), corrupted(Missing)]);
    let (outcome, values) = values_for(r#"{"t": "NaN", "h": 50}"#).await;
    assert_eq!(outcome, PollOutcome::CorruptedValues { corrupted: 1 });
    assert_eq!(values[0], corrupted(NonFinite));
    assert_eq!(values[1].value(), Some(50.0));
    let (outcome, values) = values_for("<html>busy</html>").await;
    assert!(
        matches!(outcome, PollOutcome::Malformed { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        values,
        [corrupted(MalformedResponse), corrupted(MalformedResponse)]
    );
}

#[tokio::test]
async fn http_errors_and_hard_failures_are_ledger_outcomes_without_readings() {
    for (answer, expected) in [
        (
            ScriptedAnswer::Respond {
                status: 500,
                body: b"oops".to_vec(),
            },
            PollOutcome::HttpStatus { status: 500 },
        ),
        (
            ScriptedAnswer::Fail(FetchError::Blocked {
                reason: "loopback".into(),
            }),
            PollOutcome::Blocked {
                reason: "loopback".into(),
            },
        ),
        (
            ScriptedAnswer::Fail(FetchError::TooLarge { limit_bytes: 1024 }),
            PollOutcome::TooLarge { limit_bytes: 1024 },
        ),
    ] {
        let h = Harness::new();
        let actor = h.tenant("errors", Role::Operator).await;
        let c = h.json_chamber(&actor, "c1").await;
        h.client.script("http://chamber.test/c1", answer);
        let leased = h
            .lease_poll(&actor, c.chamber.id, slot(1), PollKind::Scheduled)
            .await;
        h.clock.set(slot(1) + ms(5));
        let JobOutcome::Done(p) = h.handler.fetch(&leased.job).await.unwrap() else {
            panic!("done")
        };
        assert_eq!(p.record.entry.outcome, expected);
        assert!(p.record.readings.is_empty());
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_only_while_the_poll_is_current() {
    let h = Harness::new();
    let actor = h.tenant("retry", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::Fail(FetchError::Connect {
            reason: "refused".into(),
        }),
    );
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(1), PollKind::Scheduled)
        .await;
    h.clock.set(slot(1) + ms(10));
    let handled = h.handle(leased).await.unwrap();
    assert!(matches!(handled, Handled::Retried { .. }), "{handled:?}");
    assert_eq!(h.queue.depth().await.unwrap().delayed, 1);
    // The retry comes when the next slot is nearly due: no time for another, so it is recorded.
    h.clock.set(slot(1) + ms(900));
    let again = h
        .queue
        .lease(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(again.job.meta.attempt, 2);
    let Handled::Completed(done) = h.handle(again).await.unwrap() else {
        panic!("completed")
    };
    assert_eq!(done.write.ledger_new, 1);
    let ledger = h
        .queries
        .ledger(&actor, &LedgerQuery::all(c.chamber.id))
        .await
        .unwrap()
        .items;
    assert_eq!(
        ledger[0].outcome,
        PollOutcome::ConnectionFailed {
            reason: "refused".into()
        }
    );
    assert_eq!(ledger[0].attempt, 2);
    assert_eq!(h.client.requests().len(), 2);
}

#[tokio::test]
async fn a_poll_delivered_after_its_next_slot_is_expired_and_not_fetched() {
    let h = Harness::new();
    let actor = h.tenant("expired", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(1), PollKind::Scheduled)
        .await;
    h.clock.set(slot(2));
    h.handle(leased).await.unwrap();
    assert!(h.client.requests().is_empty());
    let ledger = h
        .queries
        .ledger(&actor, &LedgerQuery::all(c.chamber.id))
        .await
        .unwrap()
        .items;
    assert_eq!(
        ledger[0].outcome,
        PollOutcome::Expired {
            reason: ExpiryReason::Late
        }
    );
    // A backfill poll has no next slot to miss: it is fetched however late.
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::ok(r#"{"t": 1, "h": 2}"#),
    );
    let backfill = h
        .lease_poll(&actor, c.chamber.id, slot(0), PollKind::Backfill)
        .await;
    h.clock.set(slot(600));
    h.handle(backfill).await.unwrap();
    assert_eq!(h.client.requests().len(), 1);
}

#[tokio::test]
async fn paused_chambers_cancel_and_deleted_chambers_discard_their_polls() {
    let h = Harness::new();
    let actor = h.tenant("paused", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(1), PollKind::Scheduled)
        .await;
    h.admin.pause(&actor, c.chamber.id).await.unwrap();
    h.clock.set(slot(1) + ms(5));
    h.handle(leased).await.unwrap();
    let ledger = h
        .queries
        .ledger(&actor, &LedgerQuery::all(c.chamber.id))
        .await
        .unwrap()
        .items;
    assert_eq!(ledger[0].outcome, PollOutcome::Cancelled);

    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(2), PollKind::Scheduled)
        .await;
    h.admin.delete_chamber(&actor, c.chamber.id).await.unwrap();
    assert_eq!(h.handle(leased).await.unwrap(), Handled::Discarded);
    assert_eq!(
        h.queue.depth().await.unwrap().leased,
        0,
        "the orphan job is acknowledged"
    );
    assert!(h.client.requests().is_empty());
}

#[tokio::test]
async fn a_redelivered_poll_is_stored_once_and_announced_once() {
    let h = Harness::new();
    let actor = h.tenant("redelivery", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::ok(r#"{"t": 20, "h": 50}"#),
    );
    // Worker A fetches and writes, then dies before acknowledging.
    let leased = h
        .lease_poll_every(&actor, c.chamber.id, slot(1), PollKind::Scheduled, 60)
        .await;
    h.clock.set(slot(1) + ms(5));
    let JobOutcome::Done(first) = h.handler.fetch(&leased.job).await.unwrap() else {
        panic!("done")
    };
    h.store
        .store_polls(std::slice::from_ref(&first.record))
        .await
        .unwrap();
    // Its lease runs out; worker B gets the job again and does the whole poll.
    h.clock.set(slot(1) + Duration::from_secs(31));
    let mut events = h.events.subscribe();
    let again = h
        .queue
        .lease(1, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(again.job.meta.attempt, 2);
    let Handled::Completed(done) = h.handle(again).await.unwrap() else {
        panic!("completed")
    };
    assert_eq!(
        (done.write.readings_new, done.write.readings_existing),
        (0, 2)
    );
    assert_eq!(done.write.existing_polls.len(), 1);
    assert!(
        done.stored.is_empty(),
        "nothing was stored for the first time"
    );
    assert_eq!(h.queue.depth().await.unwrap().leased, 0, "acknowledged");
    assert!(
        drain(&mut events).is_empty(),
        "a redelivery publishes nothing new"
    );
    let stored = h
        .store
        .query(
            actor.organization_id,
            &ReadingQuery::all(ReadingScope::Chamber(c.chamber.id)),
        )
        .await
        .unwrap();
    assert_eq!(
        stored.items, first.record.readings,
        "the first write stands"
    );
}

#[tokio::test]
async fn health_goes_down_and_comes_back_with_one_event_per_transition() {
    let h = Harness::new();
    let actor = h.tenant("health", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    let mut events = h.events.subscribe();
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::Respond {
            status: 503,
            body: Vec::new(),
        },
    );
    for s in 1..=61 {
        let leased = h
            .lease_poll(&actor, c.chamber.id, slot(s), PollKind::Scheduled)
            .await;
        h.clock.set(slot(s) + ms(5));
        h.handle(leased).await.unwrap();
    }
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::ok(r#"{"t": 20, "h": 50}"#),
    );
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(62), PollKind::Scheduled)
        .await;
    h.clock.set(slot(62) + ms(5));
    h.handle(leased).await.unwrap();

    let transitions: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            DomainEvent::HealthChanged { transition, .. } => {
                Some((transition.from, transition.to, transition.at))
            }
            _ => None,
        })
        .collect();
    use HealthState::*;
    assert_eq!(
        transitions,
        [
            (Unknown, Degraded, slot(3) + ms(5)),
            (Degraded, Down, slot(61) + ms(5)),
            (Down, Up, slot(62) + ms(5))
        ]
    );
    let health = ChamberHealthRepository::get(&*h.store, c.chamber.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((health.state, health.consecutive_failures), (Up, 0));
}

#[tokio::test]
async fn readings_belong_to_the_batch_open_when_they_were_requested() {
    let h = Harness::new();
    let actor = h.tenant("batches", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::ok(r#"{"t": 20, "h": 50}"#),
    );
    h.clock.set(slot(1));
    let batch = h
        .admin
        .start_batch(
            &actor,
            c.chamber.section_id,
            NewSection {
                name: "lettuce 7".into(),
                description: String::new(),
            },
        )
        .await
        .unwrap();
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(2), PollKind::Scheduled)
        .await;
    h.clock.set(slot(2) + ms(5));
    h.handle(leased).await.unwrap();
    h.clock.set(slot(3));
    h.admin.end_batch(&actor, batch.id).await.unwrap();
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(4), PollKind::Scheduled)
        .await;
    h.clock.set(slot(4) + ms(5));
    h.handle(leased).await.unwrap();
    let in_batch = h
        .queries
        .readings(&actor, &ReadingQuery::all(ReadingScope::Batch(batch.id)))
        .await
        .unwrap()
        .items;
    assert_eq!(in_batch.len(), 2);
    assert!(
        in_batch
            .iter()
            .all(|r| r.slot == slot(2) && r.batch_id == Some(batch.id))
    );
}

#[tokio::test]
async fn poll_reads_from_the_repositories_conform() {
    let h = Harness::new();
    let ports =
        chamberlain_domain::conformance::fixtures::StorePorts::from_adapter(h.store.clone());
    let reads = chamberlain_domain::ports::RepositoryPollReads::of(&h.repositories);
    chamberlain_domain::conformance::poll_reads::reads_a_polls_chamber_and_batch(&reads, &ports)
        .await;
    chamberlain_domain::conformance::poll_reads::a_chamber_marked_outdated_is_read_again(
        &reads, &ports,
    )
    .await;
}
