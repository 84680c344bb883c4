//! Storage benchmark: readings written per second at batch sizes 1, 100, 1,000 and 10,000;
//! the latency of every reading query the API offers over a day of 1 s polls (a detector, a
//! chamber and a batch over a range, every page of a day as an export does, aggregates, the
//! ledger's pages and tallies, a detector of a 200-detector chamber); and "the latest slot of
//! each of 10,000 chambers" over 10 million stored readings; on PostgreSQL and SQLite.
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
use chamberlain_domain::limits::MAX_PAGE_SIZE;
use chamberlain_domain::model::{
    BatchId, Chamber, ChamberId, Detector, Organization, OrganizationId, PageRequest, PageSize,
    SectionId, every_page,
};
use chamberlain_domain::ports::{
    AggregateQuery, LedgerQuery, PollRecord, ReadingQuery, ReadingScope, TallyQuery,
};

struct Sizes {
    write_rounds: Vec<(usize, usize)>,
    latest_chambers: usize,
    latest_slots: usize,
    writers: usize,
    /// Chambers of 8 detectors polled every second, and for how long.
    history_chambers: usize,
    history_secs: u64,
    /// Detectors of the wide chamber, polled every second for `wide_secs`.
    wide_detectors: usize,
    wide_secs: u64,
}

fn sizes(smoke: bool) -> Sizes {
    if smoke {
        Sizes {
            write_rounds: vec![(1, 20), (100, 5), (1_000, 2), (10_000, 1)],
            latest_chambers: 200,
            latest_slots: 5,
            writers: 2,
            history_chambers: 2,
            history_secs: 600,
            wide_detectors: 20,
            wide_secs: 60,
        }
    } else {
        Sizes {
            // (batch size in readings, batches per writer)
            write_rounds: vec![(1, 2_000), (100, 500), (1_000, 150), (10_000, 50)],
            latest_chambers: 10_000,
            latest_slots: 125,
            writers: 2,
            history_chambers: 4,
            history_secs: 86_400,
            wide_detectors: 200,
            wide_secs: 3_600,
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

/// After loading, before timing: the database as a user's is once autovacuum has seen the
/// data (statistics gathered, hint bits set), so the first timed query does not pay for the
/// load. SQLite needs nothing.
enum Settle {
    Postgres(sqlx::PgPool),
    Nothing,
}

impl Settle {
    async fn run(&self, name: &str) {
        if let Self::Postgres(pool) = self {
            let start = Instant::now();
            let mut conn = pool.acquire().await.expect("connection");
            for sql in [
                "SET statement_timeout = 0",
                "VACUUM (ANALYZE)",
                "RESET statement_timeout",
            ] {
                sqlx::query(sql)
                    .execute(&mut *conn)
                    .await
                    .expect("vacuum analyze");
            }
            println!(
                "{name:<8} settled: VACUUM (ANALYZE) in {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
}

async fn latest_query(name: &str, p: &StorePorts, s: &Sizes, settle: &Settle) {
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
    settle.run(name).await;
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

/// Runs `query` `runs` times and prints its median, min and max latency with what it returned.
async fn timed<F, Fut>(name: &str, what: &str, runs: usize, mut query: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = usize>,
{
    let mut times = Vec::with_capacity(runs);
    let mut returned = 0;
    for _ in 0..runs {
        let start = Instant::now();
        returned = query().await;
        times.push(start.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<8} query  {what:<44} median {:>9.2} ms (min {:.2}, max {:.2}; {returned} rows, {runs} runs)",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
    );
}

/// Loads `secs` one-second slots of every chamber in `fleet` (readings in `batch`), two writers
/// on alternate stretches of about 10,000 readings a write.
async fn load_history(p: &StorePorts, fleet: &Arc<Fleet>, secs: u64, batch: BatchId) -> u64 {
    let per_write = (10_000 / fleet.chambers.iter().map(|(_, d)| d.len()).sum::<usize>()).max(1);
    let mut loaders = Vec::new();
    for w in 0..2u64 {
        let (p, fleet) = (p.clone(), fleet.clone());
        loaders.push(tokio::spawn(async move {
            let mut loaded = 0u64;
            let mut first = w * per_write as u64;
            while first < secs {
                let mut polls = Vec::new();
                for k in first..(first + per_write as u64).min(secs) {
                    let slot = T0 + Duration::from_secs(k);
                    for (i, (c, ds)) in fleet.chambers.iter().enumerate() {
                        let mut poll =
                            fixtures::poll_record(c, ds, slot, (k % 97 + i as u64) as f64, None);
                        for r in &mut poll.readings {
                            r.batch_id = Some(batch);
                        }
                        polls.push(poll);
                    }
                }
                loaded += p
                    .readings
                    .store_polls(&polls)
                    .await
                    .expect("load")
                    .readings_new;
                first += 2 * per_write as u64;
            }
            loaded
        }));
    }
    let mut loaded = 0;
    for l in loaders {
        loaded += l.await.expect("loader");
    }
    loaded
}

async fn fleet_in(
    p: &StorePorts,
    org: &Organization,
    section: SectionId,
    n: usize,
    detectors: usize,
) -> Fleet {
    let mut chambers = Vec::with_capacity(n);
    for i in 0..n {
        let c = fixtures::chamber(org.id, section, &format!("h{i:05}"), 1);
        let ds: Vec<Detector> = (0..detectors)
            .map(|d| fixtures::detector(&c, &format!("d{d:03}")))
            .collect();
        p.chambers.create(&c, &ds).await.expect("chamber");
        chambers.push((c, ds));
    }
    Fleet {
        org: org.id,
        chambers,
    }
}

/// Every query the API offers, timed over a day of 1 s polls.
#[allow(clippy::too_many_lines, reason = "one timed query after another")]
async fn query_latencies(name: &str, p: &StorePorts, s: &Sizes, settle: &Settle) {
    let setup = Instant::now();
    let org = fixtures::organization(&format!("history {}", uuid::Uuid::new_v4()));
    p.organizations.create(&org).await.expect("organization");
    let section = fixtures::section(org.id, "history room");
    p.sections.create(&section).await.expect("section");
    let batch = fixtures::batch(org.id, section.id, "history batch", T0);
    p.batches.start(&batch).await.expect("batch");
    let history = Arc::new(fleet_in(p, &org, section.id, s.history_chambers, DETECTORS).await);
    let wide_section = fixtures::section(org.id, "wide room");
    p.sections.create(&wide_section).await.expect("section");
    let wide = Arc::new(fleet_in(p, &org, wide_section.id, 1, s.wide_detectors).await);
    let loaded = load_history(p, &history, s.history_secs, batch.id).await
        + load_history(p, &wide, s.wide_secs, batch.id).await;
    println!(
        "{name:<8} query setup: {} chambers × {DETECTORS} detectors × {} s and 1 × {} detectors × {} s at 1 s = {loaded} readings in {:.1} s",
        s.history_chambers,
        s.history_secs,
        s.wide_detectors,
        s.wide_secs,
        setup.elapsed().as_secs_f64()
    );
    settle.run(name).await;
    let org = org.id;
    let (chamber, detectors) = &history.chambers[0];
    let (wide_chamber, wide_detectors) = &wide.chambers[0];
    let hour = T0 + Duration::from_secs(s.history_secs.min(3_600));
    let day = T0 + Duration::from_secs(s.history_secs);
    let max = PageSize::new(MAX_PAGE_SIZE).expect("page size");
    let range = |scope, to: Timestamp| ReadingQuery {
        scope,
        from: T0,
        to,
        page: PageRequest::default(),
    };
    let first_page = |q: ReadingQuery| async move {
        p.readings.query(org, &q).await.expect("query").items.len()
    };
    let every = |q: ReadingQuery| async move {
        every_page(max, |page| {
            let q = ReadingQuery { page, ..q.clone() };
            async move { p.readings.query(org, &q).await }
        })
        .await
        .expect("query")
        .len()
    };
    let detector = ReadingScope::Detector(detectors[3].id);
    let chamber_scope = ReadingScope::Chamber(chamber.id);
    timed(name, "detector, 1 h, first page", 15, || {
        first_page(range(detector, hour))
    })
    .await;
    timed(name, "detector, 1 h, every page", 7, || {
        every(range(detector, hour))
    })
    .await;
    timed(name, "detector, 24 h, every page", 3, || {
        every(range(detector, day))
    })
    .await;
    timed(name, "chamber, 1 h, first page", 15, || {
        first_page(range(chamber_scope, hour))
    })
    .await;
    timed(name, "chamber, 1 h, every page", 7, || {
        every(range(chamber_scope, hour))
    })
    .await;
    timed(name, "batch, 1 h, first page", 15, || {
        first_page(range(ReadingScope::Batch(batch.id), hour))
    })
    .await;
    timed(name, "chamber, 24 h, every page (an export)", 3, || {
        every(range(chamber_scope, day))
    })
    .await;
    let wide_detector = ReadingScope::Detector(wide_detectors[137 % wide_detectors.len()].id);
    let wide_end = T0 + Duration::from_secs(s.wide_secs);
    timed(name, "wide chamber's detector, 1 h, every page", 7, || {
        every(range(wide_detector, wide_end))
    })
    .await;
    timed(name, "wide chamber, 1 h, first page", 15, || {
        first_page(range(ReadingScope::Chamber(wide_chamber.id), wide_end))
    })
    .await;
    let aggregate = |scope, bucket_millis| async move {
        let q = AggregateQuery {
            scope,
            from: T0,
            to: day,
            bucket_millis,
        };
        p.readings
            .aggregate(org, &q)
            .await
            .expect("aggregate")
            .len()
    };
    timed(
        name,
        "aggregate, detector, 24 h in 1 min buckets",
        7,
        || aggregate(detector, 60_000),
    )
    .await;
    timed(name, "aggregate, chamber, 24 h in 1 h buckets", 7, || {
        aggregate(chamber_scope, 3_600_000)
    })
    .await;
    let ledger = |failures_only, to| async move {
        let q = LedgerQuery {
            chamber_id: chamber.id,
            from: T0,
            to,
            failures_only,
            page: PageRequest::default(),
        };
        p.ledger.list(org, &q).await.expect("ledger").items.len()
    };
    timed(name, "ledger, 24 h, first page", 15, || ledger(false, day)).await;
    timed(name, "ledger, 24 h, failures only (none)", 7, || {
        ledger(true, day)
    })
    .await;
    timed(name, "tally, 24 h in 1 h buckets", 7, || async {
        let q = TallyQuery {
            chamber_id: chamber.id,
            from: T0,
            to: day,
            bucket_millis: 3_600_000,
        };
        p.ledger.tally(org, &q).await.expect("tally").len()
    })
    .await;
    let ids: Vec<ChamberId> = history.chambers.iter().map(|(c, _)| c.id).collect();
    timed(name, "latest of the history chambers", 15, || async {
        p.readings.latest(org, &ids).await.expect("latest").len()
    })
    .await;
}

async fn postgres(s: &Sizes) {
    let (store, guard) = chamberlain_postgres::testing::fresh_store().await;
    let settings = sqlx_settings(&store).await;
    println!("postgres settings: {settings}");
    let settle = Settle::Postgres(store.pool().clone());
    let ports = StorePorts {
        keepalive: Some(guard),
        ..StorePorts::from_adapter(Arc::new(store))
    };
    write_rates("postgres", &ports, s).await;
    query_latencies("postgres", &ports, s, &settle).await;
    latest_query("postgres", &ports, s, &settle).await;
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
    query_latencies("sqlite", &ports, s, &Settle::Nothing).await;
    latest_query("sqlite", &ports, s, &Settle::Nothing).await;
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
