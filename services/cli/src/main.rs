#![doc = include_str!("../README.md")]
#![allow(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// glibc's allocator took a third of a worker's CPU at 10,000 chambers (perf: `unlink_chunk`,
/// `_int_malloc`, `malloc_consolidate`); mimalloc's per-thread free lists do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod alerter;
mod api;
mod client;
mod standalone;
mod telemetry;

use chamberlain_domain::ports::{
    BatchRepository, ChamberHealthRepository, ChamberRepository, Clock, PollLedgerRepository,
    PollQueue, ReadingRepository,
};
use chamberlain_domain::usecases::{PollHandler, PollSettings};
use std::process::ExitCode;

use chamberlain_domain::ValidationError;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chamberlain",
    version,
    about = "Polls sensor chambers on time and stores every reading exactly once"
)]
struct Cli {
    /// Log lines as readable text or as one JSON object each.
    #[arg(
        long,
        global = true,
        env = "CHAMBERLAIN_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    log_format: telemetry::LogFormatArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: SQLite in the data directory, the scheduler, a worker,
    /// the alerter and the gRPC API (the embedded default). `--simulate 20` also serves and
    /// registers 20 simulated chambers.
    Standalone(standalone::StandaloneArgs),
    /// Apply the database migrations and create the upcoming partitions (idempotent).
    Migrate(DatabaseArgs),
    /// Serve a simulated chamber fleet on one address and report lateness, misses and
    /// duplicates of the polls it receives.
    Simulate(chamberlain_simulator::SimulateArgs),
    /// Turn due slots into poll jobs (one leader among any number of replicas).
    Scheduler(SchedulerArgs),
    /// Poll chambers: lease jobs, fetch, store readings and the ledger, acknowledge.
    Worker(WorkerArgs),
    /// Evaluate alert rules and forward readings and alerts to transmitters (one leader among
    /// any number of replicas).
    Alerter(alerter::AlerterArgs),
    /// Serve the gRPC API (behind Envoy, which asks `chamberlain auth` about every call).
    Gateway(api::GatewayArgs),
    /// Serve Envoy's external authorization (ext_authz v3) for the API.
    Auth(api::AuthArgs),
    /// Create an organization with its first admin and print an admin API token once.
    Bootstrap(api::BootstrapArgs),
    /// Write the API's protobuf descriptor set, which Envoy's JSON transcoder loads.
    DescriptorSet(api::DescriptorSetArgs),
    /// Sections of your organization (against a running server: --server, --token).
    Sections {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::SectionsCommand,
    },
    /// Chambers: register, list, show, pause, resume, set the interval, delete.
    Chambers {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::ChambersCommand,
    },
    /// A chamber's detectors.
    Detectors {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::DetectorsCommand,
    },
    /// Batches: named runs in a section.
    Batches {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::BatchesCommand,
    },
    /// Readings: follow them live, query a range, export CSV or JSON.
    Readings {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::ReadingsCommand,
    },
    /// The poll ledger and coverage.
    Polls {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::PollsCommand,
    },
    /// API tokens.
    Tokens {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::TokensCommand,
    },
    /// Users of your organization.
    Users {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::UsersCommand,
    },
    /// Register the chambers of a CSV file, all of them or none, with a progress bar.
    Import {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(flatten)]
        args: client::ImportArgs,
    },
}

impl Command {
    /// The operator command and its connection settings, if this is one.
    fn operator(self) -> Result<(client::ClientArgs, client::Operator), Box<Self>> {
        use client::Operator as O;
        Ok(match self {
            Self::Sections { client, command } => (client, O::Sections(command)),
            Self::Chambers { client, command } => (client, O::Chambers(command)),
            Self::Detectors { client, command } => (client, O::Detectors(command)),
            Self::Batches { client, command } => (client, O::Batches(command)),
            Self::Readings { client, command } => (client, O::Readings(command)),
            Self::Polls { client, command } => (client, O::Polls(command)),
            Self::Tokens { client, command } => (client, O::Tokens(command)),
            Self::Users { client, command } => (client, O::Users(command)),
            Self::Import { client, args } => (client, O::Import(args)),
            other => return Err(Box::new(other)),
        })
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RedisArgs {
    /// The Redis holding the poll queue, the leader lease and the event bus.
    #[arg(
        long,
        env = "CHAMBERLAIN_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Prefix of every Redis key (a hash tag): installations sharing a Redis differ here.
    #[arg(
        long,
        env = "CHAMBERLAIN_REDIS_PREFIX",
        default_value = "{chamberlain}"
    )]
    redis_prefix: String,
}

impl RedisArgs {
    pub(crate) fn config(&self) -> Result<chamberlain_redis::RedisConfig, anyhow::Error> {
        chamberlain_redis::RedisConfig::from_url(&self.redis_url)
            .map_err(|e| bad_setting("--redis-url", "CHAMBERLAIN_REDIS_URL", &e))?
            .with_key_prefix(&self.redis_prefix)
            .map_err(|e| bad_setting("--redis-prefix", "CHAMBERLAIN_REDIS_PREFIX", &e))
    }
}

#[derive(Debug, clap::Args)]
struct SchedulerArgs {
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
    metrics: telemetry::MetricsArgs,
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Fetches in flight at once.
    #[arg(long, env = "CHAMBERLAIN_WORKER_CONCURRENCY", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Leased polls held until their slot comes (the scheduler enqueues them ahead), beyond
    /// those being fetched.
    #[arg(long, env = "CHAMBERLAIN_WORKER_MAX_WAITING", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    max_waiting: u64,
    /// CIDRs chambers may be polled in although private, loopback, link-local...
    /// (comma-separated, e.g. 10.20.0.0/16,127.0.0.2/32).
    #[arg(long, env = "CHAMBERLAIN_EGRESS_ALLOW", default_value = "")]
    egress_allow: String,
    /// Seconds a leased job stays invisible to other workers; a worker that dies holding jobs
    /// has them taken over this long after it leased them.
    #[arg(long, env = "CHAMBERLAIN_WORKER_VISIBILITY_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    visibility_secs: u64,
    /// Largest chamber response read, in bytes.
    #[arg(long, env = "CHAMBERLAIN_HTTP_BODY_CAP", default_value_t = 1024 * 1024)]
    body_cap: usize,
    /// Idle keep-alive connections kept per chamber host (0 turns keep-alive off).
    #[arg(long, env = "CHAMBERLAIN_HTTP_POOL_IDLE_PER_HOST", default_value_t = 512, value_parser = clap::value_parser!(u64).range(0..=1024))]
    http_pool_idle_per_host: u64,
    #[command(flatten)]
    metrics: telemetry::MetricsArgs,
}

/// The repositories a scheduler or worker uses, from whichever store the URL names.
struct Stores {
    chambers: Arc<dyn ChamberRepository>,
    batches: Arc<dyn BatchRepository>,
    readings: Arc<dyn ReadingRepository>,
    ledger: Arc<dyn PollLedgerRepository>,
    health: Arc<dyn ChamberHealthRepository>,
}

fn stores<S>(store: Arc<S>) -> Stores
where
    S: ChamberRepository
        + BatchRepository
        + ReadingRepository
        + PollLedgerRepository
        + ChamberHealthRepository
        + 'static,
{
    Stores {
        chambers: store.clone(),
        batches: store.clone(),
        readings: store.clone(),
        ledger: store.clone(),
        health: store,
    }
}

async fn open_stores(args: &DatabaseArgs) -> Result<Stores, anyhow::Error> {
    Ok(match args.database()? {
        Database::Postgres(config) => stores(Arc::new(
            chamberlain_postgres::PgStore::connect(&config).await?,
        )),
        Database::Sqlite(config) => stores(Arc::new(
            chamberlain_sqlite::SqliteStore::connect(&config).await?,
        )),
    })
}

fn holder_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{role}-{host}-{}", std::process::id())
}

async fn scheduler(
    args: SchedulerArgs,
    telemetry: &chamberlain_telemetry::Telemetry,
) -> Result<(), anyhow::Error> {
    let redis = args.redis.config()?;
    args.metrics.serve(telemetry, 9461).await?;
    let db = open_stores(&args.database).await?;
    let clock: Arc<dyn Clock> = Arc::new(chamberlain_memory::SystemClock);
    let mut config = chamberlain_scheduler::SchedulerConfig::new(holder_name("scheduler"));
    config.resync_every = Duration::from_secs(args.resync_secs);
    config.enqueue_ahead = Duration::from_millis(args.enqueue_ahead_ms);
    config.trace_polls = telemetry.tracing_exported();
    let scheduler = chamberlain_scheduler::Scheduler {
        chambers: db.chambers,
        ledger: db.ledger,
        health: db.health,
        queue: Arc::new(chamberlain_redis::RedisPollQueue::connect(&redis).await?),
        lease: Arc::new(chamberlain_redis::RedisLeaderLease::connect(&redis, clock.clone()).await?),
        checkpoint: Arc::new(chamberlain_redis::RedisScheduleCheckpoint::connect(&redis).await?),
        // Every gateway publishes its chamber writes here; the periodic resync (--resync-secs)
        // repairs anything missed.
        changes: Arc::new(chamberlain_redis::RedisChamberChanges::connect(&redis, 4096).await?),
        clock,
        config,
    };
    tracing::info!(holder = %scheduler.config.holder, "scheduler starting");
    scheduler.run(shutdown_signal()).await;
    tracing::info!("scheduler stopped");
    Ok(())
}

async fn worker(
    args: WorkerArgs,
    telemetry: &chamberlain_telemetry::Telemetry,
) -> Result<(), anyhow::Error> {
    let redis = args.redis.config()?;
    let mut http = chamberlain_http::HttpClientConfig::default()
        .with_body_cap(args.body_cap)
        .map_err(|e| bad_setting("--body-cap", "CHAMBERLAIN_HTTP_BODY_CAP", &e))?;
    http = http
        .with_pool_max_idle_per_host(usize::try_from(args.http_pool_idle_per_host).unwrap_or(0))
        .map_err(|e| {
            bad_setting(
                "--http-pool-idle-per-host",
                "CHAMBERLAIN_HTTP_POOL_IDLE_PER_HOST",
                &e,
            )
        })?;
    if !args.egress_allow.trim().is_empty() {
        http = http
            .with_egress_allow(&args.egress_allow)
            .map_err(|e| bad_setting("--egress-allow", "CHAMBERLAIN_EGRESS_ALLOW", &e))?;
    }
    args.metrics.serve(telemetry, 9462).await?;
    let db = open_stores(&args.database).await?;
    let queue: Arc<dyn PollQueue> =
        Arc::new(chamberlain_redis::RedisPollQueue::connect(&redis).await?);
    let cached = Arc::new(chamberlain_worker::CachedChambers::new(
        db.chambers,
        db.batches,
        Duration::from_secs(10),
    ));
    let handler = PollHandler {
        chambers: cached.clone(),
        batches: cached,
        readings: db.readings,
        health: db.health,
        queue: queue.clone(),
        client: Arc::new(chamberlain_http::HttpChamberClient::new(&http)),
        // Published for every gateway's live streams (nothing is sent while nobody watches).
        events: Arc::new(chamberlain_redis::RedisEventBus::connect(&redis, 1).await?),
        clock: Arc::new(chamberlain_memory::SystemClock),
        settings: PollSettings::default(),
    };
    let config = chamberlain_worker::WorkerConfig {
        concurrency: usize::try_from(args.concurrency)
            .unwrap_or(chamberlain_worker::DEFAULT_CONCURRENCY),
        max_waiting: usize::try_from(args.max_waiting)
            .unwrap_or(chamberlain_worker::DEFAULT_MAX_WAITING),
        visibility: Duration::from_secs(args.visibility_secs),
        trace_polls: telemetry.tracing_exported(),
        ..chamberlain_worker::WorkerConfig::default()
    };
    let _ = db.ledger;
    tracing::info!(concurrency = config.concurrency, "worker starting");
    let report = chamberlain_worker::Worker {
        handler,
        queue,
        config,
    }
    .run(shutdown_signal())
    .await;
    tracing::info!(?report, "worker stopped");
    Ok(())
}

#[derive(Debug, clap::Args)]
struct DatabaseArgs {
    /// postgres://user@host/db for the distributed mode, sqlite://path for the embedded one.
    #[arg(long, env = "CHAMBERLAIN_DATABASE_URL")]
    database_url: Option<String>,
    /// Where the embedded mode keeps its files (the SQLite database by default).
    #[arg(long, env = "CHAMBERLAIN_DATA_DIR", default_value = "chamberlain-data")]
    data_dir: PathBuf,
}

/// Which storage a URL names, validated before anything connects.
enum Database {
    Postgres(Box<chamberlain_postgres::PgConfig>),
    Sqlite(chamberlain_sqlite::SqliteConfig),
}

/// A setting that cannot be used; exits with code 2.
#[derive(Debug)]
struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Names the flag and the environment variable of a bad setting, and the rule it broke.
fn bad_setting(flag: &str, env: &str, e: &ValidationError) -> anyhow::Error {
    anyhow::Error::new(ConfigError(format!(
        "invalid setting {flag} ({env}): {}",
        e.rule
    )))
}

impl DatabaseArgs {
    fn database(&self) -> Result<Database, anyhow::Error> {
        let url = match &self.database_url {
            Some(url) => url.trim().to_owned(),
            None => format!(
                "sqlite://{}",
                self.data_dir.join("chamberlain.db").display()
            ),
        };
        let bad =
            |e: &ValidationError| bad_setting("--database-url", "CHAMBERLAIN_DATABASE_URL", e);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            chamberlain_postgres::PgConfig::from_url(&url)
                .map(|c| Database::Postgres(Box::new(c)))
                .map_err(|e| bad(&e))
        } else if url.starts_with("sqlite:") {
            chamberlain_sqlite::SqliteConfig::from_url(&url)
                .map(Database::Sqlite)
                .map_err(|e| {
                    anyhow::Error::new(ConfigError(format!(
                        "invalid setting --database-url (CHAMBERLAIN_DATABASE_URL): {e}"
                    )))
                })
        } else {
            Err(bad(&ValidationError::new(
                "database_url",
                chamberlain_domain::Rule::Format(
                    "must start with postgres://, postgresql:// or sqlite:".into(),
                ),
            )))
        }
    }
}

async fn migrate(args: DatabaseArgs) -> Result<(), anyhow::Error> {
    match args.database()? {
        Database::Postgres(config) => {
            let store = chamberlain_postgres::PgStore::connect(&config).await?;
            let days = chamberlain_postgres::partitions::existing_days(store.pool()).await?;
            println!(
                "postgres database {} migrated; {} daily partitions of readings and the ledger",
                config.database().unwrap_or("(default)"),
                days.len()
            );
            store.close().await;
        }
        Database::Sqlite(config) => {
            let shown = match config.location() {
                chamberlain_sqlite::SqliteLocation::File(path) => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir).map_err(|e| {
                            anyhow::anyhow!(
                                "cannot create the data directory {}: {e}",
                                dir.display()
                            )
                        })?;
                    }
                    path.display().to_string()
                }
                chamberlain_sqlite::SqliteLocation::Memory => ":memory:".to_owned(),
            };
            let store = chamberlain_sqlite::SqliteStore::connect(&config).await?;
            store.migrate().await?;
            println!("sqlite database {shown} migrated");
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chamberlain: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Operator commands are short-lived clients: no service telemetry, their own exit codes.
    cli.command = match cli.command.operator() {
        Ok((args, command)) => {
            return match runtime.block_on(client::run(&args, command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => {
                    eprintln!("chamberlain: {failure}");
                    ExitCode::from(failure.exit)
                }
            };
        }
        Err(other) => *other,
    };
    let result = runtime.block_on(async {
        let service = match &cli.command {
            Command::Standalone(_) => "chamberlain-standalone",
            Command::Scheduler(_) => "chamberlain-scheduler",
            Command::Worker(_) => "chamberlain-worker",
            Command::Alerter(_) => "chamberlain-alerter",
            Command::Gateway(_) => "chamberlain-gateway",
            Command::Auth(_) => "chamberlain-auth",
            _ => "chamberlain",
        };
        let telemetry = telemetry::init(service, cli.log_format)?;
        let result = run(cli.command, &telemetry).await;
        // Flushing may wait on an unreachable collector for a few seconds: off the runtime.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chamberlain: {e:#}");
            if e.is::<ConfigError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(
    command: Command,
    telemetry: &chamberlain_telemetry::Telemetry,
) -> Result<(), anyhow::Error> {
    {
        match command {
            Command::Standalone(args) => standalone::standalone(args, telemetry).await,
            Command::Migrate(args) => migrate(args).await,
            Command::Scheduler(args) => scheduler(args, telemetry).await,
            Command::Worker(args) => worker(args, telemetry).await,
            Command::Alerter(args) => alerter::alerter(args, telemetry).await,
            Command::Gateway(args) => api::gateway(args, telemetry).await,
            Command::Auth(args) => api::auth(args, telemetry).await,
            Command::Bootstrap(args) => api::bootstrap(args).await,
            Command::DescriptorSet(args) => api::descriptor_set(&args),
            operator @ (Command::Sections { .. }
            | Command::Chambers { .. }
            | Command::Detectors { .. }
            | Command::Batches { .. }
            | Command::Readings { .. }
            | Command::Polls { .. }
            | Command::Tokens { .. }
            | Command::Users { .. }
            | Command::Import { .. }) => {
                unreachable!("operator commands run before telemetry starts: {operator:?}")
            }
            Command::Simulate(args) => chamberlain_simulator::run_cli(args, shutdown_signal())
                .await
                .map(|_report| ())
                .map_err(|e| match e {
                    chamberlain_simulator::SimulatorError::Config(c) => {
                        anyhow::Error::new(ConfigError(c.to_string()))
                    }
                    other => anyhow::Error::new(other),
                }),
        }
    }
}
