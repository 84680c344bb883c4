#![doc = include_str!("../README.md")]
#![allow(clippy::print_stdout, reason = "a command-line tool reports on stdout")]

use std::path::PathBuf;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the database migrations and create the upcoming partitions (idempotent).
    Migrate(DatabaseArgs),
    /// Serve a simulated chamber fleet on one address and report lateness, misses and
    /// duplicates of the polls it receives.
    Simulate(chamberlain_simulator::SimulateArgs),
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
    let cli = Cli::parse();
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
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate(args) => migrate(args).await,
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
