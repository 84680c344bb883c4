//! Daily range partitions of `polls`: created ahead of time (and on demand for a slot outside
//! them), dropped by retention (with the days of the previous layout's tables, while they last).

use std::collections::BTreeSet;

use chamberlain_domain::Timestamp;
use chamberlain_domain::ports::StoreError;
use sqlx::{AssertSqlSafe, PgPool, Row};
use time::OffsetDateTime;

use crate::errors::store_error;

/// The tables partitioned by slot, one partition per UTC day (were there several, in the
/// order a write touches them, so partition DDL and a concurrent write take their locks in the
/// same order and never deadlock).
pub const PARTITIONED_TABLES: [&str; 1] = ["polls"];

/// Tables of the previous layout (parent, prefix of its partitions' names), kept until
/// `chamberlain migrate` has converted them: retention drops their days too.
const LEGACY_TABLES: [(&str, &str); 2] = [
    ("legacy_poll_ledger", "poll_ledger"),
    ("legacy_readings", "readings"),
];

const DAY_MS: i64 = 86_400_000;

/// Days since the Unix epoch of the UTC day holding `t`.
pub fn day_of(t: Timestamp) -> i64 {
    t.as_unix_millis().div_euclid(DAY_MS)
}

/// The first instant of a day.
pub fn day_start(day: i64) -> Timestamp {
    Timestamp::from_unix_millis(day.saturating_mul(DAY_MS))
}

fn date_label(day: i64) -> Option<String> {
    let d = OffsetDateTime::from_unix_timestamp(day.checked_mul(86_400)?)
        .ok()?
        .date();
    Some(format!(
        "{:04}{:02}{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    ))
}

fn partition_name(table: &str, day: i64) -> Option<String> {
    date_label(day).map(|label| format!("{table}_p{label}"))
}

fn day_from_name(table: &str, name: &str) -> Option<i64> {
    let label = name.strip_prefix(table)?.strip_prefix("_p")?;
    if label.len() != 8 || !label.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = label[0..4].parse().ok()?;
    let month: u8 = label[4..6].parse().ok()?;
    let day: u8 = label[6..8].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(
        date.midnight()
            .assume_utc()
            .unix_timestamp()
            .div_euclid(86_400),
    )
}

/// Creates the partitions of both tables for each of `days` that lacks one. Serialized across
/// processes by an advisory lock, so concurrent workers never race on the same DDL.
pub async fn ensure_days(pool: &PgPool, days: &BTreeSet<i64>) -> Result<(), StoreError> {
    if days.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await.map_err(store_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chamberlain.partitions'))")
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    for &day in days {
        for table in PARTITIONED_TABLES {
            let (Some(name), Some(from), Some(to)) = (
                partition_name(table, day),
                date_label(day),
                date_label(day + 1),
            ) else {
                return Err(StoreError::unavailable(format!(
                    "slot day {day} is out of range"
                )));
            };
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} \
                 FOR VALUES FROM ('{from}T00:00:00Z') TO ('{to}T00:00:00Z')"
            );
            sqlx::query(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
    }
    tx.commit().await.map_err(store_error)
}

/// Partitions for the days from `now`'s day to `ahead` days later.
pub async fn ensure_ahead(pool: &PgPool, now: Timestamp, ahead: u32) -> Result<(), StoreError> {
    let today = day_of(now);
    ensure_days(pool, &(today - 1..=today + i64::from(ahead)).collect()).await
}

/// Days that have a partition (of `polls`).
pub async fn existing_days(pool: &PgPool) -> Result<BTreeSet<i64>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'polls'::regclass",
    )
    .fetch_all(pool)
    .await
    .map_err(store_error)?;
    Ok(rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>("name").ok())
        .filter_map(|n| day_from_name("polls", &n))
        .collect())
}

/// Drops every partition of both tables whose day ends at or before `cutoff_day`'s start.
/// Returns the names dropped.
pub async fn drop_before(pool: &PgPool, cutoff_day: i64) -> Result<Vec<String>, StoreError> {
    let mut dropped = Vec::new();
    let mut tx = pool.begin().await.map_err(store_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chamberlain.partitions'))")
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
    let tables = PARTITIONED_TABLES
        .iter()
        .map(|t| (*t, *t))
        .chain(LEGACY_TABLES);
    for (parent, table) in tables {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass('{parent}')"
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        for row in rows {
            let name: String = row.try_get("name").map_err(store_error)?;
            if day_from_name(table, &name).is_some_and(|day| day < cutoff_day) {
                sqlx::query(AssertSqlSafe(format!("DROP TABLE {name}")))
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
                dropped.push(name);
            }
        }
    }
    tx.commit().await.map_err(store_error)?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_to_days() {
        let t = Timestamp::from_unix_millis(1_767_225_600_000 + 5 * DAY_MS + 1234);
        let day = day_of(t);
        let name = partition_name("readings", day).unwrap();
        assert_eq!(name, "readings_p20260106");
        assert_eq!(day_from_name("readings", &name), Some(day));
        assert_eq!(day_from_name("poll_ledger", &name), None);
        assert_eq!(
            day_of(Timestamp::from_unix_millis(-1)),
            -1,
            "days before 1970 floor correctly"
        );
        assert_eq!(day_start(day).as_unix_millis() % DAY_MS, 0);
    }
}
