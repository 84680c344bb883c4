//! Conformance cases of the [`ChamberChanges`] feed, the [`EventPublisher`] and the
//! [`EventFeed`].

use std::sync::Arc;

use crate::conformance::fixtures::{self, T0};
use crate::model::{ChamberId, OrganizationId, SectionId};
use crate::ports::{
    ChamberChange, ChamberChanges, DomainEvent, EventDelivery, EventFeed, EventPublisher,
    EventSubscription, RoutingTag,
};

/// A fresh change feed, event publisher and event feed (`feed` receives what `events`
/// publishes).
#[derive(Clone)]
pub struct ChangesFixture {
    pub changes: Arc<dyn ChamberChanges>,
    pub events: Arc<dyn EventPublisher>,
    pub feed: Arc<dyn EventFeed>,
    /// How many undelivered events a subscription holds before it lags.
    pub feed_capacity: usize,
    pub keepalive: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for ChangesFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangesFixture").finish_non_exhaustive()
    }
}

fn upserted(label: &str) -> ChamberChange {
    let chamber = fixtures::chamber(OrganizationId::random(), SectionId::random(), label, 1);
    ChamberChange::Upserted { chamber }
}

/// Waits for the next change that is not a resync signal.
async fn next_change(sub: &mut Box<dyn crate::ports::ChangeSubscription>) -> ChamberChange {
    loop {
        match sub.next().await.expect("the feed stays open") {
            ChamberChange::Resync => continue,
            change => return change,
        }
    }
}

pub async fn every_subscriber_sees_every_change_in_order(f: &ChangesFixture) {
    let mut a = f.changes.subscribe().await.unwrap();
    let mut b = f.changes.subscribe().await.unwrap();
    let sent = vec![
        upserted("first"),
        ChamberChange::Removed {
            organization_id: OrganizationId::random(),
            chamber_id: ChamberId::random(),
        },
        upserted("third"),
    ];
    for change in &sent {
        f.changes.publish(change).await.unwrap();
    }
    for sub in [&mut a, &mut b] {
        for expected in &sent {
            assert_eq!(&next_change(sub).await, expected);
        }
    }
}

pub async fn a_subscription_sees_only_what_is_published_after_it(f: &ChangesFixture) {
    f.changes.publish(&upserted("before")).await.unwrap();
    let mut sub = f.changes.subscribe().await.unwrap();
    let after = upserted("after");
    f.changes.publish(&after).await.unwrap();
    assert_eq!(next_change(&mut sub).await, after);
}

pub async fn publishing_events_with_nobody_listening_succeeds(f: &ChangesFixture) {
    let routing = RoutingTag {
        organization_id: OrganizationId::random(),
        section_id: None,
        chamber_id: None,
    };
    let batch = fixtures::batch(routing.organization_id, SectionId::random(), "b", T0);
    f.events
        .publish(&[DomainEvent::BatchStarted { routing, batch }])
        .await
        .unwrap();
    f.events.publish(&[]).await.unwrap();
}

fn batch_events(org: OrganizationId, from: usize, to: usize) -> Vec<DomainEvent> {
    let section = SectionId::random();
    (from..to)
        .map(|i| DomainEvent::BatchStarted {
            routing: RoutingTag {
                organization_id: org,
                section_id: Some(section),
                chamber_id: None,
            },
            batch: fixtures::batch(org, section, &format!("b{i}"), T0),
        })
        .collect()
}

/// The number in an event from [`batch_events`].
fn number(delivery: &EventDelivery) -> Option<usize> {
    match delivery {
        EventDelivery::Event(DomainEvent::BatchStarted { batch, .. }) => {
            batch.name.as_str().strip_prefix('b')?.parse().ok()
        }
        _ => None,
    }
}

async fn next_delivery(sub: &mut Box<dyn EventSubscription>) -> EventDelivery {
    sub.next().await.expect("the feed stays open")
}

pub async fn every_event_reaches_every_subscription_in_order(f: &ChangesFixture) {
    let mut a = f.feed.subscribe().await.unwrap();
    let mut b = f.feed.subscribe().await.unwrap();
    let org = OrganizationId::random();
    let per_call = (f.feed_capacity / 4).max(1);
    for call in 0..3 {
        let events = batch_events(org, call * per_call, (call + 1) * per_call);
        f.events.publish(&events).await.unwrap();
    }
    for sub in [&mut a, &mut b] {
        for i in 0..3 * per_call {
            let got = next_delivery(sub).await;
            assert_eq!(number(&got), Some(i), "event {i} in order, got {got:?}");
        }
    }
}

pub async fn a_feed_subscription_sees_only_events_published_after_it(f: &ChangesFixture) {
    let org = OrganizationId::random();
    f.events.publish(&batch_events(org, 0, 1)).await.unwrap();
    let mut sub = f.feed.subscribe().await.unwrap();
    f.events.publish(&batch_events(org, 1, 2)).await.unwrap();
    assert_eq!(number(&next_delivery(&mut sub).await), Some(1));
}

pub async fn a_subscription_that_falls_behind_is_told_how_many_it_missed_and_stays(
    f: &ChangesFixture,
) {
    let mut slow = f.feed.subscribe().await.unwrap();
    let org = OrganizationId::random();
    let total = f.feed_capacity * 3;
    f.events
        .publish(&batch_events(org, 0, total))
        .await
        .unwrap();
    let (mut seen, mut missed, mut notices, mut last) = (0usize, 0u64, 0, None);
    while seen + usize::try_from(missed).unwrap() < total {
        match next_delivery(&mut slow).await {
            EventDelivery::Lagged { missed: n } => {
                assert!(n > 0, "a lagged notice counts at least one event");
                missed += n;
                notices += 1;
            }
            delivery => {
                let i = number(&delivery).unwrap_or_else(|| panic!("unexpected {delivery:?}"));
                assert!(last.is_none_or(|l| i > l), "in order: {i} after {last:?}");
                last = Some(i);
                seen += 1;
            }
        }
    }
    assert!(notices >= 1, "the slow subscription was told it lagged");
    assert_eq!(last, Some(total - 1), "the newest events are delivered");
    // Still subscribed.
    f.events
        .publish(&batch_events(org, total, total + 1))
        .await
        .unwrap();
    assert_eq!(number(&next_delivery(&mut slow).await), Some(total));
}

/// Expands to one `#[tokio::test]` per case; `$make` evaluates to a future of a fresh
/// [`ChangesFixture`].
#[macro_export]
macro_rules! changes_conformance_tests {
    ($make:expr) => {
        $crate::changes_conformance_tests!(@cases $make;
            every_subscriber_sees_every_change_in_order,
            a_subscription_sees_only_what_is_published_after_it,
            publishing_events_with_nobody_listening_succeeds,
            every_event_reaches_every_subscription_in_order,
            a_feed_subscription_sees_only_events_published_after_it,
            a_subscription_that_falls_behind_is_told_how_many_it_missed_and_stays
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let fixture: $crate::conformance::changes::ChangesFixture = $make.await;
                $crate::conformance::changes::$case(&fixture).await;
            }
        )*
    };
}
