//! `chamberlain migrate`, `scheduler`, `worker` and `alerter`: the distributed mode's poll
//! pipeline, one process per role.

use std::time::Duration;

use chamberlain_domain::transmit::RetryPolicy;
use chamberlain_telemetry::Telemetry;
use chamberlain_worker::WorkerConfig;

use crate::distributed::{Distributed, WORKER_CHAMBER_CACHE};
use crate::settings::{
    DatabaseArgs, EgressArgs, HttpArgs, RedisArgs, WorkerLimitsArgs, bad_setting,
};
use crate::storage::OpenStore;
use crate::telemetry::MetricsArgs;
use crate::{chamber_client, shutdown::holder_name, shutdown::shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Polls moved per transaction when converting readings of an earlier layout: each chunk is
    /// one chamber's polls, all or nothing, so an interrupted conversion goes on where it
    /// stopped.
    #[arg(long, env = "CHAMBERLAIN_MIGRATE_CHUNK_POLLS", default_value_t = chamberlain_postgres::DEFAULT_CHUNK_POLLS, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    chunk_polls: u32,
}

/// Converts the readings of the previous layout, printing progress every few seconds; stops
/// between chunks on SIGINT or SIGTERM.
#[allow(clippy::print_stdout, reason = "the command reports its progress")]
async fn convert(store: &OpenStore, chunk_polls: u32) -> Result<(), anyhow::Error> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !store.has_legacy_layout().await? {
        return Ok(());
    }
    println!(
        "converting readings to one row per poll, {chunk_polls} polls a transaction; \
         stop at any time and run chamberlain migrate again to go on"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let signal = tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            stop.store(true, Ordering::SeqCst);
        }
    });
    let started = std::time::Instant::now();
    let mut shown = started;
    let done = store
        .convert_legacy(
            chunk_polls,
            |p| {
                if shown.elapsed() >= Duration::from_secs(5) {
                    shown = std::time::Instant::now();
                    let share = if p.polls_estimated > 0 {
                        format!(
                            " of ~{} ({:.0} %)",
                            p.polls_estimated,
                            100.0 * p.polls_moved as f64 / p.polls_estimated as f64
                        )
                    } else {
                        String::new()
                    };
                    println!(
                        "converted {} polls{share}, {} readings; {:.0} polls/s",
                        p.polls_moved,
                        p.readings_moved,
                        p.polls_moved as f64 / started.elapsed().as_secs_f64()
                    );
                }
            },
            || stop.load(Ordering::SeqCst),
        )
        .await;
    signal.abort();
    let done = done?;
    if done.finished {
        println!(
            "converted {} polls ({} readings) in {:.1} s; {} already in the new layout kept as they were; \
             {} readings without a ledger entry dropped",
            done.polls_moved,
            done.readings_moved,
            started.elapsed().as_secs_f64(),
            done.polls_already_there,
            done.orphan_readings
        );
        Ok(())
    } else {
        anyhow::bail!(
            "stopped after converting {} polls; run chamberlain migrate again to go on",
            done.polls_moved
        )
    }
}

#[allow(clippy::print_stdout, reason = "the command reports what it did")]
pub async fn migrate(args: MigrateArgs) -> Result<(), anyhow::Error> {
    let storage = args.database.storage()?;
    let store = storage.open().await?;
    convert(&store, args.chunk_polls).await?;
    match &store {
        OpenStore::Postgres(pg) => {
            let days = chamberlain_postgres::partitions::existing_days(pg.pool()).await?;
            let database = match &storage {
                crate::Storage::Postgres(config) => config.database().unwrap_or("(default)"),
                crate::Storage::Sqlite(_) => "(default)",
            };
            println!(
                "postgres database {database} migrated; {} daily partitions of polls",
                days.len()
            );
        }
        OpenStore::Sqlite(_) => {
            let shown = match &storage {
                crate::Storage::Sqlite(config) => match config.location() {
                    chamberlain_sqlite::SqliteLocation::File(path) => path.display().to_string(),
                    chamberlain_sqlite::SqliteLocation::Memory => ":memory:".to_owned(),
                },
                crate::Storage::Postgres(_) => String::new(),
            };
            println!("sqlite database {shown} migrated");
        }
    }
    store.close().await;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Seconds between full reloads of the active chambers.
    #[arg(long, env = "CHAMBERLAIN_SCHEDULER_RESYNC_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    resync_secs: u64,
    /// Milliseconds before its slot a poll is enqueued; workers hold it until the slot, so
    /// requests go out on time whatever the queue's latency. 0 enqueues polls when due.
    #[arg(long, env = "CHAMBERLAIN_SCHEDULER_ENQUEUE_AHEAD_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    enqueue_ahead_ms: u64,
    #[command(flatten)]
    metrics: MetricsArgs,
}

pub async fn scheduler(args: SchedulerArgs, telemetry: &Telemetry) -> Result<(), anyhow::Error> {
    let redis = args.redis.config()?;
    let storage = args.database.storage()?;
    args.metrics.serve(telemetry, 9461).await?;
    let repositories = storage.open().await?.repositories();
    let mut config = chamberlain_scheduler::SchedulerConfig::new(holder_name("scheduler"));
    config.resync_every = Duration::from_secs(args.resync_secs);
    config.enqueue_ahead = Duration::from_millis(args.enqueue_ahead_ms);
    config.trace_polls = telemetry.tracing_exported();
    let scheduler = Distributed::new(redis)
        .scheduler(&repositories, config)
        .await?;
    tracing::info!(holder = %scheduler.config.holder, "scheduler starting");
    scheduler.run(shutdown_signal()).await;
    tracing::info!("scheduler stopped");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    limits: WorkerLimitsArgs,
    #[command(flatten)]
    egress: EgressArgs,
    /// Seconds a leased job stays invisible to other workers; a worker that dies holding jobs
    /// has them taken over this long after it leased them.
    #[arg(long, env = "CHAMBERLAIN_WORKER_VISIBILITY_SECS", default_value_t = WorkerConfig::default().visibility.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    visibility_secs: u64,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

pub async fn worker(args: WorkerArgs, telemetry: &Telemetry) -> Result<(), anyhow::Error> {
    let redis = args.redis.config()?;
    let storage = args.database.storage()?;
    let http = args.http.apply(chamber_client(&args.egress, &[])?)?;
    args.metrics.serve(telemetry, 9462).await?;
    let repositories = storage.open().await?.repositories();
    let config = args.limits.apply(WorkerConfig {
        visibility: Duration::from_secs(args.visibility_secs),
        trace_polls: telemetry.tracing_exported(),
        ..WorkerConfig::default()
    });
    tracing::info!(concurrency = config.concurrency, "worker starting");
    let worker = Distributed::new(redis)
        .worker(&repositories, &http, config, WORKER_CHAMBER_CACHE)
        .await?;
    let report = worker.run(shutdown_signal()).await;
    tracing::info!(?report, "worker stopped");
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct AlerterArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    egress: EgressArgs,
    /// Seconds between reloads of alert rules and transmitters (API changes take effect
    /// within this).
    #[arg(long, env = "CHAMBERLAIN_ALERTER_RELOAD_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    reload_secs: u64,
    /// Tries per delivery before it is dead-lettered.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    attempts: u32,
    /// Milliseconds before the second try; each further wait doubles, up to the cap.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_BACKOFF_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    backoff_ms: u64,
    /// The longest wait between tries, in milliseconds.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_MAX_BACKOFF_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    max_backoff_ms: u64,
    #[command(flatten)]
    metrics: MetricsArgs,
    /// Deliveries queued per transmitter before new ones are dropped.
    #[arg(long, env = "CHAMBERLAIN_TRANSMIT_QUEUE", default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    queue: usize,
}

pub async fn alerter(args: AlerterArgs, telemetry: &Telemetry) -> Result<(), anyhow::Error> {
    let redis = args.redis.config()?;
    let storage = args.database.storage()?;
    let retry = RetryPolicy::new(
        args.attempts,
        Duration::from_millis(args.backoff_ms),
        Duration::from_millis(args.max_backoff_ms),
    )
    .map_err(|e| bad_setting("--backoff-ms", "CHAMBERLAIN_TRANSMIT_BACKOFF_MS", e.rule))?;
    let http = chamber_client(&args.egress, &[])?;
    args.metrics.serve(telemetry, 9465).await?;
    let repositories = storage.open().await?.repositories();
    let mut config = chamberlain_alerter::AlerterConfig::new(holder_name("alerter"));
    config.reload_every = Duration::from_secs(args.reload_secs);
    config.forward = chamberlain_alerter::ForwardSettings {
        retry,
        lane_capacity: args.queue,
    };
    let alerter = Distributed::new(redis)
        .alerter(&repositories, &http, config)
        .await?;
    tracing::info!(holder = %alerter.config.holder, "alerter starting");
    alerter.run(shutdown_signal()).await;
    tracing::info!("alerter stopped");
    Ok(())
}
