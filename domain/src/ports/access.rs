//! State every replica that decides who may call shares: the access epoch, which moves on
//! whenever who may do what changes (a role, a deleted user, a revoked token).

use async_trait::async_trait;

/// The shared access state could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("access state unavailable: {message}")]
    Unavailable { message: String },
}

/// A value that changes whenever access changes anywhere in the installation. An authenticator
/// reuses a cached decision only while the epoch it read before deciding is still current, so
/// a role lowered, a user deleted or a token revoked through any replica takes effect on the
/// next call on every replica. In-process in the embedded mode, in Redis in the distributed
/// one.
///
/// The value is opaque: compare it for equality only (an adapter may use random values, so a
/// restarted store never hands out an old value again).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait AccessEpoch: Send + Sync {
    /// The current epoch.
    ///
    /// # Errors
    /// [`AccessError::Unavailable`]: the caller must not reuse any cached decision (it decides
    /// from the store instead).
    async fn current(&self) -> Result<u64, AccessError>;

    /// Moves the epoch on, once the change it announces is durable, and returns the new value
    /// (different from every value `current` returned before).
    ///
    /// # Errors
    /// [`AccessError::Unavailable`]: replicas may reuse decisions made before the change for
    /// up to their cache lifetime.
    async fn advance(&self) -> Result<u64, AccessError>;
}
