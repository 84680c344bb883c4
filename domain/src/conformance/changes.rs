//! Conformance cases of the [`ChamberChanges`] feed and the [`EventPublisher`].

use std::sync::Arc;

use crate::conformance::fixtures::{self, T0};
use crate::model::{ChamberId, OrganizationId, SectionId};
use crate::ports::{ChamberChange, ChamberChanges, DomainEvent, EventPublisher, RoutingTag};

/// A fresh change feed and event publisher.
#[derive(Clone)]
pub struct ChangesFixture {
    pub changes: Arc<dyn ChamberChanges>,
    pub events: Arc<dyn EventPublisher>,
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

/// Expands to one `#[tokio::test]` per case; `$make` evaluates to a future of a fresh
/// [`ChangesFixture`].
#[macro_export]
macro_rules! changes_conformance_tests {
    ($make:expr) => {
        $crate::changes_conformance_tests!(@cases $make;
            every_subscriber_sees_every_change_in_order,
            a_subscription_sees_only_what_is_published_after_it,
            publishing_events_with_nobody_listening_succeeds
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
