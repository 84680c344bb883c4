//! Failures injected with mockall: the ordering rules of poll completion.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::{PollKind, Role};
use chamberlain_domain::ports::{
    LeasedJob, MockChamberHealthRepository, MockEventPublisher, MockPollQueue,
    MockReadingRepository, PublishError, StoreError, WriteReport,
};
use chamberlain_domain::usecases::{Fetched, Handled, PollError, PollHandler, ProcessedPoll};
use chamberlain_fakes::ScriptedAnswer;
use mockall::Sequence;

use crate::support::Harness;

fn slot(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + s * 1000)
}

/// A harness with one chamber answering well, and one of its polls leased and fetched.
async fn fetched_poll() -> (Harness, LeasedJob, ProcessedPoll) {
    let h = Harness::new();
    let actor = h.tenant("mocked", Role::Operator).await;
    let c = h.json_chamber(&actor, "c1").await;
    h.client.script(
        "http://chamber.test/c1",
        ScriptedAnswer::ok(r#"{"t": 20, "h": 50}"#),
    );
    let leased = h
        .lease_poll(&actor, c.chamber.id, slot(1), PollKind::Scheduled)
        .await;
    h.clock.set(slot(1) + Duration::from_millis(5));
    let Fetched::Done(p) = h.handler.fetch(&leased).await.unwrap() else {
        panic!("done")
    };
    (h, leased, p)
}

fn handler_with(h: &Harness, readings: MockReadingRepository, queue: MockPollQueue) -> PollHandler {
    PollHandler {
        readings: Arc::new(readings),
        queue: Arc::new(queue),
        ..h.handler.clone()
    }
}

#[tokio::test]
async fn a_failed_write_never_acknowledges_a_poll() {
    let (h, leased, processed) = fetched_poll().await;
    let mut readings = MockReadingRepository::new();
    readings
        .expect_store_polls()
        .times(2)
        .returning(|_| Err(StoreError::unavailable("connection reset")));
    let mut queue = MockPollQueue::new();
    queue.expect_ack().never();
    queue.expect_release().never();
    let handler = handler_with(&h, readings, queue);

    let err = handler.complete(vec![processed]).await.unwrap_err();
    assert_eq!(
        err,
        PollError::Store(StoreError::unavailable("connection reset"))
    );
    let err = handler.handle(leased).await.unwrap_err();
    assert!(matches!(
        err,
        PollError::Store(StoreError::Unavailable { .. })
    ));
    // mockall verifies `ack` was never called when the mocks drop.
}

#[tokio::test]
async fn the_ack_comes_only_after_the_write_returns() {
    let (h, _, processed) = fetched_poll().await;
    let receipt = processed.receipt.clone();
    let mut seq = Sequence::new();
    let mut readings = MockReadingRepository::new();
    readings
        .expect_store_polls()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|polls| {
            Ok(WriteReport {
                readings_new: 2,
                ledger_new: polls.len() as u64,
                ..WriteReport::default()
            })
        });
    let mut queue = MockPollQueue::new();
    queue
        .expect_ack()
        .withf(move |receipts| receipts == [receipt.clone()])
        .times(1)
        .in_sequence(&mut seq)
        .returning(|r| Ok(r.len() as u64));
    let done = handler_with(&h, readings, queue)
        .complete(vec![processed])
        .await
        .unwrap();
    assert_eq!(done.acked, 1);
}

#[tokio::test]
async fn a_lost_ack_is_reported_but_health_and_events_still_happen() {
    let (h, _, processed) = fetched_poll().await;
    let mut readings = MockReadingRepository::new();
    readings.expect_store_polls().returning(|_| {
        Ok(WriteReport {
            ledger_new: 1,
            ..WriteReport::default()
        })
    });
    let mut queue = MockPollQueue::new();
    queue.expect_ack().returning(|_| {
        Err(chamberlain_domain::ports::QueueError::Unavailable {
            message: "redis down".into(),
        })
    });
    let mut events = h.events.subscribe();
    let err = handler_with(&h, readings, queue)
        .complete(vec![processed])
        .await
        .unwrap_err();
    assert!(matches!(err, PollError::Queue(_)));
    assert!(
        events.try_recv().is_ok(),
        "events were published for the durable poll"
    );
}

#[tokio::test]
async fn a_health_write_conflict_is_retried() {
    let (h, _, processed) = fetched_poll().await;
    let mut health = MockChamberHealthRepository::new();
    // One read for the batch; after the lost race, a re-read for the poll.
    health
        .expect_get_many()
        .times(1)
        .returning(|_| Ok(Vec::new()));
    health.expect_get().times(1).returning(|_| Ok(None));
    let mut attempts = 0;
    health.expect_save().times(2).returning(move |_| {
        attempts += 1;
        if attempts == 1 {
            Err(StoreError::Conflict {
                entity: "health",
                reason: "stale".into(),
            })
        } else {
            Ok(1)
        }
    });
    let handler = PollHandler {
        health: Arc::new(health),
        ..h.handler.clone()
    };
    let done = handler.complete(vec![processed]).await.unwrap();
    assert_eq!(
        done.transitions.len(),
        1,
        "the retried write produced the transition once"
    );
}

#[tokio::test]
async fn a_failing_event_bus_does_not_fail_the_poll() {
    let (h, leased, _) = fetched_poll().await;
    let mut events = MockEventPublisher::new();
    events.expect_publish().times(1).returning(|_| {
        Err(PublishError::Unavailable {
            message: "bus down".into(),
        })
    });
    let handler = PollHandler {
        events: Arc::new(events),
        ..h.handler.clone()
    };
    let Handled::Completed(done) = handler.handle(leased).await.unwrap() else {
        panic!("completed")
    };
    assert_eq!((done.write.readings_new, done.acked), (2, 1));
}

#[tokio::test]
async fn a_healthy_chambers_success_reads_health_once_and_writes_nothing() {
    let (h, _, processed) = fetched_poll().await;
    let chamber = processed.record.entry.poll.chamber_id;
    let mut health = MockChamberHealthRepository::new();
    health.expect_get_many().times(1).returning(move |_| {
        Ok(vec![chamberlain_domain::model::ChamberHealth {
            state: chamberlain_domain::model::HealthState::Up,
            version: 7,
            ..chamberlain_domain::model::ChamberHealth::unknown(chamber, slot(0))
        }])
    });
    health.expect_get().never();
    health.expect_save().never();
    let handler = PollHandler {
        health: Arc::new(health),
        ..h.handler.clone()
    };
    let done = handler.complete(vec![processed]).await.unwrap();
    assert!(done.transitions.is_empty());
}
