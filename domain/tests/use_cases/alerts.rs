//! Alert rules and the evaluator: validation and tenancy, and alerts opening once and resolving,
//! driven by real polls through the poll handler.

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::T0;
use chamberlain_domain::model::{ChamberId, PollKind, Role};
use chamberlain_domain::model::{PageRequest, PageSize};
use chamberlain_domain::ports::{AlertFilter, AlertRepository, DomainEvent};
use chamberlain_domain::usecases::{
    Actor, AlertAdmin, AlertEvaluator, NewAlertRule, NewCondition, NewDestination, NewTransmitter,
    TransmitterAdmin, UseCaseError,
};
use chamberlain_fakes::ScriptedAnswer;
use tokio::sync::broadcast;

use crate::support::Harness;

fn slot(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + s * 1000)
}

fn alert_admin(h: &Harness) -> AlertAdmin {
    AlertAdmin::new(&h.repositories, h.clock.clone())
}

fn evaluator(h: &Harness) -> AlertEvaluator {
    AlertEvaluator::new(
        h.store.clone(),
        h.store.clone(),
        h.store.clone(),
        h.events.clone(),
        h.clock.clone(),
    )
}

fn page<K>() -> PageRequest<K> {
    PageRequest::first(PageSize::new(100).unwrap())
}

/// Polls `chamber` at slot `s`, answering well or with HTTP 500, at `s` + 5 ms.
async fn poll(h: &Harness, actor: &Actor, label: &str, chamber: ChamberId, s: i64, ok: bool) {
    let answer = if ok {
        ScriptedAnswer::ok(r#"{"t": 21.5, "h": 40}"#)
    } else {
        ScriptedAnswer::Respond {
            status: 500,
            body: b"broken".to_vec(),
        }
    };
    h.client
        .script(&format!("http://chamber.test/{label}"), answer);
    let leased = h
        .lease_poll(actor, chamber, slot(s), PollKind::Scheduled)
        .await;
    h.clock.set(slot(s) + Duration::from_millis(5));
    h.handle(leased).await.unwrap();
}

/// Feeds every event published so far to the evaluator, then lets the clock tick; returns
/// the alert events that came out.
async fn evaluate(
    events: &mut broadcast::Receiver<std::sync::Arc<DomainEvent>>,
    evaluator: &mut AlertEvaluator,
) -> Vec<DomainEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        if matches!(
            *event,
            DomainEvent::AlertOpened { .. } | DomainEvent::AlertResolved { .. }
        ) {
            continue;
        }
        out.extend(evaluator.observe(&event).await);
    }
    out.extend(evaluator.tick().await);
    out
}

#[tokio::test]
async fn rules_are_validated_naming_the_field_and_tenant_checked() {
    let h = Harness::new();
    let admin = h.tenant("a", Role::Admin).await;
    let viewer = h.tenant("v", Role::Viewer).await;
    let other = h.tenant("b", Role::Admin).await;
    let c = h.json_chamber(&admin, "c1").await;
    let c2 = h.json_chamber(&admin, "c2").await;
    let theirs = h.json_chamber(&other, "c3").await;
    let alerts = alert_admin(&h);
    let rule = |chamber: ChamberId, condition: NewCondition| NewAlertRule {
        chamber_id: chamber,
        name: "too warm".into(),
        condition,
    };
    let warm = NewCondition::OutOfRange {
        detector_id: c.detectors[0].id,
        min: None,
        max: Some(30.0),
        after: Duration::from_secs(60),
    };

    assert!(matches!(
        alerts
            .create_rule(&viewer, rule(c.chamber.id, warm.clone()))
            .await,
        Err(UseCaseError::Forbidden(_))
    ));
    let field = |r: Result<_, UseCaseError>| match r {
        Err(UseCaseError::Invalid(v)) => v.field.into_owned(),
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(
        field(
            alerts
                .create_rule(
                    &admin,
                    rule(
                        c.chamber.id,
                        NewCondition::ChamberDown {
                            after: Duration::from_millis(100)
                        }
                    )
                )
                .await
        ),
        "rule.condition.after"
    );
    assert_eq!(
        field(
            alerts
                .create_rule(
                    &admin,
                    rule(
                        c.chamber.id,
                        NewCondition::OutOfRange {
                            detector_id: c.detectors[0].id,
                            min: Some(f64::NAN),
                            max: None,
                            after: Duration::from_secs(5)
                        }
                    )
                )
                .await
        ),
        "rule.condition.min"
    );
    // A detector of another chamber of the same organization.
    assert_eq!(
        field(
            alerts
                .create_rule(
                    &admin,
                    rule(
                        c.chamber.id,
                        NewCondition::NoReading {
                            detector_id: Some(c2.detectors[0].id),
                            after: Duration::from_secs(5)
                        }
                    )
                )
                .await
        ),
        "rule.condition.detector_id"
    );
    let mut long_name = rule(c.chamber.id, warm.clone());
    long_name.name = "x".repeat(1000);
    assert_eq!(
        field(alerts.create_rule(&admin, long_name).await),
        "rule.name"
    );
    // Another organization's chamber is not found, exactly like a missing one.
    assert_eq!(
        alerts
            .create_rule(
                &admin,
                rule(
                    theirs.chamber.id,
                    NewCondition::ChamberDown {
                        after: Duration::from_secs(60)
                    }
                )
            )
            .await,
        Err(UseCaseError::NotFound { entity: "chamber" })
    );

    let created = alerts
        .create_rule(&admin, rule(c.chamber.id, warm.clone()))
        .await
        .unwrap();
    assert!(matches!(
        alerts.create_rule(&admin, rule(c.chamber.id, warm)).await,
        Err(UseCaseError::Duplicate { .. })
    ));
    assert_eq!(
        alerts
            .list_rules(&viewer, None, page())
            .await
            .unwrap()
            .items
            .len(),
        0,
        "the viewer is in another organization"
    );
    assert_eq!(
        alerts
            .list_rules(&admin, Some(c.chamber.id), page())
            .await
            .unwrap()
            .items,
        vec![created.clone()]
    );
    assert_eq!(
        alerts.delete_rule(&other, created.id).await,
        Err(UseCaseError::NotFound {
            entity: "alert_rule"
        })
    );
}

#[tokio::test]
async fn a_chamber_without_readings_longer_than_its_rule_opens_one_alert_that_resolves_when_it_recovers()
 {
    let h = Harness::new();
    let admin = h.tenant("a", Role::Admin).await;
    let c = h.json_chamber(&admin, "c1").await;
    let rule = alert_admin(&h)
        .create_rule(
            &admin,
            NewAlertRule {
                chamber_id: c.chamber.id,
                name: "silent".into(),
                condition: NewCondition::NoReading {
                    detector_id: None,
                    after: Duration::from_secs(3),
                },
            },
        )
        .await
        .unwrap();
    let mut events = h.events.subscribe();
    let mut bus = h.events.subscribe();
    let mut evaluator = evaluator(&h);
    evaluator.reload().await.unwrap();
    assert_eq!(evaluator.rules(), 1);

    poll(&h, &admin, "c1", c.chamber.id, 0, true).await;
    assert!(evaluate(&mut events, &mut evaluator).await.is_empty());
    let mut opened = Vec::new();
    for s in 1..=8 {
        poll(&h, &admin, "c1", c.chamber.id, s, false).await;
        opened.extend(evaluate(&mut events, &mut evaluator).await);
    }
    assert_eq!(opened.len(), 1, "exactly one alert: {opened:?}");
    let DomainEvent::AlertOpened { alert, routing } = &opened[0] else {
        panic!("an opening: {opened:?}")
    };
    assert_eq!(routing.organization_id, admin.organization_id);
    assert_eq!(routing.section_id, Some(c.chamber.section_id));
    assert_eq!(alert.rule_id, rule.id);
    assert_eq!(
        alert.since,
        slot(0) + Duration::from_millis(5),
        "the last reading"
    );
    assert!(alert.opened_at > slot(3), "{:?}", alert.opened_at);
    assert!(alert.opened_at <= slot(4) + Duration::from_millis(5));
    // Stored as it was published.
    let stored = h
        .store
        .list_alerts(admin.organization_id, AlertFilter::default(), page())
        .await
        .unwrap();
    assert_eq!(stored.items, vec![alert.as_ref().clone()]);

    poll(&h, &admin, "c1", c.chamber.id, 9, true).await;
    let resolved = evaluate(&mut events, &mut evaluator).await;
    let [DomainEvent::AlertResolved { alert: done, .. }] = resolved.as_slice() else {
        panic!("one resolution: {resolved:?}")
    };
    assert_eq!(done.id, alert.id);
    assert!(done.resolved_at.is_some());
    assert!(
        h.store.open_rule_ids().await.unwrap().is_empty(),
        "nothing open"
    );
    // The bus heard the opening and the resolution, once each.
    let mut heard = Vec::new();
    while let Ok(e) = bus.try_recv() {
        match std::sync::Arc::unwrap_or_clone(e) {
            DomainEvent::AlertOpened { alert, .. } => heard.push(("opened", alert.id)),
            DomainEvent::AlertResolved { alert, .. } => heard.push(("resolved", alert.id)),
            _ => {}
        }
    }
    assert_eq!(heard, [("opened", alert.id), ("resolved", alert.id)]);

    // Acknowledged afterwards by an operator, once.
    let operator = Actor {
        role: Role::Operator,
        ..admin
    };
    let acked = alert_admin(&h)
        .acknowledge(&operator, alert.id, "network switch replaced")
        .await
        .unwrap();
    let ack = acked.acknowledgement.unwrap();
    assert_eq!(ack.user_id, operator.user_id);
    assert_eq!(ack.comment.as_str(), "network switch replaced");
    assert!(matches!(
        alert_admin(&h)
            .acknowledge(&operator, alert.id, "again")
            .await,
        Err(UseCaseError::FailedPrecondition(_))
    ));
}

#[tokio::test]
async fn a_chamber_down_longer_than_its_rule_opens_one_alert_even_across_a_restart() {
    let h = Harness::new();
    let admin = h.tenant("a", Role::Admin).await;
    let c = h.json_chamber(&admin, "c1").await;
    alert_admin(&h)
        .create_rule(
            &admin,
            NewAlertRule {
                chamber_id: c.chamber.id,
                name: "down".into(),
                condition: NewCondition::ChamberDown {
                    after: Duration::from_secs(20),
                },
            },
        )
        .await
        .unwrap();
    let mut events = h.events.subscribe();
    let mut evaluator = evaluator(&h);
    evaluator.reload().await.unwrap();
    poll(&h, &admin, "c1", c.chamber.id, 0, true).await;
    // Down after 10 failures and 60 s (the default health policy): at slot 61.
    let mut opened = Vec::new();
    for s in 1..=75 {
        poll(&h, &admin, "c1", c.chamber.id, s, false).await;
        opened.extend(evaluate(&mut events, &mut evaluator).await);
    }
    assert!(opened.is_empty(), "down for less than 20 s: {opened:?}");

    // The alerter restarts: a new evaluator counts from when the chamber went down.
    let mut evaluator = crate::alerts::evaluator(&h);
    evaluator.reload().await.unwrap();
    for s in 76..=90 {
        poll(&h, &admin, "c1", c.chamber.id, s, false).await;
        opened.extend(evaluate(&mut events, &mut evaluator).await);
    }
    assert_eq!(opened.len(), 1, "{opened:?}");
    let DomainEvent::AlertOpened { alert, .. } = &opened[0] else {
        panic!()
    };
    assert!(alert.detail.contains("down for"), "{}", alert.detail);

    // And again: the open alert is known, no second one.
    let mut evaluator = crate::alerts::evaluator(&h);
    evaluator.reload().await.unwrap();
    for s in 91..=100 {
        poll(&h, &admin, "c1", c.chamber.id, s, false).await;
        assert!(evaluate(&mut events, &mut evaluator).await.is_empty());
    }
    poll(&h, &admin, "c1", c.chamber.id, 101, true).await;
    let resolved = evaluate(&mut events, &mut evaluator).await;
    assert!(
        matches!(resolved.as_slice(), [DomainEvent::AlertResolved { alert: a, .. }] if a.id == alert.id),
        "{resolved:?}"
    );
}

#[tokio::test]
async fn transmitters_are_for_admins_and_validated_naming_the_field() {
    let h = Harness::new();
    let admin = h.tenant("a", Role::Admin).await;
    let operator = h.tenant("o", Role::Operator).await;
    let transmitters = TransmitterAdmin::new(&h.repositories, h.clock.clone());
    let webhook = |url: &str, secret: &str| NewTransmitter {
        name: "pager".into(),
        destination: NewDestination::Webhook {
            url: url.into(),
            secret: secret.into(),
        },
        readings: false,
        alerts: true,
    };
    assert!(matches!(
        transmitters
            .create(
                &operator,
                webhook("https://hooks.example/x", "0123456789abcdef")
            )
            .await,
        Err(UseCaseError::Forbidden(_))
    ));
    let field = |r: Result<_, UseCaseError>| match r {
        Err(UseCaseError::Invalid(v)) => v.field.into_owned(),
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(
        field(
            transmitters
                .create(&admin, webhook("ftp://hooks.example/x", "0123456789abcdef"))
                .await
        ),
        "transmitter.webhook.url"
    );
    assert_eq!(
        field(
            transmitters
                .create(&admin, webhook("https://hooks.example/x", "short"))
                .await
        ),
        "transmitter.webhook.secret"
    );
    let mut neither = webhook("https://hooks.example/x", "0123456789abcdef");
    neither.alerts = false;
    assert_eq!(
        field(transmitters.create(&admin, neither).await),
        "transmitter.forward"
    );
    assert_eq!(
        field(
            transmitters
                .create(
                    &admin,
                    NewTransmitter {
                        name: "broker".into(),
                        destination: NewDestination::Mqtt {
                            broker: "mqtt://127.0.0.1".into(),
                            topic_prefix: "lab/#".into(),
                        },
                        readings: true,
                        alerts: true,
                    }
                )
                .await
        ),
        "transmitter.mqtt.topic_prefix"
    );
    let t = transmitters
        .create(
            &admin,
            webhook("https://hooks.example/x", "0123456789abcdef"),
        )
        .await
        .unwrap();
    assert_eq!(
        transmitters.list(&admin, page()).await.unwrap().items,
        vec![t]
    );
    assert!(
        transmitters
            .dead_letters(&admin, None, page())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
