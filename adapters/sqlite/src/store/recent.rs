//! The newest polls, kept in slot order in `polls_recent` and moved into `polls` in chamber
//! order every few seconds of slots (migration `20261208000000_recent_polls.sql`).
//!
//! Written by chamber, a fleet's polls dirty one page per chamber at every write: with 5,000
//! chambers that is ~1,250 pages of WAL per write of 1,250 polls, and ~5,000 pages copied to
//! random places of the file at each checkpoint, which bounded the embedded default by the
//! disk's random writes once the database had some history. Written by slot, a write appends
//! to a few last pages (and the small chamber index); the move writes each chamber's newest
//! leaf of `polls` once per [`MOVE_SPAN_MILLIS`] of slots.
//!
//! The boundary `polls_recent_since.since` splits the slots: `polls` holds those before it,
//! `polls_recent` those from it on. It only rises, and only in a move, which copies the polls
//! before the new boundary in the same transaction: so a (chamber, slot) is in one table at
//! most, and a write finds it in the table of its slot.

use std::time::{SystemTime, UNIX_EPOCH};

use chamberlain_domain::ports::StoreError;
use sqlx::SqliteConnection;

use crate::errors::{Write, db, writing};

type Result<T> = std::result::Result<T, StoreError>;

/// Slots between two moves: once the newest poll written is this far past the boundary, the
/// write that stored it moves the polls before (newest − [`KEEP_MILLIS`]). A chamber polled
/// every second gets ~15 polls appended to its leaf per move.
pub(super) const MOVE_SPAN_MILLIS: i64 = 20_000;

/// Slots left in `polls_recent` by a move, behind the newest poll (and the clock): a poll
/// written later than this behind its slot goes to `polls` directly, one page per poll as
/// before.
pub(super) const KEEP_MILLIS: i64 = 5_000;

/// The boundary: polls of slots before it are in `polls`, from it on in `polls_recent`.
pub(super) async fn since(conn: &mut SqliteConnection) -> Result<i64> {
    sqlx::query_scalar("SELECT since FROM polls_recent_since WHERE id = 1")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)
}

/// The boundary a write that stored polls up to slot `newest` in `polls_recent` moves to, if
/// it is due: [`KEEP_MILLIS`] behind the newest slot, and behind the clock (a slot far in the
/// future does not carry every later write past the boundary).
pub(super) fn due(since: i64, newest: i64) -> Option<i64> {
    if newest.saturating_sub(since) < MOVE_SPAN_MILLIS {
        return None;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let to = newest.min(now).saturating_sub(KEEP_MILLIS);
    (to > since).then_some(to)
}

/// Moves the polls before `to` from `polls_recent` into `polls` (in key order, so each
/// chamber's rows land together) and raises the boundary to `to`, in the caller's write
/// transaction.
pub(super) async fn move_before(conn: &mut SqliteConnection, to: i64) -> Result<()> {
    let started = std::time::Instant::now();
    // No poll of these slots is in `polls` (the boundary was below them): a conflict cannot
    // happen, and if the file was edited by hand, the copy already in `polls` is kept (first
    // wins) rather than every later write failing.
    let moved = sqlx::query(concat!(
        "INSERT INTO polls (",
        poll_columns!(),
        ") SELECT ",
        poll_columns!(),
        " FROM polls_recent WHERE slot < ?1 ORDER BY chamber_id, slot ON CONFLICT DO NOTHING"
    ))
    .bind(to)
    .execute(&mut *conn)
    .await
    .map_err(writing(Write::Plain))?
    .rows_affected();
    let copied = started.elapsed();
    sqlx::query("DELETE FROM polls_recent WHERE slot < ?1")
        .bind(to)
        .execute(&mut *conn)
        .await
        .map_err(writing(Write::Plain))?;
    sqlx::query("UPDATE polls_recent_since SET since = ?1 WHERE id = 1 AND since < ?1")
        .bind(to)
        .execute(&mut *conn)
        .await
        .map_err(writing(Write::Plain))?;
    tracing::debug!(
        moved,
        to,
        copy_ms = copied.as_millis(),
        ms = started.elapsed().as_millis(),
        "recent polls moved"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_is_due_once_the_newest_slot_is_a_span_past_the_boundary() {
        let newest = 1_700_000_000_000;
        assert_eq!(due(newest - MOVE_SPAN_MILLIS + 1, newest), None);
        assert_eq!(
            due(newest - MOVE_SPAN_MILLIS, newest),
            Some(newest - KEEP_MILLIS)
        );
        // A new database starts at 0.
        assert_eq!(due(0, newest), Some(newest - KEEP_MILLIS));
    }

    #[test]
    fn a_slot_in_the_future_moves_the_boundary_no_further_than_the_clock() {
        let far = i64::MAX / 2;
        let to = due(0, far).expect("due");
        let now = i64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!(to <= now - KEEP_MILLIS, "{to} > {now}");
        assert!(to > now - KEEP_MILLIS - 60_000, "{to} far below {now}");
    }
}
