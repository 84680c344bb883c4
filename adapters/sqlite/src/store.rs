//! [`SqliteStore`]: every repository port over one SQLite database.
//!
//! SQLite has one writer at a time, so the store has one writer connection: a pool of one that
//! is never recycled. Writes queue for it fairly (up to the busy timeout), and its page cache
//! stays warm, since in WAL mode a connection drops its whole cache whenever another connection
//! has written. Each write runs in a `BEGIN IMMEDIATE` transaction, which takes the write lock up
//! front (another process is waited for, up to the busy timeout); it checks parents inside that
//! transaction, then writes, and on any error rolls back before the next write's turn.
//!
//! Reads go to a pool of reader connections; those that take more than one statement run in a
//! (deferred) read transaction: in WAL mode one snapshot, never waiting for the writer.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chamberlain_domain::error::Rule;
use chamberlain_domain::model::{ChamberId, OrganizationId, Page, PageSize, SectionId};
use chamberlain_domain::ports::StoreError;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use crate::config::{SqliteConfig, SqliteLocation};
use crate::errors::{db, refused};

// The column lists and row decoders first: their macros are used by the modules after them.
#[macro_use]
mod rows;
mod alerts;
mod checkpoint;
mod configuration;
mod conversion;
mod health;
mod layouts;
mod readings;
mod recent;
mod tenancy;

pub use conversion::DEFAULT_CHUNK_POLLS;

/// The schema, embedded at build time: `migrations/sqlite` at the workspace root.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a call waits for a pooled connection, at least.
const MIN_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The writer's page cache, in KiB (readers keep SQLite's default of 2 MiB). A batch of polls
/// touches the last pages of each bucket of `polls_recent` and `chamber_latest`; a move reads
/// one bucket's newest leaves of `polls` once. 8 MiB holds that; when every poll went to its
/// chamber's own leaf of `polls`, the writer needed 32 MiB (5,000 chambers kept ~20 MiB hot). Pages are allocated only as they are
/// used, and the cache fills up as the file grows: it is part of the process's memory at steady
/// state (8 against 32 MiB: 149.8 against 159.4 MiB peak at 5,000 chambers over 30 s, one
/// pair; over 90 s the process still peaked at 158.7 MiB with 8 MiB, BENCHMARKS.md).
const WRITER_CACHE_KIB: u32 = 8 * 1024;

/// Pages of WAL after which a commit copies the log back into the database file (SQLite's
/// default is 1,000). Fewer, larger checkpoints copy a page that several batches rewrote once
/// instead of once per batch.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// The page size of a new database file, in bytes (SQLite's default; an existing file keeps its
/// own). When every poll dirtied its chamber's newest leaf of `polls` (before `polls_recent`),
/// written whole to the WAL at each commit and again at the checkpoint, 8 KiB pages doubled
/// those bytes and the cache a fleet keeps hot
/// (5,000 chambers in the embedded default: 129 → 116 µs per poll and 211 → 173 MiB peak over
/// 90 s, one run each, with the cache halved too). A row longer than about a quarter of a page spills into
/// overflow pages, read whole to take one detector's value: chambers of more than ~100
/// detectors pay that on detector reads (one detector of a 200-detector chamber: 10 → 12 ms).
const PAGE_SIZE: u32 = 4096;

/// Rows removed per retention step (each step is its own short write transaction).
const PRUNE_STEP: i64 = 10_000;

type SqlQuery<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// Every repository port of Chamberlain over one SQLite database (a file, or memory for tests).
pub struct SqliteStore {
    /// The one writer connection.
    writer: SqlitePool,
    /// Reader connections (for an in-memory database, the writer's pool: see
    /// [`SqliteConfig::memory`]).
    readers: SqlitePool,
    /// For an in-memory database: a connection outside the pools, so that the database lives as
    /// long as the store even when a pool closes its connection.
    _memory_anchor: Option<std::sync::Mutex<SqliteConnection>>,
    /// Whether the previous layout's tables are still there (until the conversion ends).
    legacy: std::sync::atomic::AtomicBool,
    /// Detector layout versions read so far (a version never changes).
    layouts: layouts::Known,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("writer", &self.writer)
            .field("readers", &self.readers)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database, with WAL journaling, `synchronous = NORMAL`,
    /// foreign keys on and the configured busy timeout on every connection, and brings its
    /// schema up to date.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be opened or migrated.
    pub async fn connect(config: &SqliteConfig) -> Result<Self, StoreError> {
        let acquire_timeout = config.busy_timeout().max(MIN_ACQUIRE_TIMEOUT);
        let readers = SqlitePoolOptions::new()
            .max_connections(config.pool_size())
            .acquire_timeout(acquire_timeout)
            // A local file does not go stale like a network connection: no ping per acquire.
            .test_before_acquire(false);
        // Never recycled, so its page cache stays warm.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None);
        let store = match config.location() {
            SqliteLocation::File(path) => {
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .page_size(PAGE_SIZE)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(config.busy_timeout())
                    .optimize_on_close(true, None);
                // Switching a new file to WAL takes an exclusive lock that the busy timeout does
                // not wait for: do it on one connection before the pools open several at once.
                let first = options.connect().await.map_err(|e| opening(path, e))?;
                first.close().await.map_err(|e| opening(path, e))?;
                let writer_options = options
                    .clone()
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
                    // A multi-row insert keeps a statement journal of every page it changes (to
                    // undo only itself on a constraint failure): in memory, not a temporary file
                    // written and read back per batch.
                    .pragma("temp_store", "MEMORY");
                Self {
                    writer: writer
                        .connect_with(writer_options)
                        .await
                        .map_err(|e| opening(path, e))?,
                    readers: readers
                        .connect_with(options)
                        .await
                        .map_err(|e| opening(path, e))?,
                    _memory_anchor: None,
                    legacy: std::sync::atomic::AtomicBool::new(false),
                    layouts: layouts::Known::default(),
                }
            }
            SqliteLocation::Memory => {
                // A unique name per store, in shared-cache mode so that the pool and the anchor
                // see one database. One connection serves reads and writes: shared-cache
                // connections lock whole tables, so a separate reader could deadlock with the
                // writer.
                let options = SqliteConnectOptions::from_str("sqlite::memory:")
                    .map_err(db)?
                    .foreign_keys(true)
                    .busy_timeout(config.busy_timeout());
                let anchor = options.connect().await.map_err(db)?;
                let pool = writer.connect_with(options).await.map_err(db)?;
                Self {
                    writer: pool.clone(),
                    readers: pool,
                    _memory_anchor: Some(std::sync::Mutex::new(anchor)),
                    legacy: std::sync::atomic::AtomicBool::new(false),
                    layouts: layouts::Known::default(),
                }
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations the database does not have yet (none when it is up to date).
    ///
    /// # Errors
    /// `Unavailable` when a migration fails or the database holds a migration this build does
    /// not know.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::unavailable(format!("migration failed: {e}")))?;
        let legacy = !self.drop_empty_legacy_layout().await?;
        self.legacy
            .store(legacy, std::sync::atomic::Ordering::SeqCst);
        if legacy {
            tracing::warn!(
                "readings stored in the previous layout are not returned by queries until \
                 they are converted (`chamberlain migrate`, or the embedded mode in the background)"
            );
        }
        Ok(())
    }

    /// The pool of reader connections, for operations outside the ports (backups,
    /// diagnostics). A write through it waits for the store's writer like another process
    /// would.
    pub fn pool(&self) -> &SqlitePool {
        &self.readers
    }

    /// Closes every connection (the last one checkpoints the WAL into the database file);
    /// later calls fail as unavailable.
    pub async fn close(&self) {
        self.writer.close().await;
        self.readers.close().await;
    }

    /// How a live write treats the previous layout: consulted while it is there.
    fn legacy(&self) -> readings::Legacy {
        if self.legacy.load(std::sync::atomic::Ordering::SeqCst) {
            readings::Legacy::Consult
        } else {
            readings::Legacy::Ignore
        }
    }

    /// Waits for the writer connection and opens a `BEGIN IMMEDIATE` transaction on it.
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db)?;
        Ok(WriteTx { tx })
    }

    async fn begin_read(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.readers.begin().await.map_err(db)
    }
}

fn opening(path: &std::path::Path, e: sqlx::Error) -> StoreError {
    StoreError::unavailable(format!("cannot open {}: {}", path.display(), db(e)))
}

/// A write transaction on the writer connection. Dropped without [`finish`](WriteTx::finish)
/// (a cancelled call), it rolls back.
struct WriteTx {
    tx: Transaction<'static, Sqlite>,
}

impl WriteTx {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    /// Rolls back (a write to be done again, or a failed one).
    async fn rollback(self) {
        if let Err(e) = self.tx.rollback().await {
            tracing::warn!(error = %e, "sqlite rollback failed");
        }
    }

    /// Commits after a successful body, rolls back after a failed one.
    async fn finish<T>(self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.tx.commit().await.map_err(db)?;
                Ok(value)
            }
            Err(e) => {
                self.rollback().await;
                Err(e)
            }
        }
    }
}

/// Ends a read transaction (reads leave nothing to commit; this just returns the connection).
async fn end_read<T>(
    tx: Transaction<'static, Sqlite>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    let value = result?;
    tx.commit().await.map_err(db)?;
    Ok(value)
}

// ------------------------------------------------------------------------------------------
// Writing values: checked again at this edge where SQLite would store something the domain
// types forbid (a NaN becomes NULL in SQLite; durations must fit an i64).
// ------------------------------------------------------------------------------------------

fn millis_of(field: &'static str, d: Duration) -> Result<i64, StoreError> {
    i64::try_from(d.as_millis()).map_err(|_| {
        refused(
            field,
            Rule::OutOfRange {
                min: "0ms".into(),
                max: format!("{}ms", i64::MAX),
                actual: format!("{d:?}"),
            },
        )
    })
}

fn finite(field: &'static str, v: f64) -> Result<f64, StoreError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(refused(field, Rule::NotFinite))
    }
}

fn count_of(field: &'static str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| {
        refused(
            field,
            Rule::OutOfRange {
                min: "0".into(),
                max: i64::MAX.to_string(),
                actual: n.to_string(),
            },
        )
    })
}

/// The bound of a keyset page by id: strictly after `after`, or from the start (every id, a
/// 16-byte blob, sorts after the empty blob).
fn after_id(after: Option<&Uuid>) -> Vec<u8> {
    after.map(|id| id.as_bytes().to_vec()).unwrap_or_default()
}

/// Rows to fetch for a page: one more than it holds, to tell whether a next page exists.
fn limit(size: PageSize) -> i64 {
    i64::from(size.get()) + 1
}

/// Ids as a JSON array of hex strings, for `IN (SELECT unhex(value) FROM json_each(?))`: one
/// statement for any number of ids.
fn id_list<'a>(ids: impl IntoIterator<Item = &'a Uuid>) -> String {
    let mut json = String::from("[");
    for (i, id) in ids.into_iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push('"');
        json.push_str(id.simple().encode_lower(&mut Uuid::encode_buffer()));
        json.push('"');
    }
    json.push(']');
    json
}

// ------------------------------------------------------------------------------------------
// Shared by the repositories.
// ------------------------------------------------------------------------------------------

async fn exists(conn: &mut SqliteConnection, query: SqlQuery<'_>) -> Result<bool, StoreError> {
    Ok(query
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?
        .is_some())
}

fn section_in(org: OrganizationId, id: SectionId) -> SqlQuery<'static> {
    sqlx::query("SELECT 1 FROM sections WHERE id = ?1 AND organization_id = ?2")
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
}

fn chamber_in(org: OrganizationId, id: ChamberId) -> SqlQuery<'static> {
    sqlx::query("SELECT 1 FROM chambers WHERE id = ?1 AND organization_id = ?2")
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
}

fn missing_parent(entity: &'static str, parent: &'static str) -> StoreError {
    StoreError::MissingParent { entity, parent }
}

fn not_found(entity: &'static str) -> StoreError {
    StoreError::NotFound { entity }
}

/// `Ok` when a keyed update or delete touched a row, `NotFound { entity }` otherwise.
fn touched(
    result: sqlx::sqlite::SqliteQueryResult,
    entity: &'static str,
) -> Result<(), StoreError> {
    if result.rows_affected() == 0 {
        Err(not_found(entity))
    } else {
        Ok(())
    }
}

impl SqliteStore {
    /// One page of a list, read on a reader connection: `query` selects up to `limit(size)`
    /// rows (one more than a page, to tell whether another follows) after the cursor, in key
    /// order; they are decoded and cut into the page and the next cursor.
    async fn read_page<T, K>(
        &self,
        query: SqlQuery<'_>,
        decode: fn(&SqliteRow) -> Result<T, StoreError>,
        size: PageSize,
        key: impl Fn(&T) -> K,
    ) -> Result<Page<T, K>, StoreError> {
        let rows = query.fetch_all(&self.readers).await.map_err(db)?;
        Ok(Page::from_sorted(
            rows::decode_all(&rows, decode)?,
            size,
            key,
        ))
    }
}
