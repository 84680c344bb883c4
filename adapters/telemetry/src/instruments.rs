//! Chamberlain's metrics, as OpenTelemetry instruments on the global meter provider (exported
//! over OTLP and served as Prometheus text). Created on first use: call
//! [`Telemetry::init`](crate::Telemetry::init) before.

use std::sync::OnceLock;

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};

/// Bucket bounds of the lateness and duration histograms, in seconds.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every instrument, by the service that records it.
#[derive(Debug)]
pub struct Instruments {
    // scheduler
    pub polls_scheduled: Counter<u64>,
    pub polls_enqueued: Counter<u64>,
    pub polls_deduplicated: Counter<u64>,
    pub polls_missed: Counter<u64>,
    pub missed_unrecorded: Gauge<u64>,
    pub leader: Gauge<i64>,
    pub queue_ready: Gauge<u64>,
    pub queue_leased: Gauge<u64>,
    pub queue_delayed: Gauge<u64>,
    pub queue_oldest_age: Gauge<f64>,
    pub chambers: Gauge<u64>,
    // worker
    pub polls_started: Counter<u64>,
    pub polls_completed: Counter<u64>,
    pub polls_retried: Counter<u64>,
    pub lateness: Histogram<f64>,
    pub duration: Histogram<f64>,
    pub in_flight: UpDownCounter<i64>,
    pub readings_written: Counter<u64>,
    pub write_batch: Histogram<u64>,
    pub write_duration: Histogram<f64>,
    pub write_failures: Counter<u64>,
    pub results_waiting: Gauge<u64>,
    pub results_waiting_bytes: Gauge<u64>,
    pub results_oldest_age: Gauge<f64>,
    pub store_behind: Gauge<i64>,
    pub polls_store_behind: Counter<u64>,
    // gateway
    pub api_requests: Counter<u64>,
    pub api_duration: Histogram<f64>,
    // auth
    pub auth_checks: Counter<u64>,
    pub auth_duration: Histogram<f64>,
    // alerter
    pub transmitter_deliveries: Counter<u64>,
    // every process
    pub spans_dropped: Counter<u64>,
    pub traces_skipped: Counter<u64>,
}

fn build(meter: &Meter) -> Instruments {
    Instruments {
        polls_scheduled: meter
            .u64_counter("chamberlain.polls.scheduled")
            .with_description("Polls the scheduler found due (one per chamber slot)")
            .build(),
        polls_enqueued: meter
            .u64_counter("chamberlain.polls.enqueued")
            .with_description("Poll jobs added to the queue")
            .build(),
        polls_deduplicated: meter
            .u64_counter("chamberlain.polls.deduplicated")
            .with_description("Poll jobs the queue already held (same chamber and slot)")
            .build(),
        polls_missed: meter
            .u64_counter("chamberlain.polls.missed")
            .with_description("Slots recorded as missed by the catch-up policy")
            .build(),
        missed_unrecorded: meter
            .u64_gauge("chamberlain.polls.missed_unrecorded")
            .with_description(
                "Missed slots the scheduler holds because the ledger could not be written",
            )
            .build(),
        leader: meter
            .i64_gauge("chamberlain.scheduler.leader")
            .with_description("1 while this scheduler holds the leader lease, else 0")
            .build(),
        queue_ready: meter
            .u64_gauge("chamberlain.queue.ready")
            .with_description("Poll jobs waiting to be leased")
            .build(),
        queue_leased: meter
            .u64_gauge("chamberlain.queue.leased")
            .with_description("Poll jobs leased by workers and not yet acknowledged")
            .build(),
        queue_delayed: meter
            .u64_gauge("chamberlain.queue.delayed")
            .with_description("Released poll jobs waiting out their retry delay")
            .build(),
        queue_oldest_age: meter
            .f64_gauge("chamberlain.queue.oldest_age")
            .with_unit("s")
            .with_description("Age of the oldest ready poll job (0 when none)")
            .build(),
        chambers: meter
            .u64_gauge("chamberlain.chambers")
            .with_description("Chambers by health state")
            .build(),
        polls_started: meter
            .u64_counter("chamberlain.polls.started")
            .with_description("Polls a worker began (one per leased job)")
            .build(),
        polls_completed: meter
            .u64_counter("chamberlain.polls.completed")
            .with_description(
                "Polls stored with their ledger entry, by outcome (ok, timeout, http_status, ...)",
            )
            .build(),
        polls_retried: meter
            .u64_counter("chamberlain.polls.retried")
            .with_description(
                "Transient failures released for another try while the slot was current",
            )
            .build(),
        lateness: meter
            .f64_histogram("chamberlain.poll.lateness")
            .with_unit("s")
            .with_description("How long after its slot a poll's request was sent")
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build(),
        duration: meter
            .f64_histogram("chamberlain.poll.duration")
            .with_unit("s")
            .with_description("Request to complete response of a poll")
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build(),
        in_flight: meter
            .i64_up_down_counter("chamberlain.polls.in_flight")
            .with_description("Polls being fetched right now")
            .build(),
        readings_written: meter
            .u64_counter("chamberlain.readings.written")
            .with_description("Readings newly stored")
            .build(),
        write_batch: meter
            .u64_histogram("chamberlain.write.batch_size")
            .with_description("Polls per write transaction")
            .with_boundaries(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0])
            .build(),
        write_duration: meter
            .f64_histogram("chamberlain.write.duration")
            .with_unit("s")
            .with_description(
                "A write's stages, one after the other: `store` (the transaction), `derive` (health and events), `ack` (the queue told)",
            )
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build(),
        write_failures: meter
            .u64_counter("chamberlain.write.failures")
            .with_description(
                "Writes that failed or did not finish in time (their results wait and are written again)",
            )
            .build(),
        results_waiting: meter
            .u64_gauge("chamberlain.worker.results_waiting")
            .with_description(
                "Polls fetched (or being fetched) whose results are not stored yet, up to the worker's bound",
            )
            .build(),
        results_waiting_bytes: meter
            .u64_gauge("chamberlain.worker.results_waiting_bytes")
            .with_description("Approximate memory of the results waiting to be stored")
            .build(),
        results_oldest_age: meter
            .f64_gauge("chamberlain.worker.results_oldest_age")
            .with_unit("s")
            .with_description("How long the oldest result waiting to be stored has waited (0 when none)")
            .build(),
        store_behind: meter
            .i64_gauge("chamberlain.worker.store_behind")
            .with_description(
                "1 while the worker takes no new polls because its results waiting to be stored reached their bound",
            )
            .build(),
polls_store_behind: meter
            .u64_counter("chamberlain.polls.store_behind")
            .with_description(
                "Polls not fetched because the worker's store was behind: recorded as expired (store_behind)",
            )
            .build(),
        api_requests: meter
            .u64_counter("chamberlain.api.requests")
            .with_description("API calls by method and gRPC status")
            .build(),
        api_duration: meter
            .f64_histogram("chamberlain.api.duration")
            .with_unit("s")
            .with_description("API call duration (until the response headers)")
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build(),
        auth_checks: meter
            .u64_counter("chamberlain.auth.checks")
            .with_description(
                "Envoy's ext_authz checks by decision (allowed, anonymous, unauthenticated, \
                 rate_limited, unavailable)",
            )
            .build(),
        auth_duration: meter
            .f64_histogram("chamberlain.auth.duration")
            .with_unit("s")
            .with_description("Time to decide one ext_authz check")
            .with_boundaries(SECONDS_BUCKETS.to_vec())
            .build(),
        transmitter_deliveries: meter
            .u64_counter("chamberlain.transmitter.deliveries")
            .with_description(
                "Deliveries to transmitters by outcome (delivered, retried, dead_lettered, \
                 dropped: its lane was full, blocked: the egress policy refuses its destination)",
            )
            .build(),
        spans_dropped: meter
            .u64_counter("chamberlain.telemetry.spans_dropped")
            .with_description("Spans dropped because the collector was slow or unreachable")
            .build(),
        traces_skipped: meter
            .u64_counter("chamberlain.telemetry.traces_skipped")
            .with_description("Polls not traced while span export was paused after a failure")
            .build(),
    }
}

/// The process's instruments.
pub fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| build(&opentelemetry::global::meter("chamberlain")))
}
