//! Clocks, and the in-process leader lease and schedule checkpoint.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chamberlain_domain::ports::{Clock, LeaderLease, LeaseError, LeaseGrant, ScheduleCheckpoint};
use chamberlain_domain::time::Timestamp;

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Timestamp::from_unix_millis(ms)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct LeaseState {
    holder: Option<LeaseGrant>,
    last_token: u64,
}

/// A leader lease for replicas in one process (and for tests of the election logic).
pub struct MemoryLeaderLease {
    clock: Arc<dyn Clock>,
    state: Mutex<LeaseState>,
}

impl std::fmt::Debug for MemoryLeaderLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLeaderLease")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl MemoryLeaderLease {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            state: Mutex::default(),
        }
    }

    /// A lease whose grants' fencing tokens start above `token` (the last one a persisted
    /// checkpoint saw, so that after a restart the new leader's saves are accepted).
    pub fn with_tokens_after(clock: Arc<dyn Clock>, token: u64) -> Self {
        Self {
            clock,
            state: Mutex::new(LeaseState {
                holder: None,
                last_token: token,
            }),
        }
    }
}

#[async_trait]
impl LeaderLease for MemoryLeaderLease {
    async fn acquire(&self, holder: &str, ttl: Duration) -> Result<Option<LeaseGrant>, LeaseError> {
        let now = self.clock.now();
        let mut s = lock(&self.state);
        if let Some(current) = &s.holder
            && current.expires_at > now
        {
            // Held and unexpired: only its own holder may take it again (same grant, renewed).
            if current.holder != holder {
                return Ok(None);
            }
        }
        s.last_token += 1;
        let grant = LeaseGrant {
            holder: holder.to_owned(),
            fencing_token: s.last_token,
            expires_at: now + ttl,
        };
        s.holder = Some(grant.clone());
        Ok(Some(grant))
    }

    async fn renew(
        &self,
        grant: &LeaseGrant,
        ttl: Duration,
    ) -> Result<Option<LeaseGrant>, LeaseError> {
        let now = self.clock.now();
        let mut s = lock(&self.state);
        match &mut s.holder {
            Some(current)
                if current.fencing_token == grant.fencing_token && current.expires_at > now =>
            {
                current.expires_at = now + ttl;
                Ok(Some(current.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn release(&self, grant: &LeaseGrant) -> Result<(), LeaseError> {
        let mut s = lock(&self.state);
        if s.holder
            .as_ref()
            .is_some_and(|h| h.fencing_token == grant.fencing_token)
        {
            s.holder = None;
        }
        Ok(())
    }
}

/// The schedule watermark, in memory.
#[derive(Debug, Default)]
pub struct MemoryScheduleCheckpoint {
    state: Mutex<(u64, Option<Timestamp>)>,
}

impl MemoryScheduleCheckpoint {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ScheduleCheckpoint for MemoryScheduleCheckpoint {
    async fn load(&self) -> Result<Option<Timestamp>, LeaseError> {
        Ok(lock(&self.state).1)
    }

    async fn save(&self, fencing_token: u64, watermark: Timestamp) -> Result<bool, LeaseError> {
        let mut s = lock(&self.state);
        if fencing_token < s.0 {
            return Ok(false);
        }
        s.0 = fencing_token;
        s.1 = Some(s.1.map_or(watermark, |w| w.max(watermark)));
        Ok(true)
    }
}
