//! The newest polls, kept in slot order in `polls_recent` and moved into `polls` in chamber
//! order every few seconds of slots (migrations `20261208000000_recent_polls.sql` and
//! `20261209000000_recent_polls_by_bucket.sql`).
//!
//! Written by chamber, a fleet's polls dirty one page per chamber at every write: with 5,000
//! chambers that is ~1,250 pages of WAL per write of 1,250 polls, ~5,000 pages copied to
//! random places of the file at each checkpoint, and every chamber's leaf kept in the writer's
//! cache. Written by (bucket, slot), a write appends to the last pages of each bucket's run of
//! rows; a move deletes a run of whole pages of one bucket, and writes each of its chambers'
//! newest leaf of `polls` once per [`MOVE_SPAN_MILLIS`] of slots. There is no chamber index: a
//! query of one chamber reads its bucket's rows (at most some 25 s of a sixteenth of the fleet)
//! along the key, and a trigger deletes a deleted chamber's rows the same way.
//!
//! Chambers fall in [`BUCKETS`] buckets by the first four bits of their id, and each bucket has
//! its boundary in `polls_recent_since`: `polls` holds a chamber's slots before its bucket's
//! boundary, `polls_recent` those from it on. A boundary only rises, and only in a move, which
//! copies the bucket's polls before the new boundary in the same transaction: so a (chamber,
//! slot) is in one table at most, and a write finds it in the table of its slot. A write moves
//! one bucket at most, so the work of a move (a second or more for 5,000 chambers on a slow
//! machine) is spread over several writes rather than stalling one.

use std::time::{SystemTime, UNIX_EPOCH};

use chamberlain_domain::ports::StoreError;
use sqlx::SqliteConnection;
use uuid::Uuid;

use crate::errors::{Write, corrupt, db, writing};

type Result<T> = std::result::Result<T, StoreError>;

/// Buckets of chambers, each with a boundary of its own (by the first four bits of the id).
pub(super) const BUCKETS: usize = 16;

/// Slots between two moves of a bucket: once the newest poll written is this far past a
/// bucket's boundary, a write moves that bucket's polls before (newest − [`KEEP_MILLIS`]). A
/// chamber polled every second gets ~15 polls appended to its leaf per move.
pub(super) const MOVE_SPAN_MILLIS: i64 = 20_000;

/// Slots left in `polls_recent` by a move, behind the newest poll (and the clock): a poll
/// written later than this behind its slot goes to `polls` directly, one page per poll as
/// before.
pub(super) const KEEP_MILLIS: i64 = 5_000;

/// The bucket of a chamber (in SQL: `recent_bucket_of!`).
pub(super) fn bucket_of(chamber: &Uuid) -> u8 {
    chamber.as_bytes()[0] >> 4
}

/// Each bucket's boundary: polls of its chambers' slots before it are in `polls`, from it on
/// in `polls_recent`. One row back (`group_concat`, in bucket order).
pub(super) async fn boundaries(conn: &mut SqliteConnection) -> Result<[i64; BUCKETS]> {
    let text: Option<String> = sqlx::query_scalar(
        "SELECT group_concat(since, ',' ORDER BY bucket) FROM polls_recent_since",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let values: Vec<i64> = text
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| corrupt("polls_recent_since", "since", e))?;
    values.try_into().map_err(|v: Vec<i64>| {
        corrupt(
            "polls_recent_since",
            "bucket",
            format!("{} buckets, not {BUCKETS}", v.len()),
        )
    })
}

/// The move a write that stored polls up to slot `newest` in `polls_recent` makes, if one is
/// due: the bucket furthest behind, to [`KEEP_MILLIS`] behind the newest slot and behind the
/// clock (a slot far in the future does not carry every later write past the boundary).
pub(super) fn due(since: &[i64; BUCKETS], newest: i64) -> Option<(usize, i64)> {
    let (bucket, &oldest) = since.iter().enumerate().min_by_key(|(_, s)| **s)?;
    if newest.saturating_sub(oldest) < MOVE_SPAN_MILLIS {
        return None;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let to = newest.min(now).saturating_sub(KEEP_MILLIS);
    (to > oldest).then_some((bucket, to))
}

/// Moves `bucket`'s polls before `to` from `polls_recent` into `polls` (in key order, so each
/// chamber's rows land together) and raises its boundary to `to`, in the caller's write
/// transaction.
pub(super) async fn move_before(conn: &mut SqliteConnection, bucket: usize, to: i64) -> Result<()> {
    let started = std::time::Instant::now();
    let bucket = i64::try_from(bucket).unwrap_or(i64::MAX);
    // No poll of these slots is in `polls` (the boundary was below them): a conflict cannot
    // happen, and if the file was edited by hand, the copy already in `polls` is kept (first
    // wins) rather than every later write failing.
    let moved = sqlx::query(concat!(
        "INSERT INTO polls (",
        poll_columns!(),
        ") SELECT ",
        poll_columns!(),
        " FROM polls_recent WHERE bucket = ?2 AND slot < ?1 \
          ORDER BY chamber_id, slot ON CONFLICT DO NOTHING"
    ))
    .bind(to)
    .bind(bucket)
    .execute(&mut *conn)
    .await
    .map_err(writing(Write::Plain))?
    .rows_affected();
    let copied = started.elapsed();
    sqlx::query("DELETE FROM polls_recent WHERE bucket = ?2 AND slot < ?1")
        .bind(to)
        .bind(bucket)
        .execute(&mut *conn)
        .await
        .map_err(writing(Write::Plain))?;
    sqlx::query("UPDATE polls_recent_since SET since = ?1 WHERE bucket = ?2 AND since < ?1")
        .bind(to)
        .bind(bucket)
        .execute(&mut *conn)
        .await
        .map_err(writing(Write::Plain))?;
    tracing::debug!(
        bucket,
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
    fn the_bucket_furthest_behind_moves_once_the_newest_slot_is_a_span_past_it() {
        let newest = 1_700_000_000_000;
        let mut since = [newest; BUCKETS];
        since[3] = newest - MOVE_SPAN_MILLIS + 1;
        assert_eq!(due(&since, newest), None);
        since[5] = newest - MOVE_SPAN_MILLIS;
        assert_eq!(due(&since, newest), Some((5, newest - KEEP_MILLIS)));
        // A new database starts at 0 everywhere: the first bucket first.
        assert_eq!(due(&[0; BUCKETS], newest), Some((0, newest - KEEP_MILLIS)));
    }

    #[test]
    fn a_slot_in_the_future_moves_the_boundary_no_further_than_the_clock() {
        let far = i64::MAX / 2;
        let (_, to) = due(&[0; BUCKETS], far).expect("due");
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

    #[test]
    fn the_bucket_of_an_id_is_its_first_four_bits() {
        for (id, bucket) in [
            (Uuid::nil(), 0),
            (Uuid::from_bytes([0x0f; 16]), 0),
            (Uuid::from_bytes([0x10; 16]), 1),
            (Uuid::from_bytes([0xef; 16]), 14),
            (Uuid::max(), 15),
        ] {
            assert_eq!(bucket_of(&id), bucket, "{id}");
        }
    }

    #[tokio::test]
    async fn sql_finds_the_same_bucket_of_an_id() {
        use sqlx::Connection as _;
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let mut ids = vec![Uuid::nil(), Uuid::max()];
        for b in 0..=255u8 {
            ids.push(Uuid::from_bytes([b; 16]));
        }
        for id in ids {
            let in_sql: i64 = sqlx::query_scalar(concat!("SELECT ", recent_bucket_of!("?1")))
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(in_sql, i64::from(bucket_of(&id)), "{id}");
        }
    }
}
