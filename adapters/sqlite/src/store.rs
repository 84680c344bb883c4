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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use chamberlain_domain::error::Rule;
use chamberlain_domain::limits::MAX_READINGS_PER_WRITE;
use chamberlain_domain::model::{
    ApiToken, ApiTokenId, Batch, BatchId, Chamber, ChamberHealth, ChamberId, ChamberState,
    CorruptionReason, Description, Detector, DetectorId, DetectorKey, Email, EndpointUrl, Finite,
    HealthPolicy, HealthState, LedgerEntry, Name, Organization, OrganizationId, Page, PageRequest,
    PageSize, PlausibleRange, PollId, PollInterval, PollOutcome, PollTimeout, Reading,
    ReadingValue, ResponseFormat, Role, Section, SectionId, TokenHash, Unit, User, UserId,
};
use chamberlain_domain::ports::{
    Aggregate, AggregateQuery, ApiTokenRepository, BatchRepository, ChamberFilter,
    ChamberHealthRepository, ChamberRepository, ChamberWithDetectors, DetectorRepository,
    ItemError, LatestReadings, LedgerQuery, LedgerTally, OrganizationRepository,
    PollLedgerRepository, PollRecord, ReadingCursor, ReadingQuery, ReadingRepository, ReadingScope,
    SectionRepository, StoreError, TallyQuery, UserRepository, WriteReport,
};
use chamberlain_domain::time::Timestamp;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, Decode, Row, Sqlite, SqliteConnection, SqlitePool,
    Transaction, Type,
};
use uuid::Uuid;

use crate::config::{SqliteConfig, SqliteLocation};
use crate::errors::{Write, child, corrupt, db, refused, writing};

/// The schema, embedded at build time: `migrations/sqlite` at the workspace root.
mod alerts;
mod checkpoint;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a call waits for a pooled connection, at least.
const MIN_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The writer's page cache, in KiB (readers keep SQLite's default of 2 MiB). A batch of readings
/// touches the newest leaf page of every detector in the primary key and of every chamber in the
/// chamber index; this keeps them cached for some ten thousand detectors. Pages are allocated
/// only as they are used.
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Pages of WAL after which a commit copies the log back into the database file (SQLite's
/// default is 1,000). Fewer, larger checkpoints copy a page that several batches rewrote once
/// instead of once per batch.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

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
                    .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
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
            .map_err(|e| StoreError::unavailable(format!("migration failed: {e}")))
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

    /// Commits after a successful body, rolls back after a failed one.
    async fn finish<T>(self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                self.tx.commit().await.map_err(db)?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = self.tx.rollback().await {
                    tracing::warn!(error = %rollback, "sqlite rollback failed");
                }
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
// Reading rows back: every value goes through the domain's constructors; one that does not
// parse is a corruption naming its table and column.
// ------------------------------------------------------------------------------------------

struct Cols<'r> {
    row: &'r SqliteRow,
    table: &'static str,
}

impl<'r> Cols<'r> {
    fn new(row: &'r SqliteRow, table: &'static str) -> Self {
        Self { row, table }
    }

    fn get<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: Decode<'r, Sqlite> + Type<Sqlite>,
    {
        self.row
            .try_get(column)
            .map_err(|e| corrupt(self.table, column, e))
    }

    fn parse<T, V, E>(
        &self,
        column: &'static str,
        f: impl FnOnce(T) -> Result<V, E>,
    ) -> Result<V, StoreError>
    where
        T: Decode<'r, Sqlite> + Type<Sqlite>,
        E: fmt::Display,
    {
        f(self.get(column)?).map_err(|e| corrupt(self.table, column, e))
    }

    fn uuid(&self, column: &'static str) -> Result<Uuid, StoreError> {
        self.get(column)
    }

    fn at(&self, column: &'static str) -> Result<Timestamp, StoreError> {
        self.get::<i64>(column).map(Timestamp::from_unix_millis)
    }

    fn opt_at(&self, column: &'static str) -> Result<Option<Timestamp>, StoreError> {
        Ok(self
            .get::<Option<i64>>(column)?
            .map(Timestamp::from_unix_millis))
    }

    fn name(&self, column: &'static str) -> Result<Name, StoreError> {
        self.parse(column, Name::parse)
    }

    fn count<T>(&self, column: &'static str) -> Result<T, StoreError>
    where
        T: TryFrom<i64>,
        T::Error: fmt::Display,
    {
        self.parse(column, |v: i64| T::try_from(v))
    }

    fn millis(&self, column: &'static str) -> Result<Duration, StoreError> {
        self.count::<u64>(column).map(Duration::from_millis)
    }

    fn opt_millis(&self, column: &'static str) -> Result<Option<Duration>, StoreError> {
        self.parse(column, |v: Option<i64>| {
            v.map(|ms| u64::try_from(ms).map(Duration::from_millis))
                .transpose()
        })
    }
}

fn decode_all<T>(
    rows: &[SqliteRow],
    f: fn(&SqliteRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(f).collect()
}

macro_rules! organization_columns {
    () => {
        "id, name, created_at"
    };
}

fn organization(row: &SqliteRow) -> Result<Organization, StoreError> {
    let c = Cols::new(row, "organizations");
    Ok(Organization {
        id: OrganizationId::from_uuid(c.uuid("id")?),
        name: c.name("name")?,
        created_at: c.at("created_at")?,
    })
}

macro_rules! section_columns {
    () => {
        "id, organization_id, name, description, created_at"
    };
}

fn section(row: &SqliteRow) -> Result<Section, StoreError> {
    let c = Cols::new(row, "sections");
    Ok(Section {
        id: SectionId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        description: c.parse("description", Description::parse)?,
        created_at: c.at("created_at")?,
    })
}

macro_rules! chamber_columns {
    () => {
        "id, organization_id, section_id, name, endpoint, format, interval_ms, timeout_ms, \
         state, health_policy, schedule_since, created_at, updated_at"
    };
}

fn chamber(row: &SqliteRow) -> Result<Chamber, StoreError> {
    let c = Cols::new(row, "chambers");
    let interval = c.parse("interval_ms", |ms: i64| {
        u64::try_from(ms)
            .map_err(|e| e.to_string())
            .and_then(|ms| PollInterval::try_from(ms).map_err(|e| e.to_string()))
    })?;
    Ok(Chamber {
        id: ChamberId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        section_id: SectionId::from_uuid(c.uuid("section_id")?),
        name: c.name("name")?,
        endpoint: c.parse("endpoint", EndpointUrl::parse)?,
        format: c.parse("format", ResponseFormat::parse)?,
        interval,
        timeout: c.parse("timeout_ms", |ms: i64| {
            u64::try_from(ms).map_err(|e| e.to_string()).and_then(|ms| {
                PollTimeout::new(Duration::from_millis(ms), interval).map_err(|e| e.to_string())
            })
        })?,
        state: c.parse("state", chamber_state)?,
        health_policy: c.parse("health_policy", health_policy)?,
        schedule_since: c.at("schedule_since")?,
        created_at: c.at("created_at")?,
        updated_at: c.at("updated_at")?,
    })
}

const fn chamber_state_code(state: ChamberState) -> &'static str {
    match state {
        ChamberState::Active => "active",
        ChamberState::Paused => "paused",
    }
}

fn chamber_state(code: &str) -> Result<ChamberState, String> {
    match code {
        "active" => Ok(ChamberState::Active),
        "paused" => Ok(ChamberState::Paused),
        other => Err(format!("unknown state {other:?}")),
    }
}

/// The health policy as JSON: `{"degraded_after", "down_after_failures", "down_after_ms"}`.
fn health_policy_json(policy: &HealthPolicy) -> Result<String, StoreError> {
    Ok(serde_json::json!({
        "degraded_after": policy.degraded_after(),
        "down_after_failures": policy.down_after_failures(),
        "down_after_ms": millis_of("chamber.health_policy.down_after", policy.down_after())?,
    })
    .to_string())
}

fn health_policy(json: &str) -> Result<HealthPolicy, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let number = |key: &str| {
        value
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("{key} is missing or not a whole number"))
    };
    let count =
        |key: &str| number(key).and_then(|n| u32::try_from(n).map_err(|e| format!("{key}: {e}")));
    HealthPolicy::new(
        count("degraded_after")?,
        count("down_after_failures")?,
        Duration::from_millis(number("down_after_ms")?),
    )
    .map_err(|e| e.to_string())
}

macro_rules! detector_columns {
    () => {
        "id, organization_id, chamber_id, name, alias, unit, key_kind, key, range_min, range_max"
    };
}

fn detector(row: &SqliteRow) -> Result<Detector, StoreError> {
    let c = Cols::new(row, "detectors");
    let format = c.parse("key_kind", |kind: &str| match kind {
        "json_pointer" => Ok(ResponseFormat::Json),
        "metric" => Ok(ResponseFormat::Prometheus),
        other => Err(format!("unknown key kind {other:?}")),
    })?;
    Ok(Detector {
        id: DetectorId::from_uuid(c.uuid("id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        name: c.name("name")?,
        alias: c.parse("alias", |alias: Option<&str>| {
            alias.map(Name::parse).transpose()
        })?,
        unit: c.parse("unit", Unit::parse)?,
        key: c.parse("key", |key: &str| DetectorKey::parse(format, key))?,
        range: PlausibleRange::new(c.get("range_min")?, c.get("range_max")?)
            .map_err(|e| corrupt("detectors", "range_min", e))?,
    })
}

const fn key_kind(key: &DetectorKey) -> &'static str {
    match key {
        DetectorKey::JsonPointer(_) => "json_pointer",
        DetectorKey::Metric(_) => "metric",
    }
}

macro_rules! batch_columns {
    () => {
        "id, organization_id, section_id, name, description, started_at, ended_at"
    };
}

fn batch(row: &SqliteRow) -> Result<Batch, StoreError> {
    let c = Cols::new(row, "batches");
    Ok(Batch {
        id: BatchId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        section_id: SectionId::from_uuid(c.uuid("section_id")?),
        name: c.name("name")?,
        description: c.parse("description", Description::parse)?,
        started_at: c.at("started_at")?,
        ended_at: c.opt_at("ended_at")?,
    })
}

macro_rules! health_columns {
    () => {
        "chamber_id, state, consecutive_failures, failing_since, last_slot, changed_at, version"
    };
}

fn health(row: &SqliteRow) -> Result<ChamberHealth, StoreError> {
    let c = Cols::new(row, "chamber_health");
    Ok(ChamberHealth {
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        state: c.parse("state", |code: &str| match code {
            "unknown" => Ok(HealthState::Unknown),
            "up" => Ok(HealthState::Up),
            "degraded" => Ok(HealthState::Degraded),
            "down" => Ok(HealthState::Down),
            other => Err(format!("unknown state {other:?}")),
        })?,
        consecutive_failures: c.count("consecutive_failures")?,
        failing_since: c.opt_at("failing_since")?,
        last_slot: c.opt_at("last_slot")?,
        changed_at: c.at("changed_at")?,
        version: c.count("version")?,
    })
}

macro_rules! reading_columns {
    () => {
        "detector_id, chamber_id, slot, value, corruption, requested_at, received_at, batch_id"
    };
}

fn reading(row: &SqliteRow) -> Result<Reading, StoreError> {
    let c = Cols::new(row, "readings");
    let value = match (
        c.get::<Option<f64>>("value")?,
        c.get::<Option<&str>>("corruption")?,
    ) {
        (Some(v), None) => {
            ReadingValue::Measured(Finite::new(v).map_err(|e| corrupt("readings", "value", e))?)
        }
        (None, Some(code)) => {
            ReadingValue::Corrupted(CorruptionReason::from_code(code).ok_or_else(|| {
                corrupt("readings", "corruption", format!("unknown code {code:?}"))
            })?)
        }
        _ => {
            return Err(corrupt(
                "readings",
                "value",
                "must hold either a value or a corruption code",
            ));
        }
    };
    Ok(Reading {
        detector_id: DetectorId::from_uuid(c.uuid("detector_id")?),
        chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
        slot: c.at("slot")?,
        value,
        requested_at: c.at("requested_at")?,
        received_at: c.at("received_at")?,
        batch_id: c.get::<Option<Uuid>>("batch_id")?.map(BatchId::from_uuid),
    })
}

macro_rules! ledger_columns {
    () => {
        "chamber_id, slot, outcome, detail, attempt, requested_at, recorded_at, latency_ms, \
         lateness_ms"
    };
}

fn ledger_entry(row: &SqliteRow) -> Result<LedgerEntry, StoreError> {
    let c = Cols::new(row, "poll_ledger");
    let outcome: PollOutcome = c.parse("detail", |json: &str| serde_json::from_str(json))?;
    let code: &str = c.get("outcome")?;
    if code != outcome.code() {
        return Err(corrupt(
            "poll_ledger",
            "outcome",
            format!("{code:?} does not match the detail ({})", outcome.code()),
        ));
    }
    Ok(LedgerEntry {
        poll: PollId {
            chamber_id: ChamberId::from_uuid(c.uuid("chamber_id")?),
            slot: c.at("slot")?,
        },
        outcome,
        attempt: c.count("attempt")?,
        requested_at: c.opt_at("requested_at")?,
        recorded_at: c.at("recorded_at")?,
        latency: c.opt_millis("latency_ms")?,
        lateness: c.millis("lateness_ms")?,
    })
}

macro_rules! user_columns {
    () => {
        "id, organization_id, email, display_name, role, password_hash, disabled, created_at"
    };
}

fn user(row: &SqliteRow) -> Result<User, StoreError> {
    let c = Cols::new(row, "users");
    Ok(User {
        id: UserId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        email: c.parse("email", Email::parse)?,
        display_name: c.name("display_name")?,
        role: c.parse("role", Role::parse)?,
        password_hash: c.get("password_hash")?,
        disabled: c.parse("disabled", |v: i64| match v {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("{other} is not 0 or 1")),
        })?,
        created_at: c.at("created_at")?,
    })
}

macro_rules! token_columns {
    () => {
        "id, organization_id, user_id, name, token_hash, role_cap, created_at, expires_at, \
         last_used_at, revoked_at"
    };
}

fn token(row: &SqliteRow) -> Result<ApiToken, StoreError> {
    let c = Cols::new(row, "api_tokens");
    Ok(ApiToken {
        id: ApiTokenId::from_uuid(c.uuid("id")?),
        organization_id: OrganizationId::from_uuid(c.uuid("organization_id")?),
        user_id: UserId::from_uuid(c.uuid("user_id")?),
        name: c.name("name")?,
        hash: c.parse("token_hash", |bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes)
                .map(TokenHash)
                .map_err(|_| format!("{} bytes instead of 32", bytes.len()))
        })?,
        role_cap: c.parse("role_cap", Role::parse)?,
        created_at: c.at("created_at")?,
        expires_at: c.opt_at("expires_at")?,
        last_used_at: c.opt_at("last_used_at")?,
        revoked_at: c.opt_at("revoked_at")?,
    })
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
// Multi-row inserts for the hot path: a batch is cut greedily into chunks of CHUNK_SIZES rows,
// so that the writer prepares (and caches) at most three statements per table and a batch
// of 10,000 readings is about forty statements.
// ------------------------------------------------------------------------------------------

const CHUNK_SIZES: [usize; 3] = [256, 16, 1];

struct MultiInsert {
    sql: [Arc<str>; 3],
}

impl MultiInsert {
    fn new(head: &str, columns: usize, tail: &str) -> Self {
        let row = format!("({})", vec!["?"; columns].join(", "));
        Self {
            sql: CHUNK_SIZES
                .map(|n| format!("{head} {}{tail}", vec![row.as_str(); n].join(", ")).into()),
        }
    }

    /// The statement for the next chunk of `remaining` rows, and its size.
    fn next(&self, remaining: usize) -> (SqlQuery<'static>, usize) {
        let (i, n) = CHUNK_SIZES
            .iter()
            .enumerate()
            .find(|(_, n)| **n <= remaining)
            .map_or((CHUNK_SIZES.len() - 1, 1), |(i, n)| (i, *n));
        (sqlx::query(AssertSqlSafe(Arc::clone(&self.sql[i]))), n)
    }
}

static INSERT_READINGS: LazyLock<MultiInsert> = LazyLock::new(|| {
    MultiInsert::new(
        concat!("INSERT INTO readings (", reading_columns!(), ") VALUES"),
        8,
        " ON CONFLICT DO NOTHING",
    )
});

static INSERT_LEDGER: LazyLock<MultiInsert> = LazyLock::new(|| {
    MultiInsert::new(
        concat!("INSERT INTO poll_ledger (", ledger_columns!(), ") VALUES"),
        9,
        " ON CONFLICT DO NOTHING RETURNING chamber_id, slot",
    )
});

/// A ledger entry encoded for its row.
struct LedgerRow {
    chamber_id: Uuid,
    slot: i64,
    outcome: &'static str,
    detail: String,
    attempt: i64,
    requested_at: Option<i64>,
    recorded_at: i64,
    latency_ms: Option<i64>,
    lateness_ms: i64,
}

impl LedgerRow {
    fn new(e: &LedgerEntry) -> Result<Self, StoreError> {
        Ok(Self {
            chamber_id: *e.poll.chamber_id.as_uuid(),
            slot: e.poll.slot.as_unix_millis(),
            outcome: e.outcome.code(),
            detail: serde_json::to_string(&e.outcome).map_err(|err| {
                refused(
                    "ledger.outcome",
                    Rule::Format(format!("not serialisable: {err}")),
                )
            })?,
            attempt: i64::from(e.attempt),
            requested_at: e.requested_at.map(Timestamp::as_unix_millis),
            recorded_at: e.recorded_at.as_unix_millis(),
            latency_ms: e
                .latency
                .map(|d| millis_of("ledger.latency", d))
                .transpose()?,
            lateness_ms: millis_of("ledger.lateness", e.lateness)?,
        })
    }
}

/// Inserts the entries not stored yet; returns the keys of those inserted.
async fn insert_ledger(
    conn: &mut SqliteConnection,
    rows: &[LedgerRow],
) -> Result<HashSet<(Uuid, i64)>, StoreError> {
    let mut inserted = HashSet::with_capacity(rows.len());
    let mut rest = rows;
    while !rest.is_empty() {
        let (mut query, n) = INSERT_LEDGER.next(rest.len());
        let (chunk, tail) = rest.split_at(n);
        for r in chunk {
            query = query
                .bind(r.chamber_id)
                .bind(r.slot)
                .bind(r.outcome)
                .bind(r.detail.as_str())
                .bind(r.attempt)
                .bind(r.requested_at)
                .bind(r.recorded_at)
                .bind(r.latency_ms)
                .bind(r.lateness_ms);
        }
        let returned = query
            .fetch_all(&mut *conn)
            .await
            .map_err(writing(child("poll", "chamber")))?;
        for row in &returned {
            let c = Cols::new(row, "poll_ledger");
            inserted.insert((c.uuid("chamber_id")?, c.get::<i64>("slot")?));
        }
        rest = tail;
    }
    Ok(inserted)
}

/// Inserts the readings not stored yet; returns how many were inserted.
async fn insert_readings(
    conn: &mut SqliteConnection,
    readings: &[&Reading],
) -> Result<u64, StoreError> {
    let mut inserted = 0;
    let mut rest = readings;
    while !rest.is_empty() {
        let (mut query, n) = INSERT_READINGS.next(rest.len());
        let (chunk, tail) = rest.split_at(n);
        for r in chunk {
            let (value, corruption) = match r.value {
                ReadingValue::Measured(v) => (Some(finite("reading.value", v.get())?), None),
                ReadingValue::Corrupted(reason) => (None, Some(reason.code())),
            };
            query = query
                .bind(*r.detector_id.as_uuid())
                .bind(*r.chamber_id.as_uuid())
                .bind(r.slot.as_unix_millis())
                .bind(value)
                .bind(corruption)
                .bind(r.requested_at.as_unix_millis())
                .bind(r.received_at.as_unix_millis())
                .bind(r.batch_id.map(|b| *b.as_uuid()));
        }
        inserted += query
            .execute(&mut *conn)
            .await
            .map_err(writing(child("reading", "detector")))?
            .rows_affected();
        rest = tail;
    }
    Ok(inserted)
}

/// The detectors of each of `chambers` that exists (a chamber without detectors maps to an
/// empty set; an unknown chamber is absent).
async fn detectors_of(
    conn: &mut SqliteConnection,
    chambers: &HashSet<ChamberId>,
) -> Result<HashMap<ChamberId, HashSet<DetectorId>>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.id AS chamber_id, d.id AS detector_id FROM chambers AS c \
         LEFT JOIN detectors AS d ON d.chamber_id = c.id \
         WHERE c.id IN (SELECT unhex(value) FROM json_each(?1))",
    )
    .bind(id_list(chambers.iter().map(ChamberId::as_uuid)))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut known: HashMap<ChamberId, HashSet<DetectorId>> = HashMap::new();
    for row in &rows {
        let c = Cols::new(row, "detectors");
        let detectors = known
            .entry(ChamberId::from_uuid(c.uuid("chamber_id")?))
            .or_default();
        if let Some(id) = c.get::<Option<Uuid>>("detector_id")? {
            detectors.insert(DetectorId::from_uuid(id));
        }
    }
    Ok(known)
}

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

// ------------------------------------------------------------------------------------------
// The ports.
// ------------------------------------------------------------------------------------------

#[async_trait]
impl OrganizationRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db OrganizationRepository::create", db.system = "sqlite", db.operation = "OrganizationRepository::create"))]
    async fn create(&self, org: &Organization) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = sqlx::query(concat!(
            "INSERT INTO organizations (",
            organization_columns!(),
            ") VALUES (?1, ?2, ?3)"
        ))
        .bind(*org.id.as_uuid())
        .bind(org.name.as_str())
        .bind(org.created_at.as_unix_millis())
        .execute(w.conn())
        .await
        .map(drop)
        .map_err(writing(Write::Plain));
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db OrganizationRepository::get", db.system = "sqlite", db.operation = "OrganizationRepository::get"))]
    async fn get(&self, id: OrganizationId) -> Result<Organization, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            organization_columns!(),
            " FROM organizations WHERE id = ?1"
        ))
        .bind(*id.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(organization)
            .unwrap_or(Err(not_found("organization")))
    }
}

#[async_trait]
impl SectionRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::create", db.system = "sqlite", db.operation = "SectionRepository::create"))]
    async fn create(&self, section: &Section) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_section(w.conn(), section).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::get", db.system = "sqlite", db.operation = "SectionRepository::get"))]
    async fn get(&self, org: OrganizationId, id: SectionId) -> Result<Section, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            section_columns!(),
            " FROM sections WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(section)
            .unwrap_or(Err(not_found("section")))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::list", db.system = "sqlite", db.operation = "SectionRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<SectionId>,
    ) -> Result<Page<Section, SectionId>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            section_columns!(),
            " FROM sections WHERE organization_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ))
        .bind(*org.as_uuid())
        .bind(after_id(page.after.as_ref().map(SectionId::as_uuid)))
        .bind(limit(page.size))
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(Page::from_sorted(
            decode_all(&rows, section)?,
            page.size,
            |s| s.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::update", db.system = "sqlite", db.operation = "SectionRepository::update"))]
    async fn update(&self, section: &Section) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE sections SET name = ?3, description = ?4 \
             WHERE id = ?1 AND organization_id = ?2",
        )
        .bind(*section.id.as_uuid())
        .bind(*section.organization_id.as_uuid())
        .bind(section.name.as_str())
        .bind(section.description.as_str())
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "section"));
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db SectionRepository::delete", db.system = "sqlite", db.operation = "SectionRepository::delete"))]
    async fn delete(&self, org: OrganizationId, id: SectionId) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = delete_section(w.conn(), org, id).await;
        w.finish(result).await
    }
}

async fn create_section(conn: &mut SqliteConnection, section: &Section) -> Result<(), StoreError> {
    let org_exists = exists(
        conn,
        sqlx::query("SELECT 1 FROM organizations WHERE id = ?1")
            .bind(*section.organization_id.as_uuid()),
    )
    .await?;
    if !org_exists {
        return Err(missing_parent("section", "organization"));
    }
    sqlx::query(concat!(
        "INSERT INTO sections (",
        section_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5)"
    ))
    .bind(*section.id.as_uuid())
    .bind(*section.organization_id.as_uuid())
    .bind(section.name.as_str())
    .bind(section.description.as_str())
    .bind(section.created_at.as_unix_millis())
    .execute(conn)
    .await
    .map_err(writing(child("section", "organization")))?;
    Ok(())
}

async fn delete_section(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    id: SectionId,
) -> Result<(), StoreError> {
    if !exists(conn, section_in(org, id)).await? {
        return Err(not_found("section"));
    }
    let dependents = [
        (
            "chambers",
            "SELECT 1 FROM chambers WHERE section_id = ?1 LIMIT 1",
        ),
        (
            "batches",
            "SELECT 1 FROM batches WHERE section_id = ?1 LIMIT 1",
        ),
    ];
    for (dependents, sql) in dependents {
        if exists(conn, sqlx::query(sql).bind(*id.as_uuid())).await? {
            return Err(StoreError::HasDependents {
                entity: "section",
                dependents,
            });
        }
    }
    sqlx::query("DELETE FROM sections WHERE id = ?1")
        .bind(*id.as_uuid())
        .execute(conn)
        .await
        .map_err(writing(Write::Delete {
            entity: "section",
            dependents: "chambers",
        }))?;
    Ok(())
}

fn bind_chamber<'q>(query: SqlQuery<'q>, c: &Chamber) -> Result<SqlQuery<'q>, StoreError> {
    Ok(query
        .bind(*c.id.as_uuid())
        .bind(*c.organization_id.as_uuid())
        .bind(*c.section_id.as_uuid())
        .bind(c.name.as_str())
        .bind(c.endpoint.as_str())
        .bind(c.format.as_str())
        .bind(millis_of("chamber.interval", c.interval.as_duration())?)
        .bind(millis_of("chamber.timeout", c.timeout.as_duration())?)
        .bind(chamber_state_code(c.state))
        .bind(health_policy_json(&c.health_policy)?)
        .bind(c.schedule_since.as_unix_millis())
        .bind(c.updated_at.as_unix_millis()))
}

fn bind_detector<'q>(query: SqlQuery<'q>, d: &Detector) -> Result<SqlQuery<'q>, StoreError> {
    Ok(query
        .bind(*d.id.as_uuid())
        .bind(*d.organization_id.as_uuid())
        .bind(d.name.as_str())
        .bind(d.alias.as_ref().map(Name::as_str))
        .bind(d.unit.as_str())
        .bind(key_kind(&d.key))
        .bind(d.key.to_string())
        .bind(
            d.range
                .min()
                .map(|v| finite("detector.range.min", v))
                .transpose()?,
        )
        .bind(
            d.range
                .max()
                .map(|v| finite("detector.range.max", v))
                .transpose()?,
        ))
}

async fn create_chamber(
    conn: &mut SqliteConnection,
    chamber: &Chamber,
    detectors: &[Detector],
) -> Result<(), StoreError> {
    if !exists(
        conn,
        section_in(chamber.organization_id, chamber.section_id),
    )
    .await?
    {
        return Err(missing_parent("chamber", "section"));
    }
    // Columns in bind_chamber's order, then created_at.
    let insert = sqlx::query(
        "INSERT INTO chambers (id, organization_id, section_id, name, endpoint, format, \
         interval_ms, timeout_ms, state, health_policy, schedule_since, updated_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    );
    bind_chamber(insert, chamber)?
        .bind(chamber.created_at.as_unix_millis())
        .execute(&mut *conn)
        .await
        .map_err(writing(child("chamber", "section")))?;
    for d in detectors {
        if d.chamber_id != chamber.id || d.organization_id != chamber.organization_id {
            return Err(missing_parent("detector", "chamber"));
        }
        insert_detector(conn, d).await?;
    }
    Ok(())
}

async fn insert_detector(conn: &mut SqliteConnection, d: &Detector) -> Result<(), StoreError> {
    // Columns in bind_detector's order, then chamber_id.
    let insert = sqlx::query(
        "INSERT INTO detectors (id, organization_id, name, alias, unit, key_kind, key, \
         range_min, range_max, chamber_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    );
    bind_detector(insert, d)?
        .bind(*d.chamber_id.as_uuid())
        .execute(conn)
        .await
        .map_err(writing(child("detector", "chamber")))?;
    Ok(())
}

async fn update_chamber(conn: &mut SqliteConnection, chamber: &Chamber) -> Result<(), StoreError> {
    if !exists(conn, chamber_in(chamber.organization_id, chamber.id)).await? {
        return Err(not_found("chamber"));
    }
    if !exists(
        conn,
        section_in(chamber.organization_id, chamber.section_id),
    )
    .await?
    {
        return Err(missing_parent("chamber", "section"));
    }
    let update = sqlx::query(
        "UPDATE chambers SET section_id = ?3, name = ?4, endpoint = ?5, format = ?6, \
         interval_ms = ?7, timeout_ms = ?8, state = ?9, health_policy = ?10, \
         schedule_since = ?11, updated_at = ?12 WHERE id = ?1 AND organization_id = ?2",
    );
    let done = bind_chamber(update, chamber)?
        .execute(conn)
        .await
        .map_err(writing(child("chamber", "section")))?;
    touched(done, "chamber")
}

async fn load_chamber(
    conn: &mut SqliteConnection,
    id: ChamberId,
) -> Result<Option<ChamberWithDetectors>, StoreError> {
    let Some(row) = sqlx::query(concat!(
        "SELECT ",
        chamber_columns!(),
        " FROM chambers WHERE id = ?1"
    ))
    .bind(*id.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    else {
        return Ok(None);
    };
    let detectors = sqlx::query(concat!(
        "SELECT ",
        detector_columns!(),
        " FROM detectors WHERE chamber_id = ?1 ORDER BY id"
    ))
    .bind(*id.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    Ok(Some(ChamberWithDetectors {
        chamber: chamber(&row)?,
        detectors: decode_all(&detectors, detector)?,
    }))
}

#[async_trait]
impl ChamberRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::create", db.system = "sqlite", db.operation = "ChamberRepository::create"))]
    async fn create(&self, chamber: &Chamber, detectors: &[Detector]) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_chamber(w.conn(), chamber, detectors).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::create_many", db.system = "sqlite", db.operation = "ChamberRepository::create_many", items = chambers.len()))]
    async fn create_many(&self, chambers: &[ChamberWithDetectors]) -> Result<(), ItemError> {
        let mut w = self
            .begin_write()
            .await
            .map_err(|error| ItemError { index: 0, error })?;
        let mut result = Ok(());
        // The item the transaction failed at; a failed commit is blamed on the last one.
        let mut at = chambers.len().saturating_sub(1);
        for (index, c) in chambers.iter().enumerate() {
            if let Err(e) = create_chamber(w.conn(), &c.chamber, &c.detectors).await {
                (at, result) = (index, Err(e));
                break;
            }
        }
        w.finish(result)
            .await
            .map_err(|error| ItemError { index: at, error })
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::get", db.system = "sqlite", db.operation = "ChamberRepository::get"))]
    async fn get(&self, org: OrganizationId, id: ChamberId) -> Result<Chamber, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            chamber_columns!(),
            " FROM chambers WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(chamber)
            .unwrap_or(Err(not_found("chamber")))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::list", db.system = "sqlite", db.operation = "ChamberRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        filter: ChamberFilter,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            chamber_columns!(),
            " FROM chambers WHERE organization_id = ?1 AND id > ?2 \
              AND (?3 IS NULL OR section_id = ?3) AND (?4 IS NULL OR state = ?4) \
              AND (?6 IS NULL OR instr(lower(name), lower(?6)) > 0) \
              AND (?7 IS NULL OR COALESCE((SELECT h.state FROM chamber_health h \
                   WHERE h.chamber_id = chambers.id), 'unknown') = ?7) \
              ORDER BY id LIMIT ?5"
        ))
        .bind(*org.as_uuid())
        .bind(after_id(page.after.as_ref().map(ChamberId::as_uuid)))
        .bind(filter.section_id.map(|s| *s.as_uuid()))
        .bind(filter.state.map(chamber_state_code))
        .bind(limit(page.size))
        .bind(filter.name_contains.as_deref())
        .bind(filter.health.map(HealthState::as_str))
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(Page::from_sorted(
            decode_all(&rows, chamber)?,
            page.size,
            |c| c.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::update", db.system = "sqlite", db.operation = "ChamberRepository::update"))]
    async fn update(&self, chamber: &Chamber) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = update_chamber(w.conn(), chamber).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::delete", db.system = "sqlite", db.operation = "ChamberRepository::delete"))]
    async fn delete(&self, org: OrganizationId, id: ChamberId) -> Result<(), StoreError> {
        // Detectors (and through them readings), the ledger and health go by ON DELETE CASCADE.
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM chambers WHERE id = ?1 AND organization_id = ?2")
            .bind(*id.as_uuid())
            .bind(*org.as_uuid())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain))
            .and_then(|done| touched(done, "chamber"));
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::load_for_poll", db.system = "sqlite", db.operation = "ChamberRepository::load_for_poll"))]
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<ChamberWithDetectors>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = load_chamber(&mut tx, id).await;
        end_read(tx, result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberRepository::list_active", db.system = "sqlite", db.operation = "ChamberRepository::list_active"))]
    async fn list_active(
        &self,
        page: PageRequest<ChamberId>,
    ) -> Result<Page<Chamber, ChamberId>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            chamber_columns!(),
            " FROM chambers WHERE state = 'active' AND id > ?1 ORDER BY id LIMIT ?2"
        ))
        .bind(after_id(page.after.as_ref().map(ChamberId::as_uuid)))
        .bind(limit(page.size))
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(Page::from_sorted(
            decode_all(&rows, chamber)?,
            page.size,
            |c| c.id,
        ))
    }
}

#[async_trait]
impl DetectorRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::add", db.system = "sqlite", db.operation = "DetectorRepository::add"))]
    async fn add(&self, detector: &Detector) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let conn = w.conn();
        let result = match exists(
            conn,
            chamber_in(detector.organization_id, detector.chamber_id),
        )
        .await
        {
            Ok(true) => insert_detector(conn, detector).await,
            Ok(false) => Err(missing_parent("detector", "chamber")),
            Err(e) => Err(e),
        };
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::get", db.system = "sqlite", db.operation = "DetectorRepository::get"))]
    async fn get(&self, org: OrganizationId, id: DetectorId) -> Result<Detector, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            detector_columns!(),
            " FROM detectors WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref()
            .map(detector)
            .unwrap_or(Err(not_found("detector")))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::list_for_chamber", db.system = "sqlite", db.operation = "DetectorRepository::list_for_chamber"))]
    async fn list_for_chamber(
        &self,
        org: OrganizationId,
        chamber: ChamberId,
    ) -> Result<Vec<Detector>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            detector_columns!(),
            " FROM detectors WHERE chamber_id = ?1 AND organization_id = ?2 ORDER BY id"
        ))
        .bind(*chamber.as_uuid())
        .bind(*org.as_uuid())
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        decode_all(&rows, detector)
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::list_for_chambers", db.system = "sqlite", db.operation = "DetectorRepository::list_for_chambers"))]
    async fn list_for_chambers(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<Detector>, StoreError> {
        let mut all = Vec::new();
        // Well under SQLite's limit on bound parameters per statement.
        for ids in chambers.chunks(500) {
            let marks = vec!["?"; ids.len()].join(", ");
            let sql = format!(
                "SELECT {} FROM detectors WHERE organization_id = ? AND chamber_id IN ({marks}) \
                 ORDER BY chamber_id, id",
                detector_columns!()
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(*org.as_uuid());
            for id in ids {
                query = query.bind(*id.as_uuid());
            }
            let rows = query.fetch_all(&self.readers).await.map_err(db)?;
            all.extend(decode_all(&rows, detector)?);
        }
        Ok(all)
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::update", db.system = "sqlite", db.operation = "DetectorRepository::update"))]
    async fn update(&self, detector: &Detector) -> Result<(), StoreError> {
        // The detector stays in its chamber: chamber_id is not updated.
        let mut w = self.begin_write().await?;
        let update = sqlx::query(
            "UPDATE detectors SET name = ?3, alias = ?4, unit = ?5, key_kind = ?6, key = ?7, \
             range_min = ?8, range_max = ?9 WHERE id = ?1 AND organization_id = ?2",
        );
        let result = match bind_detector(update, detector) {
            Ok(query) => query
                .execute(w.conn())
                .await
                .map_err(writing(Write::Plain))
                .and_then(|done| touched(done, "detector")),
            Err(e) => Err(e),
        };
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db DetectorRepository::delete", db.system = "sqlite", db.operation = "DetectorRepository::delete"))]
    async fn delete(&self, org: OrganizationId, id: DetectorId) -> Result<(), StoreError> {
        // Its readings go by ON DELETE CASCADE.
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM detectors WHERE id = ?1 AND organization_id = ?2")
            .bind(*id.as_uuid())
            .bind(*org.as_uuid())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain))
            .and_then(|done| touched(done, "detector"));
        w.finish(result).await
    }
}

async fn start_batch(conn: &mut SqliteConnection, batch: &Batch) -> Result<(), StoreError> {
    if !exists(conn, section_in(batch.organization_id, batch.section_id)).await? {
        return Err(missing_parent("batch", "section"));
    }
    let open = sqlx::query("SELECT 1 FROM batches WHERE section_id = ?1 AND ended_at IS NULL")
        .bind(*batch.section_id.as_uuid());
    if exists(conn, open).await? {
        return Err(StoreError::Conflict {
            entity: "batch",
            reason: "the section already has an open batch".into(),
        });
    }
    sqlx::query(concat!(
        "INSERT INTO batches (",
        batch_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
    ))
    .bind(*batch.id.as_uuid())
    .bind(*batch.organization_id.as_uuid())
    .bind(*batch.section_id.as_uuid())
    .bind(batch.name.as_str())
    .bind(batch.description.as_str())
    .bind(batch.started_at.as_unix_millis())
    .bind(batch.ended_at.map(Timestamp::as_unix_millis))
    .execute(conn)
    .await
    .map_err(writing(child("batch", "section")))?;
    Ok(())
}

async fn end_batch(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    id: BatchId,
    at: Timestamp,
) -> Result<Batch, StoreError> {
    let row = sqlx::query(concat!(
        "SELECT ",
        batch_columns!(),
        " FROM batches WHERE id = ?1 AND organization_id = ?2"
    ))
    .bind(*id.as_uuid())
    .bind(*org.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let mut batch = row.as_ref().map(batch).unwrap_or(Err(not_found("batch")))?;
    if !batch.is_open() {
        return Err(StoreError::Conflict {
            entity: "batch",
            reason: "already ended".into(),
        });
    }
    if at < batch.started_at {
        return Err(StoreError::Conflict {
            entity: "batch",
            reason: "cannot end before it started".into(),
        });
    }
    sqlx::query("UPDATE batches SET ended_at = ?2 WHERE id = ?1")
        .bind(*id.as_uuid())
        .bind(at.as_unix_millis())
        .execute(conn)
        .await
        .map_err(writing(Write::Plain))?;
    batch.ended_at = Some(at);
    Ok(batch)
}

#[async_trait]
impl BatchRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::start", db.system = "sqlite", db.operation = "BatchRepository::start"))]
    async fn start(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = start_batch(w.conn(), batch).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::end", db.system = "sqlite", db.operation = "BatchRepository::end"))]
    async fn end(
        &self,
        org: OrganizationId,
        id: BatchId,
        at: Timestamp,
    ) -> Result<Batch, StoreError> {
        let mut w = self.begin_write().await?;
        let result = end_batch(w.conn(), org, id, at).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::get", db.system = "sqlite", db.operation = "BatchRepository::get"))]
    async fn get(&self, org: OrganizationId, id: BatchId) -> Result<Batch, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            batch_columns!(),
            " FROM batches WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(batch).unwrap_or(Err(not_found("batch")))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::list", db.system = "sqlite", db.operation = "BatchRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        section: Option<SectionId>,
        page: PageRequest<BatchId>,
    ) -> Result<Page<Batch, BatchId>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            batch_columns!(),
            " FROM batches WHERE organization_id = ?1 AND id > ?2 \
              AND (?3 IS NULL OR section_id = ?3) ORDER BY id LIMIT ?4"
        ))
        .bind(*org.as_uuid())
        .bind(after_id(page.after.as_ref().map(BatchId::as_uuid)))
        .bind(section.map(|s| *s.as_uuid()))
        .bind(limit(page.size))
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(Page::from_sorted(
            decode_all(&rows, batch)?,
            page.size,
            |b| b.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db BatchRepository::covering", db.system = "sqlite", db.operation = "BatchRepository::covering"))]
    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError> {
        // Windows of one section do not overlap unless a batch was started back-dated; then the
        // latest start wins.
        let row = sqlx::query(concat!(
            "SELECT ",
            batch_columns!(),
            " FROM batches WHERE section_id = ?1 AND started_at <= ?2 \
              AND (ended_at IS NULL OR ended_at > ?2) ORDER BY started_at DESC, id LIMIT 1"
        ))
        .bind(*section.as_uuid())
        .bind(at.as_unix_millis())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(batch).transpose()
    }
}

async fn store_polls(
    conn: &mut SqliteConnection,
    polls: &[PollRecord],
    ledger_rows: &[LedgerRow],
) -> Result<WriteReport, StoreError> {
    // Parents first, in the order of the input: one bad row refuses the whole batch.
    let chambers: HashSet<ChamberId> = polls.iter().map(|p| p.entry.poll.chamber_id).collect();
    let known = detectors_of(conn, &chambers).await?;
    for p in polls {
        let PollId { chamber_id, slot } = p.entry.poll;
        let Some(detectors) = known.get(&chamber_id) else {
            return Err(missing_parent("poll", "chamber"));
        };
        let of_this_poll = |r: &Reading| {
            r.chamber_id == chamber_id && r.slot == slot && detectors.contains(&r.detector_id)
        };
        if !p.readings.iter().all(of_this_poll) {
            return Err(missing_parent("reading", "detector"));
        }
    }

    // The ledger entry decides: only the readings of polls whose entry is new are written.
    let mut report = WriteReport::default();
    let mut inserted = insert_ledger(conn, ledger_rows).await?;
    let mut readings: Vec<&Reading> = Vec::new();
    for p in polls {
        let key = (
            *p.entry.poll.chamber_id.as_uuid(),
            p.entry.poll.slot.as_unix_millis(),
        );
        // A poll twice in one batch: the first is new, the second existing.
        if inserted.remove(&key) {
            report.ledger_new += 1;
            readings.extend(&p.readings);
        } else {
            report.ledger_existing += 1;
            report.readings_existing += p.readings.len() as u64;
            report.existing_polls.push(p.entry.poll);
        }
    }
    // In key order, chamber by chamber: consecutive rows land on the same pages of the primary
    // key and of the chamber index (a stable sort: of two rows with one key, the first wins).
    readings.sort_by_key(|r| (r.chamber_id, r.detector_id, r.slot));
    let new = insert_readings(conn, &readings).await?;
    report.readings_new = new;
    report.readings_existing += readings.len() as u64 - new;
    Ok(report)
}

/// The first page of readings after `cursor` within `[from, to)` of one scope.
async fn query_readings(
    conn: &mut SqliteConnection,
    q: &ReadingQuery,
) -> Result<Vec<Reading>, StoreError> {
    let (from, to) = (q.from.as_unix_millis(), q.to.as_unix_millis());
    let limit = limit(q.page.size);
    // The cursor matters only when it lies inside the range; before it, every row of the range
    // is after the cursor.
    let cursor = q.page.after.filter(|c| c.slot >= q.from);
    let query = match (q.scope, cursor) {
        (ReadingScope::Detector(id), cursor) => {
            // One detector: (slot, detector) order is slot order, and the cursor a lower bound.
            let from = match cursor {
                None => from,
                Some(c) if id > c.detector_id => c.slot.as_unix_millis(),
                Some(c) => c.slot.as_unix_millis().saturating_add(1),
            };
            sqlx::query(concat!(
                "SELECT ",
                reading_columns!(),
                " FROM readings WHERE detector_id = ?1 AND slot >= ?2 AND slot < ?3 \
                  ORDER BY slot LIMIT ?4"
            ))
            .bind(*id.as_uuid())
            .bind(from)
            .bind(to)
            .bind(limit)
        }
        (ReadingScope::Chamber(id), None) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE chamber_id = ?1 AND slot >= ?2 AND slot < ?3 \
              ORDER BY slot, detector_id LIMIT ?4"
        ))
        .bind(*id.as_uuid())
        .bind(from)
        .bind(to)
        .bind(limit),
        (ReadingScope::Chamber(id), Some(c)) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE chamber_id = ?1 AND (slot, detector_id) > (?2, ?3) \
              AND slot < ?4 ORDER BY slot, detector_id LIMIT ?5"
        ))
        .bind(*id.as_uuid())
        .bind(c.slot.as_unix_millis())
        .bind(*c.detector_id.as_uuid())
        .bind(to)
        .bind(limit),
        (ReadingScope::Batch(id), None) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE batch_id = ?1 AND slot >= ?2 AND slot < ?3 \
              ORDER BY slot, detector_id LIMIT ?4"
        ))
        .bind(*id.as_uuid())
        .bind(from)
        .bind(to)
        .bind(limit),
        (ReadingScope::Batch(id), Some(c)) => sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE batch_id = ?1 AND (slot, detector_id) > (?2, ?3) \
              AND slot < ?4 ORDER BY slot, detector_id LIMIT ?5"
        ))
        .bind(*id.as_uuid())
        .bind(c.slot.as_unix_millis())
        .bind(*c.detector_id.as_uuid())
        .bind(to)
        .bind(limit),
    };
    let rows = query.fetch_all(&mut *conn).await.map_err(db)?;
    decode_all(&rows, reading)
}

async fn scoped_query(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &ReadingQuery,
) -> Result<Vec<Reading>, StoreError> {
    check_scope(conn, org, q.scope).await?;
    query_readings(conn, q).await
}

/// The scope is the organization's, or `NotFound` naming it.
async fn check_scope(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    scope: ReadingScope,
) -> Result<(), StoreError> {
    let (check, entity) = match scope {
        ReadingScope::Detector(id) => (
            sqlx::query("SELECT 1 FROM detectors WHERE id = ?1 AND organization_id = ?2")
                .bind(*id.as_uuid()),
            "detector",
        ),
        ReadingScope::Chamber(id) => (
            sqlx::query("SELECT 1 FROM chambers WHERE id = ?1 AND organization_id = ?2")
                .bind(*id.as_uuid()),
            "chamber",
        ),
        ReadingScope::Batch(id) => (
            sqlx::query("SELECT 1 FROM batches WHERE id = ?1 AND organization_id = ?2")
                .bind(*id.as_uuid()),
            "batch",
        ),
    };
    if exists(conn, check.bind(*org.as_uuid())).await? {
        Ok(())
    } else {
        Err(not_found(entity))
    }
}

/// Measured values per detector and epoch-aligned bucket, summed up by SQLite. A chamber's
/// detectors are read through the primary key (detector, slot), whose rows hold the values, so
/// no row is looked up twice; `slot - slot % w` is the bucket (slots are after the epoch).
async fn aggregate_readings(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &AggregateQuery,
) -> Result<Vec<Aggregate>, StoreError> {
    check_scope(conn, org, q.scope).await?;
    macro_rules! aggregate_sql {
        ($scope:literal) => {
            concat!(
                "SELECT detector_id, slot - slot % ?4 AS bucket, min(value) AS low, \
                   max(value) AS high, total(value) AS sum, count(value) AS n \
                 FROM readings WHERE ",
                $scope,
                " AND slot >= ?2 AND slot < ?3 AND value IS NOT NULL \
                 GROUP BY detector_id, bucket ORDER BY detector_id, bucket"
            )
        };
    }
    let (sql, id) = match q.scope {
        ReadingScope::Detector(id) => (aggregate_sql!("detector_id = ?1"), *id.as_uuid()),
        ReadingScope::Chamber(id) => (
            aggregate_sql!("detector_id IN (SELECT id FROM detectors WHERE chamber_id = ?1)"),
            *id.as_uuid(),
        ),
        ReadingScope::Batch(id) => (aggregate_sql!("batch_id = ?1"), *id.as_uuid()),
    };
    let rows = sqlx::query(sql)
        .bind(id)
        .bind(q.from.as_unix_millis())
        .bind(q.to.as_unix_millis())
        .bind(q.bucket_millis.max(1))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|row| {
            let c = Cols::new(row, "readings");
            let count: u64 = c.count("n")?;
            let sum: f64 = c.get("sum")?;
            #[allow(clippy::cast_precision_loss, reason = "a mean")]
            Ok(Aggregate {
                detector_id: DetectorId::from_uuid(c.uuid("detector_id")?),
                bucket_start: c.at("bucket")?,
                min: c.get("low")?,
                max: c.get("high")?,
                mean: sum / count as f64,
                count,
            })
        })
        .collect()
}

/// A chamber's ledger counted per bucket from `from` by SQLite, along the primary key
/// (chamber, slot).
async fn tally_ledger(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &TallyQuery,
) -> Result<Vec<LedgerTally>, StoreError> {
    check_scope(conn, org, ReadingScope::Chamber(q.chamber_id)).await?;
    let rows = sqlx::query(
        "SELECT ?2 + ((slot - ?2) / ?4) * ?4 AS bucket, \
           sum(outcome IN ('ok', 'corrupted_values')) AS read, \
           sum(outcome IN ('missed', 'expired', 'cancelled')) AS missed, \
           count(*) AS n \
         FROM poll_ledger WHERE chamber_id = ?1 AND slot >= ?2 AND slot < ?3 \
         GROUP BY bucket ORDER BY bucket",
    )
    .bind(*q.chamber_id.as_uuid())
    .bind(q.from.as_unix_millis())
    .bind(q.to.as_unix_millis())
    .bind(q.bucket_millis.max(1))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|row| {
            let c = Cols::new(row, "poll_ledger");
            let (read, missed, all): (u64, u64, u64) =
                (c.count("read")?, c.count("missed")?, c.count("n")?);
            Ok(LedgerTally {
                bucket_start: c.at("bucket")?,
                read,
                failed: all - read - missed,
                missed,
            })
        })
        .collect()
}

async fn latest_readings(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    chambers: &[ChamberId],
) -> Result<Vec<LatestReadings>, StoreError> {
    let mut out = Vec::new();
    for &id in chambers {
        // max(slot) of one chamber is one seek at the end of its range of the chamber index.
        let rows = sqlx::query(concat!(
            "SELECT ",
            reading_columns!(),
            " FROM readings WHERE chamber_id = ?1 \
              AND slot = (SELECT max(slot) FROM readings WHERE chamber_id = ?1) \
              AND EXISTS (SELECT 1 FROM chambers WHERE id = ?1 AND organization_id = ?2) \
              ORDER BY detector_id"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        let readings = decode_all(&rows, reading)?;
        if let Some(slot) = readings.first().map(|r| r.slot) {
            out.push(LatestReadings {
                chamber_id: id,
                slot,
                readings,
            });
        }
    }
    Ok(out)
}

#[async_trait]
impl ReadingRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::store_polls", db.system = "sqlite", db.operation = "ReadingRepository::store_polls"))]
    async fn store_polls(&self, polls: &[PollRecord]) -> Result<WriteReport, StoreError> {
        let total: usize = polls.iter().map(|p| p.readings.len()).sum();
        if total > MAX_READINGS_PER_WRITE {
            return Err(refused(
                "readings",
                Rule::TooLong {
                    max: MAX_READINGS_PER_WRITE,
                    actual: total,
                },
            ));
        }
        if polls.is_empty() {
            return Ok(WriteReport::default());
        }
        // Encoded before the write turn is taken.
        let ledger_rows = polls
            .iter()
            .map(|p| LedgerRow::new(&p.entry))
            .collect::<Result<Vec<_>, _>>()?;
        let mut w = self.begin_write().await?;
        let result = store_polls(w.conn(), polls, &ledger_rows).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::query", db.system = "sqlite", db.operation = "ReadingRepository::query"))]
    async fn query(
        &self,
        org: OrganizationId,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = scoped_query(&mut tx, org, query).await;
        let readings = end_read(tx, result).await?;
        Ok(Page::from_sorted(readings, query.page.size, |r| {
            ReadingCursor {
                slot: r.slot,
                detector_id: r.detector_id,
            }
        }))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::latest", db.system = "sqlite", db.operation = "ReadingRepository::latest"))]
    async fn latest(
        &self,
        org: OrganizationId,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = latest_readings(&mut tx, org, chambers).await;
        end_read(tx, result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::aggregate", db.system = "sqlite", db.operation = "ReadingRepository::aggregate"))]
    async fn aggregate(
        &self,
        org: OrganizationId,
        query: &AggregateQuery,
    ) -> Result<Vec<Aggregate>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = aggregate_readings(&mut tx, org, query).await;
        end_read(tx, result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ReadingRepository::prune_before", db.system = "sqlite", db.operation = "ReadingRepository::prune_before"))]
    async fn prune_before(&self, cutoff: Timestamp) -> Result<(), StoreError> {
        // Exactly the rows before `cutoff`, found through the primary keys (every detector's,
        // every chamber's range), PRUNE_STEP rows per write transaction so that poll writes are
        // never held up for long. A failure part-way leaves less pruned, never more; the next
        // call finishes the job.
        for sql in [
            "DELETE FROM readings WHERE (detector_id, slot) IN (\
               SELECT detector_id, slot FROM readings \
               WHERE detector_id IN (SELECT id FROM detectors) AND slot < ?1 LIMIT ?2)",
            "DELETE FROM poll_ledger WHERE (chamber_id, slot) IN (\
               SELECT chamber_id, slot FROM poll_ledger \
               WHERE chamber_id IN (SELECT id FROM chambers) AND slot < ?1 LIMIT ?2)",
        ] {
            loop {
                let mut w = self.begin_write().await?;
                let result = sqlx::query(sql)
                    .bind(cutoff.as_unix_millis())
                    .bind(PRUNE_STEP)
                    .execute(w.conn())
                    .await
                    .map_err(writing(Write::Plain));
                let removed = w.finish(result).await?.rows_affected();
                if removed < PRUNE_STEP as u64 {
                    break;
                }
            }
        }
        Ok(())
    }
}

async fn record_ledger(
    conn: &mut SqliteConnection,
    entries: &[LedgerEntry],
    rows: &[LedgerRow],
) -> Result<u64, StoreError> {
    let chambers: HashSet<ChamberId> = entries.iter().map(|e| e.poll.chamber_id).collect();
    let known = detectors_of(conn, &chambers).await?;
    if chambers.iter().any(|c| !known.contains_key(c)) {
        return Err(missing_parent("poll", "chamber"));
    }
    Ok(insert_ledger(conn, rows).await?.len() as u64)
}

async fn list_ledger(
    conn: &mut SqliteConnection,
    org: OrganizationId,
    q: &LedgerQuery,
) -> Result<Vec<LedgerEntry>, StoreError> {
    if !exists(conn, chamber_in(org, q.chamber_id)).await? {
        return Err(not_found("chamber"));
    }
    let from = match q.page.after {
        Some(after) => q.from.max(Timestamp::from_unix_millis(
            after.as_unix_millis().saturating_add(1),
        )),
        None => q.from,
    };
    let rows = sqlx::query(concat!(
        "SELECT ",
        ledger_columns!(),
        " FROM poll_ledger WHERE chamber_id = ?1 AND slot >= ?2 AND slot < ?3 \
          AND (?4 = 0 OR outcome <> 'ok') ORDER BY slot LIMIT ?5"
    ))
    .bind(*q.chamber_id.as_uuid())
    .bind(from.as_unix_millis())
    .bind(q.to.as_unix_millis())
    .bind(q.failures_only)
    .bind(limit(q.page.size))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    decode_all(&rows, ledger_entry)
}

#[async_trait]
impl PollLedgerRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db PollLedgerRepository::record", db.system = "sqlite", db.operation = "PollLedgerRepository::record"))]
    async fn record(&self, entries: &[LedgerEntry]) -> Result<u64, StoreError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let rows = entries
            .iter()
            .map(LedgerRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mut w = self.begin_write().await?;
        let result = record_ledger(w.conn(), entries, &rows).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db PollLedgerRepository::list", db.system = "sqlite", db.operation = "PollLedgerRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = list_ledger(&mut tx, org, query).await;
        let entries = end_read(tx, result).await?;
        Ok(Page::from_sorted(entries, query.page.size, |e| e.poll.slot))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db PollLedgerRepository::tally", db.system = "sqlite", db.operation = "PollLedgerRepository::tally"))]
    async fn tally(
        &self,
        org: OrganizationId,
        query: &TallyQuery,
    ) -> Result<Vec<LedgerTally>, StoreError> {
        let mut tx = self.begin_read().await?;
        let result = tally_ledger(&mut tx, org, query).await;
        end_read(tx, result).await
    }
}

async fn save_health(conn: &mut SqliteConnection, h: &ChamberHealth) -> Result<u64, StoreError> {
    let row = sqlx::query(
        "SELECT c.id, h.version FROM chambers AS c \
         LEFT JOIN chamber_health AS h ON h.chamber_id = c.id WHERE c.id = ?1",
    )
    .bind(*h.chamber_id.as_uuid())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some(row) = row else {
        return Err(missing_parent("health", "chamber"));
    };
    let stored: u64 = Cols::new(&row, "chamber_health")
        .parse("version", |v: Option<i64>| u64::try_from(v.unwrap_or(0)))?;
    if stored != h.version {
        return Err(StoreError::Conflict {
            entity: "health",
            reason: format!("version {} is stale (stored: {stored})", h.version),
        });
    }
    let version = stored + 1;
    sqlx::query(concat!(
        "INSERT INTO chamber_health (",
        health_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (chamber_id) DO UPDATE SET state = excluded.state, \
         consecutive_failures = excluded.consecutive_failures, \
         failing_since = excluded.failing_since, last_slot = excluded.last_slot, \
         changed_at = excluded.changed_at, version = excluded.version"
    ))
    .bind(*h.chamber_id.as_uuid())
    .bind(h.state.as_str())
    .bind(i64::from(h.consecutive_failures))
    .bind(h.failing_since.map(Timestamp::as_unix_millis))
    .bind(h.last_slot.map(Timestamp::as_unix_millis))
    .bind(h.changed_at.as_unix_millis())
    .bind(count_of("health.version", version)?)
    .execute(conn)
    .await
    .map_err(writing(child("health", "chamber")))?;
    Ok(version)
}

#[async_trait]
impl ChamberHealthRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberHealthRepository::count_by_state", db.system = "sqlite", db.operation = "ChamberHealthRepository::count_by_state"))]
    async fn count_by_state(&self) -> Result<Vec<(HealthState, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT coalesce(h.state, 'unknown') AS state, count(*) AS n FROM chambers c \
             LEFT JOIN chamber_health h ON h.chamber_id = c.id GROUP BY 1",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let c = Cols::new(row, "chamber_health");
                Ok((
                    c.parse("state", |s: String| {
                        HealthState::parse(&s).ok_or(format!("unknown state {s:?}"))
                    })?,
                    c.count("n")?,
                ))
            })
            .collect()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberHealthRepository::get", db.system = "sqlite", db.operation = "ChamberHealthRepository::get"))]
    async fn get(&self, chamber: ChamberId) -> Result<Option<ChamberHealth>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            health_columns!(),
            " FROM chamber_health WHERE chamber_id = ?1"
        ))
        .bind(*chamber.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(health).transpose()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ChamberHealthRepository::save", db.system = "sqlite", db.operation = "ChamberHealthRepository::save"))]
    async fn save(&self, health: &ChamberHealth) -> Result<u64, StoreError> {
        let mut w = self.begin_write().await?;
        let result = save_health(w.conn(), health).await;
        w.finish(result).await
    }
}

async fn create_user(conn: &mut SqliteConnection, user: &User) -> Result<(), StoreError> {
    let org_exists = exists(
        conn,
        sqlx::query("SELECT 1 FROM organizations WHERE id = ?1")
            .bind(*user.organization_id.as_uuid()),
    )
    .await?;
    if !org_exists {
        return Err(missing_parent("user", "organization"));
    }
    sqlx::query(concat!(
        "INSERT INTO users (",
        user_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))
    .bind(*user.id.as_uuid())
    .bind(*user.organization_id.as_uuid())
    .bind(user.email.as_str())
    .bind(user.display_name.as_str())
    .bind(user.role.as_str())
    .bind(user.password_hash.as_deref())
    .bind(i64::from(user.disabled))
    .bind(user.created_at.as_unix_millis())
    .execute(conn)
    .await
    .map_err(writing(child("user", "organization")))?;
    Ok(())
}

#[async_trait]
impl UserRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::create", db.system = "sqlite", db.operation = "UserRepository::create"))]
    async fn create(&self, user: &User) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_user(w.conn(), user).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::get", db.system = "sqlite", db.operation = "UserRepository::get"))]
    async fn get(&self, org: OrganizationId, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = ?1 AND organization_id = ?2"
        ))
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(user).unwrap_or(Err(not_found("user")))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::find_by_email", db.system = "sqlite", db.operation = "UserRepository::find_by_email"))]
    async fn find_by_email(&self, email: &Email) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE email = ?1 ORDER BY organization_id"
        ))
        .bind(email.as_str())
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.iter().map(user).collect()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::list", db.system = "sqlite", db.operation = "UserRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        page: PageRequest<UserId>,
    ) -> Result<Page<User, UserId>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE organization_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
        ))
        .bind(*org.as_uuid())
        .bind(after_id(page.after.as_ref().map(UserId::as_uuid)))
        .bind(limit(page.size))
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        Ok(Page::from_sorted(
            decode_all(&rows, user)?,
            page.size,
            |u| u.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::update", db.system = "sqlite", db.operation = "UserRepository::update"))]
    async fn update(&self, user: &User) -> Result<(), StoreError> {
        // Everything but id, organization and created_at.
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE users SET email = ?3, display_name = ?4, role = ?5, password_hash = ?6, \
             disabled = ?7 WHERE id = ?1 AND organization_id = ?2",
        )
        .bind(*user.id.as_uuid())
        .bind(*user.organization_id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.display_name.as_str())
        .bind(user.role.as_str())
        .bind(user.password_hash.as_deref())
        .bind(i64::from(user.disabled))
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "user"));
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db UserRepository::delete", db.system = "sqlite", db.operation = "UserRepository::delete"))]
    async fn delete(&self, org: OrganizationId, id: UserId) -> Result<(), StoreError> {
        // Their tokens go by ON DELETE CASCADE.
        let mut w = self.begin_write().await?;
        let result = sqlx::query("DELETE FROM users WHERE id = ?1 AND organization_id = ?2")
            .bind(*id.as_uuid())
            .bind(*org.as_uuid())
            .execute(w.conn())
            .await
            .map_err(writing(Write::Plain))
            .and_then(|done| touched(done, "user"));
        w.finish(result).await
    }
}

async fn create_token(conn: &mut SqliteConnection, token: &ApiToken) -> Result<(), StoreError> {
    let user_exists = exists(
        conn,
        sqlx::query("SELECT 1 FROM users WHERE id = ?1 AND organization_id = ?2")
            .bind(*token.user_id.as_uuid())
            .bind(*token.organization_id.as_uuid()),
    )
    .await?;
    if !user_exists {
        return Err(missing_parent("token", "user"));
    }
    sqlx::query(concat!(
        "INSERT INTO api_tokens (",
        token_columns!(),
        ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))
    .bind(*token.id.as_uuid())
    .bind(*token.organization_id.as_uuid())
    .bind(*token.user_id.as_uuid())
    .bind(token.name.as_str())
    .bind(&token.hash.0[..])
    .bind(token.role_cap.as_str())
    .bind(token.created_at.as_unix_millis())
    .bind(token.expires_at.map(Timestamp::as_unix_millis))
    .bind(token.last_used_at.map(Timestamp::as_unix_millis))
    .bind(token.revoked_at.map(Timestamp::as_unix_millis))
    .execute(conn)
    .await
    .map_err(writing(child("token", "user")))?;
    Ok(())
}

#[async_trait]
impl ApiTokenRepository for SqliteStore {
    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::create", db.system = "sqlite", db.operation = "ApiTokenRepository::create"))]
    async fn create(&self, token: &ApiToken) -> Result<(), StoreError> {
        let mut w = self.begin_write().await?;
        let result = create_token(w.conn(), token).await;
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::find_by_hash", db.system = "sqlite", db.operation = "ApiTokenRepository::find_by_hash"))]
    async fn find_by_hash(&self, hash: &TokenHash) -> Result<Option<ApiToken>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_hash = ?1"
        ))
        .bind(&hash.0[..])
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(token).transpose()
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::list", db.system = "sqlite", db.operation = "ApiTokenRepository::list"))]
    async fn list(
        &self,
        org: OrganizationId,
        user: Option<UserId>,
        page: PageRequest<ApiTokenId>,
    ) -> Result<Page<ApiToken, ApiTokenId>, StoreError> {
        let query = match user {
            Some(user) => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE organization_id = ?1 AND user_id = ?3 AND id > ?2 \
                  ORDER BY id LIMIT ?4"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(ApiTokenId::as_uuid)))
            .bind(*user.as_uuid())
            .bind(limit(page.size)),
            None => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE organization_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
            ))
            .bind(*org.as_uuid())
            .bind(after_id(page.after.as_ref().map(ApiTokenId::as_uuid)))
            .bind(limit(page.size)),
        };
        let rows = query.fetch_all(&self.readers).await.map_err(db)?;
        Ok(Page::from_sorted(
            decode_all(&rows, token)?,
            page.size,
            |t| t.id,
        ))
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::revoke", db.system = "sqlite", db.operation = "ApiTokenRepository::revoke"))]
    async fn revoke(
        &self,
        org: OrganizationId,
        id: ApiTokenId,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        // Revoking twice keeps the first time.
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?3) \
             WHERE id = ?1 AND organization_id = ?2",
        )
        .bind(*id.as_uuid())
        .bind(*org.as_uuid())
        .bind(at.as_unix_millis())
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "token"));
        w.finish(result).await
    }

    #[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "db ApiTokenRepository::touch", db.system = "sqlite", db.operation = "ApiTokenRepository::touch"))]
    async fn touch(&self, id: ApiTokenId, at: Timestamp) -> Result<(), StoreError> {
        // The latest use wins, whatever order the touches arrive in.
        let mut w = self.begin_write().await?;
        let result = sqlx::query(
            "UPDATE api_tokens SET last_used_at = max(coalesce(last_used_at, ?2), ?2) \
             WHERE id = ?1",
        )
        .bind(*id.as_uuid())
        .bind(at.as_unix_millis())
        .execute(w.conn())
        .await
        .map_err(writing(Write::Plain))
        .and_then(|done| touched(done, "token"));
        w.finish(result).await
    }
}
