//! Against a real broker: the local Mosquitto (`CHAMBERLAIN_TEST_MQTT_URL`, default
//! `mqtt://127.0.0.1:1883`). Each test publishes under a topic prefix of its own.

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::egress::EgressPolicy;
use chamberlain_domain::model::{Name, OrganizationId, TransmitterId};
use chamberlain_domain::ports::{DeliveryClient, DeliveryError};
use chamberlain_domain::transmit::{
    Delivery, DeliveryKind, Destination, Forwarded, MqttBroker, TopicPrefix, Transmitter,
};
use chamberlain_mqtt::MqttClient;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn broker_url() -> String {
    std::env::var("CHAMBERLAIN_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

fn transmitter(broker: &str, prefix: &str) -> Transmitter {
    Transmitter {
        id: TransmitterId::random(),
        organization_id: OrganizationId::random(),
        name: Name::parse("broker").unwrap(),
        destination: Destination::Mqtt {
            broker: MqttBroker::parse(broker).unwrap(),
            topic_prefix: TopicPrefix::parse(prefix).unwrap(),
        },
        forwarded: Forwarded::new(true, true).unwrap(),
        created_at: Timestamp::from_unix_millis(0),
    }
}

fn delivery(n: u32) -> Delivery {
    Delivery {
        kind: DeliveryKind::AlertOpened,
        organization_id: OrganizationId::random(),
        topic: "chambers/c1/alerts".into(),
        body: format!(r#"{{"n":{n}}}"#),
    }
}

fn loopback() -> EgressPolicy {
    EgressPolicy::parse("127.0.0.0/8").unwrap()
}

/// A subscriber on `filter`, live (SUBACK received) when this returns, and the messages it
/// receives.
async fn subscriber(filter: &str) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    let broker = MqttBroker::parse(&broker_url()).unwrap();
    let mut options = MqttOptions::new(
        format!("test-{}", uuid::Uuid::new_v4().simple()),
        broker.host(),
        broker.port(),
    );
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let body = String::from_utf8_lossy(&p.payload).into_owned();
                    if tx.send((p.topic.clone(), body)).is_err() {
                        return;
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("the broker acknowledges the subscription")
        .unwrap();
    rx
}

#[tokio::test]
async fn deliveries_are_published_under_the_prefix_and_confirmed() {
    let prefix = format!("chamberlain-test/{}", uuid::Uuid::new_v4().simple());
    let mut received = subscriber(&format!("{prefix}/#")).await;
    let client = MqttClient::new(loopback());
    let t = transmitter(&broker_url(), &prefix);
    for n in 0..20 {
        client.deliver(&t, &delivery(n)).await.unwrap();
    }
    for n in 0..20 {
        let (topic, body) = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("every confirmed delivery reaches the subscriber")
            .unwrap();
        assert_eq!(topic, format!("{prefix}/chambers/c1/alerts"));
        assert_eq!(body, format!(r#"{{"n":{n}}}"#), "in order");
    }
}

#[tokio::test]
async fn concurrent_deliveries_are_each_confirmed() {
    let prefix = format!("chamberlain-test/{}", uuid::Uuid::new_v4().simple());
    let mut received = subscriber(&format!("{prefix}/#")).await;
    let client = std::sync::Arc::new(MqttClient::new(loopback()));
    let t = transmitter(&broker_url(), &prefix);
    let mut tasks = Vec::new();
    for n in 0..50 {
        let (client, t) = (client.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            client.deliver(&t, &delivery(n)).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 50 {
        let (_, body) = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("all 50 arrive")
            .unwrap();
        seen.insert(body);
    }
}

#[tokio::test]
async fn a_broker_that_is_not_there_is_a_transient_failure() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = MqttClient::new(loopback());
    let t = transmitter(&format!("mqtt://127.0.0.1:{port}"), "x");
    let err = client.deliver(&t, &delivery(1)).await.unwrap_err();
    assert!(matches!(err, DeliveryError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn a_broker_outside_the_egress_policy_is_refused_without_connecting() {
    let client = MqttClient::new(EgressPolicy::default());
    let t = transmitter(&broker_url(), "x");
    let err = client.deliver(&t, &delivery(1)).await.unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Blocked { reason } if reason.contains("127.0.0.1")),
        "{err:?}"
    );
}
