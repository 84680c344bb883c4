//! Opening the store a URL names into one [`Repositories`] bundle.

use std::sync::Arc;

use chamberlain_domain::ports::{ConversionProgress, Repositories, StoreError};
use chamberlain_postgres::{PgConfig, PgStore};
use chamberlain_sqlite::{SqliteConfig, SqliteLocation, SqliteStore};

/// Which store a URL names, validated before anything connects.
#[derive(Debug, Clone)]
pub enum Storage {
    Postgres(Box<PgConfig>),
    Sqlite(SqliteConfig),
}

impl Storage {
    /// `postgres://…` or `postgresql://…` for PostgreSQL, `sqlite:…` for SQLite.
    ///
    /// # Errors
    /// Why the URL cannot be used (the caller names the setting).
    pub fn from_url(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            PgConfig::from_url(url)
                .map(|c| Self::Postgres(Box::new(c)))
                .map_err(|e| e.rule.to_string())
        } else if url.starts_with("sqlite:") {
            SqliteConfig::from_url(url)
                .map(Self::Sqlite)
                .map_err(|e| e.to_string())
        } else {
            Err("must start with postgres://, postgresql:// or sqlite:".into())
        }
    }

    /// Connects and brings the schema up to date (both stores migrate on connect; a SQLite
    /// file's directory is created first).
    ///
    /// # Errors
    /// When the directory cannot be created or the store cannot be opened or migrated.
    pub async fn open(&self) -> Result<OpenStore, anyhow::Error> {
        Ok(match self {
            Self::Postgres(config) => {
                OpenStore::Postgres(Arc::new(PgStore::connect(config).await?))
            }
            Self::Sqlite(config) => {
                if let SqliteLocation::File(path) = config.location()
                    && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!("cannot create the data directory {}: {e}", dir.display())
                    })?;
                }
                OpenStore::Sqlite(Arc::new(SqliteStore::connect(config).await?))
            }
        })
    }
}

/// An open store: the adapter itself, for the few operations outside the ports (partitions,
/// the embedded mode's checkpoint), and [`OpenStore::repositories`] for everything else.
#[derive(Debug, Clone)]
pub enum OpenStore {
    Postgres(Arc<PgStore>),
    Sqlite(Arc<SqliteStore>),
}

impl OpenStore {
    /// Every repository port, over this store.
    pub fn repositories(&self) -> Repositories {
        match self {
            Self::Postgres(store) => Repositories::of(store.clone()),
            Self::Sqlite(store) => Repositories::of(store.clone()),
        }
    }

    /// Closes the connections (SQLite checkpoints its WAL into the file).
    pub async fn close(&self) {
        match self {
            Self::Postgres(store) => store.close().await,
            Self::Sqlite(store) => store.close().await,
        }
    }

    /// Whether readings of the previous layout wait to be converted.
    ///
    /// # Errors
    /// When the store cannot be asked.
    pub async fn has_legacy_layout(&self) -> Result<bool, StoreError> {
        match self {
            Self::Postgres(store) => store.has_legacy_layout().await,
            Self::Sqlite(store) => store.has_legacy_layout().await,
        }
    }

    /// Converts readings of the previous layout in chunks of `chunk_polls` polls (see
    /// `PgStore::convert_legacy` and `SqliteStore::convert_legacy`).
    ///
    /// # Errors
    /// When the store fails; the chunk under way rolls back and a new run goes on from there.
    pub async fn convert_legacy(
        &self,
        chunk_polls: u32,
        progress: impl FnMut(&ConversionProgress) + Send,
        stop: impl Fn() -> bool + Send + Sync,
    ) -> Result<ConversionProgress, StoreError> {
        match self {
            Self::Postgres(store) => store.convert_legacy(chunk_polls, progress, stop).await,
            Self::Sqlite(store) => store.convert_legacy(chunk_polls, progress, stop).await,
        }
    }
}
