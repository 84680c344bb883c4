//! Settings of the PostgreSQL adapter, validated before any connection is made.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chamberlain_domain::error::{Rule, ValidationError};
use sqlx::postgres::PgConnectOptions;

/// How to reach PostgreSQL and how to use it.
/// Connections each process's pool opens at most, by default: a scheduler, a gateway, an auth
/// service, an alerter and three workers take 112 together, more than PostgreSQL's default
/// `max_connections` of 100, so size it (`CHAMBERLAIN_DATABASE_MAX_CONNECTIONS`) to fit.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

#[derive(Clone)]
pub struct PgConfig {
    /// Parsed connection options (the URL may hold a password: never printed).
    pub(crate) connect: PgConnectOptions,
    /// Pool size.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before `Unavailable`.
    pub acquire_timeout: Duration,
    /// Server-side limit of any one statement; past it the call fails with `Unavailable`.
    pub statement_timeout: Duration,
    /// Daily partitions of readings and the ledger are kept created this many days ahead.
    pub partitions_ahead_days: u32,
    /// Run the embedded migrations when connecting.
    pub migrate_on_connect: bool,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("host", &self.connect.get_host())
            .field("port", &self.connect.get_port())
            .field("database", &self.connect.get_database())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("partitions_ahead_days", &self.partitions_ahead_days)
            .finish_non_exhaustive()
    }
}

impl PgConfig {
    /// Defaults for a `postgres://` URL: 16 connections, 5 s to acquire one, 30 s per
    /// statement, partitions a week ahead, migrations on connect.
    ///
    /// # Errors
    /// `database_url`: [`Rule::Format`] when the URL cannot be parsed.
    pub fn from_url(url: &str) -> Result<Self, ValidationError> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ValidationError::new(
                "database_url",
                Rule::Format("must start with postgres:// or postgresql://".into()),
            ));
        }
        let connect = PgConnectOptions::from_str(url).map_err(|e| {
            ValidationError::new("database_url", Rule::Format(format!("invalid URL: {e}")))
        })?;
        Ok(Self {
            connect,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            partitions_ahead_days: 7,
            migrate_on_connect: true,
        })
    }

    /// The same server, another database (for per-test and benchmark databases).
    #[must_use]
    pub fn with_database(mut self, database: &str) -> Self {
        self.connect = self.connect.database(database);
        self
    }

    /// # Errors
    /// `database_max_connections`: [`Rule::OutOfRange`] outside 1..=1000.
    pub fn with_max_connections(mut self, n: u32) -> Result<Self, ValidationError> {
        if n == 0 || n > 1000 {
            return Err(ValidationError::new(
                "database_max_connections",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: "1000".into(),
                    actual: n.to_string(),
                },
            ));
        }
        self.max_connections = n;
        Ok(self)
    }

    /// # Errors
    /// `database_statement_timeout`: [`Rule::OutOfRange`] outside 100 ms..=1 h.
    pub fn with_statement_timeout(mut self, t: Duration) -> Result<Self, ValidationError> {
        if t < Duration::from_millis(100) || t > Duration::from_secs(3600) {
            return Err(ValidationError::new(
                "database_statement_timeout",
                Rule::OutOfRange {
                    min: "100ms".into(),
                    max: "1h".into(),
                    actual: format!("{t:?}"),
                },
            ));
        }
        self.statement_timeout = t;
        Ok(self)
    }

    pub fn database(&self) -> Option<&str> {
        self.connect.get_database()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_printed() {
        let c = PgConfig::from_url("postgres://app:s3cret@db.lab:5433/chamberlain").unwrap();
        let shown = format!("{c:?}");
        assert!(
            shown.contains("db.lab") && shown.contains("5433"),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            PgConfig::from_url("mysql://x").unwrap_err().field,
            "database_url"
        );
        assert!(c.clone().with_max_connections(0).is_err());
        assert!(c.with_statement_timeout(Duration::from_millis(10)).is_err());
    }
}
