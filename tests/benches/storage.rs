//! Storage benchmark: readings written per second at batch sizes 1, 100, 1,000 and 10,000,
//! and "the latest slot of each of 10,000 chambers" over 10 million stored readings, on
//! PostgreSQL and SQLite.
//!
//! ```sh
//! scripts/bench-storage                      # a tuned throwaway PostgreSQL, full figures
//! cargo bench -p chamberlain-tests --bench storage -- [postgres|sqlite|all]
//! ```
//!
//! PostgreSQL: a fresh database on the server named by `CHAMBERLAIN_TEST_DATABASE_URL`.
//! `CHAMBERLAIN_BENCH_SMOKE=1` (set by `scripts/test`) shrinks every figure to a seconds-long
//! run that proves the benchmark still works; its numbers mean nothing.

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chamberlain_domain::Timestamp;
use chamberlain_domain::conformance::fixtures::{self, StorePorts, T0};
use chamberlain_domain::model::{Chamber, ChamberId, Detector, OrganizationId};
use chamberlain_domain::ports::PollRecord;

struct Sizes {
    write_rounds: Vec<(usize, usize)>,
    latest_chambers: usize,
    latest_slots: usize,
    writers: usize,
}

fn sizes(smoke: bool) -> Sizes {
    if smoke {
        Sizes {
            write_rounds: vec![(1, 20), (100, 5), (1_000, 2), (10_000, 1)],
            latest_chambers: 200,
            latest_slots: 5,
            writers: 2,
        }
    } else {
        Sizes {
            // (batch size in readings, batches per writer)
            write_rounds: vec![(1, 2_000), (100, 500), (1_000, 150), (10_000, 50)],
            latest_chambers: 10_000,
            latest_slots: 125,
            writers: 2,
        }
    }
}

const DETECTORS: usize = 8;

struct Fleet {
    org: OrganizationId,
    chambers: Vec<(Chamber, Vec<Detector>)>,
}

async fn fleet(p: &StorePorts, n: usize) -> Fleet {
    let org = fixtures::organization(&format!("bench {}", uuid::Uuid::new_v4()));
    p.organizations.create(&org).await.expect("organization");
    let section = fixtures::section(org.id, "bench room");
    p.sections.create(&section).await.expect("section");
    let mut chambers = Vec::with_capacity(n);
    for i in 0..n {
        let c = fixtures::chamber(org.id, section.id, &format!("c{i:05}"), 3600);
        let ds: Vec<Detector> = (0..DETECTORS)
            .map(|d| fixtures::detector(&c, &format!("d{d}")))
            .collect();
        p.chambers.create(&c, &ds).await.expect("chamber");
        chambers.push((c, ds));
    }
    Fleet {
        org: org.id,
        chambers,
    }
}

/// Polls at `slot` covering `readings` readings: whole chambers of 8, the last one partial.
fn batch(fleet: &Fleet, first_chamber: usize, readings: usize, slot: Timestamp) -> Vec<PollRecord> {
    let mut out = Vec::new();
    let mut left = readings;
    let mut i = first_chamber;
    while left > 0 {
        let (c, ds) = &fleet.chambers[i % fleet.chambers.len()];
        let take = left.min(DETECTORS);
        out.push(fixtures::poll_record(
            c,
            &ds[..take],
            slot,
            20.0 + (i % 7) as f64,
            None,
        ));
        left -= take;
        i += 1;
    }
    out
}

async fn write_rates(name: &str, p: &StorePorts, s: &Sizes) {
    let fleet = Arc::new(fleet(p, 1_250).await);
    // Every batch gets a slot of its own (round, writer, batch → a distinct millisecond of one
    // day), so no write collides with another and all are new. A warm-up write creates the
    // day's partition outside the timing.
    let slot = |round: usize, writer: usize, k: usize| {
        T0 + Duration::from_millis((round * 10_000_000 + writer * 1_000_000 + k) as u64 + 1)
    };
    p.readings
        .store_polls(&batch(&fleet, 0, 8, T0))
        .await
        .expect("warm-up write");
    for (round, &(size, batches)) in s.write_rounds.iter().enumerate() {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..s.writers {
            let (p, fleet) = (p.clone(), fleet.clone());
            tasks.push(tokio::spawn(async move {
                let mut written = 0u64;
                for k in 0..batches {
                    let polls = batch(&fleet, 0, size, slot(round, w, k));
                    let report = p.readings.store_polls(&polls).await.expect("write");
                    assert_eq!(report.readings_new as usize, size, "every reading is new");
                    written += report.readings_new;
                }
                written
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("writer");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name:<8} write  batch {size:>6} readings × {batches:>5} batches × {} writers: {:>10.0} readings/s ({total} in {secs:.2} s)",
            s.writers,
            total as f64 / secs
        );
    }
}

async fn latest_query(name: &str, p: &StorePorts, s: &Sizes) {
    let setup = Instant::now();
    let fleet = fleet(p, s.latest_chambers).await;
    let ids: Vec<ChamberId> = fleet.chambers.iter().map(|(c, _)| c.id).collect();
    // One slot an hour: 125 slots span six UTC days, so six partitions on PostgreSQL. Two
    // writers load alternate slots.
    let fleet = Arc::new(fleet);
    let mut loaders = Vec::new();
    for w in 0..2 {
        let (p, fleet, slots) = (p.clone(), fleet.clone(), s.latest_slots);
        loaders.push(tokio::spawn(async move {
            let mut loaded = 0u64;
            for k in (w..slots).step_by(2) {
                let slot = T0 + Duration::from_secs(3600 * k as u64);
                for chunk in (0..fleet.chambers.len()).step_by(1_250) {
                    let n = 1_250.min(fleet.chambers.len() - chunk) * DETECTORS;
                    loaded += p
                        .readings
                        .store_polls(&batch(&fleet, chunk, n, slot))
                        .await
                        .expect("load")
                        .readings_new;
                }
            }
            loaded
        }));
    }
    let mut loaded = 0u64;
    for l in loaders {
        loaded += l.await.expect("loader");
    }
    println!(
        "{name:<8} latest setup: {} chambers × {DETECTORS} detectors × {} slots = {loaded} readings in {:.1} s",
        fleet.chambers.len(),
        s.latest_slots,
        setup.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        let latest = p.readings.latest(fleet.org, &ids).await.expect("latest");
        times.push(start.elapsed());
        assert_eq!(latest.len(), ids.len());
        let newest = T0 + Duration::from_secs(3600 * (s.latest_slots as u64 - 1));
        assert!(
            latest
                .iter()
                .all(|l| l.slot == newest && l.readings.len() == DETECTORS)
        );
    }
    times.sort();
    println!(
        "{name:<8} latest slot of each of {} chambers: median {:.1} ms (min {:.1}, max {:.1}) over {} runs",
        ids.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );
}

async fn postgres(s: &Sizes) {
    let (store, guard) = chamberlain_postgres::testing::fresh_store().await;
    let settings = sqlx_settings(&store).await;
    println!("postgres settings: {settings}");
    let ports = StorePorts {
        keepalive: Some(guard),
        ..StorePorts::from_adapter(Arc::new(store))
    };
    write_rates("postgres", &ports, s).await;
    latest_query("postgres", &ports, s).await;
}

async fn sqlx_settings(store: &chamberlain_postgres::PgStore) -> String {
    let mut out = Vec::new();
    for name in [
        "server_version",
        "shared_buffers",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_wal_size",
        "work_mem",
    ] {
        let v: Result<String, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(store.pool())
            .await;
        out.push(format!(
            "{name}={}",
            v.unwrap_or_else(|e| format!("? ({e})"))
        ));
    }
    out.join(" ")
}

async fn sqlite(s: &Sizes) {
    let dir = std::env::temp_dir().join(format!(
        "chamberlain-bench-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("bench.db").display());
    let config = chamberlain_sqlite::SqliteConfig::from_url(&url).expect("sqlite url");
    let store = chamberlain_sqlite::SqliteStore::connect(&config)
        .await
        .expect("open sqlite");
    println!("sqlite   settings: {url} (WAL, synchronous=NORMAL)");
    let ports = StorePorts::from_adapter(Arc::new(store));
    write_rates("sqlite", &ports, s).await;
    latest_query("sqlite", &ports, s).await;
    drop(ports);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let smoke = std::env::var("CHAMBERLAIN_BENCH_SMOKE").is_ok_and(|v| v == "1");
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    let s = sizes(smoke);
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
        if matches!(which.as_str(), "all" | "postgres") {
            postgres(&s).await;
        }
        if matches!(which.as_str(), "all" | "sqlite") {
            sqlite(&s).await;
        }
    });
}
