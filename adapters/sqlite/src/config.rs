//! [`SqliteConfig`]: where the database lives and how the pool is sized, validated before any
//! I/O.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Reader connections of a file database unless configured (the writer has its own: SQLite has
/// one writer at a time).
pub const DEFAULT_POOL_SIZE: u32 = 4;
/// The most reader connections.
pub const MAX_POOL_SIZE: u32 = 64;
/// How long a statement waits for a lock held by another connection (or process) before the
/// call fails as unavailable.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest busy timeout accepted.
pub const MAX_BUSY_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteLocation {
    /// A database file, created (with its tables) if missing. Its directory must exist.
    File(PathBuf),
    /// A private in-memory database, gone with the store: for tests and demos.
    Memory,
}

/// A refused setting: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SqliteConfigError {
    /// `url`, `pool_size` or `busy_timeout_ms`.
    pub field: &'static str,
    pub reason: String,
}

impl SqliteConfigError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

/// How to open the SQLite store. Built by [`SqliteConfig::from_url`], [`SqliteConfig::file`] or
/// [`SqliteConfig::memory`]; every value it holds is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    location: SqliteLocation,
    pool_size: u32,
    busy_timeout: Duration,
}

impl SqliteConfig {
    /// A database file with the default pool size and busy timeout.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self {
            location: SqliteLocation::File(path.as_ref().to_path_buf()),
            pool_size: DEFAULT_POOL_SIZE,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }

    /// A private in-memory database. One connection serves reads and writes: connections to a
    /// shared in-memory database lock whole tables (shared-cache mode), so a separate reader
    /// could deadlock with the writer.
    pub fn memory() -> Self {
        Self {
            location: SqliteLocation::Memory,
            pool_size: 1,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }

    /// Parses a database URL:
    ///
    /// - `sqlite::memory:` (or `:memory:`): a private in-memory database;
    /// - `sqlite://PATH`, `sqlite:PATH` or a bare `PATH`: a database file (`sqlite:///abs/path`
    ///   for an absolute path), created if missing;
    ///
    /// optionally followed by `?pool_size=N` (reader connections, 1 to 64; 4 by default, and
    /// only 1 for memory)
    /// and `&busy_timeout_ms=N` (0 to 600,000; 5,000 by default).
    ///
    /// # Errors
    /// [`SqliteConfigError`] naming `url`, `pool_size` or `busy_timeout_ms`.
    pub fn from_url(url: &str) -> Result<Self, SqliteConfigError> {
        let url = url.trim();
        let (location, query) = url.split_once('?').unwrap_or((url, ""));
        let location = location
            .strip_prefix("sqlite:")
            .map_or(location, |rest| rest.strip_prefix("//").unwrap_or(rest));
        let mut config = match location {
            "" => return Err(SqliteConfigError::new("url", "is required")),
            ":memory:" => Self::memory(),
            path => Self::file(path),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "pool_size" => {
                    let n = value.parse::<u32>().map_err(|_| {
                        SqliteConfigError::new(
                            "pool_size",
                            format!("must be a whole number (got {value:?})"),
                        )
                    })?;
                    config = config.with_pool_size(n)?;
                }
                "busy_timeout_ms" => {
                    let ms = value.parse::<u64>().map_err(|_| {
                        SqliteConfigError::new(
                            "busy_timeout_ms",
                            format!("must be a whole number of milliseconds (got {value:?})"),
                        )
                    })?;
                    config = config.with_busy_timeout(Duration::from_millis(ms))?;
                }
                other => {
                    return Err(SqliteConfigError::new(
                        "url",
                        format!(
                            "unknown parameter {other:?} (expected pool_size or busy_timeout_ms)"
                        ),
                    ));
                }
            }
        }
        Ok(config)
    }

    /// # Errors
    /// `pool_size`: outside 1 to 64, or above 1 for an in-memory database.
    pub fn with_pool_size(mut self, n: u32) -> Result<Self, SqliteConfigError> {
        if n == 0 || n > MAX_POOL_SIZE {
            return Err(SqliteConfigError::new(
                "pool_size",
                format!("must be between 1 and {MAX_POOL_SIZE} (got {n})"),
            ));
        }
        if self.location == SqliteLocation::Memory && n != 1 {
            return Err(SqliteConfigError::new(
                "pool_size",
                format!("an in-memory database has exactly 1 connection (got {n})"),
            ));
        }
        self.pool_size = n;
        Ok(self)
    }

    /// # Errors
    /// `busy_timeout_ms`: above 10 minutes, or not a whole number of milliseconds.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Result<Self, SqliteConfigError> {
        if timeout > MAX_BUSY_TIMEOUT || !timeout.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(SqliteConfigError::new(
                "busy_timeout_ms",
                format!(
                    "must be a whole number of milliseconds from 0 to {} (got {timeout:?})",
                    MAX_BUSY_TIMEOUT.as_millis()
                ),
            ));
        }
        self.busy_timeout = timeout;
        Ok(self)
    }

    pub fn location(&self) -> &SqliteLocation {
        &self.location
    }

    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_or_memory() {
        for (url, path) in [
            ("sqlite://data/chamberlain.db", "data/chamberlain.db"),
            ("sqlite:data/chamberlain.db", "data/chamberlain.db"),
            (
                "sqlite:///var/lib/chamberlain.db",
                "/var/lib/chamberlain.db",
            ),
            ("data/chamberlain.db", "data/chamberlain.db"),
        ] {
            let config = SqliteConfig::from_url(url).unwrap();
            assert_eq!(
                config.location(),
                &SqliteLocation::File(path.into()),
                "{url}"
            );
            assert_eq!(config.pool_size(), DEFAULT_POOL_SIZE);
            assert_eq!(config.busy_timeout(), DEFAULT_BUSY_TIMEOUT);
        }
        for url in ["sqlite::memory:", ":memory:", " sqlite::memory: "] {
            let config = SqliteConfig::from_url(url).unwrap();
            assert_eq!(config.location(), &SqliteLocation::Memory, "{url}");
            assert_eq!(config.pool_size(), 1);
        }
    }

    #[test]
    fn parameters_are_validated_and_named() {
        let config =
            SqliteConfig::from_url("sqlite://x.db?pool_size=8&busy_timeout_ms=250").unwrap();
        assert_eq!(config.pool_size(), 8);
        assert_eq!(config.busy_timeout(), Duration::from_millis(250));
        for (url, field) in [
            ("", "url"),
            ("sqlite:", "url"),
            ("sqlite://x.db?mode=ro", "url"),
            ("sqlite://x.db?pool_size=0", "pool_size"),
            ("sqlite://x.db?pool_size=65", "pool_size"),
            ("sqlite://x.db?pool_size=four", "pool_size"),
            ("sqlite::memory:?pool_size=2", "pool_size"),
            ("sqlite://x.db?busy_timeout_ms=-1", "busy_timeout_ms"),
            ("sqlite://x.db?busy_timeout_ms=600001", "busy_timeout_ms"),
        ] {
            let err = SqliteConfig::from_url(url).unwrap_err();
            assert_eq!(err.field, field, "{url}: {err}");
        }
        assert_eq!(
            SqliteConfig::from_url("sqlite://x.db?pool_size=0")
                .unwrap_err()
                .to_string(),
            "pool_size: must be between 1 and 64 (got 0)"
        );
    }
}
