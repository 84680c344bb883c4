//! Reading the data: readings over a time range, the latest values, and the poll ledger.

use std::sync::Arc;

use crate::error::{Rule, ValidationError};
use crate::model::{ChamberId, LedgerEntry, Page, Reading, Role};
use crate::ports::{
    LatestReadings, LedgerQuery, PollLedgerRepository, ReadingCursor, ReadingQuery,
    ReadingRepository,
};
use crate::time::Timestamp;
use crate::usecases::{Actor, UseCaseError};

/// The most chambers one "latest values" call may ask for.
pub const MAX_LATEST_CHAMBERS: usize = 1000;

/// Query use cases; any role of the organization may read.
#[derive(Clone)]
pub struct ReadingQueries {
    pub readings: Arc<dyn ReadingRepository>,
    pub ledger: Arc<dyn PollLedgerRepository>,
}

impl std::fmt::Debug for ReadingQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadingQueries").finish_non_exhaustive()
    }
}

fn check_range(from: Timestamp, to: Timestamp) -> Result<(), ValidationError> {
    if from >= to {
        return Err(ValidationError::new(
            "to",
            Rule::Inconsistent(format!("must be after from ({from})")),
        ));
    }
    Ok(())
}

impl ReadingQueries {
    /// Readings of a detector, chamber or batch with `from <= slot < to`, by (slot, detector).
    ///
    /// # Errors
    /// `Invalid` (`to` not after `from`); `NotFound` for a scope outside the caller's
    /// organization; `Unavailable`.
    pub async fn readings(
        &self,
        actor: &Actor,
        query: &ReadingQuery,
    ) -> Result<Page<Reading, ReadingCursor>, UseCaseError> {
        actor.require(Role::Viewer, "read readings")?;
        check_range(query.from, query.to)?;
        Ok(self.readings.query(actor.organization_id, query).await?)
    }

    /// The latest slot of each chamber with its detectors' values.
    ///
    /// # Errors
    /// `Invalid` (`chamber_ids`: empty or more than 1,000); `Unavailable`.
    pub async fn latest(
        &self,
        actor: &Actor,
        chambers: &[ChamberId],
    ) -> Result<Vec<LatestReadings>, UseCaseError> {
        actor.require(Role::Viewer, "read readings")?;
        if chambers.is_empty() || chambers.len() > MAX_LATEST_CHAMBERS {
            return Err(ValidationError::new(
                "chamber_ids",
                Rule::OutOfRange {
                    min: "1".into(),
                    max: MAX_LATEST_CHAMBERS.to_string(),
                    actual: chambers.len().to_string(),
                },
            )
            .into());
        }
        Ok(self
            .readings
            .latest(actor.organization_id, chambers)
            .await?)
    }

    /// The ledger of a chamber over a range.
    ///
    /// # Errors
    /// `Invalid`; `NotFound { entity: "chamber" }`; `Unavailable`.
    pub async fn ledger(
        &self,
        actor: &Actor,
        query: &LedgerQuery,
    ) -> Result<Page<LedgerEntry, Timestamp>, UseCaseError> {
        actor.require(Role::Viewer, "read the poll ledger")?;
        check_range(query.from, query.to)?;
        Ok(self.ledger.list(actor.organization_id, query).await?)
    }
}
