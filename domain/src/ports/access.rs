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

/// A rate limit: `per_second` calls sustained, `burst` at once, by the generic cell rate
/// algorithm with governor's semantics (`Quota::per_second(per_second).allow_burst(burst)`): a
/// call is admitted when its bucket's theoretical arrival time is at most `(burst - 1)`
/// emission intervals ahead of now, and moves it one interval on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: std::num::NonZeroU32,
    pub burst: std::num::NonZeroU32,
}

impl Rate {
    /// The time one call uses up, in microseconds.
    pub fn emission_interval_micros(self) -> u64 {
        1_000_000 / u64::from(self.per_second.get())
    }

    /// How far ahead of now a bucket's theoretical arrival time may be, in microseconds.
    pub fn tolerance_micros(self) -> u64 {
        self.emission_interval_micros() * u64::from(self.burst.get() - 1)
    }
}

/// One bucket a call counts against: who (`user:<id>`, `organization:<id>`, `sign-in:<address>`)
/// and at what rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub key: String,
    pub rate: Rate,
}

/// What a rate limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the limit of `buckets[bucket]`; a call may pass again after `retry_after`.
    Refused {
        bucket: usize,
        retry_after: std::time::Duration,
    },
}

/// Rate limits shared by every replica that admits calls (in Redis in the distributed mode, so
/// N auth replicas allow the limit once, not N times).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Counts one call against every bucket, all or none: admitted only if each bucket has
    /// room, and a refused call uses none of them.
    ///
    /// # Errors
    /// [`AccessError::Unavailable`]: the caller decides without the shared state (a limit of
    /// its own, say).
    async fn admit(&self, buckets: &[Bucket]) -> Result<Admission, AccessError>;
}

/// The cell rate algorithm on one bucket: the bucket's next theoretical arrival time if a call
/// at `now` is admitted, or how long it must wait (all times in microseconds). Adapters that
/// keep the state themselves use it; the Redis adapter runs the same steps in a script.
pub fn next_arrival(rate: Rate, tat: Option<u64>, now: u64) -> Result<u64, u64> {
    let tat = tat.unwrap_or(now).max(now);
    let earliest = tat.saturating_sub(rate.tolerance_micros());
    if now < earliest {
        return Err(earliest - now);
    }
    Ok(tat + rate.emission_interval_micros())
}
