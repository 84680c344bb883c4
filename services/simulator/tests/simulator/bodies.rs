//! Bodies parse with the pollers' parsers and carry `expected_value` for the slot sent.

use chamberlain_domain::parse::{JsonDocument, JsonPointer, MetricSelector, PrometheusDocument};
use chamberlain_simulator::{Format, detector_key, expected_value};
use hyper::StatusCode;
use hyper::header::CONTENT_TYPE;

use crate::support::{Client, T0, fleet, start};

fn pointer(detector: u32) -> JsonPointer {
    JsonPointer::parse(&detector_key(Format::Json, detector)).expect("valid pointer")
}

fn selector(detector: u32) -> MetricSelector {
    MetricSelector::parse(&detector_key(Format::Prometheus, detector)).expect("valid selector")
}

#[tokio::test]
async fn json_body_gives_the_expected_value_of_each_detector_for_the_slot_sent() {
    let (config, _clock) = fleet(50, 7);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    for (chamber, slot) in [(0, T0), (49, T0 - 12_345), (17, 86_400_000), (3, -1_000)] {
        let answer = client
            .get(&format!("/chambers/{chamber}"), Some(slot), Some(1))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers[CONTENT_TYPE], "application/json");
        let document = JsonDocument::parse(&answer.body).expect("parses");
        for detector in 0..7 {
            assert_eq!(
                document.value(&pointer(detector)),
                Ok(expected_value(chamber, detector, slot)),
                "chamber {chamber} detector {detector}: {}",
                answer.text()
            );
        }
        assert_eq!(
            document.value(&JsonPointer::parse("/chamber").unwrap()),
            Ok(f64::from(chamber))
        );
        assert!(document.value(&pointer(7)).is_err(), "only 7 detectors");
    }
}

#[tokio::test]
async fn prometheus_body_gives_the_expected_value_of_each_detector_for_the_slot_sent() {
    let (config, _clock) = fleet(50, 7);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    for (chamber, slot) in [(0, T0), (49, T0 + 999), (8, 123)] {
        let answer = client
            .get(&format!("/chambers/{chamber}/metrics"), Some(slot), Some(2))
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.headers[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(answer.text().starts_with("# HELP chamber_detector_value "));
        assert!(
            answer
                .text()
                .contains("\n# TYPE chamber_detector_value gauge\n")
        );
        let document = PrometheusDocument::parse(&answer.body).expect("parses");
        assert_eq!(document.sample_count(), 7);
        for detector in 0..7 {
            assert_eq!(
                document.value(&selector(detector)),
                Ok(expected_value(chamber, detector, slot)),
                "chamber {chamber} detector {detector}: {}",
                answer.text()
            );
        }
    }
}

#[tokio::test]
async fn without_a_slot_header_the_arrival_time_is_the_slot() {
    let (config, clock) = fleet(2, 3);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    clock.set(chamberlain_domain::Timestamp::from_unix_millis(T0 + 42_000));
    let json = client.get("/chambers/1", None, None).await;
    let prometheus = client.get("/chambers/1/metrics", None, None).await;
    let json = JsonDocument::parse(&json.body).unwrap();
    let prometheus = PrometheusDocument::parse(&prometheus.body).unwrap();
    for detector in 0..3 {
        let expected = Ok(expected_value(1, detector, T0 + 42_000));
        assert_eq!(json.value(&pointer(detector)), expected);
        assert_eq!(prometheus.value(&selector(detector)), expected);
    }
    assert_eq!(simulator.report().unslotted_requests, 2);
}

#[tokio::test]
async fn values_change_from_slot_to_slot() {
    let (config, _clock) = fleet(1, 1);
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    let mut values = Vec::new();
    for slot in (0..10).map(|i| T0 + i * 1_000) {
        let answer = client.get("/chambers/0", Some(slot), None).await;
        values.push(
            JsonDocument::parse(&answer.body)
                .unwrap()
                .value(&pointer(0))
                .unwrap(),
        );
    }
    values.dedup();
    assert!(values.len() > 5, "{values:?}");
}
