//! [`MemoryAccessEpoch`]: the access epoch of one process (the embedded mode, where the API and
//! the authentication decision share it); [`MemoryRateLimiter`]: rate limits of one process.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chamberlain_domain::ports::{
    AccessEpoch, AccessError, Admission, Bucket, RateLimiter, next_arrival,
};

/// A counter in memory; clones of the `Arc` holding it share it.
#[derive(Debug, Default)]
pub struct MemoryAccessEpoch(AtomicU64);

#[async_trait]
impl AccessEpoch for MemoryAccessEpoch {
    async fn current(&self) -> Result<u64, AccessError> {
        Ok(self.0.load(Ordering::Acquire))
    }

    async fn advance(&self) -> Result<u64, AccessError> {
        Ok(self.0.fetch_add(1, Ordering::AcqRel).wrapping_add(1))
    }
}

/// Rate limits of one process (the fallback of a replica that cannot reach Redis, and tests).
#[derive(Debug)]
pub struct MemoryRateLimiter {
    started: std::time::Instant,
    /// Each bucket's theoretical arrival time, in microseconds since `started`.
    arrivals: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            arrivals: std::sync::Mutex::default(),
        }
    }
}

/// Buckets kept before the idle ones (whose arrival time has passed) are dropped.
const MAX_IDLE_BUCKETS: usize = 65_536;

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn admit(&self, buckets: &[Bucket]) -> Result<Admission, AccessError> {
        let now = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut arrivals = self
            .arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Vec::with_capacity(buckets.len());
        for (i, bucket) in buckets.iter().enumerate() {
            match next_arrival(bucket.rate, arrivals.get(&bucket.key).copied(), now) {
                Ok(tat) => next.push(tat),
                Err(wait) => {
                    return Ok(Admission::Refused {
                        bucket: i,
                        retry_after: std::time::Duration::from_micros(wait),
                    });
                }
            }
        }
        if arrivals.len() > MAX_IDLE_BUCKETS {
            arrivals.retain(|_, tat| *tat > now);
        }
        for (bucket, tat) in buckets.iter().zip(next) {
            arrivals.insert(bucket.key.clone(), tat);
        }
        Ok(Admission::Admitted)
    }
}
