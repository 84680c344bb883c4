//! Live events through the API: readings from real workers reach subscribers on two gateway
//! processes over one Redis, in order and only their organization's; a subscriber that stops
//! reading is told it lagged, then disconnected, while another keeps receiving everything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{
    Batch, ChamberId, Description, LedgerEntry, Name, OrganizationId, PollOutcome, Role, SectionId,
};
use chamberlain_domain::ports::{
    DomainEvent, EventPublisher, LedgerQuery, PollLedgerRepository, RoutingTag,
};
use chamberlain_proto::v1::{
    self, chamber_service_client::ChamberServiceClient, event_service_client::EventServiceClient,
};
use chamberlain_redis::RedisEventBus;
use chamberlain_simulator::{Format, Simulator, SimulatorConfig};
use chamberlain_tests::api_stack::{Stack, StackOptions};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::api::{authed, section};

async fn chamber_on_simulator(
    channel: &Channel,
    token: &str,
    section_id: &str,
    url: String,
    name: &str,
) -> v1::Chamber {
    ChamberServiceClient::new(channel.clone())
        .create_chamber(authed(
            v1::CreateChamberRequest {
                section_id: section_id.into(),
                name: name.into(),
                url,
                format: "json".into(),
                interval: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                timeout: None,
                detectors: (0..2)
                    .map(|j| v1::NewDetector {
                        name: format!("d{j}"),
                        key: format!("/detectors/{j}/value"),
                        ..Default::default()
                    })
                    .collect(),
            },
            token,
        ))
        .await
        .expect("chamber created")
        .into_inner()
}

fn millis(t: Option<&prost_types::Timestamp>) -> i64 {
    let t = t.expect("a timestamp");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Reads `stream` until `done` says enough (or the deadline passes), returning the polls'
/// readings by chamber: slot → detector values.
async fn collect_readings(
    stream: &mut Streaming<v1::WatchReadingsResponse>,
    done: impl Fn(&BTreeMap<String, Vec<(i64, usize)>>) -> bool,
) -> BTreeMap<String, Vec<(i64, usize)>> {
    let mut seen: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&seen) {
        let item = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("readings within the deadline")
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        match item.item.expect("an item") {
            v1::watch_readings_response::Item::Readings(r) => {
                seen.entry(r.chamber_id.clone())
                    .or_default()
                    .push((millis(r.slot.as_ref()), r.readings.len()));
            }
            other => panic!("a subscriber that keeps up is never told {other:?}"),
        }
    }
    seen
}

async fn ledger(
    stack: &Stack,
    org: OrganizationId,
    chamber: &str,
    from: i64,
    to: i64,
) -> Vec<LedgerEntry> {
    stack
        .store
        .list(
            org,
            &LedgerQuery {
                from: Timestamp::from_unix_millis(from),
                to: Timestamp::from_unix_millis(to + 1),
                ..LedgerQuery::all(ChamberId::parse(chamber).unwrap())
            },
        )
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_two_gateways_receive_every_reading_in_order_and_only_their_organizations() {
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(3)
            .detectors(2)
            .interval(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut stack = Stack::start(StackOptions {
        extra_gateways: 1,
        ..StackOptions::default()
    })
    .await;
    let channel = stack.channel().await;
    let (lab, lab_token) = stack.tenant("lab", Role::Operator).await;
    let (_, other_token) = stack.tenant("other", Role::Operator).await;
    let lab_room = section(&channel, &lab_token, "room").await;
    let other_room = section(&channel, &other_token, "room").await;
    let a1 = chamber_on_simulator(
        &channel,
        &lab_token,
        &lab_room.id,
        sim.chamber_url(0, Format::Json),
        "a1",
    )
    .await;
    let a2 = chamber_on_simulator(
        &channel,
        &lab_token,
        &lab_room.id,
        sim.chamber_url(1, Format::Json),
        "a2",
    )
    .await;
    let b1 = chamber_on_simulator(
        &channel,
        &other_token,
        &other_room.id,
        sim.chamber_url(2, Format::Json),
        "b1",
    )
    .await;

    // Subscribers before the workers: one through Envoy on the first gateway (one chamber), one
    // straight to the second gateway (the whole organization).
    let mut through_envoy = EventServiceClient::new(channel.clone())
        .watch_readings(authed(
            v1::WatchReadingsRequest {
                chamber_id: a1.id.clone(),
                ..Default::default()
            },
            &lab_token,
        ))
        .await
        .expect("watching through Envoy")
        .into_inner();
    let mut on_second_gateway = EventServiceClient::new(stack.extra_gateway_channel(0).await)
        .watch_readings(stack.signed(lab, v1::WatchReadingsRequest::default()))
        .await
        .expect("watching on the second gateway")
        .into_inner();
    let egress = [("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.2/32")];
    stack.spawn("scheduler", &egress);
    stack.spawn("worker", &egress);

    // Six polls of each chamber asked for.
    let enough = |chambers: usize| {
        move |seen: &BTreeMap<String, Vec<(i64, usize)>>| {
            seen.values().filter(|polls| polls.len() >= 6).count() >= chambers
        }
    };
    let (one, all) = tokio::join!(
        collect_readings(&mut through_envoy, enough(1)),
        collect_readings(&mut on_second_gateway, enough(2)),
    );

    assert_eq!(
        one.keys().collect::<Vec<_>>(),
        vec![&a1.id],
        "the Envoy subscriber asked for one chamber"
    );
    assert_eq!(
        all.keys().cloned().collect::<BTreeSet<_>>(),
        [a1.id.clone(), a2.id.clone()].into_iter().collect(),
        "the organization's chambers, never {}",
        b1.id
    );
    for (chamber, polls) in one.iter().chain(all.iter()) {
        let slots: Vec<i64> = polls.iter().map(|(s, _)| *s).collect();
        assert!(
            slots.windows(2).all(|w| w[0] < w[1]),
            "chamber {chamber}: in slot order, each once: {slots:?}"
        );
        assert!(
            polls.iter().all(|(_, n)| *n == 2),
            "both detectors' readings"
        );
        // Every poll the ledger recorded as read between the first and last seen was delivered.
        let (first, last) = (slots[0], slots[slots.len() - 1]);
        let read: Vec<i64> = ledger(&stack, lab.organization_id, chamber, first, last)
            .await
            .iter()
            .filter(|e| e.outcome == PollOutcome::Ok)
            .map(|e| e.poll.slot.as_unix_millis())
            .collect();
        assert_eq!(
            slots, read,
            "chamber {chamber}: every stored poll, nothing else"
        );
    }
}

/// `n` batch events of one organization, numbered from `from`.
fn numbered(org: OrganizationId, section: SectionId, from: usize, n: usize) -> Vec<DomainEvent> {
    (from..from + n)
        .map(|i| DomainEvent::BatchStarted {
            routing: RoutingTag {
                organization_id: org,
                section_id: Some(section),
                chamber_id: None,
            },
            batch: Batch {
                id: chamberlain_domain::model::BatchId::random(),
                organization_id: org,
                section_id: section,
                name: Name::parse(&format!("batch {i}")).unwrap(),
                // About 1 kB per event, so that a few thousand fill the HTTP/2 windows.
                description: Description::parse(&"x".repeat(1000)).unwrap(),
                started_at: Timestamp::from_unix_millis(1_767_225_600_000),
                ended_at: None,
            },
        })
        .collect()
}

fn number(event: &v1::Event) -> Option<usize> {
    match &event.kind {
        Some(v1::event::Kind::BatchStarted(b)) => b.name.strip_prefix("batch ")?.parse().ok(),
        _ => None,
    }
}

enum Seen {
    Event(usize),
    Lagged(u64),
    Ended(tonic::Status),
}

/// The next item, or `None` if nothing comes within `within`.
async fn next_within(stream: &mut Streaming<v1::Event>, within: Duration) -> Option<Seen> {
    let item = tokio::time::timeout(within, stream.message()).await.ok()?;
    Some(match item {
        Ok(Some(e)) => match &e.kind {
            Some(v1::event::Kind::Lagged(l)) => Seen::Lagged(l.missed),
            _ => Seen::Event(number(&e).unwrap_or_else(|| panic!("unexpected {e:?}"))),
        },
        Ok(None) => panic!("the stream ended without a status"),
        Err(status) => Seen::Ended(status),
    })
}

async fn next(stream: &mut Streaming<v1::Event>) -> Seen {
    next_within(stream, Duration::from_secs(30))
        .await
        .expect("an item within 30 s")
}

/// Publishes `n` events and waits until the keeping-up subscriber has all of them, in order.
async fn publish_and_follow(
    bus: &RedisEventBus,
    fast: &mut Streaming<v1::Event>,
    org: OrganizationId,
    section: SectionId,
    from: usize,
    n: usize,
) {
    for chunk in numbered(org, section, from, n).chunks(100) {
        bus.publish(chunk).await.unwrap();
    }
    for i in from..from + n {
        match next(fast).await {
            Seen::Event(got) => assert_eq!(got, i, "the fast subscriber gets every event in order"),
            Seen::Lagged(m) => panic!("the fast subscriber lagged by {m}"),
            Seen::Ended(s) => panic!("the fast subscriber was cut off: {s}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_told_it_lagged_then_disconnected_and_others_get_everything()
 {
    const MAX_LAG_SECS: u64 = 5;
    let stack = Stack::start(StackOptions {
        gateway_env: vec![
            ("CHAMBERLAIN_WATCH_BUFFER", "1024".into()),
            ("CHAMBERLAIN_WATCH_MAX_LAG_SECS", MAX_LAG_SECS.to_string()),
        ],
        ..StackOptions::default()
    })
    .await;
    let (lab, token) = stack.tenant("lab", Role::Viewer).await;
    // Events go onto the stack's bus as a worker's would.
    let bus = RedisEventBus::connect(&stack.redis.config, 1)
        .await
        .unwrap();
    let section = SectionId::random();
    let watch = || v1::WatchEventsRequest {
        kinds: vec![v1::EventKind::Batches as i32],
        ..Default::default()
    };
    let mut fast = EventServiceClient::new(stack.channel().await)
        .watch_events(authed(watch(), &token))
        .await
        .unwrap()
        .into_inner();
    let mut slow = EventServiceClient::new(stack.direct_channel().await)
        .watch_events(stack.signed(lab, watch()))
        .await
        .unwrap()
        .into_inner();

    // The slow subscriber reads nothing while 8,000 events (about 9 MB) go by: far more than
    // its buffer and the HTTP/2 windows hold.
    let mut published = 0;
    while published < 8_000 {
        publish_and_follow(
            &bus,
            &mut fast,
            lab.organization_id,
            section,
            published,
            500,
        )
        .await;
        published += 500;
    }
    // It reads again: what was buffered, then how many it missed.
    let (mut got, mut last) = (0u64, None);
    let missed = loop {
        match next(&mut slow).await {
            Seen::Event(i) => {
                assert!(last.is_none_or(|l| i > l), "in order");
                last = Some(i);
                got += 1;
            }
            Seen::Lagged(m) => break m,
            Seen::Ended(s) => panic!("disconnected too early: {s}"),
        }
    };
    assert!(missed > 0, "the lagged notice counts the missed events");
    assert!(got + missed <= 8_000, "nothing invented: {got} + {missed}");
    // It stays connected: once it has read what was queued, new events reach it.
    let mut caught_up = false;
    for _ in 0..20 {
        publish_and_follow(&bus, &mut fast, lab.organization_id, section, published, 1).await;
        published += 1;
        while let Some(seen) = next_within(&mut slow, Duration::from_secs(2)).await {
            match seen {
                Seen::Event(i) if i == published - 1 => {
                    caught_up = true;
                    break;
                }
                Seen::Event(_) | Seen::Lagged(_) => {}
                Seen::Ended(s) => panic!("disconnected although it reads again: {s}"),
            }
        }
        if caught_up {
            break;
        }
    }
    assert!(caught_up, "the lagged subscriber receives new events again");

    // It stops reading again, for longer than the bound, while events keep coming. The gateway
    // counts "behind" from the first event it had to drop, which comes only once the
    // subscriber's buffer and HTTP/2 windows are full; on a loaded machine filling them took
    // over 2 s, so a loop of MAX_LAG + 2 s sometimes ended before the bound was crossed and the
    // subscriber, never disconnected, waited for an end that could not come. Three bounds leave
    // the filling 10 s.
    let behind_from = tokio::time::Instant::now();
    while behind_from.elapsed() < Duration::from_secs(3 * MAX_LAG_SECS) {
        publish_and_follow(
            &bus,
            &mut fast,
            lab.organization_id,
            section,
            published,
            500,
        )
        .await;
        published += 500;
    }
    let mut just_before = None;
    let status = loop {
        match next(&mut slow).await {
            Seen::Ended(status) => break status,
            Seen::Event(i) => just_before = Some(format!("event {i}")),
            Seen::Lagged(m) => just_before = Some(format!("lagged {m}")),
        }
    };
    assert!(
        just_before
            .as_deref()
            .is_some_and(|s| s.starts_with("lagged")),
        "a last lagged notice before the end, got {just_before:?}"
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("fell behind"),
        "{}",
        status.message()
    );
    // The fast one was never slowed or cut: it still gets the next event.
    publish_and_follow(&bus, &mut fast, lab.organization_id, section, published, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_names_only_the_callers_own_section_chamber_or_detector() {
    let stack = Stack::start(StackOptions::default()).await;
    let channel = stack.channel().await;
    let (_, lab_token) = stack.tenant("lab", Role::Admin).await;
    let (_, other_token) = stack.tenant("other", Role::Admin).await;
    let other_room = section(&channel, &other_token, "room").await;
    let theirs = chamber_on_simulator(
        &channel,
        &other_token,
        &other_room.id,
        "http://127.0.0.2:9/c".into(),
        "theirs",
    )
    .await;
    let mut client = EventServiceClient::new(channel);
    for request in [
        v1::WatchReadingsRequest {
            section_id: other_room.id.clone(),
            ..Default::default()
        },
        v1::WatchReadingsRequest {
            chamber_id: theirs.id.clone(),
            ..Default::default()
        },
        v1::WatchReadingsRequest {
            detector_ids: vec![theirs.detectors[0].id.clone()],
            ..Default::default()
        },
    ] {
        let status = client
            .watch_readings(authed(request.clone(), &lab_token))
            .await
            .expect_err("another organization's");
        assert_eq!(status.code(), Code::NotFound, "{request:?}: {status:?}");
    }
    let status = client
        .watch_readings(authed(
            v1::WatchReadingsRequest {
                chamber_id: "not-an-id".into(),
                ..Default::default()
            },
            &lab_token,
        ))
        .await
        .expect_err("a bad id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("chamber_id"),
        "{}",
        status.message()
    );
    let status = client
        .watch_events(authed(
            v1::WatchEventsRequest {
                kinds: vec![v1::EventKind::Polls as i32, 0],
                ..Default::default()
            },
            &lab_token,
        ))
        .await
        .expect_err("an unspecified kind");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("kinds[1]"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_client_watches_events_over_http1_through_envoy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stack = Stack::start(StackOptions::default()).await;
    let (lab, token) = stack.tenant("lab", Role::Viewer).await;
    let (other, _) = stack.tenant("other", Role::Viewer).await;
    let bus = RedisEventBus::connect(&stack.redis.config, 1)
        .await
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", stack.ports.envoy))
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "GET /v1/events:watch?kinds=EVENT_KIND_BATCHES HTTP/1.1\r\nhost: 127.0.0.1\r\n\
                 authorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The stream is live once the response head arrives.
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 16 * 1024];
    while !String::from_utf8_lossy(&received).contains("\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("a response head")
            .unwrap();
        assert!(
            n > 0,
            "closed early: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&received).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Another organization's event first, then ours: only ours arrives, as JSON.
    let section = SectionId::random();
    bus.publish(&numbered(other.organization_id, section, 0, 1))
        .await
        .unwrap();
    bus.publish(&numbered(lab.organization_id, section, 1, 1))
        .await
        .unwrap();
    while !String::from_utf8_lossy(&received).contains("batch 1") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("the event as JSON")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&received).into_owned();
    assert!(body.contains("\"batch_started\""), "{body}");
    assert!(
        !body.contains("batch 0"),
        "another organization's event: {body}"
    );
}
