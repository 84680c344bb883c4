//! [`ChamberHealthRepository`] on PostgreSQL: each chamber's health, written with optimistic
//! concurrency.

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use chamberlain_domain::model::{ChamberHealth, ChamberId};
use chamberlain_domain::ports::{ChamberHealthRepository, StoreError};
use sqlx::Row;
use uuid::Uuid;

use super::decode_all;
use crate::PgStore;
use crate::errors::{corrupt, store_error};
use crate::store::rows::{self, ts};

type Result<T> = std::result::Result<T, StoreError>;

#[db_port("postgresql")]
#[async_trait]
impl ChamberHealthRepository for PgStore {
    async fn count_by_state(&self) -> Result<Vec<(chamberlain_domain::model::HealthState, u64)>> {
        let rows = sqlx::query(
            "SELECT coalesce(h.state, 'unknown') AS state, count(*) AS n FROM chambers c \
             LEFT JOIN chamber_health h ON h.chamber_id = c.id GROUP BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state").map_err(store_error)?;
                let n: i64 = row.try_get("n").map_err(store_error)?;
                let state = chamberlain_domain::model::HealthState::parse(&state)
                    .ok_or_else(|| corrupt("chamber_health", "state", &state))?;
                Ok((state, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    async fn get(&self, chamber: ChamberId) -> Result<Option<ChamberHealth>> {
        let row = sqlx::query("SELECT * FROM chamber_health WHERE chamber_id = $1")
            .bind(chamber.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.as_ref().map(rows::health).transpose()
    }

    async fn get_many(&self, chambers: &[ChamberId]) -> Result<Vec<ChamberHealth>> {
        let ids: Vec<Uuid> = chambers.iter().map(|c| *c.as_uuid()).collect();
        let rows = sqlx::query("SELECT * FROM chamber_health WHERE chamber_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        decode_all(&rows, rows::health)
    }

    async fn save(&self, h: &ChamberHealth) -> Result<u64> {
        let version = i64::try_from(h.version).unwrap_or(i64::MAX);
        let sql = if h.version == 0 {
            "INSERT INTO chamber_health (chamber_id, state, consecutive_failures, failing_since, last_slot, changed_at, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7 + 1) ON CONFLICT (chamber_id) DO NOTHING"
        } else {
            "UPDATE chamber_health SET state = $2, consecutive_failures = $3, failing_since = $4, last_slot = $5, \
             changed_at = $6, version = version + 1 WHERE chamber_id = $1 AND version = $7"
        };
        let done = sqlx::query(sql)
            .bind(h.chamber_id.as_uuid())
            .bind(rows::health_state_str(h.state))
            .bind(i32::try_from(h.consecutive_failures).unwrap_or(i32::MAX))
            .bind(h.failing_since.map(ts))
            .bind(h.last_slot.map(ts))
            .bind(ts(h.changed_at))
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                entity: "health",
                reason: format!("version {} is stale", h.version),
            });
        }
        Ok(h.version + 1)
    }

    /// One transaction of two statements at most, whatever the number: the first saves (an
    /// insert where a chamber that still exists has no row) and the updates whose version still
    /// holds; a chamber neither saved is returned. On an error nothing is saved.
    async fn save_many(&self, healths: &[ChamberHealth]) -> Result<Vec<ChamberId>> {
        if healths.is_empty() {
            return Ok(Vec::new());
        }
        let mut saved = std::collections::HashSet::new();
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        for first in [true, false] {
            let part: Vec<&ChamberHealth> = healths
                .iter()
                .filter(|h| (h.version == 0) == first)
                .collect();
            if part.is_empty() {
                continue;
            }
            let sql = if first {
                "INSERT INTO chamber_health (chamber_id, state, consecutive_failures, failing_since, last_slot, changed_at, version) \
                 SELECT k.chamber_id, k.state, k.failures, k.failing_since, k.last_slot, k.changed_at, 1 \
                 FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[], $7::int8[]) \
                      AS k(chamber_id, state, failures, failing_since, last_slot, changed_at, version) \
                 WHERE EXISTS (SELECT 1 FROM chambers c WHERE c.id = k.chamber_id) \
                 ON CONFLICT (chamber_id) DO NOTHING RETURNING chamber_id"
            } else {
                "UPDATE chamber_health h SET state = k.state, consecutive_failures = k.failures, \
                     failing_since = k.failing_since, last_slot = k.last_slot, changed_at = k.changed_at, \
                     version = h.version + 1 \
                 FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[], $7::int8[]) \
                      AS k(chamber_id, state, failures, failing_since, last_slot, changed_at, version) \
                 WHERE h.chamber_id = k.chamber_id AND h.version = k.version RETURNING h.chamber_id"
            };
            let rows = sqlx::query(sql)
                .bind(
                    part.iter()
                        .map(|h| *h.chamber_id.as_uuid())
                        .collect::<Vec<Uuid>>(),
                )
                .bind(
                    part.iter()
                        .map(|h| rows::health_state_str(h.state))
                        .collect::<Vec<&str>>(),
                )
                .bind(
                    part.iter()
                        .map(|h| i32::try_from(h.consecutive_failures).unwrap_or(i32::MAX))
                        .collect::<Vec<i32>>(),
                )
                .bind(
                    part.iter()
                        .map(|h| h.failing_since.map(ts))
                        .collect::<Vec<_>>(),
                )
                .bind(part.iter().map(|h| h.last_slot.map(ts)).collect::<Vec<_>>())
                .bind(part.iter().map(|h| ts(h.changed_at)).collect::<Vec<_>>())
                .bind(
                    part.iter()
                        .map(|h| i64::try_from(h.version).unwrap_or(i64::MAX))
                        .collect::<Vec<i64>>(),
                )
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
            for row in &rows {
                let id: Uuid = row.try_get("chamber_id").map_err(store_error)?;
                saved.insert(id);
            }
        }
        tx.commit().await.map_err(store_error)?;
        Ok(healths
            .iter()
            .map(|h| h.chamber_id)
            .filter(|id| !saved.contains(id.as_uuid()))
            .collect())
    }
}
