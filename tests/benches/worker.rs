//! Worker runtime benchmark: how fast one worker process drains a backlog of due polls from
//! Redis when the polls themselves cost nothing (a chamber client that answers at once, an
//! in-memory store): what is left is the worker's runtime — leasing, holding, dispatching,
//! batching the writes, acknowledging — on apalis since issue 23.
//!
//! ```sh
//! cargo bench -p chamberlain-tests --bench worker
//! ```
//! Prints jobs/s, the worker's CPU per job (this process: the store and the fake chamber are
//! in it too) and Redis's, and the process's peak RSS. Uses `CHAMBERLAIN_TEST_REDIS_URL` with a
//! key prefix of its own. `CHAMBERLAIN_BENCH_SMOKE=1` shrinks it to seconds.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures;
use chamberlain_domain::ports::{
    ChamberClient, ChamberRepository, Clock, FetchError, FetchRequest, FetchedResponse,
    OrganizationRepository, PollQueue, Repositories, SectionRepository,
};
use chamberlain_domain::usecases::PollHandler;
use chamberlain_fakes::MemoryStore;
use chamberlain_memory::{MemoryEventBus, SystemClock};
use chamberlain_redis::RedisPollQueue;
use chamberlain_redis::testing::TestPrefix;
use chamberlain_worker::{Worker, WorkerConfig};

/// Answers every request at once.
struct Instant200;

#[async_trait]
impl ChamberClient for Instant200 {
    async fn fetch(&self, _request: &FetchRequest) -> Result<FetchedResponse, FetchError> {
        Ok(FetchedResponse {
            status: 200,
            body: br#"{"t": 21.5}"#.to_vec(),
        })
    }
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

/// This process's user + system CPU seconds, and its peak RSS in MiB.
fn own_usage() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name: utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    (ticks / 100.0, peak_kib / 1024.0)
}

fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let (chambers, per_chamber) = if smoke { (100, 20) } else { (1_000, 100) };
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
        let store = Arc::new(MemoryStore::new());
        let org = fixtures::organization("bench");
        OrganizationRepository::create(&*store, &org).await.unwrap();
        let section = fixtures::section(org.id, "room");
        SectionRepository::create(&*store, &section).await.unwrap();
        let mut ids = Vec::with_capacity(chambers);
        for i in 0..chambers {
            // Hourly: every slot of the last hour is still current.
            let chamber = fixtures::chamber(org.id, section.id, &format!("c{i}"), 3600);
            ChamberRepository::create(&*store, &chamber, &[fixtures::detector(&chamber, "t")])
                .await
                .unwrap();
            ids.push(chamber.id);
        }
        let now = SystemClock.now();
        let whole = Timestamp::from_unix_millis(now.as_unix_millis() / 1000 * 1000);
        let jobs: Vec<_> = ids
            .iter()
            .flat_map(|id| {
                (1..=per_chamber).map(move |k| {
                    fixtures::poll_job(org.id, *id, whole - Duration::from_secs(k), 3600, now)
                })
            })
            .collect();
        let total = jobs.len();

        let prefix = TestPrefix::new();
        let queue: Arc<dyn PollQueue> =
            Arc::new(RedisPollQueue::connect(&prefix.config).await.expect("queue"));
        for chunk in jobs.chunks(5_000) {
            queue.enqueue(chunk).await.expect("enqueue");
        }
        let client = redis::Client::open(chamberlain_redis::testing::server_url()).expect("url");
        let mut admin = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");

        let handler = PollHandler::new(
            &Repositories::of(store.clone()),
            Arc::new(Instant200),
            Arc::new(MemoryEventBus::new(64)),
            Arc::new(SystemClock),
        );
        let worker = Worker::new(handler, queue.clone(), WorkerConfig::default());
        let (redis0, (cpu0, _)) = (redis_cpu_seconds(&mut admin).await, own_usage());
        let start = Instant::now();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let working = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        loop {
            let depth = queue.depth().await.expect("depth");
            if depth.ready + depth.leased + depth.delayed == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        let (redis1, (cpu1, peak_mib)) = (redis_cpu_seconds(&mut admin).await, own_usage());
        let _ = stop.send(());
        let report = working.await.expect("worker");
        assert_eq!(
            report.polls_completed, total as u64,
            "every poll stored: {report:?}"
        );
        println!(
            "worker drain {total} due no-op polls ({chambers} chambers): {:>8.0} jobs/s in {secs:.2} s, \
             worker CPU {:.1} µs/job, Redis CPU {:.1} µs/job, peak RSS {peak_mib:.0} MiB",
            total as f64 / secs,
            (cpu1 - cpu0) / total as f64 * 1e6,
            (redis1 - redis0) / total as f64 * 1e6,
        );
    });
}
