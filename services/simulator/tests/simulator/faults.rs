//! Injected faults: rates of 1.0 always inject, and per-chamber behaviours hold.

use chamberlain_domain::parse::{
    JsonDocument, JsonPointer, MetricSelector, ParseError, PrometheusDocument, ValueProblem,
};
use chamberlain_simulator::{
    ChamberBehaviour, CorruptKind, Format, corrupted_detector, detector_key, expected_value,
};
use hyper::StatusCode;
use hyper::header::{CONTENT_LENGTH, TRANSFER_ENCODING};

use crate::support::{Client, T0, fleet, start, wait_until};

fn pointer(detector: u32) -> JsonPointer {
    JsonPointer::parse(&detector_key(Format::Json, detector)).unwrap()
}

fn selector(detector: u32) -> MetricSelector {
    MetricSelector::parse(&detector_key(Format::Prometheus, detector)).unwrap()
}

#[tokio::test]
async fn error_rate_one_answers_every_request_500() {
    let (config, _clock) = fleet(5, 2);
    let simulator = start(config.error_rate(1.0).corrupt_rate(1.0)).await;
    let mut client = Client::connect(simulator.addr()).await;
    for i in 0..50 {
        let path = if i % 2 == 0 {
            format!("/chambers/{}", i % 5)
        } else {
            format!("/chambers/{}/metrics", i % 5)
        };
        let answer = client.get(&path, Some(T0 + i64::from(i)), Some(1)).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let report = simulator.report();
    assert_eq!(report.injected.errors, 50);
    // Errors take precedence over corruption.
    assert_eq!(report.injected.corrupt, 0);
    assert_eq!(report.chamber(3).unwrap().errors_injected, 10);
}

#[tokio::test]
async fn error_rate_zero_never_injects() {
    let (config, _clock) = fleet(1, 1);
    let simulator = start(config.error_rate(0.0).corrupt_rate(0.0)).await;
    let mut client = Client::connect(simulator.addr()).await;
    for i in 0..50 {
        let answer = client.get("/chambers/0", Some(T0 + i), None).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(simulator.report().injected, Default::default());
}

#[tokio::test]
async fn corrupt_rate_one_cycles_garbage_nan_and_missing_detector() {
    let detectors = 3;
    let last = corrupted_detector(detectors);
    assert_eq!(last, 2);
    let (config, _clock) = fleet(2, detectors);
    let simulator = start(config.corrupt_rate(1.0)).await;
    let mut client = Client::connect(simulator.addr()).await;

    // JSON: garbage, NaN, missing.
    let garbage = client.get("/chambers/1", Some(T0), Some(1)).await;
    assert_eq!(garbage.status, StatusCode::OK);
    assert!(matches!(
        JsonDocument::parse(&garbage.body),
        Err(ParseError::Malformed { .. })
    ));
    let nan = client.get("/chambers/1", Some(T0), Some(1)).await;
    let nan = JsonDocument::parse(&nan.body).unwrap();
    assert_eq!(nan.value(&pointer(last)), Err(ValueProblem::NonFinite));
    assert_eq!(nan.value(&pointer(0)), Ok(expected_value(1, 0, T0)));
    let missing = client.get("/chambers/1", Some(T0), Some(1)).await;
    let missing = JsonDocument::parse(&missing.body).unwrap();
    assert_eq!(missing.value(&pointer(last)), Err(ValueProblem::Missing));
    assert_eq!(missing.value(&pointer(1)), Ok(expected_value(1, 1, T0)));

    // Prometheus: the cycle goes on.
    let mut problems = Vec::new();
    for _ in 0..3 {
        let answer = client.get("/chambers/0/metrics", Some(T0), Some(1)).await;
        problems.push(match PrometheusDocument::parse(&answer.body) {
            Err(error) => Err(error),
            Ok(document) => {
                assert_eq!(document.value(&selector(0)), Ok(expected_value(0, 0, T0)));
                Ok(document.value(&selector(last)))
            }
        });
    }
    assert_eq!(
        problems,
        [
            Err(ParseError::NotUtf8),
            Ok(Err(ValueProblem::NonFinite)),
            Ok(Err(ValueProblem::Missing)),
        ]
    );

    let injected = simulator.report().injected;
    assert_eq!(
        (
            injected.corrupt,
            injected.garbage,
            injected.nan,
            injected.missing_detector
        ),
        (6, 2, 2, 2)
    );
    assert_eq!(injected.errors, 0);
    assert_eq!(simulator.report().chamber(1).unwrap().corrupt_injected, 3);

    // A reset starts the cycle again.
    simulator.reset();
    let answer = client.get("/chambers/0", Some(T0), Some(1)).await;
    assert!(JsonDocument::parse(&answer.body).is_err());
}

#[tokio::test]
async fn per_chamber_behaviours_hold_while_other_chambers_answer_normally() {
    let (config, _clock) = fleet(6, 2);
    let config = config
        .behaviour(1, ChamberBehaviour::ServerError)
        .behaviour(2, ChamberBehaviour::Corrupt(CorruptKind::Garbage))
        .behaviour(3, ChamberBehaviour::Corrupt(CorruptKind::NaN))
        .behaviour(4, ChamberBehaviour::Corrupt(CorruptKind::MissingDetector));
    let simulator = start(config).await;
    let mut client = Client::connect(simulator.addr()).await;
    for round in 0..3 {
        let slot = T0 + round * 1_000;
        let normal = client.get("/chambers/0", Some(slot), Some(1)).await;
        let normal = JsonDocument::parse(&normal.body).unwrap();
        assert_eq!(normal.value(&pointer(1)), Ok(expected_value(0, 1, slot)));

        let error = client.get("/chambers/1/metrics", Some(slot), Some(1)).await;
        assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);

        let garbage = client.get("/chambers/2", Some(slot), Some(1)).await;
        assert!(JsonDocument::parse(&garbage.body).is_err());
        let garbage = client.get("/chambers/2/metrics", Some(slot), Some(1)).await;
        assert_eq!(
            PrometheusDocument::parse(&garbage.body),
            Err(ParseError::NotUtf8)
        );

        let nan = client.get("/chambers/3/metrics", Some(slot), Some(1)).await;
        let nan = PrometheusDocument::parse(&nan.body).unwrap();
        assert_eq!(nan.value(&selector(1)), Err(ValueProblem::NonFinite));
        assert_eq!(nan.value(&selector(0)), Ok(expected_value(3, 0, slot)));

        let missing = client.get("/chambers/4", Some(slot), Some(1)).await;
        let missing = JsonDocument::parse(&missing.body).unwrap();
        assert_eq!(missing.value(&pointer(1)), Err(ValueProblem::Missing));
    }
    let report = simulator.report();
    assert_eq!(report.injected.errors, 3);
    assert_eq!(report.injected.garbage, 6);
    assert_eq!(report.injected.nan, 3);
    assert_eq!(report.injected.missing_detector, 3);
    assert_eq!(report.chamber(0).unwrap().errors_injected, 0);
    assert_eq!(report.chamber(0).unwrap().corrupt_injected, 0);
}

#[tokio::test]
async fn an_oversized_chamber_streams_a_padded_body_without_length() {
    let bytes = 3 * 1024 * 1024;
    let (config, _clock) = fleet(2, 2);
    let simulator = start(config.behaviour(1, ChamberBehaviour::Oversized { bytes })).await;
    let mut client = Client::connect(simulator.addr()).await;

    let json = client.get("/chambers/1", Some(T0), Some(1)).await;
    assert_eq!(json.status, StatusCode::OK);
    assert!(json.headers.get(CONTENT_LENGTH).is_none());
    assert_eq!(json.headers[TRANSFER_ENCODING], "chunked");
    assert_eq!(json.body.len() as u64, bytes);
    // Still a valid document: a client without a cap reads the values.
    let document = JsonDocument::parse(&json.body).unwrap();
    assert_eq!(document.value(&pointer(1)), Ok(expected_value(1, 1, T0)));

    let prometheus = client.get("/chambers/1/metrics", Some(T0), Some(1)).await;
    assert_eq!(prometheus.body.len() as u64, bytes);
    let document = PrometheusDocument::parse(&prometheus.body).unwrap();
    assert_eq!(document.sample_count(), 2);
    assert_eq!(document.value(&selector(0)), Ok(expected_value(1, 0, T0)));

    // Other chambers answer with a length.
    let normal = client.get("/chambers/0", Some(T0), Some(1)).await;
    assert_eq!(
        normal.headers[CONTENT_LENGTH].to_str().unwrap(),
        normal.body.len().to_string()
    );
    assert_eq!(simulator.report().injected.oversized, 2);
}

#[tokio::test]
async fn a_hanging_chamber_never_answers_until_shutdown() {
    let (config, _clock) = fleet(3, 1);
    let simulator = start(config.behaviour(2, ChamberBehaviour::Hang)).await;
    let mut hanging = Client::connect(simulator.addr()).await;
    let pending =
        tokio::spawn(hanging.request(hyper::Method::GET, "/chambers/2", Some(T0), Some(1)));
    wait_until("the hanging request is recorded", || {
        simulator.report().injected.hung == 1
    })
    .await;
    // The other chambers still answer, on another connection.
    let mut client = Client::connect(simulator.addr()).await;
    let answer = client.get("/chambers/1", Some(T0), Some(1)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!pending.is_finished());

    let report = simulator.shutdown().await;
    assert_eq!(report.injected.hung, 1);
    assert_eq!(report.requests, 2);
    let answer = pending.await.unwrap().expect("answered at shutdown");
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}
