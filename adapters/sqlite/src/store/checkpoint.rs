//! [`ScheduleCheckpoint`] of [`SqliteStore`]: the embedded mode's watermark survives a restart.

use async_trait::async_trait;
use chamberlain_domain::ports::{LeaseError, ScheduleCheckpoint};
use chamberlain_domain::time::Timestamp;
use sqlx::Row;

use super::SqliteStore;

fn unavailable(e: impl std::fmt::Display) -> LeaseError {
    LeaseError::Unavailable {
        message: e.to_string(),
    }
}

impl SqliteStore {
    /// The fencing token of the last save (0 when none): a lease that starts after a restart
    /// must hand out higher tokens than this, or its saves would be refused.
    ///
    /// # Errors
    /// `Unavailable`.
    pub async fn checkpoint_token(&self) -> Result<u64, LeaseError> {
        let row = sqlx::query("SELECT fencing_token FROM schedule_checkpoint WHERE id = 1")
            .fetch_optional(&self.readers)
            .await
            .map_err(unavailable)?;
        Ok(row
            .map(|r| r.try_get::<i64, _>("fencing_token").unwrap_or(0))
            .map_or(0, |t| u64::try_from(t).unwrap_or(0)))
    }
}

#[async_trait]
impl ScheduleCheckpoint for SqliteStore {
    async fn load(&self) -> Result<Option<Timestamp>, LeaseError> {
        let row = sqlx::query("SELECT watermark FROM schedule_checkpoint WHERE id = 1")
            .fetch_optional(&self.readers)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            r.try_get::<i64, _>("watermark")
                .map(Timestamp::from_unix_millis)
                .map_err(unavailable)
        })
        .transpose()
    }

    async fn save(&self, fencing_token: u64, watermark: Timestamp) -> Result<bool, LeaseError> {
        let token = i64::try_from(fencing_token).map_err(unavailable)?;
        // One statement: insert, or move forward if this holder's token is not older than the
        // stored one (a deposed leader cannot write; the watermark never moves back).
        let done = sqlx::query(
            "INSERT INTO schedule_checkpoint (id, fencing_token, watermark) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET fencing_token = excluded.fencing_token, \
             watermark = max(watermark, excluded.watermark) \
             WHERE excluded.fencing_token >= schedule_checkpoint.fencing_token",
        )
        .bind(token)
        .bind(watermark.as_unix_millis())
        .execute(&self.writer)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() > 0)
    }
}
