//! Failures injected with mockall: what poll completion promises when its ports fail.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::{ChamberHealth, ChamberId, PollKind, Role};
use chamberlain_domain::ports::{
    LeasedJob, MockChamberHealthRepository, MockEventPublisher, MockPollQueue,
    MockReadingRepository, PollQueue, PublishError, StoreError, WriteReport,
};
use chamberlain_domain::usecases::{JobOutcome, PollHandler, ProcessedPoll};
use chamberlain_fakes::ScriptedAnswer;

use crate::support::{Handled, Harness, NotHandled, drain, play_worker};

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
    let JobOutcome::Done(p) = h.handler.fetch(&leased.job).await.unwrap() else {
        panic!("done")
    };
    (h, leased, p)
}

fn handler_with(h: &Harness, readings: MockReadingRepository) -> PollHandler {
    PollHandler {
        readings: Arc::new(readings),
        ..h.handler.clone()
    }
}

#[tokio::test]
async fn a_failed_write_reports_the_store_error_and_the_job_is_never_acknowledged() {
    let (h, leased, processed) = fetched_poll().await;
    let mut readings = MockReadingRepository::new();
    readings
        .expect_store_polls()
        .times(2)
        .returning(|_| Err(StoreError::unavailable("connection reset")));
    let handler = handler_with(&h, readings);
    let mut events = h.events.subscribe();

    let err = handler.complete(vec![processed]).await.unwrap_err();
    assert_eq!(err, StoreError::unavailable("connection reset"));
    assert!(drain(&mut events).is_empty(), "nothing announced");

    let mut queue = MockPollQueue::new();
    queue.expect_ack().never();
    queue.expect_release().never();
    let err = play_worker(&handler, &queue, leased).await.unwrap_err();
    assert!(matches!(
        err,
        NotHandled::Store(StoreError::Unavailable { .. })
    ));
    // mockall verifies `ack` was never called when the mocks drop.
}

#[tokio::test]
async fn only_polls_stored_for_the_first_time_move_health_and_are_announced() {
    let (h, _, processed) = fetched_poll().await;
    let poll = processed.record.entry.poll;
    let mut readings = MockReadingRepository::new();
    // A redelivery: the write finds the poll already stored.
    readings.expect_store_polls().times(1).returning(move |_| {
        Ok(WriteReport {
            readings_existing: 2,
            ledger_existing: 1,
            existing_polls: vec![poll],
            ..WriteReport::default()
        })
    });
    let mut health = MockChamberHealthRepository::new();
    health.expect_get_many().never();
    health.expect_save().never();
    let handler = PollHandler {
        health: Arc::new(health),
        ..handler_with(&h, readings)
    };
    let mut events = h.events.subscribe();
    let done = handler.complete(vec![processed]).await.unwrap();
    assert!(done.stored.is_empty() && done.transitions.is_empty());
    assert!(
        drain(&mut events).is_empty(),
        "a redelivery announces nothing"
    );
}

/// A first-time poll whose batch health save answers `batch`: the chamber is redone poll by
/// poll (one re-read, one save that wins); returns how many transitions came out.
async fn transitions_when_the_batch_save_answers(
    batch: fn(&[ChamberHealth]) -> Result<Vec<ChamberId>, StoreError>,
) -> usize {
    let (h, _, processed) = fetched_poll().await;
    let mut health = MockChamberHealthRepository::new();
    health
        .expect_get_many()
        .times(1)
        .returning(|_| Ok(Vec::new()));
    health.expect_save_many().times(1).returning(batch);
    health.expect_get().times(1).returning(|_| Ok(None));
    health.expect_save().times(1).returning(|_| Ok(1));
    let handler = PollHandler {
        health: Arc::new(health),
        ..h.handler.clone()
    };
    let done = handler.complete(vec![processed]).await.unwrap();
    done.transitions.len()
}

#[tokio::test]
async fn a_health_write_conflict_is_retried() {
    // The batch's save loses the race for the chamber; the poll's own save wins.
    let n = transitions_when_the_batch_save_answers(|healths| {
        Ok(healths.iter().map(|h| h.chamber_id).collect())
    })
    .await;
    assert_eq!(n, 1, "the retried write produced the transition once");
}

#[tokio::test]
async fn a_failed_batch_health_save_is_redone_poll_by_poll() {
    // The batch's save fails (and saved nothing): the poll's transition is not lost.
    let n = transitions_when_the_batch_save_answers(|_| {
        Err(StoreError::Unavailable {
            message: "connection reset".into(),
        })
    })
    .await;
    assert_eq!(n, 1, "the transition, once");
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
    let Handled::Completed(done) = play_worker(&handler, &*h.queue, leased).await.unwrap() else {
        panic!("completed")
    };
    assert_eq!((done.write.readings_new, done.stored.len()), (2, 1));
    assert_eq!(h.queue.depth().await.unwrap().leased, 0, "acknowledged");
}

#[tokio::test]
async fn a_healthy_chambers_success_reads_health_once_and_writes_nothing() {
    let (h, _, processed) = fetched_poll().await;
    let chamber = processed.record.entry.poll.chamber_id;
    let mut health = MockChamberHealthRepository::new();
    health.expect_get_many().times(1).returning(move |_| {
        Ok(vec![ChamberHealth {
            state: chamberlain_domain::model::HealthState::Up,
            version: 7,
            ..ChamberHealth::unknown(chamber, slot(0))
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
