//! Alerts end to end: a simulated chamber that fails for longer than its rule's duration opens
//! exactly one alert, which resolves when the chamber recovers. Real scheduler, worker and
//! alerter processes on PostgreSQL and Redis; the rule, the transmitters and the
//! acknowledgement through the API; a webhook receiver (signature checked), a subscriber on the
//! local Mosquitto, and a webhook that is down (retried, then dead-lettered).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chamberlain_domain::model::Role;
use chamberlain_domain::ports::{LedgerQuery, PollLedgerRepository};
use chamberlain_domain::transmit::MqttBroker;
use chamberlain_proto::v1::{
    self, alert_service_client::AlertServiceClient, chamber_service_client::ChamberServiceClient,
    transmitter_service_client::TransmitterServiceClient,
};
use chamberlain_simulator::{ChamberBehaviour, Format, Simulator, SimulatorConfig};
use chamberlain_tests::api_stack::{Stack, StackOptions, free_port};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::api::{authed, section};

const SECRET: &str = "e2e-webhook-secret-0123456789";

/// One request a webhook receiver got.
#[derive(Debug, Clone)]
struct Hook {
    kind: String,
    topic: String,
    signature: String,
    body: String,
}

/// A minimal HTTP/1.1 server that records every POST and answers 204.
async fn webhook_receiver() -> (u16, Arc<Mutex<Vec<Hook>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let seen = hooks.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut headers = Vec::new();
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end().to_owned();
                        if line.is_empty() {
                            break;
                        }
                        headers.push(line);
                    }
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find_map(|h| {
                                let (k, v) = h.split_once(':')?;
                                k.trim()
                                    .eq_ignore_ascii_case(name)
                                    .then(|| v.trim().to_owned())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    let mut body = vec![0; len];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    seen.lock().unwrap().push(Hook {
                        kind: header("chamberlain-kind"),
                        topic: header("chamberlain-topic"),
                        signature: header("chamberlain-signature"),
                        body: String::from_utf8(body).unwrap(),
                    });
                    if stream
                        .get_mut()
                        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, hooks)
}

fn mqtt_url() -> String {
    std::env::var("CHAMBERLAIN_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into())
}

/// A subscriber on `filter` of the test broker, subscribed when this returns.
async fn mqtt_subscriber(filter: &str) -> Arc<Mutex<Vec<(String, String)>>> {
    let broker = MqttBroker::parse(&mqtt_url()).unwrap();
    let mut options = MqttOptions::new(
        format!("e2e-{}", uuid::Uuid::new_v4().simple()),
        broker.host(),
        broker.port(),
    );
    options.set_keep_alive(Duration::from_secs(10));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
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
                    seen.lock().unwrap().push((
                        p.topic.clone(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                    ));
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("the broker acknowledges the subscription")
        .unwrap();
    received
}

/// Waits (up to `within`) until `done` holds, checking every 100 ms.
async fn until(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kinds(hooks: &Mutex<Vec<Hook>>) -> Vec<String> {
    hooks
        .lock()
        .unwrap()
        .iter()
        .map(|h| h.kind.clone())
        .collect()
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_chamber_opens_one_alert_that_resolves_and_every_transmitter_hears_of_it() {
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(2)
            .detectors(2)
            .interval(Duration::from_secs(1))
            .behaviour(1, ChamberBehaviour::ServerError)
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut stack = Stack::start(StackOptions::default()).await;
    let channel = stack.channel().await;
    let (lab, token) = stack.tenant("lab", Role::Admin).await;
    let room = section(&channel, &token, "room").await;
    // The chamber starts out broken: the simulator answers its URL with HTTP 500.
    let chamber = ChamberServiceClient::new(channel.clone())
        .create_chamber(authed(
            v1::CreateChamberRequest {
                section_id: room.id.clone(),
                name: "incubator".into(),
                url: sim.chamber_url(1, Format::Json),
                format: "json".into(),
                interval: secs(1),
                timeout: None,
                detectors: (0..2)
                    .map(|j| v1::NewDetector {
                        name: format!("d{j}"),
                        key: format!("/detectors/{j}/value"),
                        ..Default::default()
                    })
                    .collect(),
            },
            &token,
        ))
        .await
        .expect("chamber created")
        .into_inner();
    let mut alerts = AlertServiceClient::new(channel.clone());
    let rule = alerts
        .create_alert_rule(authed(
            v1::CreateAlertRuleRequest {
                chamber_id: chamber.id.clone(),
                name: "no data".into(),
                condition: Some(v1::create_alert_rule_request::Condition::NoReading(
                    v1::NoReadingCondition {
                        detector_id: String::new(),
                        after: secs(3),
                    },
                )),
            },
            &token,
        ))
        .await
        .expect("rule created")
        .into_inner();

    // Three transmitters: a webhook that answers, one that is down, and an MQTT broker.
    let (hook_port, hooks) = webhook_receiver().await;
    let down_port = free_port();
    let prefix = format!("chamberlain-e2e/{}", uuid::Uuid::new_v4().simple());
    let mqtt = mqtt_subscriber(&format!("{prefix}/#")).await;
    let mut transmitters = TransmitterServiceClient::new(channel.clone());
    let webhook = |name: &str, port: u16| v1::CreateTransmitterRequest {
        name: name.into(),
        forward_readings: false,
        forward_alerts: true,
        destination: Some(v1::create_transmitter_request::Destination::Webhook(
            v1::WebhookDestination {
                url: format!("http://127.0.0.1:{port}/hooks/chamberlain"),
                secret: SECRET.into(),
            },
        )),
    };
    let up = transmitters
        .create_transmitter(authed(webhook("pager", hook_port), &token))
        .await
        .expect("webhook created")
        .into_inner();
    assert!(
        matches!(&up.destination, Some(v1::transmitter::Destination::Webhook(w)) if w.secret.is_empty()),
        "the secret is never returned: {up:?}"
    );
    let down = transmitters
        .create_transmitter(authed(webhook("pager down", down_port), &token))
        .await
        .expect("second webhook created")
        .into_inner();
    transmitters
        .create_transmitter(authed(
            v1::CreateTransmitterRequest {
                name: "broker".into(),
                forward_readings: false,
                forward_alerts: true,
                destination: Some(v1::create_transmitter_request::Destination::Mqtt(
                    v1::MqttDestination {
                        broker: mqtt_url(),
                        topic_prefix: prefix.clone(),
                    },
                )),
            },
            &token,
        ))
        .await
        .expect("MQTT transmitter created");

    let chambers = [("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.2/32")];
    stack.spawn("scheduler", &chambers);
    stack.spawn("worker", &chambers);
    stack.spawn(
        "alerter",
        &[
            ("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.1/32"),
            ("CHAMBERLAIN_ALERTER_RELOAD_SECS", "1"),
            ("CHAMBERLAIN_TRANSMIT_ATTEMPTS", "3"),
            ("CHAMBERLAIN_TRANSMIT_BACKOFF_MS", "200"),
        ],
    );

    until(
        Duration::from_secs(60),
        "the webhook hears the alert open",
        || kinds(&hooks).iter().any(|k| k == "alert_opened"),
    )
    .await;
    let open = alerts
        .list_alerts(authed(
            v1::ListAlertsRequest {
                rule_id: rule.id.clone(),
                open_only: true,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    let [alert] = open.as_slice() else {
        panic!("one open alert: {open:?}")
    };
    assert_eq!(alert.chamber_id, chamber.id);
    assert!(alert.detail.contains("no reading"), "{}", alert.detail);

    // Three more failed polls: the alert stays one.
    let chamber_id = chamberlain_domain::model::ChamberId::parse(&chamber.id).unwrap();
    let failures = || async {
        PollLedgerRepository::list(
            &*stack.store,
            lab.organization_id,
            &LedgerQuery {
                failures_only: true,
                from: chamberlain_domain::Timestamp::from_unix_millis(0),
                to: chamberlain_domain::Timestamp::from_unix_millis(i64::from(u32::MAX) * 1000),
                ..LedgerQuery::all(chamber_id)
            },
        )
        .await
        .unwrap()
        .items
        .len()
    };
    let failed_when_opened = failures().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while failures().await < failed_when_opened + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chamber keeps being polled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The chamber recovers (its URL now answers).
    ChamberServiceClient::new(channel.clone())
        .update_chamber(authed(
            v1::UpdateChamberRequest {
                id: chamber.id.clone(),
                url: Some(sim.chamber_url(0, Format::Json)),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("chamber updated");
    until(
        Duration::from_secs(60),
        "the webhook hears the alert resolve",
        || kinds(&hooks).iter().any(|k| k == "alert_resolved"),
    )
    .await;
    assert_eq!(
        kinds(&hooks),
        ["alert_opened", "alert_resolved"],
        "one alert, opened then resolved"
    );
    for hook in hooks.lock().unwrap().iter() {
        assert_eq!(hook.topic, format!("chambers/{}/alerts", chamber.id));
        // t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">
        let t: u64 = hook
            .signature
            .strip_prefix("t=")
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .expect("a timestamp in the signature");
        assert_eq!(
            hook.signature,
            chamberlain_http::webhook::sign(SECRET, t, hook.body.as_bytes()),
            "the body is signed with the transmitter's secret"
        );
        let body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
        assert_eq!(body["alert"]["id"], alert.id.as_str());
    }

    until(
        Duration::from_secs(20),
        "the MQTT subscriber hears both",
        || mqtt.lock().unwrap().len() >= 2,
    )
    .await;
    let published = mqtt.lock().unwrap().clone();
    assert_eq!(published.len(), 2, "{published:?}");
    for (topic, _) in &published {
        assert_eq!(topic, &format!("{prefix}/chambers/{}/alerts", chamber.id));
    }
    assert!(published[0].1.contains(r#""type":"alert_opened""#));
    assert!(published[1].1.contains(r#""type":"alert_resolved""#));

    // History: the one alert, resolved; acknowledged afterwards with a comment.
    let history = alerts
        .list_alerts(authed(
            v1::ListAlertsRequest {
                chamber_id: chamber.id.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(history[0].resolved_at.is_some());
    let acked = alerts
        .acknowledge_alert(authed(
            v1::AcknowledgeAlertRequest {
                id: alert.id.clone(),
                comment: "power supply replaced".into(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        acked.acknowledgement.as_ref().map(|a| a.comment.as_str()),
        Some("power supply replaced")
    );

    // The webhook that is down: every try failed, so both deliveries are dead letters.
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while letters.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        letters = transmitters
            .list_dead_letters(authed(
                v1::ListDeadLettersRequest {
                    transmitter_id: down.id.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
    }
    let mut letter_kinds: Vec<_> = letters.iter().map(|l| l.kind.as_str()).collect();
    letter_kinds.sort_unstable();
    assert_eq!(letter_kinds, ["alert_opened", "alert_resolved"]);
    for letter in &letters {
        assert_eq!(letter.attempts, 3, "tried as often as configured");
        assert!(
            letter.last_error.contains("could not be reached"),
            "{}",
            letter.last_error
        );
    }
    // The working transmitters have none.
    let all = transmitters
        .list_dead_letters(authed(v1::ListDeadLettersRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .dead_letters;
    assert_eq!(all.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_and_transmitters_are_refused_naming_the_field_and_nothing_is_stored() {
    let stack = Stack::start(StackOptions::default()).await;
    let channel = stack.channel().await;
    let (_, admin) = stack.tenant("lab", Role::Admin).await;
    let (_, viewer) = stack.tenant("viewers", Role::Viewer).await;
    let room = section(&channel, &admin, "room").await;
    let chamber = ChamberServiceClient::new(channel.clone())
        .create_chamber(authed(
            v1::CreateChamberRequest {
                section_id: room.id.clone(),
                name: "c".into(),
                url: "http://127.0.0.2:9/x".into(),
                format: "json".into(),
                interval: secs(1),
                timeout: None,
                detectors: vec![v1::NewDetector {
                    name: "t".into(),
                    key: "/t".into(),
                    ..Default::default()
                }],
            },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut alerts = AlertServiceClient::new(channel.clone());
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        use tonic_types::StatusExt;
        status
            .get_details_bad_request()
            .expect("a BadRequest detail")
            .field_violations[0]
            .field
            .clone()
    };
    let rule = |condition| v1::CreateAlertRuleRequest {
        chamber_id: chamber.id.clone(),
        name: "r".into(),
        condition: Some(condition),
    };
    use v1::create_alert_rule_request::Condition;
    for (condition, expected) in [
        (
            Condition::ChamberDown(v1::ChamberDownCondition { after: None }),
            "chamber_down.after",
        ),
        (
            Condition::NoReading(v1::NoReadingCondition {
                detector_id: String::new(),
                after: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1000,
                }),
            }),
            "no_reading.after",
        ),
        (
            Condition::OutOfRange(v1::OutOfRangeCondition {
                detector_id: chamber.detectors[0].id.clone(),
                min: Some(5.0),
                max: Some(1.0),
                after: secs(10),
            }),
            "out_of_range.min",
        ),
        (
            Condition::OutOfRange(v1::OutOfRangeCondition {
                detector_id: "not-an-id".into(),
                min: Some(5.0),
                max: None,
                after: secs(10),
            }),
            "out_of_range.detector_id",
        ),
    ] {
        let status = alerts
            .create_alert_rule(authed(rule(condition), &admin))
            .await
            .unwrap_err();
        assert_eq!(field(status), expected);
    }
    let mut unknown = rule(Condition::ChamberDown(v1::ChamberDownCondition {
        after: secs(60),
    }));
    unknown.chamber_id = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        field(
            alerts
                .create_alert_rule(authed(unknown, &admin))
                .await
                .unwrap_err()
        ),
        "chamber_id"
    );
    let status = alerts
        .create_alert_rule(authed(
            rule(Condition::ChamberDown(v1::ChamberDownCondition {
                after: secs(60),
            })),
            &viewer,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        alerts
            .list_alert_rules(authed(v1::ListAlertRulesRequest::default(), &admin))
            .await
            .unwrap()
            .into_inner()
            .rules
            .is_empty(),
        "nothing stored"
    );

    let mut transmitters = TransmitterServiceClient::new(channel.clone());
    use v1::create_transmitter_request::Destination;
    for (destination, expected) in [
        (
            Destination::Webhook(v1::WebhookDestination {
                url: "ftp://hooks.example/x".into(),
                secret: SECRET.into(),
            }),
            "webhook.url",
        ),
        (
            Destination::Webhook(v1::WebhookDestination {
                url: "https://hooks.example/x".into(),
                secret: "short".into(),
            }),
            "webhook.secret",
        ),
        (
            Destination::Mqtt(v1::MqttDestination {
                broker: "tcp://127.0.0.1".into(),
                topic_prefix: "lab".into(),
            }),
            "mqtt.broker",
        ),
        (
            Destination::Mqtt(v1::MqttDestination {
                broker: "mqtt://127.0.0.1".into(),
                topic_prefix: "lab/#".into(),
            }),
            "mqtt.topic_prefix",
        ),
    ] {
        let status = transmitters
            .create_transmitter(authed(
                v1::CreateTransmitterRequest {
                    name: "t".into(),
                    forward_readings: true,
                    forward_alerts: true,
                    destination: Some(destination),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(field(status), expected);
    }
    // Over JSON through Envoy too: a transmitter with nothing to forward.
    let (status, body) = stack
        .http(
            "POST",
            "/v1/transmitters",
            Some(&admin),
            Some(
                r#"{"name":"t","webhook":{"url":"https://hooks.example/x","secret":"0123456789abcdef"}}"#,
            ),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("forward_readings"), "{body}");
    assert!(
        transmitters
            .list_transmitters(authed(v1::ListTransmittersRequest::default(), &admin))
            .await
            .unwrap()
            .into_inner()
            .transmitters
            .is_empty(),
        "nothing stored"
    );
}
