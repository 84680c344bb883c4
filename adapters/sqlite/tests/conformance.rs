//! The repository conformance suite against SQLite: every case on a fresh database file (in its
//! own temporary directory, removed afterwards), and again on a fresh in-memory database.

use std::path::PathBuf;
use std::sync::Arc;

use chamberlain_domain::conformance::fixtures::StorePorts;
use chamberlain_sqlite::{SqliteConfig, SqliteStore};

/// A temporary directory holding one test's database (and its `-wal` and `-shm` files),
/// removed when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("chamberlain-sqlite-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn file_store() -> StorePorts {
    let dir = TempDir::new();
    let config = SqliteConfig::file(dir.0.join("chamberlain.db"));
    let store = SqliteStore::connect(&config)
        .await
        .expect("open the database");
    let mut ports = StorePorts::from_adapter(Arc::new(store));
    // Dropped after the ports (and so after the store).
    ports.keepalive = Some(Arc::new(dir));
    ports
}

async fn memory_store() -> StorePorts {
    let store = SqliteStore::connect(&SqliteConfig::memory())
        .await
        .expect("open the database");
    StorePorts::from_adapter(Arc::new(store))
}

mod file {
    use super::*;
    chamberlain_domain::store_conformance_tests!(file_store());
}

mod memory {
    use super::*;
    chamberlain_domain::store_conformance_tests!(memory_store());
}

/// The schedule checkpoint on a fresh database file, with an in-memory lease for the tokens.
async fn coordination() -> chamberlain_domain::conformance::coordination::CoordinationFixture {
    let dir = TempDir::new();
    let store = SqliteStore::connect(&SqliteConfig::file(dir.0.join("chamberlain.db")))
        .await
        .expect("open the database");
    let clock = Arc::new(chamberlain_memory::SystemClock);
    chamberlain_domain::conformance::coordination::CoordinationFixture {
        lease: Arc::new(chamberlain_memory::MemoryLeaderLease::new(clock)),
        checkpoint: Arc::new(store),
        advance: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        keepalive: Some(Arc::new(dir)),
    }
}

mod checkpoint {
    use super::*;
    chamberlain_domain::coordination_conformance_tests!(coordination());
}

#[tokio::test]
async fn the_checkpoint_and_its_token_survive_reopening() {
    use chamberlain_domain::Timestamp;
    use chamberlain_domain::ports::ScheduleCheckpoint;
    let dir = TempDir::new();
    let path = dir.0.join("chamberlain.db");
    let store = SqliteStore::connect(&SqliteConfig::file(path.clone()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.checkpoint_token().await.unwrap(), 0);
    assert!(
        store
            .save(3, Timestamp::from_unix_millis(1_000))
            .await
            .unwrap()
    );
    drop(store);
    let store = SqliteStore::connect(&SqliteConfig::file(path))
        .await
        .unwrap();
    assert_eq!(
        store.load().await.unwrap(),
        Some(Timestamp::from_unix_millis(1_000))
    );
    assert_eq!(store.checkpoint_token().await.unwrap(), 3);
}
