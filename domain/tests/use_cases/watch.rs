//! Watching events: tenant checks, filters, and the back-pressure rule.

use std::sync::Arc;
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::{DetectorId, PollKind, Role};
use chamberlain_domain::ports::DomainEvent;
use chamberlain_domain::usecases::{
    EventKind, EventWatch, LagState, LagVerdict, UseCaseError, WatchItem, WatchRequest,
    WatchSettings,
};
use chamberlain_fakes::ScriptedAnswer;

use crate::support::Harness;

fn watcher(h: &Harness) -> EventWatch {
    EventWatch::new(&h.repositories, h.events.clone(), WatchSettings::default())
}

fn slot(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + s * 1000)
}

/// Polls `chamber` once at `slot` with a good answer, publishing its events.
async fn poll_once(
    h: &Harness,
    actor: &chamberlain_domain::usecases::Actor,
    label: &str,
    chamber: chamberlain_domain::model::ChamberId,
    s: i64,
) {
    h.client.script(
        &format!("http://chamber.test/{label}"),
        ScriptedAnswer::ok(r#"{"t": 21.5, "h": 40}"#),
    );
    let leased = h
        .lease_poll(actor, chamber, slot(s), PollKind::Scheduled)
        .await;
    h.clock.set(slot(s) + Duration::from_millis(5));
    h.handle(leased).await.unwrap();
}

async fn next_event(watch: &mut chamberlain_domain::usecases::Watch) -> DomainEvent {
    match tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an event")
        .expect("the feed is open")
    {
        WatchItem::Event(e) => e,
        WatchItem::Gap => panic!("no gap expected"),
    }
}

#[tokio::test]
async fn a_watch_sees_only_its_organizations_events_narrowed_by_its_filter() {
    let h = Harness::new();
    let lab = h.tenant("lab", Role::Operator).await;
    let other = h.tenant("other", Role::Operator).await;
    let idle = h.tenant("idle", Role::Viewer).await;
    let mine = h.json_chamber(&lab, "mine").await;
    let theirs = h.json_chamber(&other, "theirs").await;
    let w = watcher(&h);
    let mut everything = w.watch(&lab, WatchRequest::default()).await.unwrap();
    let mut one_detector = w
        .watch(
            &lab,
            WatchRequest {
                chamber_id: Some(mine.chamber.id),
                detector_ids: vec![mine.detectors[1].id],
                kinds: vec![EventKind::Readings],
                ..WatchRequest::default()
            },
        )
        .await
        .unwrap();
    let mut nothing_of_theirs = w.watch(&idle, WatchRequest::default()).await.unwrap();

    poll_once(&h, &other, "theirs", theirs.chamber.id, 1).await;
    poll_once(&h, &lab, "mine", mine.chamber.id, 2).await;

    // Everything of the organization: health, readings, poll, all of `mine`.
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut everything).await;
        assert_eq!(e.routing().organization_id, lab.organization_id);
        assert_eq!(e.routing().chamber_id, Some(mine.chamber.id));
        kinds.push(EventKind::of(&e));
    }
    assert_eq!(
        kinds,
        [EventKind::Health, EventKind::Readings, EventKind::Polls]
    );
    // One detector's readings only.
    match next_event(&mut one_detector).await {
        DomainEvent::ReadingsWritten { readings, .. } => {
            assert_eq!(readings.len(), 1);
            assert_eq!(readings[0].detector_id, mine.detectors[1].id);
        }
        other => panic!("readings only, got {other:?}"),
    }
    // Another organization's watcher got nothing at all.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), nothing_of_theirs.next())
            .await
            .is_err(),
        "no event of another organization"
    );
}

#[tokio::test]
async fn another_organizations_section_chamber_or_detector_cannot_be_watched() {
    let h = Harness::new();
    let lab = h.tenant("lab", Role::Admin).await;
    let other = h.tenant("other", Role::Admin).await;
    let mine = h.json_chamber(&lab, "mine").await;
    let theirs = h.json_chamber(&other, "theirs").await;
    let w = watcher(&h);
    for request in [
        WatchRequest {
            section_id: Some(theirs.chamber.section_id),
            ..WatchRequest::default()
        },
        WatchRequest {
            chamber_id: Some(theirs.chamber.id),
            ..WatchRequest::default()
        },
        WatchRequest {
            detector_ids: vec![theirs.detectors[0].id],
            ..WatchRequest::default()
        },
        WatchRequest {
            detector_ids: vec![DetectorId::random()],
            ..WatchRequest::default()
        },
    ] {
        let e = w.watch(&lab, request.clone()).await.unwrap_err();
        assert!(
            matches!(e, UseCaseError::NotFound { .. }),
            "{request:?}: {e:?}"
        );
    }
    // A detector of another of one's own chambers than the one asked for names the field.
    let second = h.json_chamber(&lab, "second").await;
    let e = w
        .watch(
            &lab,
            WatchRequest {
                chamber_id: Some(mine.chamber.id),
                detector_ids: vec![mine.detectors[0].id, second.detectors[0].id],
                ..WatchRequest::default()
            },
        )
        .await
        .unwrap_err();
    let UseCaseError::Invalid(v) = e else {
        panic!("invalid, got {e:?}")
    };
    assert_eq!(v.field, "detector_ids[1]");
}

#[tokio::test]
async fn a_watch_that_falls_behind_the_bus_is_told_of_a_gap() {
    let h = Harness::new();
    let lab = h.tenant("lab", Role::Operator).await;
    let bus = Arc::new(chamberlain_memory::MemoryEventBus::new(2));
    let mut w = watcher(&h);
    w.feed = bus.clone();
    let mut watch = w.watch(&lab, WatchRequest::default()).await.unwrap();
    let c = h.json_chamber(&lab, "c").await;
    let event = |i: i64| DomainEvent::PollCompleted {
        routing: chamberlain_domain::ports::RoutingTag {
            organization_id: lab.organization_id,
            section_id: Some(c.chamber.section_id),
            chamber_id: Some(c.chamber.id),
        },
        entry: chamberlain_domain::model::LedgerEntry::unfetched(
            chamberlain_domain::model::PollId {
                chamber_id: c.chamber.id,
                slot: slot(i),
            },
            chamberlain_domain::model::PollOutcome::Missed,
            0,
            slot(i),
        ),
    };
    use chamberlain_domain::ports::EventPublisher as _;
    bus.publish(&(0..5).map(event).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(watch.next().await, Some(WatchItem::Gap));
    assert_eq!(watch.next().await, Some(WatchItem::Event(event(3))));
    assert_eq!(watch.next().await, Some(WatchItem::Event(event(4))));
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + ms)
}

#[test]
fn a_subscriber_behind_is_told_what_it_missed_and_kept_until_the_bound() {
    let settings = WatchSettings {
        buffer: 8,
        max_lag: Duration::from_secs(10),
    };
    let mut lag = LagState::default();
    assert_eq!(lag.pending_notice(), None);
    assert_eq!(lag.dropped(at(0), &settings), LagVerdict::Keep);
    assert_eq!(lag.dropped(at(9_000), &settings), LagVerdict::Keep);
    assert_eq!(lag.pending_notice(), Some(2));
    lag.notice_queued();
    assert_eq!(lag.pending_notice(), None);
    // Still near full: still behind since the first drop.
    lag.queued(1, 8);
    assert!(lag.is_behind());
    assert_eq!(
        lag.dropped(at(10_001), &settings),
        LagVerdict::Disconnect {
            missed: 3,
            behind_for: Duration::from_millis(10_001),
        }
    );
}

#[test]
fn a_subscriber_that_drains_half_its_buffer_has_caught_up() {
    let settings = WatchSettings {
        buffer: 8,
        max_lag: Duration::from_secs(10),
    };
    let mut lag = LagState::default();
    lag.dropped(at(0), &settings);
    lag.notice_queued();
    lag.queued(4, 8);
    assert!(!lag.is_behind());
    // Behind again later: the clock starts again.
    assert_eq!(lag.dropped(at(20_000), &settings), LagVerdict::Keep);
    assert_eq!(lag.dropped(at(29_000), &settings), LagVerdict::Keep);
    assert_eq!(lag.missed_total(), 3);
}
