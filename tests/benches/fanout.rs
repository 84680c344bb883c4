//! Fan-out benchmark: events published on the Redis bus (as workers publish them, in batches)
//! delivered by one gateway to 100 concurrent `WatchEvents` subscribers, each on its own
//! connection. Per offered rate it prints the events delivered per second in total, the share
//! of events every subscriber received, the events reported missed (lagged), and the delivery
//! latency from publish to receipt.
//!
//! ```sh
//! scripts/bench-fanout         # release build, 10 s per step
//! ```
//! Everything shares this machine's 2 cores: the publisher and the 100 subscribers (this
//! process), the gateway, Redis. `CHAMBERLAIN_BENCH_SMOKE=1` runs one tiny step for a second.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{ChamberId, LedgerEntry, PollId, PollOutcome, Role, SectionId};
use chamberlain_domain::ports::{DomainEvent, EventPublisher, RoutingTag};
use chamberlain_proto::v1::{self, event_service_client::EventServiceClient};
use chamberlain_redis::RedisEventBus;
use chamberlain_tests::api_stack::{Stack, StackOptions};
use tonic::transport::Channel;

const SUBSCRIBERS: usize = 100;

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    missed: AtomicU64,
    /// Delivery latencies in ms, one slot per millisecond up to 10 s.
    latency_ms: Vec<AtomicU64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_ms: (0..10_001).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.missed.store(0, Ordering::Relaxed);
        for b in &self.latency_ms {
            b.store(0, Ordering::Relaxed);
        }
    }

    fn percentile(&self, p: f64) -> usize {
        let counts: Vec<u64> = self
            .latency_ms
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return ms;
            }
        }
        counts.len()
    }
}

fn event(chamber: ChamberId, routing: RoutingTag, i: u64) -> DomainEvent {
    let at = Timestamp::from_unix_millis(now_ms());
    let mut entry = LedgerEntry::unfetched(
        PollId {
            chamber_id: chamber,
            slot: Timestamp::from_unix_millis(1_767_225_600_000 + i64::try_from(i).unwrap_or(0)),
        },
        PollOutcome::Ok,
        1,
        at,
    );
    entry.requested_at = Some(at);
    DomainEvent::PollCompleted { routing, entry }
}

fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let stack = Stack::start(StackOptions {
            release: !cfg!(debug_assertions),
            gateway_env: vec![("CHAMBERLAIN_WATCH_BUFFER", "4096".into())],
            ..StackOptions::default()
        })
        .await;
        let (actor, _token) = stack.tenant("bench", Role::Viewer).await;
        let bus = RedisEventBus::connect(&stack.redis.config, 1)
            .await
            .unwrap();
        let chamber = ChamberId::random();
        let routing = RoutingTag {
            organization_id: actor.organization_id,
            section_id: Some(SectionId::random()),
            chamber_id: Some(chamber),
        };
        let subscribers = if smoke { 4 } else { SUBSCRIBERS };
        let tally = Arc::new(Tally::new());
        for _ in 0..subscribers {
            let channel = Channel::from_shared(format!("http://127.0.0.1:{}", stack.ports.gateway))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut stream = EventServiceClient::new(channel)
                .watch_events(stack.signed(
                    actor,
                    v1::WatchEventsRequest {
                        kinds: vec![v1::EventKind::Polls as i32],
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            let tally = tally.clone();
            tokio::spawn(async move {
                while let Ok(Some(e)) = stream.message().await {
                    match e.kind {
                        Some(v1::event::Kind::Poll(p)) => {
                            let sent = p
                                .requested_at
                                .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
                            let ms = usize::try_from((now_ms() - sent).max(0))
                                .unwrap_or(0)
                                .min(10_000);
                            tally.latency_ms[ms].fetch_add(1, Ordering::Relaxed);
                            tally.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(v1::event::Kind::Lagged(l)) => {
                            tally.missed.fetch_add(l.missed, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            });
        }
        // The gateway subscribes to the bus with its first watcher; let the publisher see it.
        let warm = event(chamber, routing, 0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tally.delivered.load(Ordering::Relaxed) < subscribers as u64 {
            bus.publish(std::slice::from_ref(&warm)).await.unwrap();
            assert!(
                tokio::time::Instant::now() < deadline,
                "subscribers never got an event"
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // re-offer until every subscriber is live
        }

        let (secs, rates): (u64, Vec<u64>) = if smoke {
            println!(
                "smoke mode (CHAMBERLAIN_BENCH_SMOKE=1): tiny steps, figures are not measurements"
            );
            (1, vec![100])
        } else {
            (10, vec![500, 1_000, 2_000, 3_000, 5_000])
        };
        println!(
            "{subscribers} subscribers on one gateway; events published in batches every 10 ms"
        );
        println!(
            "{:>10} {:>14} {:>10} {:>10} {:>8} {:>8} {:>8}",
            "offered/s", "delivered/s", "received %", "missed", "p50 ms", "p99 ms", "max ms"
        );
        let mut i = 1;
        for rate in rates {
            tally.reset();
            let per_tick = (rate / 100).max(1);
            let ticks = secs * 100;
            let start = tokio::time::Instant::now();
            let mut published = 0u64;
            for t in 0..ticks {
                tokio::time::sleep_until(start + Duration::from_millis(10 * t)).await;
                let batch: Vec<DomainEvent> = (0..per_tick)
                    .map(|k| event(chamber, routing, i + k))
                    .collect();
                i += per_tick;
                bus.publish(&batch).await.unwrap();
                published += per_tick;
            }
            // Let what is in flight arrive: until every subscriber has it all, or 5 s.
            let expected = published * subscribers as u64;
            let settle = tokio::time::Instant::now() + Duration::from_secs(5);
            while tally.delivered.load(Ordering::Relaxed) + tally.missed.load(Ordering::Relaxed)
                < expected
                && tokio::time::Instant::now() < settle
            {
                tokio::time::sleep(Duration::from_millis(20)).await; // polling the counters
            }
            let delivered = tally.delivered.load(Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)]
            let per_sec = delivered as f64 / secs as f64;
            #[allow(clippy::cast_precision_loss)]
            let share = 100.0 * delivered as f64 / expected.max(1) as f64;
            println!(
                "{:>10} {:>14.0} {:>10.3} {:>10} {:>8} {:>8} {:>8}",
                published / secs,
                per_sec,
                share,
                tally.missed.load(Ordering::Relaxed),
                tally.percentile(0.5),
                tally.percentile(0.99),
                tally.percentile(1.0),
            );
        }
    });
}
