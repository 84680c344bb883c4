//! Converting readings of the previous layout (`legacy_poll_ledger`, `legacy_readings`: one
//! ledger row plus one row per detector) to one row per poll, in bounded chunks.
//!
//! A chunk is a move: up to `chunk_polls` polls of one chamber are written to `polls` through
//! the same write as live polls, and deleted from the legacy tables, in one transaction. At every
//! moment each poll is in exactly one place, so a conversion interrupted anywhere (a signal, a
//! crash, a lost connection) rolls back at most its current chunk, and the next run starts over
//! from whatever is left: nothing lost, nothing doubled, no cursor to trust. Chunks of two
//! converters take turns under an advisory lock. When the ledger is empty, the readings left
//! (rows without a ledger entry, never visible to any query) are counted and the legacy tables
//! dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chamberlain_domain::model::{LedgerEntry, Reading};
use chamberlain_domain::ports::{ConversionProgress, PollRecord, StoreError};
use uuid::Uuid;

use crate::PgStore;
use crate::errors::store_error;
use crate::partitions;
use crate::store::rows::{self, ts};

type Result<T> = std::result::Result<T, StoreError>;

/// Polls per chunk unless told otherwise.
pub const DEFAULT_CHUNK_POLLS: u32 = 2_000;

/// Readings moved per chunk at most: a chunk of a wide chamber holds fewer polls, so that each
/// transaction stays short and small.
const CHUNK_READINGS: i64 = 20_000;

impl PgStore {
    /// Whether tables of the previous layout are still there.
    ///
    /// # Errors
    /// `Unavailable` if the database cannot be asked.
    pub async fn has_legacy_layout(&self) -> Result<bool> {
        sqlx::query_scalar("SELECT to_regclass('legacy_poll_ledger') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    /// Converts the previous layout's polls, `chunk_polls` of one chamber at a time, calling
    /// `progress` after each chunk; `stop` is asked between chunks (a chunk under way always
    /// finishes or rolls back whole). Returns where it stands: `finished` once the legacy tables
    /// are gone (at once if there are none).
    ///
    /// # Errors
    /// `Unavailable` if the database fails; the chunk under way is rolled back and a new run
    /// goes on from there. `Invalid` for a chunk size of 0.
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
        let estimated: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::int8 FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'legacy_poll_ledger'::regclass",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        done.polls_estimated = u64::try_from(estimated).unwrap_or(0);
        // Chambers in id order, each from its first slot on. Kept in memory (not re-read from
        // the head of the index, which would wade through the rows already moved); a new run
        // starts from the head again, where only unmoved rows are left.
        let mut after = (
            Uuid::nil(),
            time::OffsetDateTime::UNIX_EPOCH - time::Duration::days(365 * 200),
        );
        loop {
            if stop() {
                return Ok(done);
            }
            let next: Option<(Uuid, time::OffsetDateTime)> = sqlx::query_as(
                "SELECT chamber_id, slot FROM legacy_poll_ledger WHERE (chamber_id, slot) >= ($1, $2) \
                 ORDER BY chamber_id, slot LIMIT 1",
            )
            .bind(after.0)
            .bind(after.1)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
            let Some((chamber, from)) = next else {
                break;
            };
            after = self
                .convert_chunk(chamber, from, chunk_polls, &mut done)
                .await?;
            progress(&done);
        }
        self.finish_conversion(&mut done).await?;
        progress(&done);
        Ok(done)
    }

    /// Moves up to `chunk_polls` polls of `chamber` from slot `from` on; returns where the next
    /// chunk starts.
    async fn convert_chunk(
        &self,
        chamber: Uuid,
        from: time::OffsetDateTime,
        chunk_polls: u32,
        done: &mut ConversionProgress,
    ) -> Result<(Uuid, time::OffsetDateTime)> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chamberlain.conversion'))")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let detectors: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM detectors WHERE chamber_id = $1")
                .bind(chamber)
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
        // About CHUNK_READINGS readings at most: fewer polls of a wide chamber.
        let polls =
            i64::from(chunk_polls).min((CHUNK_READINGS / detectors.len().max(1) as i64).max(1));
        let ledger = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM legacy_poll_ledger WHERE chamber_id = $1 AND slot >= $2 ORDER BY slot LIMIT $3",
            rows::LEDGER_COLUMNS
        )))
        .bind(chamber)
        .bind(from)
        .bind(polls)
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let entries = ledger
            .iter()
            .map(rows::ledger_entry)
            .collect::<Result<Vec<LedgerEntry>>>()?;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            // Another converter moved them meanwhile.
            return Ok((chamber, from + time::Duration::MILLISECOND));
        };
        let (lo, hi) = (first.poll.slot, last.poll.slot);
        let readings = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM legacy_readings WHERE detector_id = ANY($1) AND slot >= $2 AND slot <= $3",
            rows::READING_COLUMNS
        )))
        .bind(&detectors)
        .bind(ts(lo))
        .bind(ts(hi))
        .fetch_all(&mut *tx)
        .await
        .map_err(store_error)?;
        let mut by_slot: BTreeMap<_, Vec<Reading>> = BTreeMap::new();
        for row in &readings {
            let r = rows::reading(row)?;
            by_slot.entry(r.slot).or_default().push(r);
        }
        let chamber_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM chambers WHERE id = $1)")
                .bind(chamber)
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
        let mut records = Vec::with_capacity(entries.len());
        for mut entry in entries {
            let mut readings = by_slot.remove(&entry.poll.slot).unwrap_or_default();
            // One row keeps the poll's times and batch once: the readings' own, as the worker
            // always wrote them (the entry's), taken from the entry.
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
        let mut orphans: u64 = by_slot.values().map(|r| r.len() as u64).sum();
        let mut moved_readings: u64 = records.iter().map(|p| p.readings.len() as u64).sum();
        if !chamber_exists {
            // Rows of a chamber deleted meanwhile: they go with it.
            orphans += moved_readings;
            moved_readings = 0;
        } else {
            let days: BTreeSet<i64> = records
                .iter()
                .map(|p| partitions::day_of(p.entry.poll.slot))
                .collect();
            partitions::ensure_days(&self.pool, &days).await?;
            let ordered: Vec<&PollRecord> = records.iter().collect();
            let (new, readings_new) = self
                .write_polls(&mut tx, &ordered)
                .await
                .map_err(crate::store::into_store_error)?;
            done.polls_already_there += (records.len() - new.len()) as u64;
            // Readings of a poll already there are dropped with its legacy copy, not moved.
            moved_readings = readings_new;
        }
        for sql in [
            "DELETE FROM legacy_poll_ledger WHERE chamber_id = $1 AND slot >= $3 AND slot <= $4",
            "DELETE FROM legacy_readings WHERE detector_id = ANY($2) AND slot >= $3 AND slot <= $4",
        ] {
            sqlx::query(sql)
                .bind(chamber)
                .bind(&detectors)
                .bind(ts(lo))
                .bind(ts(hi))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        done.polls_moved += records.len() as u64;
        done.readings_moved += moved_readings;
        done.orphan_readings += orphans;
        Ok((chamber, ts(hi + Duration::from_millis(1))))
    }

    /// Counts the readings left without a ledger entry and drops the legacy tables.
    async fn finish_conversion(&self, done: &mut ConversionProgress) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chamberlain.conversion'))")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let gone: bool = sqlx::query_scalar("SELECT to_regclass('legacy_poll_ledger') IS NULL")
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        if !gone {
            let left: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM legacy_poll_ledger)")
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
            if left > 0 {
                // Written by an old worker still running: convert them on the next run.
                return Ok(());
            }
            let orphans: i64 = sqlx::query_scalar("SELECT count(*) FROM legacy_readings")
                .fetch_one(&mut *tx)
                .await
                .map_err(store_error)?;
            done.orphan_readings += u64::try_from(orphans).unwrap_or(0);
            if orphans > 0 {
                tracing::warn!(
                    orphans,
                    "readings without a ledger entry dropped with the previous layout"
                );
            }
            sqlx::query("DROP TABLE legacy_readings, legacy_poll_ledger")
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        self.legacy
            .store(false, std::sync::atomic::Ordering::SeqCst);
        done.finished = true;
        Ok(())
    }
}
