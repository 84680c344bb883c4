//! [`PollReads`]: the two reads a poll needs before its readings can be stored.

use std::sync::Arc;

use async_trait::async_trait;

use super::{BatchRepository, ChamberRepository, ChamberWithDetectors, Repositories, StoreError};
use crate::model::{Batch, ChamberId, SectionId};
use crate::time::Timestamp;

/// What a poll reads: its chamber with the detectors to map values to, and the batch its
/// readings fall in. Narrow on purpose, so a worker can serve it from a cache (a change then
/// reaches polls within the cache's lifetime). Not tenant-scoped: poll jobs carry no caller.
#[async_trait]
pub trait PollReads: Send + Sync {
    /// The chamber and its detectors, or `None` if it was deleted (shared: a cache hands out
    /// the one it holds without copying it per poll).
    ///
    /// # Errors
    /// `Unavailable`: the poll is not handled, and its job is delivered again after its
    /// visibility timeout.
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<Arc<ChamberWithDetectors>>, StoreError>;

    /// The batch of `section` covering `at`, if any.
    ///
    /// # Errors
    /// `Unavailable`, as [`PollReads::load_for_poll`].
    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError>;

    /// The store refused a poll prepared from what [`PollReads::load_for_poll`] returned for
    /// `chamber` (a detector removed since it was read): the next `load_for_poll` of it reads
    /// the store. Reads straight from the store have nothing to forget. Infallible.
    fn outdated(&self, chamber: ChamberId) {
        let _ = chamber;
    }
}

/// [`PollReads`] straight from the chamber and batch repositories (no cache).
#[derive(Clone)]
pub struct RepositoryPollReads {
    pub chambers: Arc<dyn ChamberRepository>,
    pub batches: Arc<dyn BatchRepository>,
}

impl RepositoryPollReads {
    pub fn of(repositories: &Repositories) -> Self {
        Self {
            chambers: repositories.chambers.clone(),
            batches: repositories.batches.clone(),
        }
    }
}

impl std::fmt::Debug for RepositoryPollReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryPollReads")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl PollReads for RepositoryPollReads {
    async fn load_for_poll(
        &self,
        id: ChamberId,
    ) -> Result<Option<Arc<ChamberWithDetectors>>, StoreError> {
        Ok(self.chambers.load_for_poll(id).await?.map(Arc::new))
    }

    async fn covering(
        &self,
        section: SectionId,
        at: Timestamp,
    ) -> Result<Option<Batch>, StoreError> {
        self.batches.covering(section, at).await
    }
}
