//! Observability end to end, with real scheduler and worker processes: one trace per poll from
//! the scheduler through the queue to the worker, and the key metrics, received by an
//! in-process OTLP gRPC collector built from the OpenTelemetry protos; a worker's `/metrics`
//! parsed as Prometheus text while its collector is unreachable (spans dropped and counted,
//! polling unaffected).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chamberlain_redis::testing::TestPrefix;
use chamberlain_simulator::{Simulator, SimulatorConfig};
use chamberlain_tests::api_stack::free_port;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_server::{MetricsService, MetricsServiceServer},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::support::{Fleet, fleet, spawn};

#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

fn string_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(ReceivedSpan {
                        service: service.clone(),
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (Collector, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let collector = Collector::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .add_service(MetricsServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (collector, format!("http://{addr}"))
}

/// The latest value a service exported for a sum or gauge, by the value of one attribute (`""` for
/// points without it).
fn latest_sums(
    requests: &[ExportMetricsServiceRequest],
    service: &str,
    name: &str,
    attribute: &str,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for r in requests {
        for rm in &r.resource_metrics {
            let svc = rm
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            if svc != service {
                continue;
            }
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == name) {
                    let points = match &m.data {
                        Some(metric::Data::Sum(sum)) => &sum.data_points,
                        Some(metric::Data::Gauge(gauge)) => &gauge.data_points,
                        _ => continue,
                    };
                    {
                        for p in points {
                            let value = match p.value {
                                Some(number_data_point::Value::AsInt(v)) => v as f64,
                                Some(number_data_point::Value::AsDouble(v)) => v,
                                None => continue,
                            };
                            let key = string_attr(&p.attributes, attribute).unwrap_or_default();
                            out.insert(key, value);
                        }
                    }
                }
            }
        }
    }
    out
}

fn histogram_count(requests: &[ExportMetricsServiceRequest], service: &str, name: &str) -> u64 {
    let mut latest = 0;
    for r in requests {
        for rm in &r.resource_metrics {
            let svc = rm
                .resource
                .as_ref()
                .and_then(|r| string_attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            if svc != service {
                continue;
            }
            for sm in &rm.scope_metrics {
                for m in sm.metrics.iter().filter(|m| m.name == name) {
                    if let Some(metric::Data::Histogram(h)) = &m.data {
                        latest = h.data_points.iter().map(|p| p.count).sum();
                    }
                }
            }
        }
    }
    latest
}

/// Every span of one trace whose worker reached `poll.ack`, by name (`None` while none has).
fn complete_trace(spans: &[ReceivedSpan]) -> Option<HashMap<String, ReceivedSpan>> {
    spans
        .iter()
        .filter(|s| s.name == "poll.ack")
        .find_map(|ack| {
            let trace: HashMap<String, ReceivedSpan> = spans
                .iter()
                .filter(|s| s.trace_id == ack.trace_id)
                .map(|s| (s.name.clone(), s.clone()))
                .collect();
            [
                "poll.schedule",
                "poll.enqueue",
                "poll",
                "poll.fetch",
                "poll.parse",
                "poll.write",
            ]
            .iter()
            .all(|n| trace.contains_key(*n))
            .then_some(trace)
        })
}

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

struct Processes(Vec<std::process::Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn simulated_fleet(chambers: u32) -> (chamberlain_simulator::SimulatorHandle, Fleet) {
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(chambers)
            .detectors(2)
            .interval(Duration::from_secs(1))
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    let fleet = fleet(&sim, chambers).await;
    (sim, fleet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_a_poll_from_the_scheduler_through_the_queue_and_metrics_arrive() {
    let (collector, endpoint) = start_collector().await;
    let (_sim, fleet) = simulated_fleet(2).await;
    let prefix = TestPrefix::new();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
    ];
    let mut worker_env = otel.to_vec();
    worker_env.push(("CHAMBERLAIN_TRACE_LEVEL", "debug"));
    let _processes = Processes(vec![
        spawn("scheduler", &fleet, &prefix, &otel),
        spawn("worker", &fleet, &prefix, &worker_env),
    ]);

    until(Duration::from_secs(60), "a complete poll trace", || {
        complete_trace(&collector.spans.lock().unwrap()).is_some()
    })
    .await;
    let trace = complete_trace(&collector.spans.lock().unwrap()).unwrap();
    let (schedule, enqueue, poll) = (
        &trace["poll.schedule"],
        &trace["poll.enqueue"],
        &trace["poll"],
    );
    assert!(
        schedule.parent_span_id.is_empty(),
        "the poll's trace starts at its scheduling"
    );
    assert_eq!(enqueue.parent_span_id, schedule.span_id);
    assert_eq!(
        poll.parent_span_id, enqueue.span_id,
        "the worker's span continues the scheduler's across the queue"
    );
    for child in ["poll.fetch", "poll.parse", "poll.write", "poll.ack"] {
        assert_eq!(
            trace[child].parent_span_id, poll.span_id,
            "{child} is the poll's step"
        );
    }
    assert_eq!(schedule.service, "chamberlain-scheduler");
    assert_eq!(enqueue.service, "chamberlain-scheduler");
    for worker_span in ["poll", "poll.fetch", "poll.write", "poll.ack"] {
        assert_eq!(trace[worker_span].service, "chamberlain-worker");
    }

    // Repository calls (at the debug trace level) are traced only within traced work: none
    // starts a trace of its own.
    until(Duration::from_secs(30), "the worker's db spans", || {
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.name.starts_with("db ") && s.service == "chamberlain-worker")
    })
    .await;
    let db_spans: Vec<ReceivedSpan> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.name.starts_with("db "))
        .cloned()
        .collect();
    for s in &db_spans {
        assert!(
            !s.parent_span_id.is_empty(),
            "{} ({}) is a trace of its own",
            s.name,
            s.service
        );
    }
    eprintln!("{} db spans, all within traced work", db_spans.len());

    // The key metrics, with their values.
    until(Duration::from_secs(30), "poll metrics", || {
        let m = collector.metrics.lock().unwrap();
        latest_sums(
            &m,
            "chamberlain-worker",
            "chamberlain.polls.completed",
            "outcome",
        )
        .get("ok")
        .is_some_and(|n| *n >= 4.0)
            && latest_sums(
                &m,
                "chamberlain-scheduler",
                "chamberlain.polls.enqueued",
                "",
            )
            .get("")
            .is_some_and(|n| *n >= 4.0)
    })
    .await;
    let m = collector.metrics.lock().unwrap().clone();
    let completed = latest_sums(
        &m,
        "chamberlain-worker",
        "chamberlain.polls.completed",
        "outcome",
    );
    assert_eq!(
        completed.keys().collect::<Vec<_>>(),
        ["ok"],
        "healthy chambers: only ok outcomes"
    );
    let started = latest_sums(&m, "chamberlain-worker", "chamberlain.polls.started", "")[""];
    assert!(
        started >= completed["ok"],
        "{started} started, {completed:?} completed"
    );
    let readings = latest_sums(&m, "chamberlain-worker", "chamberlain.readings.written", "")[""];
    assert!(
        readings >= 2.0 * completed["ok"] - 4.0,
        "two detectors per poll: {readings}"
    );
    let scheduled = latest_sums(
        &m,
        "chamberlain-scheduler",
        "chamberlain.polls.scheduled",
        "",
    )[""];
    assert!(scheduled >= 4.0);
    assert!(histogram_count(&m, "chamberlain-worker", "chamberlain.poll.lateness") >= 4);
    assert!(histogram_count(&m, "chamberlain-worker", "chamberlain.poll.duration") >= 4);
    // The resource attributes from OTEL_RESOURCE_ATTRIBUTES reach the collector.
    let environment = m
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .filter_map(|rm| rm.resource.as_ref())
        .find_map(|r| string_attr(&r.attributes, "deployment.environment"));
    assert_eq!(environment.as_deref(), Some("e2e"));
}

/// A Prometheus text exposition, checked line by line: every sample belongs to a family
/// declared by `# TYPE` before it, names and labels are well formed, values parse; histogram
/// buckets are cumulative and end at `+Inf` = `_count`. Returns samples by `name{labels}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_spans_are_exported_only_at_the_debug_trace_level() {
    let (collector, endpoint) = start_collector().await;
    let (_sim, fleet) = simulated_fleet(2).await;
    let prefix = TestPrefix::new();
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let _processes = Processes(vec![
        spawn("scheduler", &fleet, &prefix, &otel),
        spawn("worker", &fleet, &prefix, &otel),
    ]);
    // Three complete polls, each written by the worker through the store: at the debug level
    // each write would have its db spans.
    until(Duration::from_secs(60), "three traced polls", || {
        collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.name == "poll.write")
            .count()
            >= 3
    })
    .await;
    let names: Vec<String> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("db ")),
        "CHAMBERLAIN_TRACE_LEVEL defaults to info, which has no db spans: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "poll.fetch"),
        "the poll's steps are info spans"
    );
}

fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(name_ok(name), "bad family name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "bad type in {line:?}"
            );
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels in {line:?}"));
            for pair in inner.split("\",") {
                let (k, _) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(name_ok(k), "bad label name in {line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no # TYPE before it");
        samples.insert(series.to_owned(), value);
    }
    // Histograms, per series (its labels other than `le`): cumulative buckets ending at +Inf ==
    // count.
    let series_of = |key: &str, family: &str, suffix: &str| -> Option<String> {
        let labels = key.strip_prefix(family)?.strip_prefix(suffix)?;
        let inner = labels
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .unwrap_or("");
        let mut kept: Vec<&str> = inner
            .split("\",")
            .map(|pair| pair.trim_end_matches('"'))
            .filter(|pair| !pair.is_empty() && !pair.starts_with("le=\""))
            .collect();
        kept.sort_unstable();
        Some(kept.join(","))
    };
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut buckets: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for (key, value) in &samples {
            if let Some(series) = series_of(key, family, "_bucket") {
                buckets
                    .entry(series)
                    .or_default()
                    .push((key.clone(), *value));
            }
        }
        for (series, in_series) in &buckets {
            let inf = in_series
                .iter()
                .find(|(k, _)| k.contains("le=\"+Inf\""))
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{family}{{{series}}}: a +Inf bucket"));
            let count = samples
                .iter()
                .find(|(k, _)| series_of(k, family, "_count").as_ref() == Some(series))
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{family}{{{series}}}: a _count"));
            assert_eq!(inf, count, "{family}{{{series}}}: +Inf bucket is the count");
            assert!(
                in_series.iter().all(|(_, b)| *b <= count),
                "{family}{{{series}}}: cumulative"
            );
        }
    }
    samples
}

async fn get(port: u16, path: &str) -> (u16, String) {
    chamberlain_tests::api_stack::http_request(port, "GET", path, None, None, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_workers_metrics_parse_as_prometheus_text_even_with_its_collector_unreachable() {
    let (_sim, fleet) = simulated_fleet(3).await;
    let prefix = TestPrefix::new();
    let metrics_port = free_port();
    let closed_collector = format!("http://127.0.0.1:{}", free_port());
    let worker_env = [
        (
            "CHAMBERLAIN_METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", closed_collector.clone()),
    ];
    let worker_env: Vec<(&str, &str)> = worker_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _processes = Processes(vec![
        spawn(
            "scheduler",
            &fleet,
            &prefix,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", closed_collector.as_str())],
        ),
        spawn("worker", &fleet, &prefix, &worker_env),
    ]);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let samples = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed 9 polls"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok((status, body)) =
            tokio::time::timeout(Duration::from_secs(5), get(metrics_port, "/metrics")).await
        else {
            continue;
        };
        if status != 200 {
            continue;
        }
        let samples = parse_prometheus(&body);
        let ok = samples
            .get("chamberlain_polls_completed_total{outcome=\"ok\"}")
            .copied()
            .unwrap_or(0.0);
        let dropped = samples
            .get("chamberlain_telemetry_spans_dropped_total")
            .copied()
            .unwrap_or(0.0);
        if ok >= 9.0 && dropped > 0.0 {
            break samples;
        }
    };
    assert!(samples["chamberlain_readings_written_total"] >= 18.0);
    assert!(samples["chamberlain_poll_lateness_seconds_count"] >= 9.0);
    assert!(samples.contains_key("chamberlain_poll_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(samples.contains_key("chamberlain_write_batch_size_count"));
    assert!(samples.contains_key("chamberlain_polls_in_flight"));
    assert_eq!(get(metrics_port, "/other").await.0, 404);
}
