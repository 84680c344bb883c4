//! Converting readings of the previous layout (`legacy_poll_ledger`, `legacy_readings`: one
//! ledger row plus one row per detector) to one row per poll, in bounded chunks.
//!
//! A chunk is a move: up to `chunk_polls` polls of one chamber are written to `polls` through
//! the same write as live polls, and deleted from the legacy tables, in one write transaction
//! (one turn of the store's writer: live writes take their turns between chunks). At every
//! moment each poll is in exactly one place, so a conversion interrupted anywhere (a signal, a
//! crash, a dropped future) rolls back at most its current chunk, and the next run starts over
//! from whatever is left: nothing lost, nothing doubled, no cursor to trust. When the ledger is
//! empty, the readings left (rows without a ledger entry, never visible to any query) are
//! counted and the legacy tables dropped.

use std::collections::BTreeMap;

use chamberlain_domain::model::{LedgerEntry, Reading};
use chamberlain_domain::ports::{ConversionProgress, PollRecord, StoreError};
use sqlx::SqliteConnection;
use uuid::Uuid;

use super::SqliteStore;
use super::readings::{Keys, Legacy, Written, write_polls};
use super::rows::{decode_all, ledger_entry, reading};
use crate::errors::db;

type Result<T> = std::result::Result<T, StoreError>;

/// Polls per chunk unless told otherwise.
pub const DEFAULT_CHUNK_POLLS: u32 = 2_000;

impl SqliteStore {
    /// Whether tables of the previous layout are still there.
    ///
    /// # Errors
    /// `Unavailable` if the database cannot be asked.
    pub async fn has_legacy_layout(&self) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'legacy_poll_ledger'",
        )
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        Ok(found.is_some())
    }

    /// Drops the previous layout's tables if they hold nothing (a database created before the
    /// layout changed, but never polled); returns whether they are gone.
    pub(super) async fn drop_empty_legacy_layout(&self) -> Result<bool> {
        if !self.has_legacy_layout().await? {
            return Ok(true);
        }
        let mut w = self.begin_write().await?;
        let result = drop_if_empty(w.conn(), &mut ConversionProgress::default()).await;
        w.finish(result).await
    }

    /// Converts the previous layout's polls, `chunk_polls` of one chamber at a time, calling
    /// `progress` after each chunk; `stop` is asked between chunks (a chunk under way always
    /// finishes or rolls back whole). Returns where it stands: `finished` once the legacy tables
    /// are gone (at once if there are none).
    ///
    /// # Errors
    /// `Unavailable` if the database fails; the chunk under way is rolled back and a new run
    /// goes on from there. `Unavailable` for a chunk size of 0.
    pub async fn convert_legacy(
        &self,
        chunk_polls: u32,
        mut progress: impl FnMut(&ConversionProgress) + Send,
        stop: impl Fn() -> bool + Send + Sync,
    ) -> Result<ConversionProgress> {
        let mut done = ConversionProgress::default();
        if !self.has_legacy_layout().await? {
            done.finished = true;
            return Ok(done);
        }
        if chunk_polls == 0 {
            return Err(StoreError::unavailable(
                "a conversion chunk holds at least one poll",
            ));
        }
        let estimated: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy_poll_ledger")
            .fetch_one(&self.readers)
            .await
            .map_err(db)?;
        done.polls_estimated = u64::try_from(estimated).unwrap_or(0);
        loop {
            if stop() {
                return Ok(done);
            }
            let mut w = self.begin_write().await?;
            let result = convert_chunk(w.conn(), chunk_polls, &mut done, &self.layouts).await;
            if !w.finish(result).await? {
                break;
            }
            progress(&done);
        }
        let mut w = self.begin_write().await?;
        let result = drop_if_empty(w.conn(), &mut done).await;
        done.finished = w.finish(result).await?;
        if done.finished {
            self.legacy
                .store(false, std::sync::atomic::Ordering::SeqCst);
        }
        progress(&done);
        Ok(done)
    }
}

/// Readings moved per chunk at most: a chunk of a wide chamber holds fewer polls, so that one
/// turn of the store's writer stays short (live writes wait for it).
const CHUNK_READINGS: i64 = 20_000;

/// Moves up to `chunk_polls` polls (and about [`CHUNK_READINGS`] readings) of the first chamber
/// left; returns whether there was one.
async fn convert_chunk(
    conn: &mut SqliteConnection,
    chunk_polls: u32,
    done: &mut ConversionProgress,
    known: &super::layouts::Known,
) -> Result<bool> {
    // Moved rows are deleted, so the first chamber left is at the head of the key.
    let Some(chamber) = sqlx::query_scalar::<_, Uuid>(
        "SELECT chamber_id FROM legacy_poll_ledger ORDER BY chamber_id, slot LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    else {
        return Ok(false);
    };
    let width: i64 = sqlx::query_scalar("SELECT count(*) FROM detectors WHERE chamber_id = ?1")
        .bind(chamber)
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let polls = i64::from(chunk_polls).min((CHUNK_READINGS / width.max(1)).max(1));
    let ledger = sqlx::query(concat!(
        "SELECT ",
        ledger_columns!(),
        " FROM legacy_poll_ledger WHERE chamber_id = ?2 ORDER BY slot LIMIT ?1"
    ))
    .bind(polls)
    .bind(chamber)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let entries: Vec<LedgerEntry> = decode_all(&ledger, ledger_entry)?;
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(false);
    };
    let (lo, hi) = (
        first.poll.slot.as_unix_millis(),
        last.poll.slot.as_unix_millis(),
    );
    let rows = sqlx::query(concat!(
        "SELECT ",
        reading_columns!(),
        " FROM legacy_readings WHERE chamber_id = ?1 AND slot >= ?2 AND slot <= ?3"
    ))
    .bind(chamber)
    .bind(lo)
    .bind(hi)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut by_slot: BTreeMap<_, Vec<Reading>> = BTreeMap::new();
    for r in decode_all(&rows, reading)? {
        by_slot.entry(r.slot).or_default().push(r);
    }
    let mut records = Vec::with_capacity(entries.len());
    for mut entry in entries {
        let mut readings = by_slot.remove(&entry.poll.slot).unwrap_or_default();
        // One row keeps the poll's times and batch once: the entry's, as the worker always
        // wrote them.
        if entry.requested_at.is_none() {
            entry.requested_at = readings.first().map(|r| r.requested_at);
        }
        let batch = readings.first().and_then(|r| r.batch_id);
        for r in &mut readings {
            r.requested_at = entry.requested_at.unwrap_or(r.requested_at);
            r.received_at = entry.recorded_at;
            r.batch_id = batch;
        }
        records.push(PollRecord { entry, readings });
    }
    let orphans: u64 = by_slot.values().map(|r| r.len() as u64).sum();
    let moved: Vec<&PollRecord> = records.iter().collect();
    let Written::Done(report) =
        write_polls(conn, &moved, Legacy::Ignore, known, Keys::LookedUp).await?
    else {
        // Only a write that assumes its polls new asks to be done again.
        return Err(StoreError::unavailable(
            "the conversion's write asked to be done again",
        ));
    };
    for sql in [
        "DELETE FROM legacy_poll_ledger WHERE chamber_id = ?1 AND slot >= ?2 AND slot <= ?3",
        "DELETE FROM legacy_readings WHERE chamber_id = ?1 AND slot >= ?2 AND slot <= ?3",
    ] {
        sqlx::query(sql)
            .bind(chamber)
            .bind(lo)
            .bind(hi)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    done.polls_moved += records.len() as u64;
    done.polls_already_there += report.ledger_existing;
    done.readings_moved += report.readings_new;
    done.orphan_readings += orphans;
    Ok(true)
}

/// Counts the readings left without a ledger entry and drops the legacy tables, if the ledger
/// is empty; returns whether they are gone.
async fn drop_if_empty(conn: &mut SqliteConnection, done: &mut ConversionProgress) -> Result<bool> {
    let left: Option<Uuid> =
        sqlx::query_scalar("SELECT chamber_id FROM legacy_poll_ledger LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    if left.is_some() {
        // Written by an old process still running: converted on the next run.
        return Ok(false);
    }
    let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy_readings")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    done.orphan_readings += u64::try_from(orphans).unwrap_or(0);
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "readings without a ledger entry dropped with the previous layout"
        );
    }
    for sql in [
        "DROP TABLE legacy_readings",
        "DROP TABLE legacy_poll_ledger",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.map_err(db)?;
    }
    Ok(true)
}
