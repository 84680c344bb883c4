//! The change feed and the event feed beyond their conformance suite: a subscription lives on
//! when the handle it was made from is dropped, as other processes go on publishing.

use std::time::Duration;

use chamberlain_domain::conformance::fixtures;
use chamberlain_domain::model::{ChamberId, OrganizationId, SectionId};
use chamberlain_domain::ports::{
    ChamberChange, ChamberChanges, DomainEvent, EventDelivery, EventFeed, EventPublisher,
    RoutingTag,
};
use chamberlain_redis::testing::TestPrefix;
use chamberlain_redis::{RedisChamberChanges, RedisEventBus};

/// A bound on waiting for a delivery that should come at once, so a lost one fails the test
/// instead of hanging it.
const DELIVERY: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_change_subscription_outlives_the_handle_it_was_made_from() {
    let prefix = TestPrefix::new();
    // As a worker's cache does: subscribe, and keep only the subscription.
    let mut subscription = {
        let changes = RedisChamberChanges::connect(&prefix.config, 64)
            .await
            .unwrap();
        changes.subscribe().await.unwrap()
    };
    // Another process (the gateway) publishes.
    let gateway = RedisChamberChanges::connect(&prefix.config, 64)
        .await
        .unwrap();
    let change = ChamberChange::Removed {
        organization_id: OrganizationId::random(),
        chamber_id: ChamberId::random(),
    };
    gateway.publish(&change).await.unwrap();
    let got = tokio::time::timeout(DELIVERY, subscription.next())
        .await
        .expect("a change published after the subscription is delivered");
    assert_eq!(got, Some(change), "the subscription closed with its handle");
}

#[tokio::test]
async fn an_event_subscription_outlives_the_bus_it_was_made_from() {
    let prefix = TestPrefix::new();
    let mut subscription = {
        let bus = RedisEventBus::connect(&prefix.config, 16).await.unwrap();
        bus.subscribe().await.unwrap()
    };
    let worker = RedisEventBus::connect(&prefix.config, 16).await.unwrap();
    let organization_id = OrganizationId::random();
    let section = SectionId::random();
    let event = DomainEvent::BatchStarted {
        routing: RoutingTag {
            organization_id,
            section_id: Some(section),
            chamber_id: None,
        },
        batch: fixtures::batch(organization_id, section, "trial", fixtures::T0),
    };
    worker.publish(std::slice::from_ref(&event)).await.unwrap();
    let got = tokio::time::timeout(DELIVERY, subscription.next())
        .await
        .expect("an event published after the subscription is delivered");
    assert!(
        matches!(got, Some(EventDelivery::Event(ref e)) if *e == event),
        "{got:?}"
    );
}
