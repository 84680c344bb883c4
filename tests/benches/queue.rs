//! Queue benchmark: enqueue and lease+ack rates through one Redis, Redis CPU per job, and the
//! pickup latency of an idle worker.
//!
//! ```sh
//! cargo bench -p chamberlain-tests --bench queue
//! ```
//! Uses `CHAMBERLAIN_TEST_REDIS_URL` (the machine's Redis by default) with a key prefix of its
//! own. `CHAMBERLAIN_BENCH_SMOKE=1` shrinks it to seconds.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::time::{Duration, Instant};

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::poll_job;
use chamberlain_domain::model::{ChamberId, OrganizationId, PollJob};
use chamberlain_domain::ports::PollQueue;
use chamberlain_redis::RedisPollQueue;
use chamberlain_redis::testing::TestPrefix;

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Timestamp::from_unix_millis(ms as i64)
}

fn jobs(n: usize) -> Vec<PollJob> {
    let org = OrganizationId::random();
    let t = now();
    (0..n)
        .map(|_| poll_job(org, ChamberId::random(), t, 1, t))
        .collect()
}

async fn redis_cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum()
}

async fn drain(q: RedisPollQueue, batch: usize) -> u64 {
    let mut done = 0;
    loop {
        let leased = q
            .lease(batch, Duration::from_secs(60), Duration::ZERO)
            .await
            .expect("lease");
        if leased.is_empty() {
            return done;
        }
        let receipts: Vec<_> = leased.iter().map(|l| l.receipt.clone()).collect();
        done += q.ack(&receipts).await.expect("ack");
    }
}

fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let total: usize = if smoke { 2_000 } else { 200_000 };
    let samples: usize = if smoke { 5 } else { 200 };
    if smoke {
        println!(
            "smoke mode (CHAMBERLAIN_BENCH_SMOKE=1): tiny sizes, figures are not measurements"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let prefix = TestPrefix::new();
        let client = redis::Client::open(chamberlain_redis::testing::server_url()).expect("url");
        let mut admin = client.get_multiplexed_async_connection().await.expect("connect");
        let q = RedisPollQueue::connect(&prefix.config).await.expect("queue");
        let work = jobs(total);

        // Enqueue: 1,000 jobs per call, two producers.
        let cpu0 = redis_cpu_seconds(&mut admin).await;
        let start = Instant::now();
        let mut producers = Vec::new();
        for half in work.chunks(total / 2) {
            let (q, half) = (q.clone(), half.to_vec());
            producers.push(tokio::spawn(async move {
                for chunk in half.chunks(1_000) {
                    q.enqueue(chunk).await.expect("enqueue");
                }
            }));
        }
        for p in producers {
            p.await.expect("producer");
        }
        let enqueue_secs = start.elapsed().as_secs_f64();
        let cpu1 = redis_cpu_seconds(&mut admin).await;
        println!(
            "enqueue      {total} jobs: {:>9.0} jobs/s, Redis CPU {:.1} µs/job",
            total as f64 / enqueue_secs,
            (cpu1 - cpu0) / total as f64 * 1e6
        );

        // Lease + ack: two workers, 500 per lease.
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..2 {
            let q = RedisPollQueue::connect(&prefix.config).await.expect("queue");
            workers.push(tokio::spawn(drain(q, 500)));
        }
        let mut done = 0;
        for w in workers {
            done += w.await.expect("worker");
        }
        let process_secs = start.elapsed().as_secs_f64();
        let cpu2 = redis_cpu_seconds(&mut admin).await;
        println!(
            "lease+ack    {done} jobs: {:>9.0} jobs/s, Redis CPU {:.1} µs/job",
            done as f64 / process_secs,
            (cpu2 - cpu1) / done as f64 * 1e6
        );
        println!(
            "enqueue+process through one Redis: {:.0} jobs/s ({} jobs in {:.2} s), Redis CPU {:.1} µs/job",
            total as f64 / (enqueue_secs + process_secs),
            total,
            enqueue_secs + process_secs,
            (cpu2 - cpu0) / total as f64 * 1e6
        );

        // Pickup latency: an idle worker blocked in lease; one job enqueued; time to delivery.
        let worker = RedisPollQueue::connect(&prefix.config).await.expect("queue");
        let mut latencies = Vec::with_capacity(samples);
        for _ in 0..samples {
            let w = worker.clone();
            let waiting = tokio::spawn(async move {
                let leased = w.lease(1, Duration::from_secs(60), Duration::from_secs(10)).await.expect("lease");
                let at = Instant::now();
                let receipts: Vec<_> = leased.iter().map(|l| l.receipt.clone()).collect();
                w.ack(&receipts).await.expect("ack");
                at
            });
            // Let the worker reach its blocking read (it is idle when the job arrives).
            loop {
                let info: String = redis::cmd("INFO").arg("clients").query_async(&mut admin).await.expect("INFO");
                if info.lines().any(|l| l.starts_with("blocked_clients:") && l != "blocked_clients:0") {
                    break;
                }
                tokio::task::yield_now().await;
            }
            let sent = Instant::now();
            q.enqueue(&jobs(1)).await.expect("enqueue");
            let got = waiting.await.expect("worker");
            latencies.push(got.duration_since(sent));
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3;
        println!(
            "pickup by an idle worker over {samples} jobs: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    });
}
