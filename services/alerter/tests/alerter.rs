//! The forwarder's lanes (retries, dead letters, never waiting) and the alerter's leader loop,
//! on in-memory adapters and Tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_alerter::{Alerter, AlerterConfig, ForwardSettings, Forwarder};
use chamberlain_domain::Timestamp;
use chamberlain_domain::alerting::{Alert, AlertCondition, AlertRule};
use chamberlain_domain::conformance::fixtures::{self, T0};
use chamberlain_domain::model::{
    AlertRuleId, Chamber, Finite, Name, OrganizationId, PageRequest, PageSize, PollId, Reading,
    ReadingValue, TransmitterId,
};
use chamberlain_domain::ports::{
    AlertFilter, AlertRepository, ChamberRepository, Clock, DeliveryClient, DeliveryError,
    DomainEvent, EventPublisher, OrganizationRepository, Repositories, RoutingTag,
    SectionRepository, TransmitterRepository,
};
use chamberlain_domain::transmit::{
    Delivery, DeliveryKind, Destination, Forwarded, RetryPolicy, Transmitter, WebhookSecret,
};
use chamberlain_fakes::{MemoryStore, TokioClock};
use chamberlain_memory::{MemoryEventBus, MemoryLeaderLease};

/// A destination that fails (transiently or for good) a number of times, or hangs for ever,
/// and records what reached it.
#[derive(Default)]
struct FakeDestination {
    fail_first: AtomicU32,
    permanent: bool,
    /// Every delivery refused by the egress policy.
    blocked: bool,
    hang: bool,
    attempts: Mutex<Vec<(tokio::time::Instant, DeliveryKind)>>,
    delivered: Mutex<Vec<Delivery>>,
}

#[async_trait]
impl DeliveryClient for FakeDestination {
    async fn deliver(&self, _: &Transmitter, delivery: &Delivery) -> Result<(), DeliveryError> {
        self.attempts
            .lock()
            .unwrap()
            .push((tokio::time::Instant::now(), delivery.kind));
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.blocked {
            return Err(DeliveryError::Blocked {
                reason:
                    "127.0.0.1 is loopback; allowlist it with CHAMBERLAIN_EGRESS_ALLOW to reach it"
                        .into(),
            });
        }
        if self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(if self.permanent {
                DeliveryError::Permanent {
                    reason: "HTTP 410".into(),
                }
            } else {
                DeliveryError::Transient {
                    reason: "HTTP 503".into(),
                }
            });
        }
        self.delivered.lock().unwrap().push(delivery.clone());
        Ok(())
    }
}

struct World {
    store: Arc<MemoryStore>,
    org: OrganizationId,
    chamber: Chamber,
    detector: chamberlain_domain::model::Detector,
}

async fn world() -> World {
    let store = Arc::new(MemoryStore::new());
    let org = fixtures::organization("lab");
    OrganizationRepository::create(&*store, &org).await.unwrap();
    let section = fixtures::section(org.id, "room");
    SectionRepository::create(&*store, &section).await.unwrap();
    let chamber = fixtures::chamber(org.id, section.id, "c1", 1);
    let detector = fixtures::detector(&chamber, "t");
    ChamberRepository::create(&*store, &chamber, std::slice::from_ref(&detector))
        .await
        .unwrap();
    World {
        store,
        org: org.id,
        chamber,
        detector,
    }
}

async fn transmitter(w: &World, name: &str, forwarded: Forwarded) -> Transmitter {
    let t = Transmitter {
        id: TransmitterId::random(),
        organization_id: w.org,
        name: Name::parse(name).unwrap(),
        destination: Destination::Webhook {
            url: chamberlain_domain::model::EndpointUrl::parse("https://hooks.example/x").unwrap(),
            secret: WebhookSecret::parse("0123456789abcdef").unwrap(),
        },
        forwarded,
        created_at: T0,
    };
    w.store.create_transmitter(&t).await.unwrap();
    t
}

fn routing(w: &World) -> RoutingTag {
    RoutingTag {
        organization_id: w.org,
        section_id: Some(w.chamber.section_id),
        chamber_id: Some(w.chamber.id),
    }
}

fn alert_event(w: &World) -> DomainEvent {
    let rule = AlertRule {
        id: AlertRuleId::random(),
        organization_id: w.org,
        chamber_id: w.chamber.id,
        name: Name::parse("r").unwrap(),
        condition: AlertCondition::ChamberDown {
            after: Duration::from_secs(5),
        },
        created_at: T0,
    };
    DomainEvent::AlertOpened {
        routing: routing(w),
        alert: Box::new(Alert::opened(&rule, T0, T0, "down".into())),
    }
}

fn readings_event(w: &World, at: Timestamp) -> DomainEvent {
    DomainEvent::ReadingsWritten {
        routing: routing(w),
        poll: PollId {
            chamber_id: w.chamber.id,
            slot: at,
        },
        readings: vec![Reading {
            detector_id: w.detector.id,
            chamber_id: w.chamber.id,
            slot: at,
            value: ReadingValue::Measured(Finite::new(20.0).unwrap()),
            requested_at: at,
            received_at: at,
            batch_id: None,
        }],
    }
}

fn settings(attempts: u32) -> ForwardSettings {
    ForwardSettings {
        retry: RetryPolicy::new(attempts, Duration::from_secs(1), Duration::from_secs(10)).unwrap(),
        lane_capacity: 16,
    }
}

/// Lets the paused runtime run (and its clock advance) until `done` holds, for at most
/// `within` of Tokio time.
async fn until(within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn page<K>() -> PageRequest<K> {
    PageRequest::first(PageSize::new(100).unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_failing_delivery_is_retried_with_backoff_until_it_succeeds() {
    let w = world().await;
    transmitter(&w, "pager", Forwarded::new(false, true).unwrap()).await;
    let dest = Arc::new(FakeDestination {
        fail_first: AtomicU32::new(2),
        ..FakeDestination::default()
    });
    let clock = TokioClock::at(T0);
    let mut forwarder = Forwarder::new(w.store.clone(), dest.clone(), clock, settings(5));
    forwarder.reload().await.unwrap();
    forwarder.offer(&readings_event(&w, T0)); // not forwarded: alerts only
    forwarder.offer(&alert_event(&w));
    until(Duration::from_secs(30), || {
        dest.delivered.lock().unwrap().len() == 1
    })
    .await;
    let attempts = dest.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 3, "two failures, then success");
    assert!(
        attempts
            .iter()
            .all(|(_, k)| *k == DeliveryKind::AlertOpened)
    );
    let gaps: Vec<Duration> = attempts.windows(2).map(|p| p[1].0 - p[0].0).collect();
    assert_eq!(gaps, [Duration::from_secs(1), Duration::from_secs(2)]);
    assert_eq!(forwarder.stats().retried.load(Ordering::Relaxed), 2);
    assert!(
        w.store
            .list_dead_letters(w.org, None, page())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // The recovery is written down at once: delivering again, the last error kept.
    let states = w.store.delivery_states(w.org).await.unwrap();
    let [state] = states.as_slice() else {
        panic!("one delivery state: {states:?}")
    };
    assert_eq!(state.failing_since, None);
    assert_eq!(state.last_delivered_at, Some(T0 + Duration::from_secs(3)));
    assert_eq!(state.last_error.as_deref(), Some("HTTP 503"));
}

#[tokio::test(start_paused = true)]
async fn a_destination_that_stays_down_gets_every_try_and_then_a_dead_letter() {
    let w = world().await;
    let t = transmitter(&w, "pager", Forwarded::new(false, true).unwrap()).await;
    let dest = Arc::new(FakeDestination {
        fail_first: AtomicU32::new(u32::MAX),
        ..FakeDestination::default()
    });
    let clock = TokioClock::at(T0);
    let mut forwarder = Forwarder::new(w.store.clone(), dest.clone(), clock, settings(4));
    forwarder.reload().await.unwrap();
    let event = alert_event(&w);
    forwarder.offer(&event);
    let stats = forwarder.stats();
    until(Duration::from_secs(60), || {
        stats.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(dest.attempts.lock().unwrap().len(), 4);
    let letters = w
        .store
        .list_dead_letters(w.org, Some(t.id), page())
        .await
        .unwrap();
    let [letter] = letters.items.as_slice() else {
        panic!("one dead letter: {letters:?}")
    };
    assert_eq!(letter.attempts, 4);
    assert_eq!(letter.last_error, "HTTP 503");
    assert_eq!(letter.delivery.kind, DeliveryKind::AlertOpened);
    assert_eq!(
        letter.delivery,
        Delivery::for_event(&event, t.forwarded).unwrap()
    );
    // Failing since the first try, nothing ever delivered.
    let states = w.store.delivery_states(w.org).await.unwrap();
    let [state] = states.as_slice() else {
        panic!("one delivery state: {states:?}")
    };
    assert_eq!(state.transmitter_id, t.id);
    assert_eq!(state.failing_since, Some(T0));
    assert_eq!(state.last_delivered_at, None);
    assert_eq!(state.last_error.as_deref(), Some("HTTP 503"));
}

#[tokio::test(start_paused = true)]
async fn a_refused_delivery_is_dead_lettered_at_once() {
    let w = world().await;
    transmitter(&w, "pager", Forwarded::new(false, true).unwrap()).await;
    let dest = Arc::new(FakeDestination {
        fail_first: AtomicU32::new(1),
        permanent: true,
        ..FakeDestination::default()
    });
    let clock = TokioClock::at(T0);
    let mut forwarder = Forwarder::new(w.store.clone(), dest.clone(), clock, settings(5));
    forwarder.reload().await.unwrap();
    forwarder.offer(&alert_event(&w));
    let stats = forwarder.stats();
    until(Duration::from_secs(10), || {
        stats.dead_lettered.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(dest.attempts.lock().unwrap().len(), 1);
    let letters = w
        .store
        .list_dead_letters(w.org, None, page())
        .await
        .unwrap();
    assert_eq!(letters.items[0].last_error, "HTTP 410");
}

#[tokio::test(start_paused = true)]
async fn a_blocked_destination_is_reported_once_per_transmitter_and_counted_per_event() {
    let w = world().await;
    let t = transmitter(&w, "pager", Forwarded::new(false, true).unwrap()).await;
    let dest = Arc::new(FakeDestination {
        blocked: true,
        ..FakeDestination::default()
    });
    let clock = TokioClock::at(T0);
    let mut forwarder = Forwarder::new(w.store.clone(), dest.clone(), clock, settings(5));
    forwarder.reload().await.unwrap();
    for _ in 0..10 {
        forwarder.offer(&alert_event(&w));
    }
    let stats = forwarder.stats();
    until(Duration::from_secs(10), || {
        stats.blocked.load(Ordering::Relaxed) == 10
    })
    .await;
    assert_eq!(
        dest.attempts.lock().unwrap().len(),
        10,
        "no retries of a block"
    );
    assert_eq!(stats.retried.load(Ordering::Relaxed), 0);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 1);
    let letters = w
        .store
        .list_dead_letters(w.org, Some(t.id), page())
        .await
        .unwrap();
    let [letter] = letters.items.as_slice() else {
        panic!("one dead letter for the blocked transmitter: {letters:?}")
    };
    assert!(
        letter.last_error.contains("to reach it"),
        "{}",
        letter.last_error
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_destination_never_holds_up_offers_nor_the_other_transmitters() {
    let w = world().await;
    let hung = Arc::new(FakeDestination {
        hang: true,
        ..FakeDestination::default()
    });
    let healthy = Arc::new(FakeDestination::default());
    transmitter(&w, "hung", Forwarded::new(true, true).unwrap()).await;
    transmitter(&w, "healthy", Forwarded::new(true, false).unwrap()).await;
    struct ByName {
        hung: Arc<FakeDestination>,
        healthy: Arc<FakeDestination>,
    }
    #[async_trait]
    impl DeliveryClient for ByName {
        async fn deliver(&self, t: &Transmitter, d: &Delivery) -> Result<(), DeliveryError> {
            if t.name.as_str() == "hung" {
                self.hung.deliver(t, d).await
            } else {
                self.healthy.deliver(t, d).await
            }
        }
    }
    let clock = TokioClock::at(T0);
    let mut forwarder = Forwarder::new(
        w.store.clone(),
        Arc::new(ByName {
            hung: hung.clone(),
            healthy: healthy.clone(),
        }),
        clock,
        ForwardSettings {
            lane_capacity: 4,
            ..settings(3)
        },
    );
    forwarder.reload().await.unwrap();
    // Offered one at a time with the healthy lane drained in between; the hung lane holds one
    // delivery in flight and four queued, the rest are dropped.
    for s in 0..100 {
        forwarder.offer(&readings_event(&w, T0 + Duration::from_secs(s)));
        until(Duration::from_secs(5), || {
            healthy.delivered.lock().unwrap().len() == s as usize + 1
        })
        .await;
    }
    assert_eq!(hung.attempts.lock().unwrap().len(), 1);
    assert_eq!(
        forwarder.stats().dropped.load(Ordering::Relaxed),
        100 - 1 - 4
    );
}

#[tokio::test(start_paused = true)]
async fn the_leader_opens_an_alert_stores_it_publishes_it_and_forwards_it() {
    let w = world().await;
    let rule = AlertRule {
        id: AlertRuleId::random(),
        organization_id: w.org,
        chamber_id: w.chamber.id,
        name: Name::parse("silent").unwrap(),
        condition: AlertCondition::NoReading {
            detector_id: None,
            after: Duration::from_secs(3),
        },
        created_at: T0,
    };
    w.store.create_rule(&rule).await.unwrap();
    transmitter(&w, "pager", Forwarded::new(true, true).unwrap()).await;
    let dest = Arc::new(FakeDestination::default());
    let clock: Arc<dyn Clock> = TokioClock::at(T0);
    let bus = Arc::new(MemoryEventBus::new(1024));
    let mut watcher = bus.subscribe();
    let mut config = AlerterConfig::new("alerter-test");
    config.tick = Duration::from_millis(200);
    let alerter = Alerter::new(
        &Repositories::of(w.store.clone()),
        bus.clone(),
        bus.clone(),
        Arc::new(MemoryLeaderLease::new(clock.clone())),
        dest.clone(),
        clock.clone(),
        config,
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(alerter.run(async {
        let _ = stopped.await;
    }));
    // Readings keep it quiet; then they stop.
    until(Duration::from_secs(5), || bus.receiver_count() >= 2).await;
    for s in 0..3 {
        bus.publish(&[readings_event(&w, clock.now())])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = s;
    }
    until(Duration::from_secs(10), || {
        dest.delivered
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.kind == DeliveryKind::AlertOpened)
    })
    .await;
    let opened_at = clock.now();
    let alerts = w
        .store
        .list_alerts(w.org, AlertFilter::default(), page())
        .await
        .unwrap();
    assert_eq!(alerts.items.len(), 1);
    assert!(alerts.items[0].is_open());
    // Forwarded: the three polls' readings, then the alert.
    let kinds: Vec<_> = dest
        .delivered
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            DeliveryKind::Readings,
            DeliveryKind::Readings,
            DeliveryKind::Readings,
            DeliveryKind::AlertOpened
        ]
    );
    // Published on the bus for live watchers.
    let mut heard_open = false;
    while let Ok(e) = watcher.try_recv() {
        heard_open |= matches!(*e, DomainEvent::AlertOpened { .. });
    }
    assert!(heard_open);

    // A reading resolves it; nothing else opens meanwhile.
    bus.publish(&[readings_event(&w, opened_at)]).await.unwrap();
    until(Duration::from_secs(10), || {
        dest.delivered
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.kind == DeliveryKind::AlertResolved)
    })
    .await;
    assert!(w.store.open_rule_ids().await.unwrap().is_empty());
    let _ = stop.send(());
    running.await.unwrap();
}
