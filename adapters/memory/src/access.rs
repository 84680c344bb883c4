//! [`MemoryAccessEpoch`]: the access epoch of one process (the embedded mode, where the API and
//! the authentication decision share it).

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chamberlain_domain::ports::{AccessEpoch, AccessError};

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
