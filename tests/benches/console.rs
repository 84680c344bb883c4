//! The console's server time on the embedded default's store (SQLite in a file): the overview's
//! first page (plain and filtered) with 10,000 chambers of 8 detectors, a chamber's page, and a
//! chamber's 7-day chart at 1 s data (aggregated on the server), and a CSV download of 24 h of
//! that chamber's 1 s data (the whole body read). Each figure is the time from
//! the request to the whole page, through the console's router (session check included).
//!
//! `cargo bench -p chamberlain-tests --bench console`; `CHAMBERLAIN_BENCH_SMOKE=1` (as
//! `scripts/test` sets it) runs a seconds-long pass on 200 chambers and an hour of chart data.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, header};
use chamberlain_console::{Console, ConsoleSettings};
use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures;
use chamberlain_domain::model::Role;
use chamberlain_domain::ports::{
    ChamberRepository, ChamberWithDetectors, OrganizationRepository, PollRecord, ReadingRepository,
    Repositories, SectionRepository, UserRepository,
};
use chamberlain_domain::usecases::{ApiPorts, ApiSettings, ApiUseCases};
use chamberlain_fakes::InsecureTestPasswordHasher;
use chamberlain_memory::{MemoryAccessEpoch, MemoryChamberChanges, MemoryEventBus, SystemClock};
use chamberlain_sqlite::{SqliteConfig, SqliteStore};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index"
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn measure(
    router: &axum::Router,
    cookie: &str,
    path: &str,
    runs: usize,
) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut bytes = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let response = router
            .clone()
            .oneshot(
                Request::get(path)
                    .header(header::COOKIE, cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        bytes = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len();
        times.push(started.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.95), bytes)
}

#[allow(clippy::too_many_lines)]
fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let (chambers, chart_secs, runs) = if smoke {
        (200_usize, 3_600_i64, 5)
    } else {
        (10_000, 7 * 86_400, 50)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = std::env::temp_dir().join(format!("chamberlain-console-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(SqliteStore::connect(&SqliteConfig::file(dir.join("chamberlain.db"))).await.unwrap());
        let now = Timestamp::from_unix_millis(
            i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap() / 1000 * 1000,
        );

        // 10 sections of chambers, 8 detectors each, one poll each (the overview's latest values).
        let seeding = Instant::now();
        let org = fixtures::organization("bench");
        OrganizationRepository::create(&*store, &org).await.unwrap();
        let mut admin = fixtures::user(org.id, "admin@bench.example", Role::Admin);
        admin.password_hash = Some("$insecure-test$correct horse battery".into());
        UserRepository::create(&*store, &admin).await.unwrap();
        let mut first = None;
        for s in 0..10 {
            let section = fixtures::section(org.id, &format!("room {s}"));
            SectionRepository::create(&*store, &section).await.unwrap();
            let batch: Vec<ChamberWithDetectors> = (0..chambers / 10)
                .map(|i| {
                    let chamber = fixtures::chamber(org.id, section.id, &format!("chamber-{s}-{i:04}"), 1);
                    let detectors = (0..8).map(|d| fixtures::detector(&chamber, &format!("d{d}"))).collect();
                    ChamberWithDetectors { chamber, detectors }
                })
                .collect();
            store.create_many(&batch).await.unwrap();
            let polls: Vec<PollRecord> = batch
                .iter()
                .map(|c| fixtures::poll_record(&c.chamber, &c.detectors, now, 21.5, None))
                .collect();
            for chunk in polls.chunks(500) {
                store.store_polls(chunk).await.unwrap();
            }
            first.get_or_insert(batch[0].clone());
        }
        // One chamber's history at 1 s for the chart.
        let charted = first.unwrap();
        let mut polls = Vec::with_capacity(1000);
        for k in (1..=chart_secs).rev() {
            let slot = Timestamp::from_unix_millis(now.as_unix_millis() - k * 1000);
            #[allow(clippy::cast_precision_loss, reason = "a test value")]
            let value = 20.0 + (k % 600) as f64 / 100.0;
            polls.push(fixtures::poll_record(&charted.chamber, &charted.detectors, slot, value, None));
            if polls.len() == 1000 {
                store.store_polls(&polls).await.unwrap();
                polls.clear();
            }
        }
        store.store_polls(&polls).await.unwrap();
        let seeded = seeding.elapsed();

        let repositories = Repositories::of(store.clone());
        let bus = Arc::new(MemoryEventBus::new(64));
        let api = ApiUseCases::new(
            &repositories,
            ApiPorts {
                changes: Arc::new(MemoryChamberChanges::new(64)),
                events: bus.clone(),
                feed: bus,
                passwords: Arc::new(InsecureTestPasswordHasher),
                access: Arc::new(MemoryAccessEpoch::default()),
                clock: Arc::new(SystemClock),
            },
            ApiSettings::default(),
        );
        let router = Console::new(
            api,
            Arc::new(SystemClock),
            ConsoleSettings {
                csrf_key: vec![7; 32],
                secure_cookies: false,
                sign_in_limit: None,
                queue_board: None,
            },
        )
        .router();
        let signed_in = router
            .clone()
            .oneshot(
                Request::post("/console/sign-in")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from("email=admin%40bench.example&password=correct+horse+battery"))
                    .unwrap(),
            )
            .await
            .unwrap();
        let cookie = signed_in.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();

        println!(
            "console bench: {chambers} chambers × 8 detectors, {chart_secs} s of 1 s data for one chamber, SQLite file (seeded in {:.1} s)",
            seeded.as_secs_f64()
        );
        println!("| page | p50 | p95 | bytes |");
        println!("|---|---|---|---|");
        let chamber_page = format!("/console/chambers/{}", charted.chamber.id);
        let chart_range = if smoke { "1h" } else { "7d" };
        let chart = format!("/console/chambers/{}/series?range={chart_range}", charted.chamber.id);
        for (label, path, n) in [
            ("overview, first page", "/console/".to_owned(), runs),
            ("overview, one section", format!("/console/?section={}", charted.chamber.section_id), runs),
            ("overview, name filter", "/console/?name=0999".to_owned(), runs),
            ("overview, health filter", "/console/?health=down".to_owned(), runs),
            ("chamber page", chamber_page, runs),
            (if smoke { "chart, 1 h" } else { "chart, 7 d at 1 s" }, chart, 3),
            (
                if smoke { "CSV download, 1 h" } else { "CSV download, 24 h at 1 s (whole body)" },
                format!(
                    "/console/chambers/{}/readings.csv?range={}",
                    charted.chamber.id,
                    if smoke { "1h" } else { "24h" }
                ),
                3,
            ),
        ] {
            let (p50, p95, bytes) = measure(&router, &cookie, &path, n).await;
            println!(
                "| {label} | {:.1} ms | {:.1} ms | {bytes} |",
                p50.as_secs_f64() * 1000.0,
                p95.as_secs_f64() * 1000.0
            );
        }
        println!("peak RSS: {:.0} MiB", peak_rss_mib());
        let _ = std::fs::remove_dir_all(&dir);
    });
}
