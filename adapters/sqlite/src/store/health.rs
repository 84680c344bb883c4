//! [`ChamberHealthRepository`] of [`SqliteStore`]: each chamber's health, written with
//! optimistic concurrency.

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::model::{ChamberHealth, ChamberId, HealthState};
use chamberlain_domain::ports::{ChamberHealthRepository, StoreError};
use chamberlain_domain::time::Timestamp;
use sqlx::SqliteConnection;

use super::rows::{Cols, health};
use super::{SqliteStore, count_of, id_list, missing_parent};
use crate::errors::{child, db, writing};

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

#[db_port("sqlite")]
#[async_trait]
impl ChamberHealthRepository for SqliteStore {
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

    async fn get_many(&self, chambers: &[ChamberId]) -> Result<Vec<ChamberHealth>, StoreError> {
        if chambers.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the batch: each statement is a round trip to sqlx's SQLite thread.
        let rows = sqlx::query(concat!(
            "SELECT ",
            health_columns!(),
            " FROM chamber_health WHERE chamber_id IN (SELECT unhex(value) FROM json_each(?1))"
        ))
        .bind(id_list(chambers.iter().map(ChamberId::as_uuid)))
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.iter().map(health).collect()
    }

    async fn save(&self, health: &ChamberHealth) -> Result<u64, StoreError> {
        let mut w = self.begin_write().await?;
        let result = save_health(w.conn(), health).await;
        w.finish(result).await
    }
}
