//! Time and coordination between scheduler replicas: the clock, the leader lease, and the
//! schedule checkpoint.

use std::time::Duration;

use async_trait::async_trait;

use crate::time::Timestamp;

/// The current time. The only way domain code learns it.
#[cfg_attr(feature = "mock", mockall::automock)]
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("lease store unavailable: {message}")]
    Unavailable { message: String },
}

/// A granted lease. `fencing_token` grows with every new grant, so writes made on behalf of a
/// stale leader can be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    pub holder: String,
    pub fencing_token: u64,
    pub expires_at: Timestamp,
}

/// One leader among scheduler replicas: an expiring lease, renewed while held.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait LeaderLease: Send + Sync {
    /// Takes the lease for `holder` if nobody holds it (or the holder's lease expired).
    /// `Ok(None)`: someone else holds it.
    ///
    /// # Errors
    /// `Unavailable`: the caller must assume it is not the leader.
    async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, LeaseError>;

    /// Extends a held lease. `Ok(None)`: it was lost (expired and taken, or released).
    ///
    /// # Errors
    /// `Unavailable`: the caller must stop acting as leader once its grant expires.
    async fn renew(
        &self,
        grant: &LeaseGrant,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, LeaseError>;

    /// Gives the lease up (no-op if already lost).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn release(&self, grant: &LeaseGrant) -> Result<(), LeaseError>;
}

/// Where the leader keeps its schedule watermark (every slot at or before it was decided), so
/// the next leader resumes there.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ScheduleCheckpoint: Send + Sync {
    /// # Errors
    /// `Unavailable`.
    async fn load(&self) -> Result<Option<Timestamp>, LeaseError>;

    /// Saves the watermark unless a holder with a higher fencing token has saved since; never
    /// moves it backwards. Returns whether it was saved.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn save(&self, fencing_token: u64, watermark: Timestamp) -> Result<bool, LeaseError>;
}
