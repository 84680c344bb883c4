//! Pipeline benchmark: the simulator, PostgreSQL, Redis, one scheduler process and one worker
//! process on this machine, for 1,000, 2,500, 5,000 and 10,000 chambers × 8 detectors at 1 s.
//!
//! ```sh
//! scripts/bench-pipeline            # default, then tuned, throwaway PostgreSQL; 60 s per step
//! ```
//! Per step it prints polls/s, readings/s, coverage (slots whose request reached the chamber
//! before the next slot was due, from the simulator and from the ledger), lateness p50/p99/max
//! and duplicates as the simulator measured them, and CPU per poll of the chamberlain processes,
//! with Redis, PostgreSQL and the simulator (this process) printed separately. Then what a user
//! gets: the polls stored whose request went out in the measured window against the requests the
//! chambers answered in it (after the worker was stopped with SIGTERM and wrote what it held),
//! the age of the oldest result still unwritten when the window closed (the worker's
//! `chamberlain_worker_results_oldest_age_seconds`), and the worker's peak RSS. A step passes
//! when at least 99.9 % of the answered polls are stored.
//! `CHAMBERLAIN_BENCH_SMOKE=1` runs one tiny step for a few seconds.
//! `CHAMBERLAIN_BENCH_WARMUP_SECS=N` waits N seconds (default 10) after starting the scheduler
//! and the worker before measuring. `CHAMBERLAIN_BENCH_LATE_SECONDS=1` prints when the late
//! polls were.
//! `CHAMBERLAIN_BENCH_STALLED_SUBSCRIBER=1` also runs a gateway with one subscriber of every
//! reading that never reads its stream (it must be told it lagged, then be disconnected, without
//! slowing the pipeline); the gateway's CPU is printed apart.
//! `CHAMBERLAIN_BENCH_OTLP=closed` runs the scheduler and the worker with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a closed port (telemetry on, collector
//! unreachable); `CHAMBERLAIN_BENCH_OTLP=<url>` at that collector.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chamberlain_domain::Timestamp;
use chamberlain_domain::model::{PollOutcome, Role};
use chamberlain_domain::ports::{Clock, LedgerQuery, PollLedgerRepository, Repositories};
use chamberlain_domain::usecases::{
    Actor, ChamberAdmin, NewChamber, NewDetector, NewSection, NewUser, UserAdmin,
};
use chamberlain_fakes::InsecureTestPasswordHasher;
use chamberlain_memory::{MemoryChamberChanges, MemoryEventBus, SystemClock};
use chamberlain_simulator::{Format, Simulator, SimulatorConfig};

const DETECTORS: u32 = 8;

fn clk_tck() -> f64 {
    100.0
}

/// user+sys CPU seconds of a process.
fn cpu_of(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / clk_tck()
}

/// user+sys CPU seconds of every process whose command line contains `needle`.
fn cpu_matching(needle: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .map(cpu_of)
        .sum()
}

fn chamberlain_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("CHAMBERLAIN_BIN") {
        return bin.into();
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    // Where `scripts/bench-pipeline` built it: CARGO_TARGET_DIR when set (as cargo does).
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
            PathBuf::from,
        )
        .join(profile)
        .join("chamberlain")
}

/// A gauge from the worker's `/metrics` (Prometheus text), if it answered.
async fn worker_gauge(port: u16, name: &str) -> Option<f64> {
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        chamberlain_tests::api_stack::http_request(port, "GET", "/metrics", None, None, &[]),
    )
    .await
    .ok()?;
    if status != 200 {
        return None;
    }
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (metric, value) = l.rsplit_once(' ')?;
        (metric.split('{').next()? == name).then(|| value.parse().ok())?
    })
}

/// A process's peak resident memory (VmHWM), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Step {
    chambers: u32,
    warmup: Duration,
    measure: Duration,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first (a graceful stop), then make sure.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn step(s: &Step, server_url: &str, redis_url: &str) {
    // The simulator runs in this process (its CPU is this process's during the run).
    let port = TcpListener::bind("127.0.0.2:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let sim = Simulator::start(
        SimulatorConfig::builder()
            .chambers(s.chambers)
            .detectors(DETECTORS)
            .interval(Duration::from_secs(1))
            .bind(format!("127.0.0.2:{port}").parse().expect("addr"))
            .build()
            .expect("simulator config"),
    )
    .await
    .expect("simulator");
    let (store, db) = chamberlain_postgres::testing::fresh_store().await;
    let store = Arc::new(store);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let repositories = Repositories::of(store.clone());
    let users = UserAdmin::new(
        &repositories,
        Arc::new(InsecureTestPasswordHasher),
        Arc::new(chamberlain_memory::MemoryAccessEpoch::default()),
        clock.clone(),
    );
    let (org, admin) = users
        .create_organization(
            "Bench",
            NewUser {
                email: "b@lab.example".into(),
                display_name: "B".into(),
                role: "admin".into(),
                password: None,
            },
        )
        .await
        .expect("org");
    let actor = Actor {
        user_id: admin.id,
        organization_id: org.id,
        role: Role::Admin,
    };
    let admin = ChamberAdmin::new(
        &repositories,
        Arc::new(MemoryChamberChanges::default()),
        Arc::new(MemoryEventBus::default()),
        clock.clone(),
    );
    let section = admin
        .create_section(
            &actor,
            NewSection {
                name: "bench".into(),
                description: String::new(),
            },
        )
        .await
        .expect("section");
    let mut ids = Vec::new();
    for i in 0..s.chambers {
        let c = admin
            .create_chamber(
                &actor,
                NewChamber {
                    section_id: section.id,
                    name: format!("c{i:05}"),
                    url: sim.chamber_url(i, Format::Json),
                    format: "json".into(),
                    interval: Duration::from_secs(1),
                    timeout: None,
                    detectors: (0..DETECTORS)
                        .map(|j| NewDetector {
                            name: format!("d{j}"),
                            key: format!("/detectors/{j}/value"),
                            ..Default::default()
                        })
                        .collect(),
                },
            )
            .await
            .expect("chamber");
        ids.push(c.chamber.id);
    }
    let db_url = format!(
        "{}/{}",
        server_url
            .rsplit_once('/')
            .map_or(server_url, |(base, _)| base),
        db.name
    );
    // A unique key prefix, deleted with everything under it when the step ends.
    let redis_keys = chamberlain_redis::testing::TestPrefix::on(redis_url);
    let prefix = redis_keys.config.key_prefix.clone();
    let otlp = match std::env::var("CHAMBERLAIN_BENCH_OTLP").as_deref() {
        Ok("closed") => {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("a free port");
            Some(format!("http://127.0.0.1:{port}"))
        }
        Ok(url) if !url.is_empty() => Some(url.to_owned()),
        _ => None,
    };
    let spawn = |role: &str, metrics_port: Option<u16>| {
        let mut cmd = Command::new(chamberlain_bin());
        if let Some(endpoint) = &otlp {
            cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        Proc(
            cmd.arg(role)
                .env("CHAMBERLAIN_DATABASE_URL", &db_url)
                .env("CHAMBERLAIN_REDIS_URL", redis_url)
                .env("CHAMBERLAIN_REDIS_PREFIX", &prefix)
                .env("CHAMBERLAIN_EGRESS_ALLOW", "127.0.0.2/32")
                .env(
                    "CHAMBERLAIN_METRICS_LISTEN",
                    format!("127.0.0.1:{}", metrics_port.unwrap_or(0)),
                )
                .env("CHAMBERLAIN_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the chamberlain binary is built (scripts/bench-pipeline builds it)"),
        )
    };
    let worker_metrics = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let scheduler = spawn("scheduler", None);
    let worker = spawn("worker", Some(worker_metrics));
    let stalled = if std::env::var("CHAMBERLAIN_BENCH_STALLED_SUBSCRIBER").is_ok_and(|v| v == "1") {
        Some(StalledSubscriber::start(&db_url, redis_url, &prefix, actor).await)
    } else {
        None
    };
    tokio::time::sleep(s.warmup).await; // the warm-up period of the run, not a wait for a condition
    sim.reset();
    let t0 = clock.now();
    let pids = [scheduler.0.id(), worker.0.id()];
    let cpu_chamberlain0: f64 = pids.iter().map(|p| cpu_of(*p)).sum();
    let cpu_sim0 = cpu_of(std::process::id());
    let cpu_redis0 = cpu_matching("redis-server");
    let cpu_pg0 = cpu_matching("postgres");
    tokio::time::sleep(s.measure).await; // the measured period of the run
    let cpu_chamberlain1: f64 = pids.iter().map(|p| cpu_of(*p)).sum();
    let cpu_sim1 = cpu_of(std::process::id());
    let cpu_redis1 = cpu_matching("redis-server");
    let cpu_pg1 = cpu_matching("postgres");
    let t1 = clock.now();
    let report = sim.report();
    let gateway_cpu = stalled.as_ref().map(|g| cpu_of(g.gateway.0.id()));
    let unwritten = worker_gauge(
        worker_metrics,
        "chamberlain_worker_results_oldest_age_seconds",
    )
    .await
    .map_or_else(|| "?".to_owned(), |age| format!("{age:.1} s"));
    let waiting = worker_gauge(worker_metrics, "chamberlain_worker_results_waiting")
        .await
        .map_or_else(|| "?".to_owned(), |n| format!("{n:.0}"));
    let worker_peak_mib = peak_rss_mib(worker.0.id());
    // The scheduler stops; the worker is told to stop (SIGTERM) and writes what it holds.
    drop(scheduler);
    drop(worker);

    // Coverage from the ledger: slots in the window fetched before the next slot was due.
    let window_from = t0;
    let window_to = Timestamp::from_unix_millis(t1.as_unix_millis() - 1000);
    let (mut expected, mut on_time, mut entries) = (0u64, 0u64, 0u64);
    // Polls stored whose request went out in the window (the simulator counted those answered).
    let mut stored = 0u64;
    // Where the late polls are in time: polls requested more than 50 ms after their slot, per
    // second of the run (a periodic stall shows as a pattern).
    let mut late_by_second: std::collections::BTreeMap<i64, u64> =
        std::collections::BTreeMap::new();
    for id in &ids {
        let grid = chamberlain_domain::schedule::SlotGrid::new(
            *id,
            chamberlain_domain::model::PollInterval::from_secs(1).expect("1 s"),
        );
        let first = grid.at_or_after(window_from);
        expected += grid.count_between(first, grid.at_or_before(window_to));
        // Slots from a second before the window: a late request of one may fall in it.
        let around = store
            .list(
                org.id,
                &LedgerQuery {
                    from: Timestamp::from_unix_millis(window_from.as_unix_millis() - 1000),
                    to: Timestamp::from_unix_millis(t1.as_unix_millis() + 1000),
                    ..LedgerQuery::all(*id)
                },
            )
            .await
            .expect("ledger")
            .items;
        stored += around
            .iter()
            .filter(|e| e.requested_at.is_some_and(|r| r >= t0 && r < t1))
            .count() as u64;
        let ledger: Vec<_> = around
            .into_iter()
            .filter(|e| e.poll.slot >= window_from && e.poll.slot < window_to)
            .collect();
        entries += ledger.len() as u64;
        for e in &ledger {
            if e.lateness > Duration::from_millis(50) {
                *late_by_second
                    .entry((e.poll.slot.as_unix_millis() - t0.as_unix_millis()) / 1000)
                    .or_default() += 1;
            }
        }
        on_time += ledger
            .iter()
            .filter(|e| e.outcome == PollOutcome::Ok && e.lateness < Duration::from_secs(1))
            .count() as u64;
    }
    let secs = t1.saturating_since(t0).as_secs_f64();
    let polls = report.requests as f64;
    let per_poll = |cpu: f64| if polls > 0.0 { cpu / polls * 1e6 } else { 0.0 };
    println!(
        "{:>6} chambers | {:>7.0} polls/s {:>8.0} readings/s | coverage {:>7.3} % (ledger: {}/{} on time, {} entries) | lateness p50 {:>4} p99 {:>5} max {:>5} ms | duplicates {} | CPU/poll µs: chamberlain {:.0}, redis {:.0}, postgres {:.0}, simulator {:.0}",
        s.chambers,
        polls / secs,
        polls * f64::from(DETECTORS) / secs,
        if expected > 0 {
            on_time as f64 / expected as f64 * 100.0
        } else {
            0.0
        },
        on_time,
        expected,
        entries,
        report.lateness_ms.p50.unwrap_or(-1),
        report.lateness_ms.p99.unwrap_or(-1),
        report.lateness_ms.max.unwrap_or(-1),
        report.duplicates.attempt_one,
        per_poll(cpu_chamberlain1 - cpu_chamberlain0),
        per_poll(cpu_redis1 - cpu_redis0),
        per_poll(cpu_pg1 - cpu_pg0),
        per_poll(cpu_sim1 - cpu_sim0),
    );
    let answered = report.requests;
    let stored_share = if answered > 0 {
        stored as f64 / answered as f64 * 100.0
    } else {
        0.0
    };
    println!(
        "       stored {stored} of {answered} answered ({stored_share:.3} %) | at the window's end {waiting} results waiting, the oldest unwritten for {unwritten} | worker peak RSS {worker_peak_mib:.0} MiB | {}",
        if stored_share >= 99.9 {
            "PASS"
        } else {
            "FAIL: answered polls not stored"
        }
    );
    // What a platform engineer needs of a store on default settings (issue 25).
    let p99 = report.lateness_ms.p99.unwrap_or(i64::MAX);
    let missed: Vec<String> = [
        (stored_share < 99.9).then(|| format!("stored {stored_share:.3} % < 99.9 %")),
        (p99 > 50).then(|| format!("p99 lateness {p99} ms > 50 ms")),
        (report.duplicates.attempt_one > 0)
            .then(|| format!("{} duplicates", report.duplicates.attempt_one)),
        (worker_peak_mib > 256.0)
            .then(|| format!("worker peak RSS {worker_peak_mib:.0} MiB > 256 MiB")),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "       ≥ 99.9 % stored, p99 ≤ 50 ms, no duplicate, worker ≤ 256 MiB: {}",
        if missed.is_empty() {
            "all met".to_owned()
        } else {
            format!("missed: {}", missed.join(", "))
        }
    );
    if let Some(stalled) = stalled {
        println!(
            "       stalled subscriber: gateway CPU {:.1} s over the run; {}",
            gateway_cpu.unwrap_or(0.0),
            stalled.finish().await
        );
    }
    if std::env::var("CHAMBERLAIN_BENCH_LATE_SECONDS").is_ok() {
        println!("polls later than 50 ms, by second of the run: {late_by_second:?}");
    }
    let _ = sim.shutdown().await;
    drop(db);
}

/// A gateway on the run's database and Redis, and a `WatchReadings` stream of the whole
/// organization that is never read until the end.
struct StalledSubscriber {
    gateway: Proc,
    stream: tonic::Streaming<chamberlain_proto::v1::WatchReadingsResponse>,
}

impl StalledSubscriber {
    const KEY: &str = "bench-identity-key-0123456789abcdef0123456789";

    async fn start(db_url: &str, redis_url: &str, prefix: &str, actor: Actor) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let gateway = Proc(
            Command::new(chamberlain_bin())
                .arg("gateway")
                .env("CHAMBERLAIN_DATABASE_URL", db_url)
                .env("CHAMBERLAIN_REDIS_URL", redis_url)
                .env("CHAMBERLAIN_REDIS_PREFIX", prefix)
                .env("CHAMBERLAIN_IDENTITY_KEY", Self::KEY)
                .env("CHAMBERLAIN_METRICS_LISTEN", "127.0.0.1:0")
                .env("CHAMBERLAIN_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
                .env("CHAMBERLAIN_GATEWAY_HTTP_LISTEN", "127.0.0.1:0")
                .env("CHAMBERLAIN_WATCH_MAX_LAG_SECS", "5")
                .env("CHAMBERLAIN_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("the chamberlain binary"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let channel = loop {
            let c = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("url")
                .connect()
                .await;
            match c {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "gateway not up: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await; // polling readiness
                }
            }
        };
        let key = chamberlain_grpc::IdentityKey::new(Self::KEY.as_bytes().to_vec()).expect("key");
        let mut request =
            tonic::Request::new(chamberlain_proto::v1::WatchReadingsRequest::default());
        request.metadata_mut().insert(
            chamberlain_grpc::identity::IDENTITY_HEADER,
            key.sign(
                &chamberlain_domain::usecases::Identity {
                    actor,
                    token_id: chamberlain_domain::model::ApiTokenId::random(),
                },
                SystemClock.now(),
            )
            .parse()
            .expect("header"),
        );
        let stream = chamberlain_proto::v1::event_service_client::EventServiceClient::new(channel)
            .watch_readings(request)
            .await
            .expect("watching")
            .into_inner();
        Self { gateway, stream }
    }

    /// Reads what the stream holds now: how many polls, the lagged notices, and how it ended.
    async fn finish(mut self) -> String {
        use chamberlain_proto::v1::watch_readings_response::Item;
        let (mut polls, mut notices, mut missed) = (0u64, 0u64, 0u64);
        let end = loop {
            match tokio::time::timeout(Duration::from_secs(5), self.stream.message()).await {
                Err(_) => break "still connected (nothing more within 5 s)".to_owned(),
                Ok(Ok(None)) => break "ended without a status".to_owned(),
                Ok(Err(status)) => {
                    break format!("disconnected: {:?} {}", status.code(), status.message());
                }
                Ok(Ok(Some(m))) => match m.item {
                    Some(Item::Readings(_)) => polls += 1,
                    Some(Item::Lagged(l)) => {
                        notices += 1;
                        missed += l.missed;
                    }
                    _ => {}
                },
            }
        };
        format!(
            "{polls} polls' readings buffered before, {notices} lagged notice(s) for {missed} missed; {end}"
        )
    }
}

fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let only: Option<u32> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    // Seconds between starting the scheduler and worker and measuring (default 10).
    let warmup = Duration::from_secs(
        std::env::var("CHAMBERLAIN_BENCH_WARMUP_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    let steps: Vec<Step> = if smoke {
        vec![Step {
            chambers: 20,
            warmup: Duration::from_secs(2),
            measure: Duration::from_secs(2),
        }]
    } else {
        // The four steps, or any one size named (`-- 20000`).
        only.map_or_else(|| vec![1_000, 2_500, 5_000, 10_000], |n| vec![n])
            .into_iter()
            .map(|chambers| Step {
                chambers,
                warmup,
                measure: Duration::from_secs(60),
            })
            .collect()
    };
    if smoke {
        println!(
            "smoke mode (CHAMBERLAIN_BENCH_SMOKE=1): one tiny step, figures are not measurements"
        );
    }
    match std::env::var("CHAMBERLAIN_BENCH_OTLP").as_deref() {
        Ok("closed") => println!("telemetry: OTLP export to a closed port"),
        Ok(url) if !url.is_empty() => println!("telemetry: OTLP export to {url}"),
        _ => println!("telemetry: no OTLP export"),
    }
    println!(
        "postgres: {} settings",
        std::env::var("CHAMBERLAIN_BENCH_PG_PROFILE").unwrap_or_else(|_| "its own".into())
    );
    let server_url = chamberlain_postgres::testing::server_url();
    let redis_url = chamberlain_redis::testing::server_url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for s in &steps {
            step(s, &server_url, &redis_url).await;
        }
    });
}
