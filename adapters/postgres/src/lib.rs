#![doc = include_str!("../README.md")]

mod config;
mod conversion;
mod errors;
pub mod partitions;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use chamberlain_domain::Timestamp;
use chamberlain_domain::ports::StoreError;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub use chamberlain_domain::ports::ConversionProgress;
pub use config::{DEFAULT_MAX_CONNECTIONS, PgConfig};
pub use conversion::DEFAULT_CHUNK_POLLS;
use errors::store_error;

/// The schema, embedded: `migrations/postgres/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// Every repository port on one PostgreSQL connection pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    partitions_ahead_days: u32,
    /// Whether the previous layout's tables may still be there: live writes then look their
    /// polls up in its ledger (cleared once they are gone).
    legacy: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The detector layouts read so far (a write then reads only each chamber's version).
    layouts: std::sync::Arc<store::layouts::LayoutCache>,
}

impl PgStore {
    /// Connects (the pool opens lazily-checked connections with the statement timeout set on
    /// each), runs the migrations if configured, and creates the partitions for the days ahead.
    ///
    /// # Errors
    /// `Unavailable` if the server cannot be reached or a migration fails.
    pub async fn connect(config: &PgConfig) -> Result<Self, StoreError> {
        let timeout_ms = config.statement_timeout.as_millis().to_string();
        let options = config
            .connect
            .clone()
            .application_name("chamberlain")
            .options([("statement_timeout", timeout_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        let store = Self {
            pool,
            partitions_ahead_days: config.partitions_ahead_days,
            legacy: std::sync::Arc::default(),
            layouts: std::sync::Arc::default(),
        };
        if config.migrate_on_connect {
            store.migrate().await?;
        }
        let legacy = store.has_legacy_layout().await?;
        store
            .legacy
            .store(legacy, std::sync::atomic::Ordering::SeqCst);
        Ok(store)
    }

    /// Applies pending migrations (idempotent), then makes sure today's and the coming days'
    /// partitions exist.
    ///
    /// # Errors
    /// `Unavailable` naming the failed migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::unavailable(format!("migration failed: {e}")))?;
        if self.has_legacy_layout().await? {
            tracing::warn!(
                "readings stored in the previous layout are not returned by queries until \
                 `chamberlain migrate` has converted them"
            );
        }
        self.maintain(now()).await
    }

    /// Periodic upkeep: partitions from yesterday to `partitions_ahead_days` ahead of `now`.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn maintain(&self, now: Timestamp) -> Result<(), StoreError> {
        partitions::ensure_ahead(&self.pool, now, self.partitions_ahead_days).await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    Timestamp::from_unix_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}
