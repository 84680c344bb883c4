//! Conformance cases of [`AlertRepository`](crate::ports::AlertRepository) and
//! [`TransmitterRepository`](crate::ports::TransmitterRepository), run with the other
//! repository cases by [`store_conformance_tests!`](crate::store_conformance_tests).

use std::time::Duration;

use crate::alerting::{Acknowledgement, Alert, AlertCondition, AlertRule};
use crate::conformance::fixtures::{self, StorePorts, T0};
use crate::conformance::store::world;
use crate::model::{
    DeadLetterId, Description, Finite, OrganizationId, PageRequest, PageSize, TransmitterId, UserId,
};
use crate::ports::{AlertFilter, StoreError};
use crate::time::Timestamp;
use crate::transmit::{
    DeadLetter, Delivery, DeliveryKind, DeliveryState, Destination, Forwarded, MqttBroker,
    TopicPrefix, Transmitter, WebhookSecret,
};

fn page<K>() -> PageRequest<K> {
    PageRequest::first(PageSize::new(100).expect("valid page size"))
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0.as_unix_millis() + seconds * 1000)
}

fn rule(w: &crate::conformance::store::World, label: &str) -> AlertRule {
    AlertRule {
        id: crate::model::AlertRuleId::random(),
        organization_id: w.org.id,
        chamber_id: w.chamber.id,
        name: fixtures::name(label),
        condition: AlertCondition::OutOfRange {
            detector_id: w.detectors[0].id,
            min: Some(Finite::new(-5.5).expect("finite")),
            max: None,
            after: Duration::from_secs(30),
        },
        created_at: T0,
    }
}

pub async fn alert_rules_are_per_chamber_and_per_tenant(p: &StorePorts) {
    let w = world(p, "rules").await;
    let other = world(p, "rules other").await;
    let r = rule(&w, "too cold");
    p.alerts.create_rule(&r).await.unwrap();
    assert_eq!(p.alerts.get_rule(w.org.id, r.id).await.unwrap(), r);

    let mut dup = rule(&w, "too cold");
    assert_eq!(
        p.alerts.create_rule(&dup).await,
        Err(StoreError::Duplicate {
            entity: "alert_rule",
            field: "name"
        })
    );
    dup.name = fixtures::name("down");
    dup.condition = AlertCondition::ChamberDown {
        after: Duration::from_secs(60),
    };
    p.alerts.create_rule(&dup).await.unwrap();
    let mut quiet = rule(&w, "quiet");
    quiet.condition = AlertCondition::NoReading {
        detector_id: None,
        after: Duration::from_secs(90),
    };
    p.alerts.create_rule(&quiet).await.unwrap();
    assert_eq!(p.alerts.get_rule(w.org.id, quiet.id).await.unwrap(), quiet);

    // A rule on another tenant's chamber is refused as if the chamber did not exist.
    let mut foreign = rule(&w, "foreign");
    foreign.chamber_id = other.chamber.id;
    assert_eq!(
        p.alerts.create_rule(&foreign).await,
        Err(StoreError::MissingParent {
            entity: "alert_rule",
            parent: "chamber"
        })
    );

    let mine = p
        .alerts
        .list_rules(w.org.id, Some(w.chamber.id), page())
        .await
        .unwrap();
    let mut ids: Vec<_> = [r.id, dup.id, quiet.id].into();
    ids.sort();
    assert_eq!(mine.items.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert!(
        p.alerts
            .list_rules(other.org.id, None, page())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        p.alerts
            .list_rules(w.org.id, Some(other.chamber.id), page())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        p.alerts.get_rule(other.org.id, r.id).await,
        Err(StoreError::NotFound {
            entity: "alert_rule"
        })
    );
    let all = p.alerts.list_all_rules(page()).await.unwrap();
    assert!(all.items.contains(&r) && all.items.contains(&quiet));

    assert_eq!(
        p.alerts.delete_rule(other.org.id, r.id).await,
        Err(StoreError::NotFound {
            entity: "alert_rule"
        })
    );
    p.alerts.delete_rule(w.org.id, r.id).await.unwrap();
    assert_eq!(
        p.alerts.get_rule(w.org.id, r.id).await,
        Err(StoreError::NotFound {
            entity: "alert_rule"
        })
    );

    // Deleting the chamber deletes its rules.
    p.chambers.delete(w.org.id, w.chamber.id).await.unwrap();
    assert_eq!(
        p.alerts.get_rule(w.org.id, dup.id).await,
        Err(StoreError::NotFound {
            entity: "alert_rule"
        })
    );
}

pub async fn a_rule_has_at_most_one_open_alert_and_keeps_its_history(p: &StorePorts) {
    let w = world(p, "alerts").await;
    let other = world(p, "alerts other").await;
    let r = rule(&w, "too cold");
    p.alerts.create_rule(&r).await.unwrap();

    let first = Alert::opened(&r, at(0), at(31), "value outside [-5.5, -] for 31s".into());
    p.alerts.open_alert(&first).await.unwrap();
    let second = Alert::opened(&r, at(40), at(71), "again".into());
    assert!(matches!(
        p.alerts.open_alert(&second).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(p.alerts.open_rule_ids().await.unwrap(), vec![r.id]);
    assert_eq!(p.alerts.get_alert(w.org.id, first.id).await.unwrap(), first);

    let resolved = p.alerts.resolve_alert(r.id, at(90)).await.unwrap();
    let mut expected = first.clone();
    expected.resolved_at = Some(at(90));
    assert_eq!(resolved, Some(expected.clone()));
    assert_eq!(p.alerts.resolve_alert(r.id, at(95)).await.unwrap(), None);
    assert!(p.alerts.open_rule_ids().await.unwrap().is_empty());

    // A new alert of the same rule: the resolved one stays as history.
    p.alerts.open_alert(&second).await.unwrap();
    let open = p
        .alerts
        .list_alerts(
            w.org.id,
            AlertFilter {
                open_only: true,
                ..AlertFilter::default()
            },
            page(),
        )
        .await
        .unwrap();
    assert_eq!(open.items, vec![second.clone()]);
    let history = p
        .alerts
        .list_alerts(
            w.org.id,
            AlertFilter {
                rule_id: Some(r.id),
                chamber_id: Some(w.chamber.id),
                open_only: false,
            },
            page(),
        )
        .await
        .unwrap();
    let mut ids = vec![first.id, second.id];
    ids.sort();
    assert_eq!(history.items.iter().map(|a| a.id).collect::<Vec<_>>(), ids);
    assert!(
        p.alerts
            .list_alerts(other.org.id, AlertFilter::default(), page())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Acknowledged once, by one user, with a comment; another tenant cannot.
    let ack = Acknowledgement {
        user_id: UserId::random(),
        at: at(100),
        comment: Description::parse("door left open; closed it").unwrap(),
    };
    assert_eq!(
        p.alerts
            .acknowledge_alert(other.org.id, first.id, &ack)
            .await,
        Err(StoreError::NotFound { entity: "alert" })
    );
    let acked = p
        .alerts
        .acknowledge_alert(w.org.id, first.id, &ack)
        .await
        .unwrap();
    assert_eq!(acked.acknowledgement.as_ref(), Some(&ack));
    assert_eq!(acked.resolved_at, Some(at(90)));
    let later = Acknowledgement {
        at: at(200),
        ..ack.clone()
    };
    assert!(matches!(
        p.alerts.acknowledge_alert(w.org.id, first.id, &later).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(
        p.alerts
            .get_alert(w.org.id, first.id)
            .await
            .unwrap()
            .acknowledgement,
        Some(ack)
    );

    // An alert for a rule that is gone is refused; deleting a rule deletes its alerts.
    let mut orphan = second.clone();
    orphan.id = crate::model::AlertId::random();
    orphan.rule_id = crate::model::AlertRuleId::random();
    assert_eq!(
        p.alerts.open_alert(&orphan).await,
        Err(StoreError::MissingParent {
            entity: "alert",
            parent: "alert_rule"
        })
    );
    p.alerts.delete_rule(w.org.id, r.id).await.unwrap();
    assert_eq!(
        p.alerts.get_alert(w.org.id, first.id).await,
        Err(StoreError::NotFound { entity: "alert" })
    );
    assert!(p.alerts.open_rule_ids().await.unwrap().is_empty());
}

fn webhook(org: OrganizationId, label: &str) -> Transmitter {
    Transmitter {
        id: TransmitterId::random(),
        organization_id: org,
        name: fixtures::name(label),
        destination: Destination::Webhook {
            url: crate::model::EndpointUrl::parse("https://hooks.example/chamberlain")
                .expect("valid url"),
            secret: WebhookSecret::parse("0123456789abcdef-secret").expect("valid secret"),
        },
        forwarded: Forwarded::new(false, true).expect("valid"),
        created_at: T0,
    }
}

pub async fn transmitters_and_their_dead_letters(p: &StorePorts) {
    let w = world(p, "transmitters").await;
    let other = world(p, "transmitters other").await;
    let hook = webhook(w.org.id, "pager");
    p.transmitters.create_transmitter(&hook).await.unwrap();
    assert_eq!(
        p.transmitters
            .create_transmitter(&webhook(w.org.id, "pager"))
            .await,
        Err(StoreError::Duplicate {
            entity: "transmitter",
            field: "name"
        })
    );
    // Names are per organization.
    p.transmitters
        .create_transmitter(&webhook(other.org.id, "pager"))
        .await
        .unwrap();
    let mqtt = Transmitter {
        name: fixtures::name("broker"),
        id: TransmitterId::random(),
        destination: Destination::Mqtt {
            broker: MqttBroker::parse("mqtt://127.0.0.1:1883").unwrap(),
            topic_prefix: TopicPrefix::parse("lab/one").unwrap(),
        },
        forwarded: Forwarded::new(true, true).unwrap(),
        ..hook.clone()
    };
    p.transmitters.create_transmitter(&mqtt).await.unwrap();
    assert_eq!(
        p.transmitters
            .create_transmitter(&webhook(OrganizationId::random(), "orphan"))
            .await,
        Err(StoreError::MissingParent {
            entity: "transmitter",
            parent: "organization"
        })
    );
    assert_eq!(
        p.transmitters
            .get_transmitter(w.org.id, mqtt.id)
            .await
            .unwrap(),
        mqtt
    );
    assert_eq!(
        p.transmitters.get_transmitter(other.org.id, mqtt.id).await,
        Err(StoreError::NotFound {
            entity: "transmitter"
        })
    );
    let mine = p
        .transmitters
        .list_transmitters(w.org.id, page())
        .await
        .unwrap();
    let mut ids = vec![hook.id, mqtt.id];
    ids.sort();
    assert_eq!(mine.items.iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    assert_eq!(
        p.transmitters
            .list_all_transmitters(page())
            .await
            .unwrap()
            .items
            .len(),
        3
    );

    let letter = DeadLetter {
        id: DeadLetterId::random(),
        organization_id: w.org.id,
        transmitter_id: hook.id,
        delivery: Delivery {
            kind: DeliveryKind::AlertOpened,
            organization_id: w.org.id,
            topic: format!("chambers/{}/alerts", w.chamber.id),
            body: r#"{"type":"alert_opened"}"#.into(),
        },
        attempts: 5,
        last_error: "HTTP 503".into(),
        at: at(10),
    };
    p.transmitters.record_dead_letter(&letter).await.unwrap();
    let mqtt_letter = DeadLetter {
        id: DeadLetterId::random(),
        transmitter_id: mqtt.id,
        ..letter.clone()
    };
    p.transmitters
        .record_dead_letter(&mqtt_letter)
        .await
        .unwrap();
    assert_eq!(
        p.transmitters
            .list_dead_letters(w.org.id, Some(hook.id), page())
            .await
            .unwrap()
            .items,
        vec![letter.clone()]
    );
    assert_eq!(
        p.transmitters
            .list_dead_letters(w.org.id, None, page())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert!(
        p.transmitters
            .list_dead_letters(other.org.id, None, page())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    assert_eq!(
        p.transmitters
            .delete_transmitter(other.org.id, hook.id)
            .await,
        Err(StoreError::NotFound {
            entity: "transmitter"
        })
    );
    p.transmitters
        .delete_transmitter(w.org.id, hook.id)
        .await
        .unwrap();
    assert_eq!(
        p.transmitters
            .list_dead_letters(w.org.id, None, page())
            .await
            .unwrap()
            .items,
        vec![mqtt_letter]
    );
    let late = DeadLetter {
        id: DeadLetterId::random(),
        ..letter
    };
    assert_eq!(
        p.transmitters.record_dead_letter(&late).await,
        Err(StoreError::MissingParent {
            entity: "dead_letter",
            parent: "transmitter"
        })
    );
}

/// A transmitter's delivery state is one row per transmitter, replaced on each write, read per
/// organization, and gone with its transmitter.
pub async fn a_transmitter_has_one_delivery_state_replaced_on_each_write(p: &StorePorts) {
    let w = world(p, "delivery states").await;
    let other = world(p, "delivery states other").await;
    let hook = webhook(w.org.id, "hook");
    let second = webhook(w.org.id, "second");
    let theirs = webhook(other.org.id, "hook");
    for t in [&hook, &second, &theirs] {
        p.transmitters.create_transmitter(t).await.unwrap();
    }
    assert!(
        p.transmitters
            .delivery_states(w.org.id)
            .await
            .unwrap()
            .is_empty()
    );

    let mut state = DeliveryState::new(&hook, at(1));
    assert!(state.failed(at(2), "HTTP 503"));
    state.updated_at = at(2);
    p.transmitters.record_delivery_state(&state).await.unwrap();
    let mut theirs_state = DeliveryState::new(&theirs, at(1));
    theirs_state.delivered(at(1));
    p.transmitters
        .record_delivery_state(&theirs_state)
        .await
        .unwrap();
    assert_eq!(
        p.transmitters.delivery_states(w.org.id).await.unwrap(),
        vec![state.clone()]
    );

    // Recovered: the row is replaced, not added to; the last error stays for the record.
    assert!(state.delivered(at(5)));
    state.updated_at = at(5);
    p.transmitters.record_delivery_state(&state).await.unwrap();
    let mut second_state = DeliveryState::new(&second, at(6));
    second_state.delivered(at(6));
    p.transmitters
        .record_delivery_state(&second_state)
        .await
        .unwrap();
    let mut expected = vec![state.clone(), second_state.clone()];
    expected.sort_by_key(|s| s.transmitter_id);
    assert_eq!(
        p.transmitters.delivery_states(w.org.id).await.unwrap(),
        expected
    );
    assert_eq!(
        p.transmitters.delivery_states(other.org.id).await.unwrap(),
        vec![theirs_state]
    );

    // Another organization's transmitter id does not take a state under this one.
    let forged = DeliveryState {
        organization_id: w.org.id,
        ..DeliveryState::new(&theirs, at(7))
    };
    assert_eq!(
        p.transmitters.record_delivery_state(&forged).await,
        Err(StoreError::MissingParent {
            entity: "delivery_state",
            parent: "transmitter"
        })
    );

    p.transmitters
        .delete_transmitter(w.org.id, hook.id)
        .await
        .unwrap();
    assert_eq!(
        p.transmitters.delivery_states(w.org.id).await.unwrap(),
        vec![second_state]
    );
    assert_eq!(
        p.transmitters.record_delivery_state(&state).await,
        Err(StoreError::MissingParent {
            entity: "delivery_state",
            parent: "transmitter"
        })
    );
}
