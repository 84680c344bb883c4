//! A throwaway database per test: created on the server named by
//! `CHAMBERLAIN_TEST_DATABASE_URL` (which `scripts/test` sets), migrated, and dropped when the
//! guard goes away.

use std::sync::Arc;

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{PgConfig, PgStore};

/// The server the tests use; panics with a clear message when unset (run `scripts/test`).
pub fn server_url() -> String {
    std::env::var("CHAMBERLAIN_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!("CHAMBERLAIN_TEST_DATABASE_URL is not set: run the tests with scripts/test, which starts or finds PostgreSQL")
    })
}

/// Drops its database when dropped (from a helper thread, since Drop cannot await).
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    admin_url: String,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.admin_url.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await.ok()?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("warning: test database {} was not dropped", self.name);
        }
    }
}

/// A fresh, migrated database and a store on it, with a small pool.
///
/// # Panics
/// If the server cannot be reached: a test cannot run without it.
pub async fn fresh_store() -> (PgStore, Arc<TestDatabase>) {
    let url = server_url();
    let name = format!("chamberlain_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&url)
        .await
        .expect("connect to the test server");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let guard = Arc::new(TestDatabase {
        name: name.clone(),
        admin_url: url.clone(),
    });
    let config = PgConfig::from_url(&url)
        .expect("CHAMBERLAIN_TEST_DATABASE_URL is a postgres URL")
        .with_database(&name)
        .with_max_connections(4)
        .expect("valid pool size");
    let store = PgStore::connect(&config)
        .await
        .expect("connect and migrate the test database");
    (store, guard)
}
