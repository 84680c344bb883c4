//! Translating sqlx errors into the ports' [`StoreError`]; no driver error crosses the port.
//!
//! - A unique violation becomes the `Duplicate` (or `Conflict`) its index stands for. SQLite
//!   names the violated index by its columns (`UNIQUE constraint failed: sections.organization_id,
//!   sections.name`), so [`UNIQUE_INDEXES`] maps those column lists; a test checks that it covers
//!   every unique index of the schema.
//! - A foreign-key violation becomes `MissingParent` (or `HasDependents` on a delete). SQLite
//!   does not say which key failed, so the caller names what the statement writes
//!   ([`Write`]). The store checks parents itself before writing; the foreign keys are the
//!   backstop.
//! - Any other constraint (CHECK, NOT NULL, a STRICT column type) means a value the store cannot
//!   hold: `Invalid`, naming the column or constraint.
//! - Everything else — busy or locked, I/O, a full disk, a closed or exhausted pool, a crashed
//!   worker — is `Unavailable`.
//! - A stored value that does not decode or parse is an internal corruption: `Unavailable`
//!   naming the table and column ([`corrupt`]).

use std::borrow::Cow;
use std::fmt;

use chamberlain_domain::error::{Rule, ValidationError};
use chamberlain_domain::ports::StoreError;
use sqlx::error::{DatabaseError, ErrorKind};

/// SQLite's primary result codes this module tells apart (the extended code's low byte).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_CONSTRAINT: i32 = 19;

/// Each unique index of the schema, by the column list SQLite reports, and the error it means.
pub(crate) const UNIQUE_INDEXES: &[(&str, Unique)] = &[
    ("organizations.id", Unique::Duplicate("organization", "id")),
    (
        "organizations.name",
        Unique::Duplicate("organization", "name"),
    ),
    ("users.id", Unique::Duplicate("user", "email")),
    (
        "users.organization_id, users.email",
        Unique::Duplicate("user", "email"),
    ),
    (
        "users.organization_id, users.id",
        Unique::Duplicate("user", "email"),
    ),
    ("api_tokens.id", Unique::Duplicate("token", "hash")),
    ("api_tokens.token_hash", Unique::Duplicate("token", "hash")),
    ("sections.id", Unique::Duplicate("section", "name")),
    (
        "sections.organization_id, sections.name",
        Unique::Duplicate("section", "name"),
    ),
    (
        "sections.organization_id, sections.id",
        Unique::Duplicate("section", "name"),
    ),
    ("chambers.id", Unique::Duplicate("chamber", "name")),
    (
        "chambers.section_id, chambers.name",
        Unique::Duplicate("chamber", "name"),
    ),
    (
        "chambers.organization_id, chambers.id",
        Unique::Duplicate("chamber", "name"),
    ),
    ("detectors.id", Unique::Duplicate("detector", "name")),
    (
        "detectors.chamber_id, detectors.name",
        Unique::Duplicate("detector", "name"),
    ),
    (
        "detectors.chamber_id, detectors.id",
        Unique::Duplicate("detector", "name"),
    ),
    ("batches.id", Unique::Duplicate("batch", "id")),
    (
        "batches.section_id",
        Unique::Conflict("batch", "the section already has an open batch"),
    ),
    (
        "chamber_health.chamber_id",
        Unique::Conflict("health", "another writer stored it first"),
    ),
    (
        "polls.chamber_id, polls.slot",
        Unique::Duplicate("poll", "slot"),
    ),
    (
        "polls_recent.bucket, polls_recent.slot, polls_recent.chamber_id",
        Unique::Duplicate("poll", "slot"),
    ),
    (
        "chamber_latest.chamber_id",
        Unique::Conflict("poll", "another writer moved the latest slot first"),
    ),
    (
        "detector_layouts.chamber_id, detector_layouts.version",
        Unique::Conflict("chamber", "another writer changed its detectors first"),
    ),
    ("alert_rules.id", Unique::Duplicate("alert_rule", "name")),
    (
        "alert_rules.chamber_id, alert_rules.name",
        Unique::Duplicate("alert_rule", "name"),
    ),
    (
        "alert_rules.organization_id, alert_rules.id",
        Unique::Duplicate("alert_rule", "name"),
    ),
    (
        "alerts.id",
        Unique::Conflict("alert", "the rule already has an open alert"),
    ),
    (
        "alerts.rule_id",
        Unique::Conflict("alert", "the rule already has an open alert"),
    ),
    ("transmitters.id", Unique::Duplicate("transmitter", "name")),
    (
        "transmitters.organization_id, transmitters.name",
        Unique::Duplicate("transmitter", "name"),
    ),
    (
        "transmitters.organization_id, transmitters.id",
        Unique::Duplicate("transmitter", "name"),
    ),
    ("dead_letters.id", Unique::Duplicate("dead_letter", "id")),
    // Written with ON CONFLICT (one row per transmitter, replaced); mapped for completeness.
    (
        "transmitter_delivery_states.transmitter_id",
        Unique::Duplicate("delivery_state", "transmitter_id"),
    ),
];

/// What a unique violation of one index means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unique {
    /// `Duplicate { entity, field }`.
    Duplicate(&'static str, &'static str),
    /// `Conflict { entity, reason }`.
    Conflict(&'static str, &'static str),
}

impl Unique {
    fn error(self) -> StoreError {
        match self {
            Self::Duplicate(entity, field) => StoreError::Duplicate { entity, field },
            Self::Conflict(entity, reason) => StoreError::Conflict {
                entity,
                reason: reason.into(),
            },
        }
    }
}

/// What a writing statement stores, so that a foreign-key violation can name the parent (or,
/// on a delete, the dependents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// An insert or update of `entity`, whose parent is `parent`.
    Child {
        entity: &'static str,
        parent: &'static str,
    },
    /// A delete of `entity`, refused while `dependents` remain.
    Delete {
        entity: &'static str,
        dependents: &'static str,
    },
    /// A statement that cannot violate a foreign key (reads, updates of plain columns).
    Plain,
}

pub(crate) const fn child(entity: &'static str, parent: &'static str) -> Write {
    Write::Child { entity, parent }
}

/// The error of a statement that cannot violate a foreign key.
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    translate(e, Write::Plain)
}

/// The error of a writing statement (see [`Write`]).
pub(crate) fn writing(what: Write) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| translate(e, what)
}

fn translate(e: sqlx::Error, what: Write) -> StoreError {
    match e {
        sqlx::Error::Database(db) => database(db.as_ref(), what),
        sqlx::Error::PoolTimedOut => {
            StoreError::unavailable("timed out waiting for a database connection")
        }
        sqlx::Error::PoolClosed => StoreError::unavailable("the database pool is closed"),
        sqlx::Error::WorkerCrashed => {
            StoreError::unavailable("the database connection's worker thread crashed")
        }
        sqlx::Error::Io(e) => StoreError::unavailable(format!("database i/o: {e}")),
        sqlx::Error::ColumnDecode { index, source } => {
            StoreError::unavailable(format!("corrupt value in column {index}: {source}"))
        }
        sqlx::Error::Migrate(e) => StoreError::unavailable(format!("migration failed: {e}")),
        other => StoreError::unavailable(other.to_string()),
    }
}

fn database(e: &dyn DatabaseError, what: Write) -> StoreError {
    let message = e.message();
    let code = e
        .code()
        .and_then(|c| c.parse::<i32>().ok())
        .unwrap_or_default();
    match e.kind() {
        ErrorKind::UniqueViolation => {
            let columns = message
                .strip_prefix("UNIQUE constraint failed: ")
                .unwrap_or(message);
            UNIQUE_INDEXES
                .iter()
                .find(|(cols, _)| *cols == columns)
                .map_or_else(
                    || StoreError::unavailable(format!("unexpected unique violation: {message}")),
                    |(_, unique)| unique.error(),
                )
        }
        ErrorKind::ForeignKeyViolation => match what {
            Write::Child { entity, parent } => StoreError::MissingParent { entity, parent },
            Write::Delete { entity, dependents } => {
                StoreError::HasDependents { entity, dependents }
            }
            Write::Plain => {
                StoreError::unavailable(format!("unexpected foreign key violation: {message}"))
            }
        },
        ErrorKind::NotNullViolation => {
            let column = message
                .strip_prefix("NOT NULL constraint failed: ")
                .unwrap_or(message);
            invalid(column.to_owned(), Rule::Required)
        }
        ErrorKind::CheckViolation => {
            let constraint = message
                .strip_prefix("CHECK constraint failed: ")
                .unwrap_or(message);
            invalid(
                constraint.to_owned(),
                Rule::Format("refused by a check of the store".into()),
            )
        }
        _ if code & 0xff == SQLITE_CONSTRAINT => {
            // A STRICT column refusing a value of the wrong type, and the like.
            invalid("value", Rule::Format(message.to_owned()))
        }
        _ if matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED) => StoreError::unavailable(
            format!("the database is locked by another writer ({message})"),
        ),
        _ => StoreError::unavailable(format!("database error {code}: {message}")),
    }
}

fn invalid(field: impl Into<Cow<'static, str>>, rule: Rule) -> StoreError {
    StoreError::Invalid(ValidationError::new(field, rule))
}

/// A stored value of `table.column` that does not decode or parse: the database holds
/// something the domain refuses.
pub(crate) fn corrupt(table: &str, column: &str, why: impl fmt::Display) -> StoreError {
    StoreError::unavailable(format!("corrupt value in {table}.{column}: {why}"))
}

/// A value to be written that the store cannot hold (checked again at this edge).
pub(crate) fn refused(field: &'static str, rule: Rule) -> StoreError {
    invalid(field, rule)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sqlx::Row;

    use super::*;
    use crate::{SqliteConfig, SqliteStore};

    /// Every unique index of the schema (primary keys and UNIQUE constraints included) has its
    /// entry in [`UNIQUE_INDEXES`], and every entry is an index of the schema.
    #[tokio::test]
    async fn every_unique_index_is_mapped() {
        let store = SqliteStore::connect(&SqliteConfig::memory())
            .await
            .expect("open");
        let pool = store.pool();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             AND name NOT LIKE '_sqlx_%'",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        let mut in_schema = BTreeSet::new();
        for table in &tables {
            let indexes = sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA index_list(\"{table}\")"
            )))
            .fetch_all(pool)
            .await
            .unwrap();
            for index in indexes {
                if index.get::<i64, _>("unique") == 0 {
                    continue;
                }
                let name: String = index.get("name");
                let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_index_info('{name}') ORDER BY seqno"
                )))
                .fetch_all(pool)
                .await
                .unwrap();
                let reported = columns
                    .iter()
                    .map(|c| format!("{table}.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                in_schema.insert(reported);
            }
        }
        let mapped: BTreeSet<String> = UNIQUE_INDEXES
            .iter()
            .map(|(cols, _)| (*cols).to_owned())
            .collect();
        assert_eq!(in_schema, mapped);
    }

    #[test]
    fn other_errors_are_unavailable_and_transient() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::other("disk gone")),
        ] {
            let mapped = db(e);
            assert!(mapped.is_transient(), "{mapped:?}");
        }
    }
}
