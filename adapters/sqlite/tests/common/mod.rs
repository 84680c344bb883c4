//! Helpers shared by the SQLite adapter's integration tests.

use std::path::Path;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// A new database file at `path` with the schema as it was before migration `version` (the
/// migrations before it applied), on one connection with foreign keys on: to seed rows as an
/// earlier release wrote them, before the store migrates the file.
pub async fn database_before(path: &Path, version: i64) -> SqlitePool {
    let all = sqlx::migrate!("../../migrations/sqlite");
    let before = sqlx::migrate::Migrator {
        migrations: all
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate!("../../migrations/sqlite")
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .foreign_keys(true),
        )
        .await
        .expect("open the database file");
    before.run(&pool).await.expect("the earlier migrations");
    pool
}
